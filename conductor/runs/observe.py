"""A run's status and per-step progress, read from Dagster's run storage."""

from __future__ import annotations

import threading
from typing import Any

from conductor.models import Run
from conductor.runs.instances import instance
from conductor.runs.process import last_log_line, launcher_alive
from conductor.settings import Settings

TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}  # Conductor run statuses that are final
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}  # Dagster run statuses that never change
_OBSERVED: dict[tuple[Any, ...], tuple[str, str | None, list[dict[str, Any]]]] = {}
_OBSERVED_MAX = 256
_OBSERVED_LOCK = threading.Lock()
_BATCH = 500  # run ids per query: well under every database's parameter limit


def dagster_run_records(inst: Any, run_ids: list[str]) -> dict[str, Any]:
    """Run id -> Dagster ``RunRecord`` for the ids that exist, a few queries in all."""
    from dagster import RunsFilter

    out = {}
    for i in range(0, len(run_ids), _BATCH):
        for record in inst.get_run_records(RunsFilter(run_ids=run_ids[i : i + _BATCH])):
            out[record.dagster_run.run_id] = record
    return out


def _materialized(inst: Any, run: Run, run_ids: set[str]) -> dict[str, set[str]]:
    """Dagster run id -> assets it materialised, for the runs in ``run_ids``.

    Read per asset from the cross-run asset index: on SQLite each Dagster run has its own
    event file, and opening one costs ~50 ms the first time (a schema check).
    """
    from dagster import AssetKey, AssetRecordsFilter

    out: dict[str, set[str]] = {}
    assets = sorted({a for s in run.plan if s["run_id"] in run_ids for a in s["assets"]})
    # Every step's Dagster run starts after the Conductor run was created; the margin
    # only guards against clock rounding.
    since = run.created_at.timestamp() - 60 if run.created_at else None
    for asset in assets:
        records_filter = AssetRecordsFilter(asset_key=AssetKey(asset), after_timestamp=since)
        cursor = None
        while True:
            page = inst.fetch_materializations(records_filter, limit=1000, cursor=cursor)
            for record in page.records:
                if record.run_id in run_ids:
                    out.setdefault(record.run_id, set()).add(asset)
            if not page.has_more:
                break
            cursor = page.cursor
    return out


def _copy_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**s, "assets": list(s["assets"]), "materialized": list(s["materialized"])} for s in steps
    ]


def _step_statuses(inst: Any, run: Run, alive: bool) -> list[dict[str, Any]]:
    """Each plan step with its Dagster run's status and the assets it materialised."""
    records = dagster_run_records(inst, [s["run_id"] for s in run.plan])
    materialized = _materialized(inst, run, set(records)) if records else {}
    steps = []
    for step in run.plan:
        record = records.get(step["run_id"])
        if record is None:
            status = "PENDING" if alive else "NOT_RUN"
        else:
            status = record.dagster_run.status.value
        steps.append(
            {
                "dagster_run_id": step["run_id"],
                "assets": step["assets"],
                "partition": step["partition"],
                "status": status,
                "materialized": sorted(materialized.get(step["run_id"], ())),
            }
        )
    return steps


def _run_status(
    settings: Settings, run: Run, steps: list[dict[str, Any]], alive: bool
) -> tuple[str, str | None]:
    """The status (and message) of an active run, from its steps' statuses."""
    statuses = [s["status"] for s in steps]
    if not steps:
        return "SUCCESS", "nothing to do: every selected partition is up to date"
    if "FAILURE" in statuses:
        failed = next(s for s in steps if s["status"] == "FAILURE")
        return "FAILURE", f"{','.join(failed['assets'])} failed for partition {failed['partition']}"
    if "CANCELED" in statuses:
        return "CANCELED", None
    if all(s == "SUCCESS" for s in statuses):
        return "SUCCESS", None
    if not alive:
        return "FAILURE", "launcher exited before the plan finished: " + last_log_line(
            settings, run.id
        )
    if any(s in ("STARTING", "STARTED", "SUCCESS") for s in statuses):
        return "STARTED", None
    return "QUEUED", None


def observe(settings: Settings, run: Run) -> tuple[str, str | None, list[dict[str, Any]]]:
    """Status, message and per-step progress of ``run`` from Dagster's run storage.

    A finished run whose Dagster runs have all finished cannot change any more: its
    answer is kept (per process), so viewing old runs costs no Dagster queries.

    Returns
    -------
    tuple
        ``(status, message, steps)``; steps carry ``status`` and ``materialized``.
    """
    inst = instance(settings, run.project_id)
    cache_key = (str(inst.root_directory), run.id, run.status, run.message, len(run.plan))
    if run.status in TERMINAL:
        with _OBSERVED_LOCK:
            known = _OBSERVED.get(cache_key)
        if known is not None:
            return known[0], known[1], _copy_steps(known[2])
    alive = run.status not in TERMINAL and launcher_alive(run.launcher_pid)
    steps = _step_statuses(inst, run, alive)
    if run.status in TERMINAL:
        steps = _not_run(steps)
        if all(s["status"] in FINISHED or s["status"] == "NOT_RUN" for s in steps):
            with _OBSERVED_LOCK:
                if len(_OBSERVED) >= _OBSERVED_MAX:
                    _OBSERVED.pop(next(iter(_OBSERVED)))
                _OBSERVED[cache_key] = (run.status, run.message, _copy_steps(steps))
        return run.status, run.message, steps
    status, message = _run_status(settings, run, steps, alive)
    return status, message, _not_run(steps) if status in TERMINAL else steps


def step_seconds(settings: Settings, project_id: int, run_ids: list[str]) -> dict[str, float]:
    """Dagster run id -> seconds from its start to its end, for runs that ended.

    From the run records (one query per batch of ids), not the per-run event logs.
    """
    inst = instance(settings, project_id)
    out = {}
    for run_id, record in dagster_run_records(inst, run_ids).items():
        if record.start_time and record.end_time:
            out[run_id] = round(record.end_time - record.start_time, 2)
    return out


def _not_run(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A finished run's steps that never got a Dagster run will not get one now.
    for step in steps:
        if step["status"] == "PENDING":
            step["status"] = "NOT_RUN"
    return steps
