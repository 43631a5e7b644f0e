"""The asset graph as Conductor sees it: names, partition dimensions, order, plans.

Conductor never executes assets; it turns a user's selection ("illum for plate P",
"everything for plate P well A1", "all stale") into an ordered plan of Dagster runs,
each one partition key of assets sharing a partitions definition, for the launcher.
"""

from __future__ import annotations

import importlib
import itertools
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from starrynight.errors import UserError

UNPARTITIONED = "default"


@dataclass(frozen=True)
class AssetInfo:
    """One materialisable asset.

    Attributes
    ----------
    name : str
        Asset key (single component).
    dims : tuple of str
        Partition dimensions in key order: ``()``, ``("plate",)`` or ``("plate", "well")``.
    parents : tuple of str
        Upstream assets that are materialisable in this graph.
    dynamic : dict
        Dimension name -> Dagster dynamic partitions definition name.
    arms : tuple of str
        Arms (``cp``, ``sbs``) whose images a well needs for this asset to apply to it,
        from the asset's ``starrynight/arms`` metadata (empty: every well).
    """

    name: str
    dims: tuple[str, ...]
    parents: tuple[str, ...]
    dynamic: tuple[tuple[str, str], ...]
    arms: tuple[str, ...] = ()

    def applies_to(self, well_arms: frozenset[str]) -> bool:
        """Whether a well holding images of ``well_arms`` can have this asset."""
        return set(self.arms) <= well_arms


@lru_cache(maxsize=8)
def load_definitions(spec: str) -> Any:
    """Import ``module`` or ``module:attribute`` (default attribute ``defs``).

    Raises
    ------
    UserError
        The module cannot be imported or holds no ``Definitions``.
    """
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"STARRYNIGHT_DAGSTER_MODULE={spec}: cannot import ({exc})") from exc
    defs = getattr(module, attr or "defs", None)
    if defs is None:
        raise UserError(f"STARRYNIGHT_DAGSTER_MODULE={spec}: no attribute {attr or 'defs'!r}")
    return defs


def _dims(partitions_def: Any) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    import dagster as dg

    if partitions_def is None:
        return (), ()
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        dims = tuple(partitions_def.partition_dimension_names)
        dynamic = tuple(
            (d, pd.name)
            for d in dims
            if isinstance(pd := partitions_def.get_partitions_def_for_dimension(d),
                          dg.DynamicPartitionsDefinition)
        )  # fmt: skip
        return dims, dynamic
    name = getattr(partitions_def, "name", None) or "plate"
    dynamic = ((name, name),) if isinstance(partitions_def, dg.DynamicPartitionsDefinition) else ()
    return (name,), dynamic


@lru_cache(maxsize=8)
def asset_graph(spec: str) -> tuple[AssetInfo, ...]:
    """Materialisable assets of the code location ``spec``, in a run-friendly order.

    Topological, and among assets ready at the same time those sharing the previous
    asset's partition dimensions come first, so a plan needs few Dagster runs.
    """
    graph = load_definitions(spec).resolve_asset_graph()
    nodes = {}
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if node.is_materializable:
            nodes[key.to_user_string()] = node
    infos = {}
    for name, node in nodes.items():
        dims, dynamic = _dims(node.partitions_def)
        parents = tuple(p.to_user_string() for p in node.parent_keys if p.to_user_string() in nodes)
        arms = tuple(a for a in str(node.metadata.get("starrynight/arms") or "").split(",") if a)
        infos[name] = AssetInfo(name, dims, parents, dynamic, arms)
    ordered: list[AssetInfo] = []
    done: set[str] = set()
    while len(ordered) < len(infos):
        ready = [a for a in infos.values() if a.name not in done and set(a.parents) <= done]
        last = ordered[-1].dims if ordered else ()
        ready.sort(key=lambda a: (a.dims != last, len(a.dims)))
        ordered.append(ready[0])
        done.add(ready[0].name)
    return tuple(ordered)


def partition_key(dims: tuple[str, ...], values: dict[str, str]) -> str:
    """Dagster's key for ``values`` (``"Plate1|A1"`` for plate x well)."""
    if not dims:
        return UNPARTITIONED
    return "|".join(values[d] for d in dims)


def partition_values(
    dims: tuple[str, ...], plates: list[str], wells_by_plate: dict[str, list[str]]
) -> list[dict[str, str]]:
    """Every combination of dimension values for ``dims`` over the given plates/wells."""
    if not dims:
        return [{}]
    out = []
    seen: set[tuple[str, ...]] = set()  # a list lookup here was quadratic in the wells
    for plate in plates:
        per_dim = {"plate": [plate], "well": wells_by_plate.get(plate, [])}
        unknown = [d for d in dims if d not in per_dim]
        if unknown:
            raise UserError(f"partition dimension {unknown[0]!r}: only plate and well are known")
        lists = [per_dim[d] for d in dims]
        for combo in itertools.product(*lists):
            if combo not in seen:
                seen.add(combo)
                out.append(dict(zip(dims, combo, strict=True)))
    return out


def _agrees(a: dict[str, str], b: dict[str, str]) -> bool:
    return all(a[d] == b[d] for d in a.keys() & b.keys())


def build_plan(
    graph: tuple[AssetInfo, ...],
    assets: list[str],
    plates: list[str],
    wells_by_plate: dict[str, list[str]],
    stale: dict[str, dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Ordered Dagster runs that materialise ``assets`` for the given plates and wells.

    Parameters
    ----------
    graph : tuple of AssetInfo
        From :func:`asset_graph`.
    assets : list of str
        Asset names; empty means all.
    plates, wells_by_plate
        Partitions to cover (already filtered to the user's selection).
    stale : dict, optional
        Partition status per asset (:func:`conductor.runs.partition_statuses`). When
        given, only partitions not ``done`` are kept, plus everything downstream of a
        kept partition.

    Returns
    -------
    list of dict
        Steps ``{"run_id", "assets", "partition", "dims", "values"}`` in execution order.

    Raises
    ------
    UserError
        An unknown asset name (the message lists the known ones).
    """
    known = [a.name for a in graph]
    unknown = [a for a in assets if a not in known]
    if unknown:
        raise UserError(f"assets: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [a for a in graph if not assets or a.name in assets]
    dims_of = {a.name: a.dims for a in graph}
    included = _included_partitions(chosen, dims_of, plates, wells_by_plate, stale)
    kept = {
        name: {tuple(v[d] for d in dims_of[name]) for v in values}
        for name, values in included.items()
    }
    return _steps(chosen, kept, plates, wells_by_plate)


def _included_partitions(
    chosen: list[AssetInfo],
    dims_of: dict[str, tuple[str, ...]],
    plates: list[str],
    wells_by_plate: dict[str, list[str]],
    stale: dict[str, dict[str, str]] | None,
) -> dict[str, list[dict[str, str]]]:
    """Asset -> the partitions to materialise: all, or with ``stale`` those not done and
    those reading a partition that is redone."""
    included: dict[str, list[dict[str, str]]] = {}
    for info in chosen:
        # Each kept parent's partitions by the dimensions this asset shares with it: "a
        # partition this one reads is redone" (_agrees) is then a set look-up, not a scan
        # (a 20-plate screen has 7,680 partitions per asset).
        redone = []
        for parent in info.parents:
            if parent in included:
                shared = tuple(d for d in dims_of[parent] if d in info.dims)
                groups = {tuple(v[d] for d in shared) for v in included[parent]}
                redone.append((shared, groups))
        keep = []
        for values in partition_values(info.dims, plates, wells_by_plate):
            if stale is not None:
                status = stale.get(info.name, {}).get(partition_key(info.dims, values), "missing")
                upstream_redone = any(
                    tuple(values[d] for d in shared) in groups for shared, groups in redone
                )
                if status == "done" and not upstream_redone:
                    continue
            keep.append(values)
        included[info.name] = keep
    return included


def _steps(
    chosen: list[AssetInfo],
    kept: dict[str, set[tuple[str, ...]]],
    plates: list[str],
    wells_by_plate: dict[str, list[str]],
) -> list[dict[str, Any]]:
    """One Dagster run per partition of each run of assets sharing their dimensions."""
    steps: list[dict[str, Any]] = []
    for dims, group in itertools.groupby(chosen, key=lambda a: a.dims):
        members = list(group)
        for values in partition_values(dims, plates, wells_by_plate):
            combo = tuple(values[d] for d in dims)
            names = [a.name for a in members if combo in kept[a.name]]
            if names:
                steps.append(
                    {
                        "run_id": str(uuid.uuid4()),
                        "assets": names,
                        "partition": partition_key(dims, values) if dims else None,
                        "values": values,
                    }
                )
    return steps


def dynamic_partitions_needed(
    graph: tuple[AssetInfo, ...], steps: list[dict[str, Any]]
) -> dict[str, list[str]]:
    """Dynamic partitions definition name -> keys the plan's steps need to exist."""
    by_name = {a.name: a for a in graph}
    need: dict[str, dict[str, None]] = {}  # dicts as ordered sets
    for step in steps:
        for asset in step["assets"]:
            for dim, def_name in by_name[asset].dynamic:
                need.setdefault(def_name, {})[step["values"][dim]] = None
    return {name: list(keys) for name, keys in need.items()}
