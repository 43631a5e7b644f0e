"""Per asset, per partition: the status a plate map shows (Dagster's facts, staleness, n/a)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from conductor.graph import AssetInfo, partition_values
from conductor.runs import snapshot
from conductor.runs.instances import instance, instance_exists
from conductor.runs.staleness import partition_keys, statuses_from_ids
from conductor.settings import Settings

NOT_APPLICABLE = "n/a"  # partition status of a well lacking the images an asset needs


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
        Asset -> partition key -> status. Before the project's Dagster instance exists
        (nothing was ever run) every partition is ``missing``; reading does not create it.
    """
    wanted = [a for a in graph if assets is None or a.name in assets]
    if not instance_exists(settings, project_id):
        return {
            info.name: statuses_from_ids(
                info, graph, partition_values(info.dims, plates, wells_by_plate), {}, {}
            )
            for info in wanted
        }
    inst = instance(settings, project_id)
    work = _read_facts(settings, inst, graph, wanted, plates, wells_by_plate)
    return {
        info.name: statuses_from_ids(info, graph, all_values, latest, flags, keys)
        for info, all_values, keys, latest, flags in work
    }


def _read_facts(
    settings: Settings,
    inst: Any,
    graph: tuple[AssetInfo, ...],
    wanted: list[AssetInfo],
    plates: list[str],
    wells_by_plate: dict[str, list[str]],
) -> list[tuple[AssetInfo, list[dict[str, str]], list[str], dict[str, dict[str, int]], dict]]:
    """What Dagster knows for each wanted asset, read under the instance snapshot's lock:
    its partitions, their keys, the newest storage ids (its own and its parents') and
    Dagster's running/failed flags."""
    by_name = {a.name: a for a in graph}
    work = []
    snap = snapshot.open_snapshot(inst)
    try:
        latest: dict[str, dict[str, int]] = {}
        for info in wanted:
            for name in (info.name, *info.parents):
                if name in by_name and name not in latest:
                    latest[name] = snapshot.latest(snap, inst, by_name[name])
        for info in wanted:
            all_values = partition_values(info.dims, plates, wells_by_plate)
            keys = partition_keys(info.dims, all_values)
            flags: dict[str, str] = {}
            if info.dims:
                flags = snapshot.flags(
                    snap, inst, info, settings.dagster_module, keys, latest[info.name]
                )
            work.append((info, all_values, keys, latest, flags))
    finally:
        snap.lock.release()
    return work


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
