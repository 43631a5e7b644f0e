"""Partition statuses from storage ids: ``done``, ``stale``, ``failed``, ``running``, ``missing``.

Pure functions of what :mod:`conductor.runs.snapshot` read: a partition is stale when a
parent partition it reads was materialised after it (a higher storage id).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

from conductor.graph import UNPARTITIONED, AssetInfo


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
