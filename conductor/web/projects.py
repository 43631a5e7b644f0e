"""Projects: list, create, delete with confirmation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conductor import projects
from conductor.deps import ProjectId, SessionDep, settings_of
from conductor.errors import ServiceError
from conductor.models import Project, Run
from conductor.runs.observe import TERMINAL
from conductor.schemas import ProjectCreate
from conductor.web import summary
from conductor.web.forms import SERVICE_ERRORS, field_errors, service_error
from conductor.web.render import PageRoute, field, read_form, render
from conductor.web.session import Reader, Writer
from starrynight.gates import GATES

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
Form = Annotated[dict[str, list[str]], Depends(read_form)]
CREATE_FIELDS = ("name", "dataset_uri", "workspace_uri", "experiment_type", "qc_gates")
#: Gates a new project holds unless the form says otherwise: the API's default.
DEFAULT_GATES: list[str] = ProjectCreate.model_fields["qc_gates"].get_default(
    call_default_factory=True
)


def _rows(session: Session) -> list[dict]:
    latest_ids = select(func.max(Run.id)).group_by(Run.project_id)
    latest = {r.project_id: r for r in session.scalars(select(Run).where(Run.id.in_(latest_ids)))}
    rows = []
    for project in session.scalars(select(Project).order_by(Project.id)):
        found = summary.plates_and_wells(project.workspace_uri) if project.configured_at else None
        run = latest.get(project.id)
        if run is not None and run.status not in TERMINAL:
            state = "running"
        elif project.configured_at is None:
            state = "not configured"
        elif run is None:
            state = "configured"
        else:
            state = f"last run {run.status.lower()}"
        rows.append(
            {"project": project, "plates": len(found[0]) if found else None, "state": state}
        )
    return rows


def _page(request: Request, session: Session, status_code: int = 200, **ctx) -> HTMLResponse:
    ctx.setdefault("errors", {})
    ctx.setdefault("values", {"experiment_type": "ops", "qc_gates": DEFAULT_GATES})
    return render(request, "projects.html", status_code, rows=_rows(session), gates=GATES, **ctx)


@router.get("", include_in_schema=False)
@router.get("/", include_in_schema=False)
def home(_token: Reader) -> RedirectResponse:
    """The project list is the start page."""
    return RedirectResponse("/ui/projects", status_code=303)


@router.get("/projects", response_class=HTMLResponse)
def list_projects(request: Request, session: SessionDep, _token: Reader) -> HTMLResponse:
    """Projects with their dataset, plate count and state; the creation form."""
    return _page(request, session)


@router.post("/projects", response_class=HTMLResponse)
def create_project(request: Request, session: SessionDep, form: Form, _token: Writer) -> Response:
    """Create a project from the form; problems are shown next to their fields."""
    values: dict = {name: field(form, name) for name in CREATE_FIELDS if name != "qc_gates"}
    # An unticked checkbox sends nothing: the form marks that it showed the gates, so
    # "none ticked" is told from a post without the field (which gets the default).
    shown = bool(field(form, "qc_gates_shown"))
    values["qc_gates"] = form.get("qc_gates", []) if shown else DEFAULT_GATES
    try:
        body = ProjectCreate(**values)
    except ValidationError as exc:
        return _page(request, session, 422, errors=field_errors(exc), values=values)
    try:
        project = projects.add_project(settings_of(request), session, body)
    except SERVICE_ERRORS as exc:
        session.rollback()
        return _page(request, session, 422, errors=service_error(exc, CREATE_FIELDS), values=values)
    return RedirectResponse(f"/ui/projects/{project.id}", status_code=303)


@router.get("/projects/{project_id}/delete", response_class=HTMLResponse)
def confirm_delete(
    project_id: ProjectId, request: Request, session: SessionDep, _token: Reader
) -> HTMLResponse:
    """Ask before forgetting a project."""
    project = projects.get_project(session, project_id)
    return render(request, "delete.html", project=project, error=None)


@router.post("/projects/{project_id}/delete", response_class=HTMLResponse)
def delete_project(
    project_id: ProjectId, request: Request, session: SessionDep, form: Form, _token: Writer
) -> Response:
    """Forget the project (dataset and workspace are kept); the name must be typed."""
    project = projects.get_project(session, project_id)
    if field(form, "confirm") != project.name:
        return render(
            request,
            "delete.html",
            422,
            project=project,
            error=f"type the project name {project.name!r} to confirm",
        )
    try:
        projects.remove_project(settings_of(request), session, project)
    except ServiceError as exc:
        return render(request, "delete.html", exc.status, project=project, error=exc.detail)
    return RedirectResponse("/ui/projects", status_code=303)
