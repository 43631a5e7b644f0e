"""Runs: launch, list, watch (progress and live log), cancel, compare two."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from conductor.catalog import graph_of
from conductor.deps import ProjectId, RunId, SessionDep, settings_of
from conductor.errors import NotFound, ServiceError, Unavailable, http_error
from conductor.models import Project
from conductor.projects import get_project
from conductor.responses import event_stream
from conductor.runs import service
from conductor.runs.observe import TERMINAL, step_seconds
from conductor.schemas import Selection
from conductor.web import summary
from conductor.web.forms import SERVICE_ERRORS, field_errors, service_error
from conductor.web.render import PageRoute, field, read_form, render
from conductor.web.session import Reader, Writer

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
Form = Annotated[dict[str, list[str]], Depends(read_form)]
SELECTION_FIELDS = ("assets", "plates", "wells", "stale_only")
PAGE = 25


def _split(text: str) -> list[str]:
    return [t for t in (p.strip() for p in text.replace("\n", ",").split(",")) if t]


def _page(
    request: Request,
    session: Session,
    project: Project,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    offset: int = 0,
) -> HTMLResponse:
    settings = settings_of(request)
    listing = service.list_runs(settings, session, project.id, limit=PAGE, offset=offset)
    found = summary.plates_and_wells(project.workspace_uri)
    try:
        assets = [a.name for a in graph_of(settings)]
        graph_error = None
    except Unavailable as exc:
        assets, graph_error = [], exc.detail
    return render(
        request,
        "runs.html",
        status_code,
        project=project,
        listing=listing,
        plates=found[0] if found else [],
        configured=found is not None,
        assets=assets,
        graph_error=graph_error,
        errors=errors or {},
        values=values or {"assets": [], "plates": [], "wells": "", "stale_only": False},
        page_size=PAGE,
        nav="runs",
    )


@router.get("/projects/{project_id}/runs", response_class=HTMLResponse)
def list_runs(
    project_id: ProjectId,
    request: Request,
    session: SessionDep,
    _token: Reader,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> HTMLResponse:
    """The launch form and the project's runs, newest first."""
    return _page(request, session, get_project(session, project_id), offset=offset)


@router.post("/projects/{project_id}/runs", response_class=HTMLResponse)
def launch(
    project_id: ProjectId, request: Request, session: SessionDep, form: Form, token: Writer
) -> Response:
    """Launch what the form selects; errors are shown on the form."""
    project = get_project(session, project_id)
    values = {
        "assets": form.get("assets", []),
        "plates": form.get("plates", []),
        "wells": field(form, "wells"),
        "stale_only": field(form, "stale_only") == "on",
    }
    try:
        body = Selection(
            assets=values["assets"],
            plates=values["plates"],
            wells=_split(values["wells"]),
            stale_only=values["stale_only"],
        )
    except ValidationError as exc:
        return _page(request, session, project, 422, field_errors(exc), values)
    try:
        run = service.launch_run(settings_of(request), session, project_id, body, token)
    except SERVICE_ERRORS as exc:
        session.rollback()
        return _page(request, session, project, 422, service_error(exc, SELECTION_FIELDS), values)
    return RedirectResponse(f"/ui/runs/{run['id']}", status_code=303)


def _run_view(request: Request, session: Session, run_id: int) -> dict[str, Any]:
    run = service.read_run(settings_of(request), session, run_id)
    progress = run["progress"]
    total = progress.get("steps_total", 0)
    run["percent"] = round(100 * progress.get("steps_done", 0) / total) if total else 100
    run["terminal"] = run["status"] in TERMINAL
    return run


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_detail(run_id: RunId, request: Request, session: SessionDep, _token: Reader) -> Response:
    """Status, progress, steps and the live log of one run."""
    run = _run_view(request, session, run_id)
    project = get_project(session, run["project_id"])
    return render(request, "run.html", project=project, run=run, nav="runs")


@router.get("/runs/{run_id}/status.json")
def run_status(run_id: RunId, request: Request, session: SessionDep, _token: Reader) -> Response:
    """The run as the page script polls it (same body as ``GET /api/v1/runs/{id}``)."""
    try:
        run = _run_view(request, session, run_id)
    except ServiceError as exc:
        answer = http_error(exc)
        return JSONResponse({"detail": answer.detail}, answer.status, headers=answer.headers)
    return JSONResponse(jsonable(run))


def jsonable(value: Any) -> Any:
    """Datetimes as ISO strings, recursively."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


@router.get("/runs/{run_id}/events")
def run_events(run_id: RunId, request: Request, session: SessionDep, _token: Reader) -> Response:
    """Server-sent events of the run's Dagster events (the API's log stream, cookie auth)."""
    factory = request.app.state.sessionmaker
    return event_stream(service.run_log_events(settings_of(request), session, factory, run_id))


@router.post("/runs/{run_id}/cancel", response_class=HTMLResponse)
def cancel(run_id: RunId, request: Request, session: SessionDep, _token: Writer) -> Response:
    """Stop an active run; a finished one gives a readable 409."""
    service.cancel_run(settings_of(request), session, run_id)
    return RedirectResponse(f"/ui/runs/{run_id}", status_code=303)


def _durations(request: Request, run: dict[str, Any]) -> list[dict[str, Any]]:
    ids = [step["dagster_run_id"] for step in run["steps"]]
    seconds = step_seconds(settings_of(request), run["project_id"], ids)
    # A step that never started has no duration to show.
    return [{**step, "seconds": seconds.get(step["dagster_run_id"])} for step in run["steps"]]


@router.get("/projects/{project_id}/compare", response_class=HTMLResponse)
def compare(
    project_id: ProjectId,
    request: Request,
    session: SessionDep,
    _token: Reader,
    a: Annotated[int, Query(ge=1, le=2**31 - 1)],
    b: Annotated[int, Query(ge=1, le=2**31 - 1)],
) -> HTMLResponse:
    """Two runs side by side: selection, status, durations, what each materialised."""
    project = get_project(session, project_id)
    shown = []
    for run_id in (a, b):
        run = _run_view(request, session, run_id)
        if run["project_id"] != project.id:
            raise NotFound(f"run {run_id} is not a run of project {project.name}")
        run["step_durations"] = _durations(request, run)
        end = run["finished_at"]
        run["seconds"] = round((end - run["created_at"]).total_seconds(), 2) if end else None
        run["materialized"] = sorted(
            {(m, s["partition"] or "") for s in run["steps"] for m in s["materialized"]}
        )
        shown.append(run)
    return render(request, "compare.html", project=project, runs=shown, nav="runs")
