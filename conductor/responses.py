"""Responses that are the same from the API and from the pages: files, event streams."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fastapi.responses import FileResponse, Response, StreamingResponse

from conductor import files
from conductor.models import Project
from starrynight import storage


def download_response(project: Project, path: str) -> Response:
    """One file of the project's workspace as an attachment."""
    uri = files.require_file(project.workspace_uri, path)
    name = Path(uri).name
    if storage.is_s3(uri):
        return Response(
            storage.read_bytes(uri),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return FileResponse(uri, filename=name, media_type="application/octet-stream")


def png_response(project: Project, path: str) -> Response:
    """A PNG of the project's workspace served inline (404 when there is no such file)."""
    data = files.read_png(project.workspace_uri, path)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


def event_stream(events: Iterator[str]) -> StreamingResponse:
    """Server-sent events, not cached by proxies."""
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
