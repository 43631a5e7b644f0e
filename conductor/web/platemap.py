"""Plate map: each plate's wells coloured and lettered by status of one asset; well detail."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup, escape

from conductor import indexcache
from conductor.catalog import dataset_partitions, graph_of
from conductor.deps import ProjectId, SessionDep, settings_of
from conductor.errors import NotFound
from conductor.graph import UNPARTITIONED, AssetInfo
from conductor.projects import get_project
from conductor.runs.partitions import mark_not_applicable, partition_statuses
from conductor.runs.service import runs_touching
from conductor.web import platefmt, qcdata
from conductor.web.render import PageRoute, render
from conductor.web.session import Reader

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
Name = Annotated[str, Query(max_length=100)]
ALL_PLATES_MAX = 4  # more plates than this: the map opens on the first plate


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


def plate_grid(
    project_id: int, info: AssetInfo, statuses: dict[str, str], plate: str, wells: list[str],
    requested_format: int,
) -> dict[str, Any]:  # fmt: skip
    """One plate of the map: its format, grid rows, wells off the grid and status counts."""
    per_well = {w: status_of(info, statuses, plate, w) or "missing" for w in wells}
    fmt = platefmt.plate_format(wells, requested_format or None)
    headers, rows, outside = platefmt.grid(wells, per_well, fmt)
    return {
        "plate": plate,
        "format": fmt,
        "headers": headers,
        "body": grid_body(project_id, plate, rows),
        "outside": outside,
        "counts": Counter(per_well.values()),
    }


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
    plates, wells = dataset_partitions(project)
    if not plate and len(plates) > ALL_PLATES_MAX:
        plate = plates[0]  # a whole screen at once is slow to compute and to read
    if plate == "all":
        plate = ""
    elif plate and plate not in plates:
        raise NotFound(f"plate {plate!r} not in the index; known: {', '.join(plates)}")
    names = [a.name for a in graph]
    if asset and asset not in names:
        raise NotFound(f"asset {asset!r} unknown; known: {', '.join(names)}")
    info = next(a for a in graph if a.name == asset) if asset else graph[-1]
    shown = [plate] if plate else plates
    # Only the shown asset: the rest of the graph just supplies its parents' ids.
    statuses = partition_statuses(
        settings, project.id, graph, shown, {p: wells[p] for p in shown}, assets=[info.name]
    )
    if info.arms:
        arms = indexcache.well_arms(project.workspace_uri)
        statuses = mark_not_applicable((info,), statuses, arms)
    maps = [plate_grid(project.id, info, statuses[info.name], p, wells[p], format) for p in shown]
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
    plates, wells = dataset_partitions(project)
    if plate not in plates or well not in wells[plate]:
        raise NotFound(f"well {plate} {well} holds no images of this project")
    statuses = partition_statuses(settings, project.id, graph, [plate], {plate: [well]})
    statuses = mark_not_applicable(graph, statuses, indexcache.well_arms(project.workspace_uri))
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
    touching = runs_touching(session, project, {None, plate, f"{plate}|{well}"})
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
