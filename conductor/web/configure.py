"""Configure: run inventory + index, show what was found, assign channel roles."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from conductor import configuring
from conductor.deps import ProjectId, SessionDep
from conductor.errors import Conflict
from conductor.models import Project
from conductor.projects import get_project
from conductor.web import summary
from conductor.web.forms import SERVICE_ERRORS
from conductor.web.render import PageRoute, field, read_form, render
from conductor.web.session import Reader, Writer
from starrynight import storage, workspace
from starrynight.errors import UserError
from starrynight.roles import CP_REQUIRED, CP_ROLES, SBS_ROLES

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
Form = Annotated[dict[str, list[str]], Depends(read_form)]
ROLES = {"cp": CP_ROLES, "sbs": SBS_ROLES}
REQUIRED = {"cp": CP_REQUIRED, "sbs": SBS_ROLES}
NOTICES = {"indexed": "Inventory and index done.", "roles": "Channel roles saved."}
ROLE_LABELS = {
    "nuclei": "Nuclei",
    "cell": "Cell outline",
    "mito": "Mitochondria",
    "A": "Base A",
    "C": "Base C",
    "G": "Base G",
    "T": "Base T",
}


def _choices(ws: str) -> dict[str, Any]:
    return configuring.saved_choices(ws) or configuring.template(ws)


def _page(
    request: Request,
    project: Project,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
    roles: dict[str, dict[str, str]] | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    found = summary.index_summary(project.workspace_uri)
    if found is not None and roles is None:
        chosen = _choices(project.workspace_uri)
        roles = {arm: dict((chosen.get(arm) or {}).get("roles", {})) for arm in ROLES}
    return render(
        request,
        "configure.html",
        status_code,
        project=project,
        found=found,
        roles=roles or {},
        role_names=ROLES,
        required=REQUIRED,
        role_labels=ROLE_LABELS,
        errors=errors or {},
        notice=notice,
        experiment_saved=storage.exists(workspace.experiment_path(project.workspace_uri)),
    )


@router.get("/projects/{project_id}", response_class=HTMLResponse)
def overview(
    project_id: ProjectId, request: Request, session: SessionDep, _token: Reader
) -> HTMLResponse:
    """What inventory and index found, and the channel roles."""
    project = get_project(session, project_id)
    notice = NOTICES.get(request.query_params.get("notice", ""))
    return _page(request, project, notice=notice)


@router.post("/projects/{project_id}/configure", response_class=HTMLResponse)
def run_configure(
    project_id: ProjectId, request: Request, session: SessionDep, _token: Writer
) -> Response:
    """Inventory + index the dataset (keeping roles already chosen)."""
    project = get_project(session, project_id)
    previous = configuring.saved_choices(project.workspace_uri)
    try:
        configuring.configure(session, project_id, previous)
    except SERVICE_ERRORS as exc:
        session.rollback()
        text = str(exc)
        if previous is not None and storage.exists(workspace.index_path(project.workspace_uri)):
            # Saved roles no longer fit the new index: show them so the user can fix them.
            return _page(request, project, 422, errors={"form": text})
        return _page(request, project, 422, errors={"form": text}, roles={})
    return RedirectResponse(f"/ui/projects/{project_id}?notice=indexed", status_code=303)


def check_roles(
    form_roles: dict[str, dict[str, str]], channels: dict[str, list[str]]
) -> dict[str, str]:
    """Field errors (``cp.nuclei`` -> message) for roles chosen in the form."""
    errors: dict[str, str] = {}
    for arm, roles in form_roles.items():
        for role, channel in roles.items():
            name = f"{arm}.{role}"
            if not channel:
                if role in REQUIRED[arm]:
                    errors[name] = f"choose the {ROLE_LABELS[role].lower()} channel"
            elif channel not in channels[arm]:
                errors[name] = f"{channel!r} is not a {arm} channel; choose one of the list"
        if arm == "sbs":
            seen: dict[str, str] = {}
            for base in "ACGT":
                channel = roles.get(base, "")
                if channel and channel in seen:
                    errors[f"sbs.{base}"] = f"{channel!r} is already base {seen[channel]}"
                elif channel:
                    seen[channel] = base
    return errors


@router.post("/projects/{project_id}/roles", response_class=HTMLResponse)
def save_roles(
    project_id: ProjectId, request: Request, session: SessionDep, form: Form, _token: Writer
) -> Response:
    """Validate the chosen roles (here, then against the index) and save the experiment."""
    project = get_project(session, project_id)
    ws = project.workspace_uri
    found = summary.index_summary(ws)
    if found is None:
        raise Conflict(f"project {project.name} is not configured: run the index first")
    chosen = {
        arm: {role: field(form, f"{arm}.{role}") for role in ROLES[arm]}
        for arm in ROLES
        if arm in found.arms
    }
    errors = check_roles(chosen, {a: s.channels for a, s in found.arms.items()})
    if errors:
        return _page(request, project, 422, errors=errors, roles=chosen)
    choices = configuring.template(ws)
    previous = configuring.saved_choices(ws) or {}
    for key in ("frame", "barcodes"):
        if key in previous:
            choices[key] = previous[key]
    for arm, roles in chosen.items():
        choices[arm]["roles"] = roles
    try:
        configuring.save_experiment(session, project, choices)
    except UserError as exc:
        return _page(request, project, 422, errors={"form": str(exc)}, roles=chosen)
    return RedirectResponse(f"/ui/projects/{project_id}?notice=roles", status_code=303)
