"""Files of a project's workspace: list, download, preview PNG QC images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from conductor import files
from conductor.deps import ProjectId, ReadSessionDep, reader
from conductor.projects import get_project
from conductor.responses import download_response, png_response
from conductor.schemas import FileList

router = APIRouter(prefix="/projects/{project_id}/files", tags=["files"])
RelPath = Annotated[str, Query(max_length=1000, description="Path relative to the workspace.")]


@router.get("", response_model=FileList, dependencies=[Depends(reader)])
def list_files(project_id: ProjectId, session: ReadSessionDep, prefix: RelPath = "") -> dict:
    """Files under ``prefix`` of the workspace, recursively (at most 10,000)."""
    project = get_project(session, project_id)
    items, truncated = files.list_files(project.workspace_uri, prefix)
    return {"prefix": files.clean_relative(prefix), "items": items, "truncated": truncated}


@router.get(
    "/content",
    dependencies=[Depends(reader)],
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download(project_id: ProjectId, session: ReadSessionDep, path: RelPath) -> Response:
    """Download one file of the workspace."""
    return download_response(get_project(session, project_id), path)


@router.get(
    "/preview",
    dependencies=[Depends(reader)],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def preview(project_id: ProjectId, session: ReadSessionDep, path: RelPath) -> Response:
    """A PNG QC image of the workspace, served inline for display."""
    return png_response(get_project(session, project_id), path)
