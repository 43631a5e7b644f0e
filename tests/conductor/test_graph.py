"""Turning selections into ordered plans of Dagster runs (toy code location, no database)."""

from __future__ import annotations

import pytest

from conductor.graph import asset_graph, build_plan, dynamic_partitions_needed
from starrynight.errors import UserError
from tests.conductor.conftest import TOY

PLATES = ["P1", "P2"]
WELLS = {"P1": ["A1", "A2"], "P2": ["A1"]}


def _steps(plan: list[dict]) -> list[tuple[tuple[str, ...], str | None]]:
    return [(tuple(s["assets"]), s["partition"]) for s in plan]


def test_graph_order_and_dimensions() -> None:
    graph = asset_graph(TOY)
    assert [(a.name, a.dims) for a in graph] == [
        ("inventory", ("plate",)),
        ("illum_cp", ("plate",)),
        ("corrected_cp", ("plate", "well")),
    ]
    assert graph[2].parents == ("illum_cp",)
    assert dict(graph[2].dynamic) == {"plate": "plate", "well": "well"}


def test_everything_groups_per_plate_then_per_well() -> None:
    plan = build_plan(asset_graph(TOY), [], PLATES, WELLS)
    assert _steps(plan) == [
        (("inventory", "illum_cp"), "P1"),
        (("inventory", "illum_cp"), "P2"),
        (("corrected_cp",), "P1|A1"),
        (("corrected_cp",), "P1|A2"),
        (("corrected_cp",), "P2|A1"),
    ]
    assert len({s["run_id"] for s in plan}) == 5
    assert dynamic_partitions_needed(asset_graph(TOY), plan) == {
        "plate": ["P1", "P2"],
        "well": ["A1", "A2"],
    }


def test_selection_of_assets_plates_and_wells() -> None:
    plan = build_plan(asset_graph(TOY), ["illum_cp"], ["P2"], WELLS)
    assert _steps(plan) == [(("illum_cp",), "P2")]
    plan = build_plan(asset_graph(TOY), [], ["P1"], {"P1": ["A2"]})
    assert _steps(plan) == [(("inventory", "illum_cp"), "P1"), (("corrected_cp",), "P1|A2")]


def test_stale_only_keeps_what_is_not_done_and_its_downstream() -> None:
    status = {
        "inventory": {"P1": "done", "P2": "done"},
        "illum_cp": {"P1": "done", "P2": "stale"},
        "corrected_cp": {"P1|A1": "done", "P1|A2": "failed", "P2|A1": "done"},
    }
    plan = build_plan(asset_graph(TOY), [], PLATES, WELLS, status)
    assert _steps(plan) == [
        (("illum_cp",), "P2"),
        (("corrected_cp",), "P1|A2"),
        (("corrected_cp",), "P2|A1"),  # done, but its illum is being redone
    ]
    everything_done = {a: dict.fromkeys(k, "done") for a, k in status.items()}
    assert build_plan(asset_graph(TOY), [], PLATES, WELLS, everything_done) == []


def test_unknown_asset_names_the_known_ones() -> None:
    with pytest.raises(UserError, match="unknown illum_sbs; known: inventory, illum_cp"):
        build_plan(asset_graph(TOY), ["illum_sbs"], PLATES, WELLS)


def _plain_plan(graph, assets, plates, wells_by_plate, stale) -> list[tuple[list[str], dict]]:
    """build_plan's rule, literally: scans instead of look-ups (quadratic)."""
    import itertools

    from conductor.graph import _agrees, partition_key, partition_values

    chosen = [a for a in graph if not assets or a.name in assets]
    included: dict[str, list[dict[str, str]]] = {}
    for info in chosen:
        keep = []
        for values in partition_values(info.dims, plates, wells_by_plate):
            if stale is not None:
                status = stale.get(info.name, {}).get(partition_key(info.dims, values), "missing")
                redone = any(_agrees(values, v) for p in info.parents for v in included.get(p, []))
                if status == "done" and not redone:
                    continue
            keep.append(values)
        included[info.name] = keep
    out = []
    for dims, group in itertools.groupby(chosen, key=lambda a: a.dims):
        members = list(group)
        for values in partition_values(dims, plates, wells_by_plate):
            names = [a.name for a in members if values in included[a.name]]
            if names:
                out.append((names, values))
    return out


@pytest.mark.parametrize("seed", range(50))
def test_stale_plan_agrees_with_the_plain_rule(seed: int) -> None:
    import random

    from conductor.graph import AssetInfo, partition_key, partition_values

    rng = random.Random(seed)
    graph = (
        AssetInfo("inventory", ("plate",), (), ()),
        AssetInfo("experiment", (), ("inventory",), ()),
        AssetInfo("illum", ("plate",), ("inventory", "experiment"), ()),
        AssetInfo("corrected", ("plate", "well"), ("illum",), ()),
        AssetInfo("segmentation", ("plate", "well"), ("corrected", "experiment"), ()),
        AssetInfo("summary", ("plate",), ("segmentation",), ()),
    )
    plates = ["P1", "P2", "P3"]
    wells = {"P1": ["A1", "A2", "B1"], "P2": ["A1"], "P3": ["C3", "D4"]}
    stale = {
        a.name: {
            partition_key(a.dims, v): rng.choice(["done"] * 6 + ["stale", "missing", "failed"])
            for v in partition_values(a.dims, plates, wells)
        }
        for a in graph
    }
    assets = rng.choice([[], ["illum", "corrected", "summary"], ["segmentation"]])
    plan = build_plan(graph, assets, plates, wells, stale)
    assert [(s["assets"], s["values"]) for s in plan] == _plain_plan(
        graph, assets, plates, wells, stale
    )
