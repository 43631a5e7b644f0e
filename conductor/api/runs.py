"""Runs: launch a materialisation, list, get with progress, cancel, stream the log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conductor import runs
from conductor.api.common import (
    Limit,
    Offset,
    ProjectId,
    RunId,
    dataset_partitions,
    get_project,
    graph_of,
    settings_of,
)
from conductor.app import get_session
from conductor.auth import reader, writer
from conductor.graph import build_plan
from conductor.models import Run
from conductor.schemas import RunOut, RunPage, Selection
from conductor.settings import Settings, Token
from starrynight.errors import UserError

router = APIRouter(tags=["runs"])
SessionDep = Annotated[Session, Depends(get_session)]


def _progress(steps: list[dict], plan: list[dict]) -> dict[str, int]:
    return {
        "steps_total": len(plan),
        "steps_done": sum(s["status"] == "SUCCESS" for s in steps),
        "assets_total": sum(len(s["assets"]) for s in plan),
        "assets_materialized": sum(len(s["materialized"]) for s in steps),
    }


def _out(run: Run, steps: list[dict]) -> dict:
    return {
        "id": run.id,
        "project_id": run.project_id,
        "selection": run.selection,
        "status": run.status,
        "message": run.message,
        "created_by": run.created_by,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "steps": steps,
        "progress": _progress(steps, run.plan) if steps else {"steps_total": len(run.plan)},
    }


def refresh(settings: Settings, session: Session, run: Run) -> list[dict]:
    """Re-read the run from Dagster; freeze the status once it is terminal."""
    status, message, steps = runs.observe(settings, run)
    if status != run.status or message != run.message:
        run.status, run.message = status, message
        if status in runs.TERMINAL and run.finished_at is None:
            run.finished_at = datetime.now(UTC)
        session.commit()
    return steps


def _get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} not found")
    return run


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
    settings = settings_of(request)
    project = get_project(session, project_id)
    graph = graph_of(settings)
    plates, wells_by_plate = dataset_partitions(project)
    unknown = [p for p in body.plates if p not in plates]
    if unknown:
        raise UserError(f"plates: unknown {', '.join(unknown)}; known: {', '.join(plates)}")
    chosen_plates = body.plates or plates
    if body.wells:
        known = {w for p in chosen_plates for w in wells_by_plate[p]}
        missing = [w for w in body.wells if w not in known]
        if missing:
            raise UserError(
                f"wells: {', '.join(missing)} not in plate(s) {', '.join(chosen_plates)}; "
                f"known: {', '.join(sorted(known))}"
            )
        wells_by_plate = {p: [w for w in ws if w in body.wells] for p, ws in wells_by_plate.items()}
    stale = None
    if body.stale_only:
        stale = runs.partition_statuses(settings, project.id, graph, chosen_plates, wells_by_plate)
    plan = build_plan(graph, body.assets, chosen_plates, wells_by_plate, stale)
    run = Run(
        project_id=project.id,
        selection=body.model_dump(),
        plan=plan,
        status="QUEUED" if plan else "SUCCESS",
        message=None if plan else "nothing to do: every selected partition is up to date",
        created_by=token.name,
        finished_at=None if plan else datetime.now(UTC),
    )
    session.add(run)
    session.commit()
    if plan:
        try:
            run.launcher_pid = runs.launch(settings, project, run, graph)
        except OSError as exc:
            run.status, run.message = "FAILURE", f"could not start the launcher: {exc}"
            run.finished_at = datetime.now(UTC)
        session.commit()
    return _out(run, refresh(settings, session, run))


@router.get("/projects/{project_id}/runs", response_model=RunPage, dependencies=[Depends(reader)])
def list_runs(
    project_id: ProjectId, request: Request, session: SessionDep, limit: Limit = 50,
    offset: Offset = 0,
) -> dict:  # fmt: skip
    """Runs of a project, newest first (statuses refreshed; steps only in ``GET /runs/{id}``)."""
    get_project(session, project_id)
    where = Run.project_id == project_id
    total = session.scalar(select(func.count()).select_from(Run).where(where)) or 0
    query = select(Run).where(where).order_by(Run.id.desc()).limit(limit).offset(offset)
    items = []
    for run in session.scalars(query):
        if run.status not in runs.TERMINAL:
            refresh(settings_of(request), session, run)
        items.append(_out(run, []))
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/runs/{run_id}", response_model=RunOut, dependencies=[Depends(reader)])
def read_run(run_id: RunId, request: Request, session: SessionDep) -> dict:
    """A run with per-step (Dagster run) status and the assets each one materialised."""
    run = _get_run(session, run_id)
    return _out(run, refresh(settings_of(request), session, run))


@router.post("/runs/{run_id}/cancel", response_model=RunOut, dependencies=[Depends(writer)])
def cancel_run(run_id: RunId, request: Request, session: SessionDep) -> dict:
    """Stop an active run (409 when it already finished)."""
    settings = settings_of(request)
    run = _get_run(session, run_id)
    refresh(settings, session, run)
    if run.status in runs.TERMINAL:
        raise HTTPException(409, f"run {run_id} already finished with {run.status}")
    runs.cancel(settings, run)
    run.status, run.message = "CANCELED", "canceled through Conductor"
    run.finished_at = datetime.now(UTC)
    session.commit()
    return _out(run, refresh(settings, session, run))


@router.get(
    "/runs/{run_id}/logs",
    dependencies=[Depends(reader)],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def stream_run_logs(run_id: RunId, request: Request, session: SessionDep) -> StreamingResponse:
    """Server-sent events: each Dagster event (``event: log``), then ``event: end``."""
    settings = settings_of(request)
    run = _get_run(session, run_id)
    factory = request.app.state.sessionmaker

    def status() -> str:
        with factory() as s:
            fresh = s.get(Run, run_id)
            if fresh is None:
                return "CANCELED"
            refresh(settings, s, fresh)
            return fresh.status

    return StreamingResponse(
        runs.stream_logs(settings, run, status),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )
