"""Configure: run inventory + index, show what was found, assign channel roles."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from conductor import runs
from conductor.api import configure as api
from conductor.api.common import ProjectId, get_project
from conductor.app import get_session
from conductor.models import Project
from conductor.schemas import ConfigureRequest
from conductor.web import summary
from conductor.web.render import PageRoute, field, read_form, render
from conductor.web.session import Reader, Writer
from starrynight import experiment, index, storage, workspace
from starrynight.errors import UserError

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
SessionDep = Annotated[Session, Depends(get_session)]
Form = Annotated[dict[str, list[str]], Depends(read_form)]
ROLES = {"cp": experiment.CP_ROLES, "sbs": experiment.SBS_ROLES}
REQUIRED = {"cp": experiment.CP_REQUIRED, "sbs": experiment.SBS_ROLES}
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


def saved_choices(ws: str) -> dict[str, Any] | None:
    """The user's last experiment choices (or the validated experiment), if any."""
    for uri in (runs.experiment_request_path(ws), workspace.experiment_path(ws)):
        if storage.exists(uri):
            try:
                return json.loads(storage.read_bytes(uri))
            except ValueError:
                continue
    return None


def _choices(ws: str) -> dict[str, Any]:
    return saved_choices(ws) or experiment.template(index.load_index(ws), index.dataset_root(ws))


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
    previous = saved_choices(project.workspace_uri)
    try:
        api.configure(project_id, ConfigureRequest(experiment=previous), session)
    except (UserError, HTTPException) as exc:
        session.rollback()
        text = str(exc.detail) if isinstance(exc, HTTPException) else str(exc)
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
        raise HTTPException(409, f"project {project.name} is not configured: run the index first")
    chosen = {
        arm: {role: field(form, f"{arm}.{role}") for role in ROLES[arm]}
        for arm in ROLES
        if arm in found.arms
    }
    errors = check_roles(chosen, {a: s.channels for a, s in found.arms.items()})
    if errors:
        return _page(request, project, 422, errors=errors, roles=chosen)
    choices = experiment.template(index.load_index(ws), index.dataset_root(ws))
    previous = saved_choices(ws) or {}
    for key in ("frame", "barcodes"):
        if key in previous:
            choices[key] = previous[key]
    for arm, roles in chosen.items():
        choices[arm]["roles"] = roles
    request_path = runs.experiment_request_path(ws)
    storage.write_bytes(request_path, (json.dumps(choices, indent=2) + "\n").encode())
    try:
        experiment.new(ws, request_path)
    except UserError as exc:
        return _page(request, project, 422, errors={"form": str(exc)}, roles=chosen)
    project.configured_at = datetime.now(UTC)
    session.commit()
    return RedirectResponse(f"/ui/projects/{project_id}?notice=roles", status_code=303)
