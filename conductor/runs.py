"""Launching and observing Dagster runs of a project.

Each project has its own Dagster instance (``<data>/dagster/<project-id>``). A Conductor
run is a plan of Dagster runs (see :mod:`conductor.graph`) executed in order by one
launcher subprocess, so the service stays responsive. Status, progress and logs are read
from the instance's run storage and event log, never from the launcher's output.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from conductor.graph import UNPARTITIONED, AssetInfo, dynamic_partitions_needed, partition_values
from conductor.models import Project, Run
from conductor.settings import Settings
from starrynight import storage

TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
_DAGSTER_YAML = "telemetry:\n  enabled: false\n"
_PROCS: dict[int, subprocess.Popen] = {}
_PROCS_LOCK = threading.Lock()


def instance_dir(settings: Settings, project_id: int) -> Path:
    """Where the project's ``DAGSTER_HOME`` lives (a link when the instance was adopted)."""
    return settings.data_dir / "dagster" / str(project_id)


def dagster_home(settings: Settings, project_id: int) -> Path:
    """The project's ``DAGSTER_HOME``, created with its ``dagster.yaml`` on first use.

    ``CONDUCTOR_DAGSTER_YAML`` (e.g. Postgres run/event storage) is copied in when set;
    otherwise the instance keeps its storage in SQLite files in that folder.
    """
    home = instance_dir(settings, project_id)
    yaml = home / "dagster.yaml"
    if not yaml.exists():
        home.mkdir(parents=True, exist_ok=True)
        text = settings.dagster_yaml.read_text() if settings.dagster_yaml else _DAGSTER_YAML
        tmp = yaml.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(yaml)
    return home


def experiment_request_path(workspace_uri: str) -> str:
    """Where ``configure`` keeps the user's experiment choices (the experiment asset's input)."""
    return storage.join(workspace_uri, "experiment", "experiment.request.json")


def run_dir(settings: Settings, run_id: int) -> Path:
    """``<data>/runs/<run-id>``: the plan and the launcher's output."""
    return settings.data_dir / "runs" / str(run_id)


@lru_cache(maxsize=64)
def _instance(home: str) -> Any:
    from dagster import DagsterInstance

    return DagsterInstance.from_config(home)


def instance(settings: Settings, project_id: int) -> Any:
    """The project's Dagster instance (opened once per process)."""
    return _instance(str(dagster_home(settings, project_id)))


def project_env(settings: Settings, project: Project) -> dict[str, str]:
    """Environment of the launcher: the ``dagster_defs`` contract plus ``DAGSTER_HOME``."""
    home = dagster_home(settings, project.id)
    project_file = home / "project.json"
    # Exactly the fields dagster_defs accepts (it refuses unknown ones).
    data: dict[str, Any] = {
        "dataset_uri": project.dataset_uri,
        "workspace_uri": project.workspace_uri,
        "backend": project.backend,
        "backend_options": project.backend_options,
    }
    choices = experiment_request_path(project.workspace_uri)
    if storage.exists(choices):
        data["experiment_file"] = choices
    tmp = project_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(project_file)
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(home),
        STARRYNIGHT_PROJECT_FILE=str(project_file),
        STARRYNIGHT_DATASET_URI=project.dataset_uri,
        STARRYNIGHT_WORKSPACE_URI=project.workspace_uri,
        STARRYNIGHT_BACKEND=project.backend,
    )
    # The code location may live outside the installed packages (tests, a lab's repo).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
    return env


def launch(
    settings: Settings, project: Project, run: Run, graph: tuple[AssetInfo, ...]
) -> int | None:
    """Start the launcher for ``run.plan``; returns its pid (None for an empty plan)."""
    if not run.plan:
        return None
    folder = run_dir(settings, run.id)
    folder.mkdir(parents=True, exist_ok=True)
    plan = {
        "module": settings.dagster_module,
        "conductor_run": run.id,
        "steps": run.plan,
        "dynamic_partitions": dynamic_partitions_needed(graph, run.plan),
    }
    (folder / "plan.json").write_text(json.dumps(plan, indent=2))
    with open(folder / "launcher.log", "ab") as log:
        proc = subprocess.Popen(
            [settings.python or sys.executable, "-m", "conductor.launcher", "plan.json"],
            cwd=folder,
            env=project_env(settings, project),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: cancel signals the launcher and whatever it started.
            start_new_session=True,
        )
    with _PROCS_LOCK:
        _PROCS[proc.pid] = proc
    return proc.pid


def _is_launcher(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"conductor.launcher" in cmdline


def launcher_alive(pid: int | None) -> bool:
    """Whether the launcher ``pid`` is still running (reaps it when it is our child)."""
    if pid is None:
        return False
    with _PROCS_LOCK:
        proc = _PROCS.get(pid)
        if proc is not None:
            if proc.poll() is None:
                return True
            del _PROCS[pid]
            return False
    # Started by an earlier server process: check it is still the launcher.
    return _is_launcher(pid)


def _last_log_line(settings: Settings, run_id: int) -> str:
    path = run_dir(settings, run_id) / "launcher.log"
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""


def observe(settings: Settings, run: Run) -> tuple[str, str | None, list[dict[str, Any]]]:
    """Status, message and per-step progress of ``run`` from Dagster's run storage.

    Returns
    -------
    tuple
        ``(status, message, steps)``; steps carry ``status`` and ``materialized``.
    """
    from dagster import DagsterEventType

    inst = instance(settings, run.project_id)
    alive = run.status not in TERMINAL and launcher_alive(run.launcher_pid)
    steps = []
    for step in run.plan:
        dagster_run = inst.get_run_by_id(step["run_id"])
        if dagster_run is None:
            status = "PENDING" if alive else "NOT_RUN"
            done: list[str] = []
        else:
            status = dagster_run.status.value
            events = inst.all_logs(step["run_id"], of_type=DagsterEventType.ASSET_MATERIALIZATION)
            done = sorted({e.dagster_event.asset_key.to_user_string() for e in events})
        steps.append(
            {
                "dagster_run_id": step["run_id"],
                "assets": step["assets"],
                "partition": step["partition"],
                "status": status,
                "materialized": done,
            }
        )
    if run.status in TERMINAL:
        return run.status, run.message, _not_run(steps)
    statuses = [s["status"] for s in steps]
    message = None
    if not steps:
        status, message = "SUCCESS", "nothing to do: every selected partition is up to date"
    elif "FAILURE" in statuses:
        status = "FAILURE"
        failed = next(s for s in steps if s["status"] == "FAILURE")
        message = f"{','.join(failed['assets'])} failed for partition {failed['partition']}"
    elif "CANCELED" in statuses:
        status = "CANCELED"
    elif all(s == "SUCCESS" for s in statuses):
        status = "SUCCESS"
    elif not alive:
        status = "FAILURE"
        message = "launcher exited before the plan finished: " + _last_log_line(settings, run.id)
    elif any(s in ("STARTING", "STARTED", "SUCCESS") for s in statuses):
        status = "STARTED"
    else:
        status = "QUEUED"
    return status, message, _not_run(steps) if status in TERMINAL else steps


def _not_run(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A finished run's steps that never got a Dagster run will not get one now.
    for step in steps:
        if step["status"] == "PENDING":
            step["status"] = "NOT_RUN"
    return steps


def cancel(settings: Settings, run: Run, grace_seconds: float = 10.0) -> None:
    """Stop the launcher and mark its unfinished Dagster runs canceled.

    The launcher gets SIGTERM (Dagster stops the step and records the interruption as a
    failure), then SIGKILL after ``grace_seconds``; the runs that were unfinished are
    then reported canceled, which is what the user asked for.
    """
    inst = instance(settings, run.project_id)
    unfinished = []
    for step in run.plan:
        dagster_run = inst.get_run_by_id(step["run_id"])
        if dagster_run is None or not dagster_run.is_finished:
            unfinished.append(step["run_id"])
    pid = run.launcher_pid
    if pid is not None and launcher_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while launcher_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if launcher_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while launcher_alive(pid):
                time.sleep(0.05)
    for run_id in unfinished:
        dagster_run = inst.get_run_by_id(run_id)
        if dagster_run is not None and dagster_run.status.value != "CANCELED":
            inst.report_run_canceled(dagster_run, message="canceled through Conductor")


def _record(step: dict[str, Any], record: Any) -> dict[str, Any]:
    entry = record.event_log_entry
    event = entry.dagster_event
    asset = event.asset_key.to_user_string() if event is not None and event.asset_key else None
    return {
        "dagster_run_id": step["run_id"],
        "partition": step["partition"],
        "timestamp": datetime.fromtimestamp(entry.timestamp, UTC).isoformat(),
        "level": entry.level if isinstance(entry.level, str) else _level_name(entry.level),
        "event_type": event.event_type_value if event is not None else None,
        "step_key": entry.step_key,
        "asset": asset,
        "message": entry.user_message or (event.message if event is not None else "") or "",
    }


def _level_name(level: int) -> str:
    import logging

    return logging.getLevelName(level)


def stream_logs(
    settings: Settings,
    run: Run,
    current_status: Callable[[], str],
    poll_seconds: float = 0.5,
    max_seconds: float = 3600.0,
) -> Iterator[str]:
    """Server-sent events: every Dagster event of every step, then ``event: end``.

    ``current_status`` re-reads the run's status; the stream ends once it is terminal
    and every event has been sent (or after ``max_seconds``).
    """
    inst = instance(settings, run.project_id)
    cursors: dict[str, str | None] = {s["run_id"]: None for s in run.plan}
    sent = 0
    deadline = time.monotonic() + max_seconds
    while True:
        status = current_status()
        for step in run.plan:
            while True:
                conn = inst.get_records_for_run(step["run_id"], cursor=cursors[step["run_id"]])
                for record in conn.records:
                    sent += 1
                    yield f"id: {sent}\nevent: log\ndata: {json.dumps(_record(step, record))}\n\n"
                if conn.records:
                    cursors[step["run_id"]] = conn.cursor
                if not conn.has_more:
                    break
        if status in TERMINAL or time.monotonic() > deadline:
            yield f"event: end\ndata: {json.dumps({'status': status, 'events': sent})}\n\n"
            return
        time.sleep(poll_seconds)


def partition_statuses(
    settings: Settings,
    project_id: int,
    graph: tuple[AssetInfo, ...],
    plates: list[str],
    wells_by_plate: dict[str, list[str]],
) -> dict[str, dict[str, str]]:
    """Per asset, per partition key: ``done``, ``stale``, ``failed``, ``running``, ``missing``.

    ``stale``: materialised, but an upstream partition it reads was materialised later.
    """
    from dagster import AssetKey, AssetPartitionStatus, DagsterEventType

    from conductor.graph import load_definitions

    inst = instance(settings, project_id)
    asset_graph = load_definitions(settings.dagster_module).resolve_asset_graph()
    latest: dict[str, dict[str, int]] = {}
    known: dict[str, set[str]] = {}
    out: dict[str, dict[str, str]] = {}
    for info in graph:
        key = AssetKey(info.name)
        if info.dims:
            ids = dict(
                inst.event_log_storage.get_latest_storage_id_by_partition(
                    key, DagsterEventType.ASSET_MATERIALIZATION
                )
            )
        else:
            records = inst.fetch_materializations(key, limit=1).records
            ids = {UNPARTITIONED: records[0].storage_id} if records else {}
        latest[info.name] = ids
        all_values = partition_values(info.dims, plates, wells_by_plate)
        keys = [_key(info.dims, v) for v in all_values]
        dagster_status: dict[str, Any] = {}
        if info.dims:
            existing = [k for k in keys if _exists(inst, info, k, known)]
            partitions_def = asset_graph.get(key).partitions_def
            try:
                dagster_status = dict(
                    inst.get_status_by_partition(key, existing, partitions_def) or {}
                )
            except Exception:
                # Status cache unavailable for this definition: fall back to storage ids.
                dagster_status = {}
        statuses = {}
        for values, k in zip(all_values, keys, strict=True):
            st = dagster_status.get(k)
            if st == AssetPartitionStatus.IN_PROGRESS:
                statuses[k] = "running"
            elif st == AssetPartitionStatus.FAILED:
                statuses[k] = "failed"
            elif k in ids:
                newer = any(
                    pid > ids[k]
                    for parent in info.parents
                    for pk, pid in latest.get(parent, {}).items()
                    if _agrees_key(_parent_dims(graph, parent), pk, values)
                )
                statuses[k] = "stale" if newer else "done"
            else:
                statuses[k] = "missing"
        out[info.name] = statuses
    return out


def _key(dims: tuple[str, ...], values: dict[str, str]) -> str:
    from conductor.graph import partition_key

    return partition_key(dims, values)


def _exists(inst: Any, info: AssetInfo, key: str, known: dict[str, set[str]]) -> bool:
    # One query per dynamic partitions definition, not one per key: a 20-plate screen
    # has ~10^4 keys per asset.
    values = dict(zip(info.dims, key.split("|"), strict=True))
    dynamic = dict(info.dynamic)
    for d in info.dims:
        if d in dynamic and dynamic[d] not in known:
            known[dynamic[d]] = set(inst.get_dynamic_partitions(dynamic[d]))
    return all(values[d] in known[dynamic[d]] for d in info.dims if d in dynamic)


def _parent_dims(graph: tuple[AssetInfo, ...], name: str) -> tuple[str, ...]:
    return next(a.dims for a in graph if a.name == name)


def _agrees_key(dims: tuple[str, ...], key: str, values: dict[str, str]) -> bool:
    if not dims:
        return True
    parent_values = dict(zip(dims, key.split("|"), strict=False))
    return all(parent_values.get(d, v) == v for d, v in values.items())
