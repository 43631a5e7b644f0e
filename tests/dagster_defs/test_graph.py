"""The whole graph for 2 plates x 2 wells, driven by the sensor and automation conditions
exactly as the daemon would; then failure isolation between wells."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from dagster_defs.definitions import build_defs
from dagster_defs.driver import drive, execute
from dagster_defs.partitions import plate_well_key
from starrynight import registry
from tests.dagster_defs.helpers import age, make_sample, settings

WELL_ASSETS = list(registry.names_at("well"))
PLATE_ASSETS = list(registry.names_at("plate"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("graph")
    root = make_sample(tmp / "out", ("Plate1", "Plate2"), size=96, sites=1, cycles=3)
    age(root)
    return root, tmp / "ws"


@pytest.mark.slow
def test_full_graph_materialises_every_partition_then_nothing_to_do(project, instance) -> None:
    root, ws = project
    defs = build_defs(settings(root, ws))
    result, scur, acur = drive(defs, instance)
    assert [r.error for r in result.failed] == []
    assert set(instance.get_dynamic_partitions("plate")) == {"Plate1", "Plate2"}
    assert set(instance.get_dynamic_partitions("well")) == {"A1", "A2"}
    for key in PLATE_ASSETS:
        assert instance.get_materialized_partitions(dg.AssetKey(key)) == {"Plate1", "Plate2"}, key
    expected = {plate_well_key(p, w) for p in ("Plate1", "Plate2") for w in ("A1", "A2")}
    assert expected == {"Plate1|A1", "Plate1|A2", "Plate2|A1", "Plate2|A2"}
    for key in WELL_ASSETS:
        assert instance.get_materialized_partitions(dg.AssetKey(key)) == expected, key
    assert instance.get_latest_materialization_event(dg.AssetKey("experiment")) is not None
    # one run per plate (catalog + illumination), four per well (a blocking check ends a
    # run: geometry's before the mosaic; the merge waits for the plate's barcoding report
    # and the per-cell table for the painting report and the merge's check), one or two
    # report runs per plate (its gates are off: their checks pass saying so), one summary
    # (and profiles) per plate, one for the screen's hits
    assert len(result.runs) <= 2 + 4 * 4 + 2 * 2 + 2 * 2 + 1
    assert instance.get_latest_materialization_event(dg.AssetKey("screen_hits")) is not None
    # metadata: paths, counts, an inline preview image, QC checks that ran
    seg = instance.get_latest_materialization_event(dg.AssetKey("segmentation"))
    md = seg.asset_materialization.metadata
    assert md["cells"].value > 0 and "data:image/png;base64," in md["preview"].value
    illum = instance.get_latest_materialization_event(dg.AssetKey("illum_sbs"))
    assert "data:image/png;base64," in illum.asset_materialization.metadata["preview"].value
    for asset, check in [
        ("illum_cp", "illum_finite_and_at_least_one"),
        ("illum_sbs", "illum_finite_and_at_least_one"),
        ("aligned_sbs", "flagged_site_share_below_threshold"),
        ("segmentation", "cell_counts_plausible"),
        ("barcode_calls", "barcode_assignment_rate"),
        ("qc_painting", "painting_approved"),
        ("qc_barcoding", "barcoding_approved"),
    ]:
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(asset), check), limit=100
        )
        assert history, (asset, check)
    # nothing changed: another round of sensor + automation starts no run
    again, _, _ = drive(defs, instance, sensor_cursor=scur, automation_cursor=acur)
    assert again.runs == []


@pytest.mark.slow
def test_failure_in_one_well_does_not_fail_the_other(tmp_path: Path, instance) -> None:
    root = make_sample(tmp_path / "out", ("Plate1",), size=96, sites=1, cycles=3)
    age(root)
    ws = tmp_path / "ws"
    defs = build_defs(settings(root, ws))
    instance.add_dynamic_partitions("plate", ["Plate1"])
    plate_run = execute(
        defs,
        instance,
        [dg.AssetKey(k) for k in ("inventory", "index", "experiment", "illum_cp", "illum_sbs")],
        "Plate1",
    )
    assert plate_run.success, plate_run.error
    # corrupt well A2's Cell Painting image after the illumination functions exist
    bad = next(root.rglob("20X_CP_*/WellA2_*.ome.tiff"))
    bad.write_bytes(bad.read_bytes()[:200])
    selection = [dg.AssetKey(k) for k in WELL_ASSETS]
    a2 = execute(defs, instance, selection, "Plate1|A2")
    a1 = execute(defs, instance, selection, "Plate1|A1")
    assert a1.success and not a2.success
    assert "corrected_cp-Plate1-A2" in a2.error
    mat = {k: instance.get_materialized_partitions(dg.AssetKey(k)) for k in WELL_ASSETS}
    assert mat["corrected_cp"] == {"Plate1|A1"}
    assert mat["cell_features"] == {"Plate1|A1"}
    # the SBS branch of A2 does not need the CP image: it still materialised
    assert mat["aligned_sbs"] == {"Plate1|A1", "Plate1|A2"}
    # the failing step's own error line is in the failed run's event log
    logs = [
        e.user_message
        for e in instance.all_logs(a2.run_id)
        if e.user_message and "corrected_cp-Plate1-A2: failed" in e.user_message
    ]
    assert logs and "error:" in logs[0] and bad.name in logs[0]
