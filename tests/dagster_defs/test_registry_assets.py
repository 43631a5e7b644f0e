"""The asset graph is the registry: one asset per row with the row's dependencies; a
step added to the registry (one row and its Dagster metadata) is materialised by the
graph with no other change."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from dagster_defs.assets import wells
from dagster_defs.definitions import build_defs
from dagster_defs.driver import drive
from starrynight import registry
from starrynight import workspace as wsp
from tests.dagster_defs.helpers import age, make_sample, settings


def _graph(tmp_path: Path):
    return build_defs(settings(tmp_path, tmp_path / "ws")).resolve_asset_graph()


def test_every_row_is_an_asset_with_the_rows_dependencies(tmp_path: Path) -> None:
    graph = _graph(tmp_path)
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {s.name for s in registry.STEPS}
    for step in registry.STEPS:
        node = graph.get(dg.AssetKey(step.name))
        assert {p.to_user_string() for p in node.parent_keys} == set(step.needs), step.name
        assert node.group_name == step.group
        assert node.description == step.description
        if step.level == "well":
            assert node.metadata["starrynight/arms"] == ",".join(step.arms)


def test_every_well_step_has_dagster_metadata() -> None:
    assert set(registry.names_at("well")) <= set(wells.DESCRIBE)
    with pytest.raises(ValueError, match="lack a DESCRIBE entry"):
        wells.make_well_products(["corrected_cp", "no_such_step"])


SEGCHECK = registry.Step(
    "segcheck", "well", ("segcheck",),
    "Outline overlays of a sample of sites, for review (segcheck/<plate>-<well>/).",
    "wells", lambda ws, p, w: [wsp.segcheck_counts_path(ws, p, w)],
    needs=("corrected_cp", "experiment"), arms=("cp",),
)  # fmt: skip


def _segcheck_md(ws: str, plate: str, well: str) -> tuple[dict[str, object], list[str]]:
    counts = wsp.segcheck_counts_path(ws, plate, well)
    return {"counts": dg.MetadataValue.path(counts)}, [counts]


@pytest.mark.slow
def test_a_step_added_as_one_row_runs_in_the_graph(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What docs/adding-a-step.md walks through, with a real per-well command."""
    monkeypatch.setattr(registry, "STEPS", (*registry.STEPS, SEGCHECK))
    monkeypatch.setitem(registry.BY_NAME, "segcheck", SEGCHECK)
    monkeypatch.setitem(wells.DESCRIBE, "segcheck", _segcheck_md)
    root = make_sample(tmp_path / "out", ("Plate1",), wells=("A1",), size=96, sites=2, cycles=3)
    age(root)
    ws = tmp_path / "ws"
    defs = build_defs(settings(root, ws))
    node = defs.resolve_asset_graph().get(dg.AssetKey("segcheck"))
    assert {p.to_user_string() for p in node.parent_keys} == {"corrected_cp", "experiment"}

    result, _, _ = drive(defs, instance)

    assert [r.error for r in result.failed] == []
    assert instance.get_materialized_partitions(dg.AssetKey("segcheck")) == {"Plate1|A1"}
    assert Path(wsp.segcheck_counts_path(str(ws), "Plate1", "A1")).exists()
    assert Path(wsp.segcheck_overlay_path(str(ws), "Plate1", "A1", 0)).exists()
