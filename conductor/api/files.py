"""Files of a project's workspace: list, download, preview PNG QC images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse, Response
from sqlalchemy.orm import Session

from conductor import files
from conductor.api.common import ProjectId, get_project
from conductor.app import get_read_session
from conductor.auth import reader
from conductor.models import Project
from conductor.schemas import FileList
from starrynight import storage

router = APIRouter(prefix="/projects/{project_id}/files", tags=["files"])
SessionDep = Annotated[Session, Depends(get_read_session)]
RelPath = Annotated[str, Query(max_length=1000, description="Path relative to the workspace.")]


@router.get("", response_model=FileList, dependencies=[Depends(reader)])
def list_files(project_id: ProjectId, session: SessionDep, prefix: RelPath = "") -> dict:
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
def download(project_id: ProjectId, session: SessionDep, path: RelPath) -> Response:
    """Download one file of the workspace."""
    project = get_project(session, project_id)
    try:
        uri = files.require_file(project.workspace_uri, path)
    except FileNotFoundError as exc:
        raise HTTPException(404, f"path {path!r}: no such file in the workspace") from exc
    name = Path(uri).name
    if storage.is_s3(uri):
        return Response(
            storage.read_bytes(uri),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return FileResponse(uri, filename=name, media_type="application/octet-stream")


@router.get(
    "/preview",
    dependencies=[Depends(reader)],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def preview(project_id: ProjectId, session: SessionDep, path: RelPath) -> Response:
    """A PNG QC image of the workspace, served inline for display."""
    return png_response(get_project(session, project_id), path)


def png_response(project: Project, path: str) -> Response:
    """A PNG of the project's workspace served inline (404 when there is no such file)."""
    try:
        data = files.read_png(project.workspace_uri, path)
    except FileNotFoundError as exc:
        raise HTTPException(404, f"path {path!r}: no such file in the workspace") from exc
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})
