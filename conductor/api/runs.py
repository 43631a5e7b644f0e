"""Runs: launch a materialisation, list, get with progress, cancel, stream the log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from conductor.deps import Limit, Offset, ProjectId, RunId, SessionDep, reader, settings_of, writer
from conductor.responses import event_stream
from conductor.runs import service
from conductor.schemas import RunOut, RunPage, Selection
from conductor.settings import Token

router = APIRouter(tags=["runs"])


@router.post("/projects/{project_id}/runs", status_code=201, response_model=RunOut)
def launch_run(
    project_id: ProjectId,
    body: Selection,
    request: Request,
    session: SessionDep,
    token: Annotated[Token, Depends(writer)],
) -> dict:
    """Materialise a selection: assets (default all) for plates and wells (default all).

    ``stale_only`` keeps the partitions that are missing, failed or older than their
    upstream ("all stale"). The run executes as one Dagster run per partition and group
    of assets, in dependency order.
    """
    return service.launch_run(settings_of(request), session, project_id, body, token)


@router.get("/projects/{project_id}/runs", response_model=RunPage, dependencies=[Depends(reader)])
def list_runs(
    project_id: ProjectId, request: Request, session: SessionDep, limit: Limit = 50,
    offset: Offset = 0,
) -> dict:  # fmt: skip
    """Runs of a project, newest first (statuses refreshed; steps only in ``GET /runs/{id}``)."""
    return service.list_runs(settings_of(request), session, project_id, limit, offset)


@router.get("/runs/{run_id}", response_model=RunOut, dependencies=[Depends(reader)])
def read_run(run_id: RunId, request: Request, session: SessionDep) -> dict:
    """A run with per-step (Dagster run) status and the assets each one materialised."""
    return service.read_run(settings_of(request), session, run_id)


@router.post("/runs/{run_id}/cancel", response_model=RunOut, dependencies=[Depends(writer)])
def cancel_run(run_id: RunId, request: Request, session: SessionDep) -> dict:
    """Stop an active run (409 when it already finished)."""
    return service.cancel_run(settings_of(request), session, run_id)


@router.get(
    "/runs/{run_id}/logs",
    dependencies=[Depends(reader)],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def stream_run_logs(run_id: RunId, request: Request, session: SessionDep) -> StreamingResponse:
    """Server-sent events: each Dagster event (``event: log``), then ``event: end``."""
    factory = request.app.state.sessionmaker
    return event_stream(service.run_log_events(settings_of(request), session, factory, run_id))
