"""Plate map: each plate's wells coloured and lettered by status of one asset; well detail."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup, escape
from sqlalchemy import select
from sqlalchemy.orm import Session

from conductor import indexcache, runs
from conductor.api.common import ProjectId, get_project, graph_of, settings_of
from conductor.app import get_session
from conductor.graph import UNPARTITIONED, AssetInfo
from conductor.models import Project, Run
from conductor.web import platefmt, qcdata, summary
from conductor.web.render import PageRoute, render
from conductor.web.session import Reader

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
SessionDep = Annotated[Session, Depends(get_session)]
Name = Annotated[str, Query(max_length=100)]
ALL_PLATES_MAX = 4
NOT_APPLICABLE = runs.NOT_APPLICABLE  # more plates than this: the map opens on the first plate


def configured_partitions(project: Project) -> tuple[list[str], dict[str, list[str]]]:
    """Plates and wells from the index, or 409 before the dataset was indexed."""
    found = summary.plates_and_wells(project.workspace_uri)
    if found is None:
        raise HTTPException(
            409, f"project {project.name} is not configured yet: run inventory and index first"
        )
    return found


def status_of(info: AssetInfo, statuses: dict[str, str], plate: str, well: str) -> str | None:
    """Status of ``info`` for one well (a per-plate asset gives its plate's status)."""
    if not info.dims:
        return statuses.get(UNPARTITIONED)
    if info.dims == ("plate",):
        return statuses.get(plate)
    return statuses.get(f"{plate}|{well}")


@lru_cache(maxsize=8192)
def _quoted(value: str) -> str:
    return quote(value, safe="")


def grid_body(project_id: int, plate: str, rows: list[tuple[str, list[platefmt.Cell]]]) -> Markup:
    """The table rows of one plate's grid, each well a link to its detail page.

    Built here rather than in the template: through Jinja the 7,680 cells of a 20-plate
    map took most of the page's time.
    """
    base = f"/ui/projects/{project_id}/plates/{_quoted(plate)}/wells/"
    out = []
    for letter, cells in rows:
        out.append(f'<tr><th scope="row">{escape(letter)}</th>')
        for c in cells:
            if c.well:
                well, status = escape(c.well), escape(c.status)
                href = escape(base + _quoted(c.well))
                label = f"{well}: {status}"
                css = status.replace("/", "")
                out.append(
                    f'<td class="st-{css}"><a href="{href}" title="{label}" '
                    f'aria-label="{label}">{c.letter}</a></td>'
                )
            else:
                label = f"{escape(c.label)}: no images"
                out.append(
                    f'<td class="st-none" title="{label}"><span class="sr-only">{label}</span>'
                    '<span aria-hidden="true">·</span></td>'
                )
        out.append("</tr>\n")
    return Markup("".join(out))


def dagster_link(request: Request, project_id: int, asset: str, key: str | None) -> str:
    """URL of the asset (and partition) in the Dagster UI."""
    base = request.app.state.dagster_ui_url.replace("{project_id}", str(project_id)).rstrip("/")
    url = f"{base}/assets/{quote(asset)}"
    if key and key != UNPARTITIONED:
        url += f"?view=partitions&partition={quote(key, safe='')}"
    return url


@router.get("/projects/{project_id}/plates", response_class=HTMLResponse)
def plate_map(
    project_id: ProjectId,
    request: Request,
    session: SessionDep,
    _token: Reader,
    asset: Name = "",
    plate: Name = "",
    format: Annotated[int, Query(ge=0, le=384)] = 0,
) -> HTMLResponse:
    """Every plate (or one) as a well grid for the chosen asset."""
    settings = settings_of(request)
    project = get_project(session, project_id)
    graph = graph_of(settings)
    plates, wells = configured_partitions(project)
    if not plate and len(plates) > ALL_PLATES_MAX:
        plate = plates[0]  # a whole screen at once is slow to compute and to read
    if plate == "all":
        plate = ""
    elif plate and plate not in plates:
        raise HTTPException(404, f"plate {plate!r} not in the index; known: {', '.join(plates)}")
    names = [a.name for a in graph]
    if asset and asset not in names:
        raise HTTPException(404, f"asset {asset!r} unknown; known: {', '.join(names)}")
    info = next(a for a in graph if a.name == asset) if asset else graph[-1]
    shown = [plate] if plate else plates
    # Only the shown asset: the rest of the graph just supplies its parents' ids.
    statuses = runs.partition_statuses(
        settings, project.id, graph, shown, {p: wells[p] for p in shown}, assets=[info.name]
    )
    if info.arms:
        arms = indexcache.well_arms(project.workspace_uri)
        statuses = runs.mark_not_applicable((info,), statuses, arms)
    maps = []
    for p in shown:
        per_well = {w: status_of(info, statuses[info.name], p, w) or "missing" for w in wells[p]}
        fmt = platefmt.plate_format(wells[p], format or None)
        headers, rows, outside = platefmt.grid(wells[p], per_well, fmt)
        maps.append(
            {
                "plate": p,
                "format": fmt,
                "headers": headers,
                "body": grid_body(project.id, p, rows),
                "outside": outside,
                "counts": Counter(per_well.values()),
            }
        )
    return render(
        request,
        "platemap.html",
        project=project,
        assets=graph,
        asset=info,
        plates=plates,
        plate=plate,
        format=format,
        formats=list(platefmt.FORMATS),
        maps=maps,
        letters=platefmt.STATUS_LETTER,
        nav="plates",
    )


def _runs_touching(session: Session, project_id: int, keys: set[str | None]) -> list[Run]:
    query = select(Run).where(Run.project_id == project_id).order_by(Run.id.desc()).limit(200)
    return [r for r in session.scalars(query) if any(s["partition"] in keys for s in r.plan)]


@router.get("/projects/{project_id}/plates/{plate}/wells/{well}", response_class=HTMLResponse)
def well_detail(
    project_id: ProjectId,
    plate: str,
    well: str,
    request: Request,
    session: SessionDep,
    _token: Reader,
) -> HTMLResponse:
    """A well's partitions per asset, its last run, its QC figures and Dagster links."""
    settings = settings_of(request)
    project = get_project(session, project_id)
    graph = graph_of(settings)
    plates, wells = configured_partitions(project)
    if plate not in plates or well not in wells[plate]:
        raise HTTPException(404, f"well {plate} {well} holds no images of this project")
    statuses = runs.partition_statuses(settings, project.id, graph, [plate], {plate: [well]})
    statuses = runs.mark_not_applicable(
        graph, statuses, indexcache.well_arms(project.workspace_uri)
    )
    rows = []
    for info in graph:
        key = {0: UNPARTITIONED, 1: plate}.get(len(info.dims), f"{plate}|{well}")
        rows.append(
            {
                "asset": info.name,
                "key": key,
                "status": status_of(info, statuses[info.name], plate, well) or "missing",
                "link": dagster_link(request, project.id, info.name, key),
            }
        )
    touching = _runs_touching(session, project.id, {None, plate, f"{plate}|{well}"})
    ws = project.workspace_uri
    qc = {
        "segcheck": qcdata.segcheck_figures(ws, plate, well),
        "alignment": qcdata.alignment_figure(ws, plate, well),
        "barcodes": qcdata.barcode_figure(ws, plate, well),
        "illum": qcdata.illum_figures(ws, plate),
    }
    return render(
        request,
        "well.html",
        project=project,
        plate=plate,
        well=well,
        rows=rows,
        last_run=touching[0] if touching else None,
        run_count=len(touching),
        qc=qc,
        letters=platefmt.STATUS_LETTER,
        nav="plates",
    )
