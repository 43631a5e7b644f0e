"""What Dagster knows about a project's partitions, kept per instance in a snapshot.

A 20-plate screen has ~10^4 partition keys per well-level asset, and Dagster's storage
answers each per-asset question in 10-100 ms (SQLite opens an engine per query). So what
Dagster knows is kept per instance in a snapshot, read lazily per asset and re-read
only when the instance's token (newest event id, newest run update, run count) changes;
staleness is then computed with dictionary look-ups (:mod:`conductor.runs.staleness`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from conductor.graph import UNPARTITIONED, AssetInfo, load_definitions

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
class Snapshot:
    """Dagster's partition facts of one instance, valid while ``token`` is unchanged."""

    token: tuple[Any, ...] | None = None
    born: float = 0.0
    assets: dict[str, _AssetState] = field(default_factory=dict)
    dynamic: dict[str, frozenset[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_SNAPSHOTS: dict[str, Snapshot] = {}
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


def open_snapshot(inst: Any) -> Snapshot:
    """The instance's snapshot, brought up to date; the caller then holds its lock."""
    with _SNAPSHOTS_LOCK:
        home = str(inst.root_directory)
        snap = _SNAPSHOTS.get(home)
        if snap is None:
            if len(_SNAPSHOTS) >= _SNAPSHOTS_MAX:
                _SNAPSHOTS.pop(next(iter(_SNAPSHOTS)))
            snap = _SNAPSHOTS[home] = Snapshot()
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


def _newest_ids(snap: Snapshot, inst: Any, info: AssetInfo, event_type: Any) -> dict[str, int]:
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


def latest(snap: Snapshot, inst: Any, info: AssetInfo) -> dict[str, int]:
    """Partition key -> storage id of the newest materialisation of ``info``."""
    from dagster import DagsterEventType

    return _newest_ids(snap, inst, info, DagsterEventType.ASSET_MATERIALIZATION)


def flags(
    snap: Snapshot,
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


def _exists(snap: Snapshot, inst: Any, info: AssetInfo, key: str) -> bool:
    """Whether each dynamic dimension value of ``key`` is a known partition."""
    values = dict(zip(info.dims, key.split("|"), strict=True))
    for dim, def_name in info.dynamic:
        if def_name not in snap.dynamic:
            snap.dynamic[def_name] = frozenset(inst.get_dynamic_partitions(def_name))
        if values[dim] not in snap.dynamic[def_name]:
            return False
    return True
