"""The results assets: ``plate_profiles`` per plate and ``screen_hits`` for the screen.

Per-well feature tables are synthetic (``tests.starrynight.test_results``: 5 planted
genes); the assets run their real CLI steps through the local backend. Plate P2 has no
non-targeting controls: its profiles say so, and the screen leaves it out and lists it.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np

from dagster_defs.definitions import build_defs
from dagster_defs.driver import execute
from tests.dagster_defs.helpers import settings
from tests.starrynight.test_results import PLANTED, _cells, _write


def _md(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    if partition is not None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(dg.AssetKey(key), asset_partitions=[partition]), limit=1
        ).records
        event = records[0].event_log_entry
    assert event is not None, (key, partition)
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _version(instance: dg.DagsterInstance) -> str:
    event = instance.get_latest_materialization_event(dg.AssetKey("screen_hits"))
    assert event is not None and event.asset_materialization is not None
    return event.asset_materialization.tags["dagster/data_version"]


def test_profiles_per_plate_and_hits_of_the_screen(tmp_path: Path, instance) -> None:
    ws = tmp_path / "ws"
    rng = np.random.default_rng(1)
    for well in ("A1", "A2"):
        _write(ws, _cells("P1", well, rng))
        _write(ws, _cells("P2", well, rng, control="SCRAMBLED"))
        _write(ws, _cells("P3", well, rng))
    defs = build_defs(settings(tmp_path / "dataset", ws, results={"null_size": 2000}))
    instance.add_dynamic_partitions("plate", ["P1", "P2", "P3"])
    for plate in ("P1", "P2", "P3"):
        run = execute(defs, instance, [dg.AssetKey("plate_profiles")], plate)
        assert run.success, run.error
    p1, p2 = _md(instance, "plate_profiles", "P1"), _md(instance, "plate_profiles", "P2")
    assert p1["status"] == "profiled" and p1["control cells"] > 0 and p1["cells kept"] > 0
    assert p2["status"] == "no_controls" and "P2" in p2["message"] and "'NTC'" in p2["message"]

    run = execute(defs, instance, [dg.AssetKey("screen_hits")], None)
    assert run.success, run.error
    md = _md(instance, "screen_hits")
    assert md["status"] == "scored" and md["plates"] == "P1, P3"
    assert "P2" in md["excluded plates"]
    assert md["hits"] == len(md["hit genes"].split(", ")) and set(PLANTED) <= set(
        md["hit genes"].split(", ")
    )
    p3 = _md(instance, "plate_profiles", "P3")
    assert md["genes"] == 15 and md["cells"] == p1["cells kept"] + p3["cells kept"]
    assert "data:image/png;base64," in md["preview"]

    # Unchanged inputs: a new run keeps the data version (nothing downstream would start).
    before = _version(instance)
    assert execute(defs, instance, [dg.AssetKey("screen_hits")], None).success
    assert _version(instance) == before


def test_a_screen_without_any_controls_says_so(tmp_path: Path, instance) -> None:
    ws = tmp_path / "ws"
    _write(ws, _cells("P2", "A1", np.random.default_rng(2), control="SCRAMBLED"))
    defs = build_defs(settings(tmp_path / "dataset", ws, results={"control_label": "NTC"}))
    instance.add_dynamic_partitions("plate", ["P2"])
    assert execute(defs, instance, [dg.AssetKey("plate_profiles")], "P2").success
    run = execute(defs, instance, [dg.AssetKey("screen_hits")], None)
    assert run.success, run.error
    md = _md(instance, "screen_hits")
    assert md["status"] == "no_usable_plates" and md["hits"] == 0
    assert "'NTC'" in md["message"] and "preview" not in md
