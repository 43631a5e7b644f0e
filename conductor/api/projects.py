"""Projects: create, list, get, update, delete; delete a workspace explicitly."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from conductor import projects
from conductor.deps import (
    Limit,
    Offset,
    ProjectId,
    SessionDep,
    reader,
    run_read,
    settings_of,
    writer,
)
from conductor.models import Project
from conductor.schemas import ProjectCreate, ProjectOut, ProjectPage, ProjectUpdate

router = APIRouter(prefix="/projects", tags=["projects"])


@router.post("", status_code=201, response_model=ProjectOut, dependencies=[Depends(writer)])
def create_project(body: ProjectCreate, request: Request, session: SessionDep) -> Project:
    """Create a project (the dataset must exist; the workspace is created when needed)."""
    return projects.add_project(settings_of(request), session, body)


@router.get("", response_model=ProjectPage, dependencies=[Depends(reader)])
async def list_projects(request: Request, limit: Limit = 50, offset: Offset = 0) -> dict:
    """Projects ordered by id, one page at a time."""
    return await run_read(request, lambda session: projects.page(session, limit, offset))


@router.get("/{project_id}", response_model=ProjectOut, dependencies=[Depends(reader)])
async def read_project(project_id: ProjectId, request: Request) -> Project:
    """One project."""
    return await run_read(request, lambda session: projects.get_project(session, project_id))


@router.patch("/{project_id}", response_model=ProjectOut, dependencies=[Depends(writer)])
def update_project(
    project_id: ProjectId, body: ProjectUpdate, request: Request, session: SessionDep
) -> Project:
    """Change some fields; moving the dataset or workspace clears the configuration."""
    return projects.update_project(settings_of(request), session, project_id, body)


@router.delete("/{project_id}", status_code=204, dependencies=[Depends(writer)])
def delete_project(project_id: ProjectId, request: Request, session: SessionDep) -> Response:
    """Forget the project and its run history. The dataset and workspace are kept."""
    project = projects.get_project(session, project_id)
    projects.remove_project(settings_of(request), session, project)
    return Response(status_code=204)


@router.delete("/{project_id}/workspace", status_code=204, dependencies=[Depends(writer)])
def delete_workspace(
    project_id: ProjectId,
    session: SessionDep,
    confirm: Annotated[str, Query(max_length=100, description="The project's name.")],
) -> Response:
    """Delete every output in the workspace; ``confirm`` must repeat the project name."""
    projects.delete_workspace(session, project_id, confirm)
    return Response(status_code=204)
