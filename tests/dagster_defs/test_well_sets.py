"""Plates with different well sets: every plate's products and gene summary still complete.

Wells are one partition dimension shared by all plates, so ``Plate2|A2`` exists as a key
even when Plate2 has no well A2. Its products are recorded as absent (with the reason),
not left missing, or Plate2's gene summary would wait for them forever.
"""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.event_api import PartitionKeyFilter

from dagster_defs.definitions import build_defs
from dagster_defs.driver import drive
from starrynight import registry
from tests.dagster_defs.helpers import age, make_sample, settings

WELL_ASSETS = list(registry.names_at("well"))


def _metadata(instance: dg.DagsterInstance, asset: str, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]),
        limit=1,
    ).records
    assert records, (asset, partition)
    return records[0].asset_materialization.metadata


@pytest.mark.slow
def test_plates_with_different_wells_all_reach_their_gene_summary(tmp_path, instance) -> None:
    root = make_sample(tmp_path / "out", ("Plate1", "Plate2"), size=96, sites=1, cycles=3)
    removed = list(root.glob("*/*/images/Plate2/*/WellA2_*"))
    assert removed
    for path in removed:
        path.unlink()
    # Plate1's well A2 has no SBS images: a Cell Painting-only well.
    sbs_only = [p for p in root.glob("*/*/images/Plate1/*/WellA2_*") if "SBS" in p.parent.name]
    assert sbs_only
    for path in sbs_only:
        path.unlink()
    age(root)
    defs = build_defs(settings(root, tmp_path / "ws"))

    result, scur, acur = drive(defs, instance)

    assert [r.error for r in result.failed] == []
    summaries = instance.get_materialized_partitions(dg.AssetKey("gene_summary"))
    assert summaries == {"Plate1", "Plate2"}
    for key in WELL_ASSETS:
        md = _metadata(instance, key, "Plate2|A2")
        assert md["absent"].value == "plate Plate2 has no well A2 in the index", key
    # The absent products' checks pass, per partition, saying why they do not apply: a
    # check planned and never run would hold back what follows (the merge's is blocking).
    merge_check = dg.AssetCheckKey(dg.AssetKey("merge"), "merge_match_rate_above_minimum")
    for partition in ("Plate2|A2", "Plate1|A2"):
        records = instance.event_log_storage.get_asset_check_execution_history(
            merge_check, limit=1, partition_filter=PartitionKeyFilter(key=partition)
        )
        assert records, partition
        record = records[0]
        evaluation = record.event.dagster_event.event_specific_data
        assert evaluation.passed, partition
        assert evaluation.metadata["applies"].value.startswith("no: "), partition
    # The CP-only well: its CP products are real, its SBS products absent.
    seg = _metadata(instance, "segmentation", "Plate1|A2")
    assert "absent" not in seg
    assert seg["cells"].value > 0
    for key in ("aligned_sbs", "barcode_calls", "cell_features"):
        assert "only the cp arm" in _metadata(instance, key, "Plate1|A2")["absent"].value, key
    # Nothing changed: nothing more to do (absent products do not re-run).
    again, _, _ = drive(defs, instance, sensor_cursor=scur, automation_cursor=acur)
    assert again.runs == []
