"""Runs as the API and the pages use them: launch, list, read, cancel, follow the log.

Database rows plus what Dagster says; errors are Conductor's own
(:mod:`conductor.errors`) or :class:`~starrynight.errors.UserError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from conductor import indexcache
from conductor.catalog import dataset_partitions, graph_of
from conductor.errors import Conflict, NotFound
from conductor.graph import build_plan
from conductor.models import Project, Run
from conductor.projects import get_project
from conductor.runs.logs import stream_logs
from conductor.runs.observe import TERMINAL, observe
from conductor.runs.partitions import mark_not_applicable, partition_statuses
from conductor.runs.process import cancel, launch
from conductor.schemas import Selection
from conductor.settings import Settings, Token
from starrynight.errors import UserError

NOTHING_TO_DO = "nothing to do: every selected partition is up to date"


def _progress(steps: list[dict], plan: list[dict]) -> dict[str, int]:
    return {
        "steps_total": len(plan),
        "steps_done": sum(s["status"] == "SUCCESS" for s in steps),
        "assets_total": sum(len(s["assets"]) for s in plan),
        "assets_materialized": sum(len(s["materialized"]) for s in steps),
    }


def run_out(run: Run, steps: list[dict]) -> dict[str, Any]:
    """The run as the API returns it (``RunOut``)."""
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
    status, message, steps = observe(settings, run)
    if status != run.status or message != run.message:
        run.status, run.message = status, message
        if status in TERMINAL and run.finished_at is None:
            run.finished_at = datetime.now(UTC)
        session.commit()
    return steps


def get_run(session: Session, run_id: int) -> Run:
    """The run, or :class:`NotFound`."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def _selected_partitions(
    body: Selection, plates: list[str], wells_by_plate: dict[str, list[str]]
) -> tuple[list[str], dict[str, list[str]]]:
    """The plates and wells ``body`` selects, checked against the index."""
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
    return chosen_plates, wells_by_plate


def launch_run(
    settings: Settings, session: Session, project_id: int, body: Selection, token: Token
) -> dict[str, Any]:
    """Plan the selection, store the run and start its launcher (see ``POST .../runs``)."""
    project = get_project(session, project_id)
    graph = graph_of(settings)
    plates, wells_by_plate = dataset_partitions(project)
    chosen_plates, wells_by_plate = _selected_partitions(body, plates, wells_by_plate)
    stale = None
    if body.stale_only:
        stale = partition_statuses(settings, project.id, graph, chosen_plates, wells_by_plate)
    plan = build_plan(graph, body.assets, chosen_plates, wells_by_plate, stale)
    from conductor.gates import refuse_closed

    refuse_closed(settings, project, graph, plan)
    run = Run(
        project_id=project.id,
        selection=body.model_dump(),
        plan=plan,
        status="QUEUED" if plan else "SUCCESS",
        message=None if plan else NOTHING_TO_DO,
        created_by=token.name,
        finished_at=None if plan else datetime.now(UTC),
    )
    session.add(run)
    session.commit()
    if plan:
        try:
            run.launcher_pid = launch(settings, project, run, graph)
        except OSError as exc:
            run.status, run.message = "FAILURE", f"could not start the launcher: {exc}"
            run.finished_at = datetime.now(UTC)
        session.commit()
    return run_out(run, refresh(settings, session, run))


def list_runs(
    settings: Settings, session: Session, project_id: int, limit: int, offset: int
) -> dict[str, Any]:
    """A page of the project's runs, newest first (active ones refreshed; no steps)."""
    get_project(session, project_id)
    where = Run.project_id == project_id
    total = session.scalar(select(func.count()).select_from(Run).where(where)) or 0
    query = select(Run).where(where).order_by(Run.id.desc()).limit(limit).offset(offset)
    items = []
    for run in session.scalars(query):
        if run.status not in TERMINAL:
            refresh(settings, session, run)
        items.append(run_out(run, []))
    return {"total": total, "limit": limit, "offset": offset, "items": items}


def read_run(settings: Settings, session: Session, run_id: int) -> dict[str, Any]:
    """A run with per-step status and the assets each step materialised."""
    run = get_run(session, run_id)
    return run_out(run, refresh(settings, session, run))


def cancel_run(settings: Settings, session: Session, run_id: int) -> dict[str, Any]:
    """Stop an active run (:class:`Conflict` when it already finished)."""
    run = get_run(session, run_id)
    refresh(settings, session, run)
    if run.status in TERMINAL:
        raise Conflict(f"run {run_id} already finished with {run.status}")
    cancel(settings, run)
    run.status, run.message = "CANCELED", "canceled through Conductor"
    run.finished_at = datetime.now(UTC)
    session.commit()
    return run_out(run, refresh(settings, session, run))


def run_log_events(
    settings: Settings, session: Session, factory: sessionmaker[Session], run_id: int
) -> Iterator[str]:
    """Server-sent events of the run; each poll re-reads its status in a fresh session."""
    run = get_run(session, run_id)

    def status() -> str:
        with factory() as s:
            fresh = s.get(Run, run_id)
            if fresh is None:
                return "CANCELED"
            refresh(settings, s, fresh)
            return fresh.status

    return stream_logs(settings, run, status)


def runs_touching(session: Session, project: Project, keys: set[str | None]) -> list[Run]:
    """The project's latest runs (of the last 200) whose plan has one of ``keys``."""
    query = select(Run).where(Run.project_id == project.id).order_by(Run.id.desc()).limit(200)
    return [r for r in session.scalars(query) if any(s["partition"] in keys for s in r.plan)]


def project_partition_statuses(
    settings: Settings, session: Session, project_id: int
) -> dict[str, Any]:
    """Every asset's partition statuses over the project's index (``PartitionStatusOut``)."""
    project = get_project(session, project_id)
    graph = graph_of(settings)
    plates, wells = dataset_partitions(project)
    statuses = partition_statuses(settings, project.id, graph, plates, wells)
    statuses = mark_not_applicable(graph, statuses, indexcache.well_arms(project.workspace_uri))
    return {
        "plates": plates,
        "wells": wells,
        "assets": statuses,
        "dimensions": {a.name: list(a.dims) for a in graph},
    }
