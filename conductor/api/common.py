"""Small helpers shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Path, Query, Request
from sqlalchemy.orm import Session

from conductor.graph import AssetInfo, asset_graph
from conductor.indexcache import plates_and_wells
from conductor.models import Project
from conductor.settings import Settings
from starrynight.errors import UserError

# Ids are 32-bit in the database; larger values cannot exist and must not reach SQL.
ProjectId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Project id.")]
RunId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Run id.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=10**9, description="Items to skip.")]


def settings_of(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


def get_project(session: Session, project_id: int) -> Project:
    """The project or 404."""
    project = session.get(Project, project_id)
    if project is None:
        raise HTTPException(404, f"project {project_id} not found")
    return project


def graph_of(settings: Settings) -> tuple[AssetInfo, ...]:
    """The asset graph, or 503 when the Dagster code location cannot be loaded."""
    try:
        return asset_graph(settings.dagster_module)
    except UserError as exc:
        raise HTTPException(503, f"Dagster code location unavailable: {exc}") from exc


def dataset_partitions(project: Project) -> tuple[list[str], dict[str, list[str]]]:
    """Plates and wells per plate from the project's index; 409 before ``configure``."""
    found = plates_and_wells(project.workspace_uri)
    if found is None:
        raise HTTPException(409, f"project {project.name} is not configured: no index yet")
    return found
