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
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Any

from conductor.graph import (
    UNPARTITIONED,
    AssetInfo,
    dynamic_partitions_needed,
    partition_values,
)
from conductor.models import Project, Run
from conductor.settings import Settings
from starrynight import storage

TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
NOT_APPLICABLE = "n/a"  # partition status of a well lacking the images an asset needs
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
    if run.status in TERMINAL:
        steps = _not_run(steps)
        if all(s["status"] in FINISHED or s["status"] == "NOT_RUN" for s in steps):
            with _OBSERVED_LOCK:
                if len(_OBSERVED) >= _OBSERVED_MAX:
                    _OBSERVED.pop(next(iter(_OBSERVED)))
                _OBSERVED[cache_key] = (run.status, run.message, _copy_steps(steps))
        return run.status, run.message, steps
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


# --- Partition statuses ------------------------------------------------------------------
#
# A 20-plate screen has ~10^4 partition keys per well-level asset, and Dagster's storage
# answers each per-asset question in 10-100 ms (SQLite opens an engine per query). So what
# Dagster knows is kept per instance in a snapshot, read lazily per asset and re-read
# only when the instance's token (newest event id, newest run update, run count) changes;
# staleness is then computed with dictionary look-ups.

SNAPSHOT_MAX_AGE = 60.0
"""Seconds a snapshot is trusted while its token is unchanged.

Covers what reading only the events newer than the last read cannot see: a wipe in the
Dagster UI deletes events, and on Postgres an event may commit after one with a higher id.
"""


@dataclass
class _AssetState:
    """What a snapshot knows about one asset; each part is read on first use."""

    # Event type -> partition key -> storage id of the newest such event (materialisation,
    # planned materialisation), and the instance's newest event id when that was read.
    newest: dict[str, dict[str, int]] = field(default_factory=dict)
    as_of: dict[str, int | None] = field(default_factory=dict)
    checked: set[str] = field(default_factory=set)  # keys whose Dagster status was read
    flags: dict[str, str] = field(default_factory=dict)  # key -> "running" or "failed"


@dataclass
class _Snapshot:
    """Dagster's partition facts of one instance, valid while ``token`` is unchanged."""

    token: tuple[Any, ...] | None = None
    born: float = 0.0
    assets: dict[str, _AssetState] = field(default_factory=dict)
    dynamic: dict[str, frozenset[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_SNAPSHOTS: dict[str, _Snapshot] = {}
_SNAPSHOTS_LOCK = threading.Lock()
_SNAPSHOTS_MAX = 64  # like the instances cache: one per project served


def _token(inst: Any) -> tuple[Any, ...] | None:
    """What changes whenever an asset event is stored or a run changes (None: unknown)."""
    newest_event = getattr(inst.event_log_storage, "get_maximum_record_id", None)
    if newest_event is None:
        return None
    # Run status events reach the same table, but a run can also change without one
    # (written straight to run storage, or deleted: its partitions stop being "running").
    records = inst.get_run_records(limit=1, order_by="update_timestamp", ascending=False)
    run = records[0] if records else None
    newest_run = (
        (run.dagster_run.run_id, run.dagster_run.status, run.update_timestamp) if run else None
    )
    return (newest_event(), newest_run, inst.get_runs_count())


def _snapshot(inst: Any) -> _Snapshot:
    """The instance's snapshot, brought up to date; the caller then holds its lock."""
    with _SNAPSHOTS_LOCK:
        home = str(inst.root_directory)
        snap = _SNAPSHOTS.get(home)
        if snap is None:
            if len(_SNAPSHOTS) >= _SNAPSHOTS_MAX:
                _SNAPSHOTS.pop(next(iter(_SNAPSHOTS)))
            snap = _SNAPSHOTS[home] = _Snapshot()
    snap.lock.acquire()
    try:
        token = _token(inst)
        now = time.monotonic()
        expired = token is None or snap.token is None or now - snap.born >= SNAPSHOT_MAX_AGE
        if expired:
            snap.assets.clear()
            snap.born = now
        elif token != snap.token:
            # Event ids are kept (events only accumulate: _newest_ids fetches what is
            # newer); what Dagster derives from run statuses is asked again.
            for state in snap.assets.values():
                state.checked, state.flags = set(), {}
        if expired or token != snap.token:
            snap.dynamic = {}
        snap.token = token
    except BaseException:
        snap.lock.release()
        raise
    return snap


def _newest_ids(snap: _Snapshot, inst: Any, info: AssetInfo, event_type: Any) -> dict[str, int]:
    """Partition key -> storage id of the newest ``event_type`` event of ``info``."""
    from dagster import AssetKey

    state = snap.assets.setdefault(info.name, _AssetState())
    newest = snap.token[0] if snap.token else None
    kind = event_type.value
    known = state.newest.get(kind)
    if known is not None and newest is not None and state.as_of.get(kind) == newest:
        return known
    key = AssetKey(info.name)
    if not info.dims:
        records = inst.fetch_materializations(key, limit=1).records
        ids = {UNPARTITIONED: records[0].storage_id} if records else {}
    else:
        after = state.as_of.get(kind) if known is not None else None
        fetched = inst.event_log_storage.get_latest_storage_id_by_partition(
            key, event_type, after_cursor=after
        )
        # A new dict, not an update: callers outside the lock may still read the old one.
        ids = {**(known or {}), **fetched} if after is not None else dict(fetched)
    state.newest[kind], state.as_of[kind] = ids, newest
    return ids


def _latest(snap: _Snapshot, inst: Any, info: AssetInfo) -> dict[str, int]:
    """Partition key -> storage id of the newest materialisation of ``info``."""
    from dagster import DagsterEventType

    return _newest_ids(snap, inst, info, DagsterEventType.ASSET_MATERIALIZATION)


def _flags(
    snap: _Snapshot,
    inst: Any,
    info: AssetInfo,
    module: str,
    keys: list[str],
    ids: dict[str, int],
) -> dict[str, str]:
    """``running`` or ``failed`` for the keys of ``keys`` that Dagster reports so.

    Dagster calls a partition running or failed only while its newest planned
    materialisation has no newer materialisation, so only those keys are asked about.
    """
    from dagster import AssetKey, AssetPartitionStatus, DagsterEventType

    state = snap.assets.setdefault(info.name, _AssetState())
    key = AssetKey(info.name)
    planned = _newest_ids(snap, inst, info, DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    ask = [
        k
        for k, planned_id in planned.items()
        if planned_id > ids.get(k, -1) and k not in state.checked
    ]
    if ask:
        shown = set(keys)
        ask = [k for k in ask if k in shown and _exists(snap, inst, info, k)]
    if ask:
        from conductor.graph import load_definitions

        partitions_def = load_definitions(module).resolve_asset_graph().get(key).partitions_def
        try:
            found = dict(inst.get_status_by_partition(key, ask, partitions_def) or {})
        except Exception:
            # Status cache unavailable for this definition: storage ids decide alone.
            found = {}
        for k in ask:
            if found.get(k) == AssetPartitionStatus.IN_PROGRESS:
                state.flags[k] = "running"
            elif found.get(k) == AssetPartitionStatus.FAILED:
                state.flags[k] = "failed"
        state.checked.update(ask)
    return {k: state.flags[k] for k in keys if k in state.flags}


def _exists(snap: _Snapshot, inst: Any, info: AssetInfo, key: str) -> bool:
    """Whether each dynamic dimension value of ``key`` is a known partition."""
    values = dict(zip(info.dims, key.split("|"), strict=True))
    for dim, def_name in info.dynamic:
        if def_name not in snap.dynamic:
            snap.dynamic[def_name] = frozenset(inst.get_dynamic_partitions(def_name))
        if values[dim] not in snap.dynamic[def_name]:
            return False
    return True


def _group_of(picked: tuple[Any, ...]) -> Callable[[Any], Any]:
    """A function of a dict (or of a list, by position) giving its values at ``picked``.

    One value is returned bare and several as a tuple, so both sides of a look-up
    that use the same ``picked`` agree.
    """
    if not picked:
        return lambda _: ()
    return itemgetter(*picked)


class UpstreamIndex:
    """Newest materialisation of a parent's partitions, grouped as a child reads them.

    A child partition reads every parent partition that agrees with it on the dimensions
    both have (a well reads its plate; a plate reads all its wells; an unpartitioned
    parent is read by all): see :func:`agrees`. Grouping the parent's ids by those
    dimensions makes "the newest parent partition this partition reads" one dictionary
    look-up instead of a scan of the parent's partitions.

    Parameters
    ----------
    child_dims, parent_dims : tuple of str
        Partition dimensions of the child and of the parent.
    latest : dict
        Parent partition key -> storage id of its newest materialisation.
    """

    def __init__(
        self, child_dims: tuple[str, ...], parent_dims: tuple[str, ...], latest: dict[str, int]
    ) -> None:
        shared = tuple(d for d in parent_dims if d in child_dims)
        self.parent_dims = parent_dims
        self._child_group = _group_of(shared)
        parent_group = _group_of(tuple(parent_dims.index(d) for d in shared))
        self.newest: dict[Any, int] = {}
        # Keys with fewer parts than dimensions agree on the missing ones: compared apart.
        self.short: list[tuple[str, int]] = []
        for key, storage_id in latest.items():
            parts = key.split("|") if parent_dims else []
            if len(parts) < len(parent_dims):
                self.short.append((key, storage_id))
                continue
            group = parent_group(parts)
            if storage_id > self.newest.get(group, -1):
                self.newest[group] = storage_id

    def newest_for(self, values: dict[str, str]) -> int:
        """Newest storage id among the parent partitions ``values`` reads (-1: none)."""
        best = self.newest.get(self._child_group(values), -1)
        for key, storage_id in self.short:
            if storage_id > best and agrees(self.parent_dims, key, values):
                best = storage_id
        return best


def agrees(parent_dims: tuple[str, ...], parent_key: str, values: dict[str, str]) -> bool:
    """Whether the child partition ``values`` reads the parent partition ``parent_key``.

    The definition :class:`UpstreamIndex` implements with look-ups: the two agree on
    every dimension both have (a parent key's missing parts agree with anything).
    """
    if not parent_dims:
        return True
    parent_values = dict(zip(parent_dims, parent_key.split("|"), strict=False))
    return all(parent_values.get(d, v) == v for d, v in values.items())


def partition_keys(dims: tuple[str, ...], all_values: list[dict[str, str]]) -> list[str]:
    """:func:`conductor.graph.partition_key` of each of ``all_values``, in bulk."""
    if not dims:
        return [UNPARTITIONED] * len(all_values)
    if len(dims) == 1:
        return [v[dims[0]] for v in all_values]
    pick = itemgetter(*dims)
    return ["|".join(pick(v)) for v in all_values]


def statuses_from_ids(
    info: AssetInfo,
    graph: tuple[AssetInfo, ...],
    all_values: list[dict[str, str]],
    latest: dict[str, dict[str, int]],
    flags: dict[str, str],
    keys: list[str] | None = None,
) -> dict[str, str]:
    """Status of each partition of ``info`` from storage ids and Dagster's run flags.

    Parameters
    ----------
    info : AssetInfo
        The asset.
    graph : tuple of AssetInfo
        Its parents that are in ``graph`` count as upstream; others are ignored.
    all_values : list of dict
        The partitions (dimension -> value) to give a status.
    latest : dict
        Asset -> partition key -> storage id of the newest materialisation, for ``info``
        and its parents.
    flags : dict
        Partition key -> ``running`` or ``failed`` (Dagster's word wins).
    keys : list of str, optional
        The partition keys of ``all_values`` when the caller has them already.

    Returns
    -------
    dict
        Partition key -> ``done``, ``stale`` (some parent partition it reads has a
        higher storage id), ``failed``, ``running`` or ``missing``.
    """
    dims_of = {a.name: a.dims for a in graph}
    ids = latest.get(info.name, {})
    upstream = [
        UpstreamIndex(info.dims, dims_of[p], latest.get(p, {}))
        for p in info.parents
        if p in dims_of
    ]
    if keys is None:
        keys = partition_keys(info.dims, all_values)
    out = {}
    for values, k in zip(all_values, keys, strict=True):
        if k in flags:
            out[k] = flags[k]
        elif k in ids:
            own = ids[k]
            out[k] = "stale" if any(u.newest_for(values) > own for u in upstream) else "done"
        else:
            out[k] = "missing"
    return out


def partition_statuses(
    settings: Settings,
    project_id: int,
    graph: tuple[AssetInfo, ...],
    plates: list[str],
    wells_by_plate: dict[str, list[str]],
    assets: Collection[str] | None = None,
) -> dict[str, dict[str, str]]:
    """Per asset, per partition key: ``done``, ``stale``, ``failed``, ``running``, ``missing``.

    ``stale``: materialised, but an upstream partition it reads was materialised later
    (a higher storage id). ``running`` and ``failed`` are Dagster's partition statuses.

    Parameters
    ----------
    settings : Settings
        Where the project's Dagster instance lives, and its code location.
    project_id : int
        The project.
    graph : tuple of AssetInfo
        Assets to report; a parent outside ``graph`` does not make a partition stale.
    plates, wells_by_plate
        The partitions to report.
    assets : collection of str, optional
        Report only these assets of ``graph`` (the others still count as upstream).

    Returns
    -------
    dict
        Asset -> partition key -> status.
    """
    inst = instance(settings, project_id)
    wanted = [a for a in graph if assets is None or a.name in assets]
    by_name = {a.name: a for a in graph}
    work = []
    snap = _snapshot(inst)
    try:
        latest: dict[str, dict[str, int]] = {}
        for info in wanted:
            for name in (info.name, *info.parents):
                if name in by_name and name not in latest:
                    latest[name] = _latest(snap, inst, by_name[name])
        for info in wanted:
            all_values = partition_values(info.dims, plates, wells_by_plate)
            keys = partition_keys(info.dims, all_values)
            flags: dict[str, str] = {}
            if info.dims:
                flags = _flags(snap, inst, info, settings.dagster_module, keys, latest[info.name])
            work.append((info, all_values, keys, flags))
    finally:
        snap.lock.release()
    return {
        info.name: statuses_from_ids(info, graph, all_values, latest, flags, keys)
        for info, all_values, keys, flags in work
    }


def mark_not_applicable(
    graph: tuple[AssetInfo, ...],
    statuses: dict[str, dict[str, str]],
    well_arms: dict[tuple[str, str], frozenset[str]],
) -> dict[str, dict[str, str]]:
    """``statuses`` with ``n/a`` for the plate x well keys whose well lacks the arms
    (``cp``, ``sbs``) the asset needs; ``statuses`` itself is left as it is.

    Dagster records such products as materialised with ``absent`` metadata (see
    ``dagster_defs.assets.wells``), which would otherwise read as ``done``.
    """
    out = dict(statuses)
    for info in graph:
        if not info.arms or len(info.dims) != 2 or info.name not in statuses:
            continue
        out[info.name] = {
            key: NOT_APPLICABLE
            if not info.applies_to(well_arms.get(tuple(key.split("|", 1)), frozenset()))
            else status
            for key, status in statuses[info.name].items()
        }
    return out
