"""QC page: the gates (per plate and gate: the report's figures, the gate's state and
history, an approve / close form; then the plate's after-merge report, which gates
nothing) and the gallery of per-well QC figures."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from conductor import gates
from conductor.deps import ProjectId, SessionDep, settings_of
from conductor.errors import NotFound
from conductor.projects import get_project
from conductor.responses import png_response
from conductor.web import qcdata, summary
from conductor.web.render import PageRoute, field, render
from conductor.web.session import Form, Reader, Writer
from starrynight.gates import GATES
from starrynight.modules.qc import MERGE_REPORT

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
PER_PAGE = 12
KIND_TITLES = {
    "gates": "Gates and reports",
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
    kind: Literal["gates", "illum", "segcheck", "alignment", "barcodes"] = "gates",
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
    reports: list[dict] = []
    if kind == "gates":
        settings = settings_of(request)
        chosen = [plate] if plate else plates
        total = len(chosen)
        for p in chosen[start : start + PER_PAGE]:
            reports += [
                {
                    **gates.gate_view(settings, session, project, p, g),
                    "figures": qcdata.report_figures(ws, p, g),
                }
                for g in GATES
            ]
            # Beside the gates' reports, the after-merge one (it gates nothing).
            figures_after = qcdata.report_figures(ws, p, MERGE_REPORT)
            reports.append({"plate": p, "gate": MERGE_REPORT, "gateless": True,
                            "report": bool(figures_after), "figures": figures_after})  # fmt: skip
        figures: list = []
    elif kind in ("alignment", "barcodes"):
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
        reports=reports,
        message=request.query_params.get("done", ""),
        page=page,
        pages=pages,
        total=total,
        nav="qc",
    )


@router.post("/projects/{project_id}/qc/gates", response_class=HTMLResponse)
def decide_gate(
    project_id: ProjectId, request: Request, session: SessionDep, form: Form, token: Writer
) -> Response:
    """Approve or close one plate's gate from the form beside its report."""
    project = get_project(session, project_id)
    plate, gate = field(form, "plate"), field(form, "gate")
    decision = field(form, "decision")
    if decision not in ("approve", "close"):
        raise NotFound(f"decision {decision!r}: expected approve or close")
    # An unknown plate or gate, or no report yet, is answered by the error page (4xx).
    gates.decide(
        settings_of(request), session, project, plate, gate, decision == "approve",
        field(form, "comment"), token,
    )  # fmt: skip
    done = f"{gate} gate of {plate} {'approved' if decision == 'approve' else 'closed'}"
    return RedirectResponse(
        f"/ui/projects/{project_id}/qc?kind=gates&plate={quote(plate)}&done={quote(done)}",
        status_code=303,
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
