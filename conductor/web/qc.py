"""QC gallery: illumination heat-maps, segmentation overlays, alignment, barcode rates."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from conductor.deps import ProjectId, SessionDep
from conductor.errors import NotFound
from conductor.projects import get_project
from conductor.responses import png_response
from conductor.web import qcdata, summary
from conductor.web.render import PageRoute, render
from conductor.web.session import Reader

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
PER_PAGE = 12
KIND_TITLES = {
    "illum": "Illumination functions",
    "segcheck": "Segmentation check",
    "alignment": "Alignment",
    "barcodes": "Barcode assignment",
}


@router.get("/projects/{project_id}/qc", response_class=HTMLResponse)
def gallery(
    project_id: ProjectId,
    request: Request,
    session: SessionDep,
    _token: Reader,
    kind: Literal["illum", "segcheck", "alignment", "barcodes"] = "illum",
    plate: Annotated[str, Query(max_length=100)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    """One kind of QC figure, a page at a time, with the numbers beside each."""
    project = get_project(session, project_id)
    ws = project.workspace_uri
    found = summary.plates_and_wells(ws)
    plates = found[0] if found else []
    if plate and plate not in plates:
        raise NotFound(f"plate {plate!r} not in the index; known: {', '.join(plates)}")
    start = (page - 1) * PER_PAGE
    if kind in ("alignment", "barcodes"):
        # Only the tables of the shown page are read.
        tables = [t for t in qcdata.well_tables(ws, kind) if not plate or t[0] == plate]
        total = len(tables)
        shown = [
            qcdata.well_figure(ws, kind, p, w, rel)
            for p, w, rel in tables[start : start + PER_PAGE]
        ]
        figures = [f for f in shown if f is not None]
    else:
        every = qcdata.figures(ws, kind, plate or None)
        total = len(every)
        figures = every[start : start + PER_PAGE]
    pages = max(1, -(-total // PER_PAGE))
    return render(
        request,
        "qc.html",
        project=project,
        kind=kind,
        kinds=KIND_TITLES,
        plate=plate,
        plates=plates,
        figures=figures,
        page=page,
        pages=pages,
        total=total,
        nav="qc",
    )


@router.get("/projects/{project_id}/files/preview")
def preview(
    project_id: ProjectId,
    request: Request,
    session: SessionDep,
    _token: Reader,
    path: Annotated[str, Query(max_length=1000)],
) -> Response:
    """A PNG of the workspace for an ``<img>`` (same checks as the files API)."""
    return png_response(get_project(session, project_id), path)
