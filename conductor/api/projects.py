"""Projects: create, list, get, update, delete; delete a workspace explicitly."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conductor.api.common import Limit, Offset, ProjectId, get_project, settings_of
from conductor.app import get_session, run_read
from conductor.auth import reader, writer
from conductor.models import Project, Run
from conductor.runs import TERMINAL, instance_dir
from conductor.schemas import ProjectCreate, ProjectOut, ProjectPage, ProjectUpdate
from conductor.settings import Settings
from starrynight import storage
from starrynight.errors import UserError

router = APIRouter(prefix="/projects", tags=["projects"])
SessionDep = Annotated[Session, Depends(get_session)]


MARKER = ".conductor-workspace"


def _under(uri: str, root: str) -> bool:
    return uri == root or uri.startswith(root + "/")


def _check_locations(settings: Settings, dataset: str, ws: str) -> None:
    for field, uri in (("dataset_uri", dataset), ("workspace_uri", ws)):
        if settings.allowed_roots and not any(_under(uri, r) for r in settings.allowed_roots):
            raise UserError(
                f"{field}: {uri} is outside the allowed roots {', '.join(settings.allowed_roots)}"
            )
    if not storage.is_s3(dataset) and not storage.is_dir(dataset):
        raise UserError(f"dataset_uri: {dataset}: no such folder")
    if ws == dataset or ws.startswith(dataset.rstrip("/") + "/"):
        raise UserError(f"workspace_uri: {ws}: must not be inside the dataset {dataset}")
    if dataset.startswith(ws.rstrip("/") + "/"):
        raise UserError(f"workspace_uri: {ws}: must not contain the dataset {dataset}")


@router.post("", status_code=201, response_model=ProjectOut, dependencies=[Depends(writer)])
def create_project(body: ProjectCreate, request: Request, session: SessionDep) -> Project:
    """Create a project (the dataset must exist; the workspace is created when needed)."""
    return add_project(settings_of(request), session, body)


def add_project(settings: Settings, session: Session, body: ProjectCreate) -> Project:
    """Check the locations, store the project and claim its workspace.

    Raises
    ------
    UserError
        The dataset is missing, or a location is outside the allowed roots or nested.
    HTTPException
        409 when the name is taken.
    """
    _check_locations(settings, body.dataset_uri, body.workspace_uri)
    if session.scalar(select(Project.id).where(Project.name == body.name)) is not None:
        raise HTTPException(409, f"name: a project named {body.name!r} already exists")
    project = Project(**body.model_dump())
    session.add(project)
    session.commit()
    _claim_workspace(body.workspace_uri)
    return project


def _claim_workspace(ws: str) -> None:
    # Only a workspace Conductor created (or found empty) may later be deleted through
    # the API: the marker keeps DELETE .../workspace away from folders that hold other
    # things.
    if storage.is_s3(ws):
        return
    folder = Path(ws)
    if not folder.exists() or not any(folder.iterdir()):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text("created by conductor\n")


@router.get("", response_model=ProjectPage, dependencies=[Depends(reader)])
async def list_projects(request: Request, limit: Limit = 50, offset: Offset = 0) -> dict:
    """Projects ordered by id, one page at a time."""
    return await run_read(request, lambda session: _page(session, limit, offset))


def _page(session: Session, limit: int, offset: int) -> dict:
    # Plain rows, not ORM objects (hydrating 50 of them dominated the request), and the
    # total rides along with the page (one round trip); an empty page counts apart.
    table = Project.__table__
    query = (
        select(*table.c, func.count().over().label("_total"))
        .order_by(table.c.id)
        .limit(limit)
        .offset(offset)
    )
    rows = [dict(r) for r in session.execute(query).mappings()]
    count = select(func.count()).select_from(table)
    total = rows[0]["_total"] if rows else session.scalar(count) or 0
    return {"total": total, "limit": limit, "offset": offset, "items": rows}


@router.get("/{project_id}", response_model=ProjectOut, dependencies=[Depends(reader)])
async def read_project(project_id: ProjectId, request: Request) -> Project:
    """One project."""
    return await run_read(request, lambda session: get_project(session, project_id))


@router.patch("/{project_id}", response_model=ProjectOut, dependencies=[Depends(writer)])
def update_project(
    project_id: ProjectId, body: ProjectUpdate, request: Request, session: SessionDep
) -> Project:
    """Change some fields; moving the dataset or workspace clears the configuration."""
    project = get_project(session, project_id)
    changes = body.model_dump(exclude_unset=True)
    for field in ("name", "dataset_uri", "workspace_uri", "experiment_type", "backend"):
        if field in changes and changes[field] is None:
            raise UserError(f"{field}: may not be null")
    if "backend_options" in changes and changes["backend_options"] is None:
        changes["backend_options"] = {}
    dataset = changes.get("dataset_uri", project.dataset_uri)
    ws = changes.get("workspace_uri", project.workspace_uri)
    if "dataset_uri" in changes or "workspace_uri" in changes:
        _check_locations(settings_of(request), dataset, ws)
        _claim_workspace(ws)
        project.configured_at = None
    if "name" in changes and changes["name"] != project.name:
        taken = session.scalar(select(Project.id).where(Project.name == changes["name"]))
        if taken is not None:
            raise HTTPException(409, f"name: a project named {changes['name']!r} already exists")
    for field, value in changes.items():
        setattr(project, field, value)
    session.commit()
    return project


def _active_runs(session: Session, project_id: int) -> int:
    query = select(func.count()).where(Run.project_id == project_id, Run.status.not_in(TERMINAL))
    return session.scalar(query) or 0


@router.delete("/{project_id}", status_code=204, dependencies=[Depends(writer)])
def delete_project(project_id: ProjectId, request: Request, session: SessionDep) -> Response:
    """Forget the project and its run history. The dataset and workspace are kept."""
    remove_project(settings_of(request), session, get_project(session, project_id))
    return Response(status_code=204)


def remove_project(settings: Settings, session: Session, project: Project) -> None:
    """Forget ``project``, its runs and its Dagster instance folder (409 while runs are active).

    An adopted instance (the folder is a link, see ``conductor project add
    --dagster-home``) belongs to whoever made it: only the link goes.
    """
    if _active_runs(session, project.id):
        raise HTTPException(409, f"project {project.id} has active runs; cancel them first")
    session.delete(project)
    session.commit()
    home = instance_dir(settings, project.id)
    if home.is_symlink():
        home.unlink()
    else:
        shutil.rmtree(home, ignore_errors=True)


@router.delete("/{project_id}/workspace", status_code=204, dependencies=[Depends(writer)])
def delete_workspace(
    project_id: ProjectId,
    session: SessionDep,
    confirm: Annotated[str, Query(max_length=100, description="The project's name.")],
) -> Response:
    """Delete every output in the workspace; ``confirm`` must repeat the project name."""
    project = get_project(session, project_id)
    if confirm != project.name:
        raise UserError(f"confirm: expected the project name {project.name!r}, got {confirm!r}")
    if _active_runs(session, project_id):
        raise HTTPException(409, f"project {project_id} has active runs; cancel them first")
    ws = project.workspace_uri
    if not storage.is_s3(ws) and Path(ws).exists() and not (Path(ws) / MARKER).exists():
        raise HTTPException(
            409, f"workspace {ws} was not created by Conductor; delete it yourself if intended"
        )
    storage.remove_tree(ws)
    project.configured_at = None
    session.commit()
    return Response(status_code=204)
