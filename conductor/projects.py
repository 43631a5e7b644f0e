"""Projects as the API, the pages and the command line use them: create, change, forget.

Errors are Conductor's own (:mod:`conductor.errors`) or
:class:`~starrynight.errors.UserError`; the callers turn them into answers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conductor.errors import Conflict, NotFound
from conductor.models import Project, Run
from conductor.runs.instances import instance_dir
from conductor.runs.observe import TERMINAL
from conductor.schemas import ProjectCreate, ProjectUpdate
from conductor.settings import Settings
from starrynight import storage
from starrynight.errors import UserError

MARKER = ".conductor-workspace"
NOT_NULL = ("name", "dataset_uri", "workspace_uri", "experiment_type", "backend", "qc_gates")


def get_project(session: Session, project_id: int) -> Project:
    """The project, or :class:`NotFound`."""
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found")
    return project


def page(session: Session, limit: int, offset: int) -> dict[str, Any]:
    """One page of projects ordered by id, with the total."""
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


def _under(uri: str, root: str) -> bool:
    return uri == root or uri.startswith(root + "/")


def check_locations(settings: Settings, dataset: str, ws: str) -> None:
    """Refuse a dataset or workspace outside the allowed roots, missing, or nested."""
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


def _name_free(session: Session, name: str) -> None:
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise Conflict(f"name: a project named {name!r} already exists")


def claim_workspace(ws: str) -> None:
    """Mark a workspace Conductor created (or found empty) as Conductor's."""
    # Only such a workspace may later be deleted through the API: the marker keeps
    # DELETE .../workspace away from folders that hold other things.
    if storage.is_s3(ws):
        return
    folder = Path(ws)
    if not folder.exists() or not any(folder.iterdir()):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text("created by conductor\n")


def add_project(settings: Settings, session: Session, body: ProjectCreate) -> Project:
    """Check the locations, store the project and claim its workspace.

    Raises
    ------
    UserError
        The dataset is missing, or a location is outside the allowed roots or nested.
    Conflict
        The name is taken.
    """
    check_locations(settings, body.dataset_uri, body.workspace_uri)
    _name_free(session, body.name)
    project = Project(**body.model_dump())
    session.add(project)
    session.commit()
    claim_workspace(body.workspace_uri)
    return project


def update_project(
    settings: Settings, session: Session, project_id: int, body: ProjectUpdate
) -> Project:
    """Change the fields ``body`` sets; moving the dataset or workspace clears the
    configuration."""
    project = get_project(session, project_id)
    changes = body.model_dump(exclude_unset=True)
    for field in NOT_NULL:
        if field in changes and changes[field] is None:
            raise UserError(f"{field}: may not be null")
    if "backend_options" in changes and changes["backend_options"] is None:
        changes["backend_options"] = {}
    dataset = changes.get("dataset_uri", project.dataset_uri)
    ws = changes.get("workspace_uri", project.workspace_uri)
    if "dataset_uri" in changes or "workspace_uri" in changes:
        check_locations(settings, dataset, ws)
        claim_workspace(ws)
        project.configured_at = None
    if "name" in changes and changes["name"] != project.name:
        _name_free(session, changes["name"])
    for field, value in changes.items():
        setattr(project, field, value)
    session.commit()
    return project


def _refuse_active_runs(session: Session, project_id: int) -> None:
    query = select(func.count()).where(Run.project_id == project_id, Run.status.not_in(TERMINAL))
    if session.scalar(query):
        raise Conflict(f"project {project_id} has active runs; cancel them first")


def remove_project(settings: Settings, session: Session, project: Project) -> None:
    """Forget ``project``, its runs and its Dagster instance folder (refused while runs
    are active).

    An adopted instance (the folder is a link, see ``conductor project add
    --dagster-home``) belongs to whoever made it: only the link goes.
    """
    _refuse_active_runs(session, project.id)
    session.delete(project)
    session.commit()
    home = instance_dir(settings, project.id)
    if home.is_symlink():
        home.unlink()
    else:
        shutil.rmtree(home, ignore_errors=True)


def delete_workspace(session: Session, project_id: int, confirm: str) -> None:
    """Delete every output in the workspace; ``confirm`` must repeat the project name."""
    project = get_project(session, project_id)
    if confirm != project.name:
        raise UserError(f"confirm: expected the project name {project.name!r}, got {confirm!r}")
    _refuse_active_runs(session, project_id)
    ws = project.workspace_uri
    if not storage.is_s3(ws) and Path(ws).exists() and not (Path(ws) / MARKER).exists():
        raise Conflict(
            f"workspace {ws} was not created by Conductor; delete it yourself if intended"
        )
    storage.remove_tree(ws)
    project.configured_at = None
    session.commit()
