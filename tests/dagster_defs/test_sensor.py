"""The new-plate sensor with build_sensor_context: stable plates start, busy ones wait."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from dagster_defs.definitions import build_defs
from dagster_defs.driver import drive
from dagster_defs.sensors import new_plate_sensor, plate_folders
from tests.dagster_defs.helpers import age, make_sample, settings


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None):
    ctx = dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    )
    return new_plate_sensor(ctx)


def test_new_stable_plate_adds_partition_and_requests_its_run(tmp_path: Path, instance) -> None:
    root = make_sample(tmp_path / "out", ("Plate1",), wells=("A1",), size=80, sites=1, cycles=3)
    age(root)
    assert sorted(plate_folders(str(root))) == ["Plate1"]
    defs = build_defs(settings(root, tmp_path / "ws"))
    result = tick(defs, instance)
    assert isinstance(result, dg.SensorResult)
    [add] = result.dynamic_partitions_requests
    assert add.partitions_def_name == "plate" and list(add.partition_keys) == ["Plate1"]
    [req] = result.run_requests
    assert req.partition_key == "Plate1"
    assert {k.to_user_string() for k in req.asset_selection} == {
        "inventory",
        "index",
        "illum_cp",
        "illum_sbs",
        "experiment",
    }
    # once the partition exists the plate is not requested again
    instance.add_dynamic_partitions("plate", ["Plate1"])
    again = tick(defs, instance, result.cursor)
    assert again.run_requests == [] and again.dynamic_partitions_requests == []


def test_plate_still_being_written_waits_until_stable(tmp_path: Path, instance) -> None:
    root = make_sample(tmp_path / "out", ("Plate1",), wells=("A1",), size=80, sites=1, cycles=3)
    age(root)
    defs = build_defs(settings(root, tmp_path / "ws", stable_seconds=30))
    # Plate1 starts (its run is requested: not again while the data stays the same)
    start = tick(defs, instance)
    assert [r.partition_key for r in start.run_requests] == ["Plate1"]
    instance.add_dynamic_partitions("plate", ["Plate1"])
    # a second plate being copied right now: fresh files
    new = make_sample(tmp_path / "more", ("Plate2",), wells=("A1",), size=80, sites=1, cycles=3)
    src = next(new.glob("*/*/images/Plate2"))
    dst = root / src.relative_to(new)
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)
    first = tick(defs, instance, start.cursor)
    assert first.run_requests == [] and first.dynamic_partitions_requests == []
    assert "Plate2" in json.loads(first.cursor)["waiting"]
    # another file arrives, and even once old the listing changed since the last tick
    extra = next(dst.rglob("*.tiff"))
    (extra.parent / "Extra.tiff").write_bytes(b"x" * 10)
    age(root)
    second = tick(defs, instance, first.cursor)
    assert second.run_requests == []
    # unchanged and quiet: it starts, without the experiment (already requested before? no:
    # never materialised, so this first plate run creates it)
    third = tick(defs, instance, second.cursor)
    [req] = third.run_requests
    assert req.partition_key == "Plate2"
    assert list(third.dynamic_partitions_requests[0].partition_keys) == ["Plate2"]


def test_unconfigured_project_skips_with_reason(tmp_path: Path, instance) -> None:
    defs = build_defs({"backend": "local", "backend_options": {}})
    result = tick(defs, instance)
    assert isinstance(result, dg.SkipReason)
    assert "STARRYNIGHT_DATASET_URI" in result.skip_message


def test_known_plate_never_catalogued_is_requested_once(tmp_path: Path, instance) -> None:
    # e.g. the driver was killed after adding the partition, before the plate's run
    root = make_sample(tmp_path / "out", ("Plate1",), wells=("A1",), size=80, sites=1, cycles=3)
    age(root)
    instance.add_dynamic_partitions("plate", ["Plate1"])
    defs = build_defs(settings(root, tmp_path / "ws"))
    first = tick(defs, instance)
    [req] = first.run_requests
    assert req.partition_key == "Plate1" and first.dynamic_partitions_requests == []
    assert {k.to_user_string() for k in req.asset_selection} == {
        "inventory",
        "index",
        "illum_cp",
        "illum_sbs",
        "experiment",
    }
    assert tick(defs, instance, first.cursor).run_requests == []


def test_gate_decision_requests_a_check_run_the_daemon_resolves(tmp_path: Path, instance) -> None:
    from starrynight import gates

    root = make_sample(tmp_path / "out", ("Plate1",), wells=("A1",), size=80, sites=1, cycles=3)
    age(root)
    instance.add_dynamic_partitions("plate", ["Plate1"])
    ws = tmp_path / "ws"
    defs = build_defs(settings(root, ws))
    first = tick(defs, instance)
    gates.record(str(ws), "Plate1", "barcoding", True, "ada")
    ctx = dg.build_sensor_context(
        instance=instance, cursor=first.cursor, definitions=defs, resources=defs.resources
    )
    # evaluate_tick resolves each request's partition against the sensor's target as the
    # daemon does (a check-only request resolved from its assets took the whole target,
    # plate and unpartitioned assets, and the daemon refused every tick)
    data = new_plate_sensor.evaluate_tick(ctx)
    [req] = data.run_requests
    assert req.asset_selection == [] and req.partition_key == "Plate1"
    assert [k.to_user_string() for k in req.asset_check_keys] == ["qc_barcoding:barcoding_approved"]
    assert req.tags["dagster/partition"] == "Plate1"


def _materialisations(instance: dg.DagsterInstance, asset: str, partition: str) -> list:
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]),
        limit=100,
    ).records


WELL_ASSETS = ["corrected_cp", "aligned_sbs", "segmentation", "barcode_calls", "cell_features"]


def _version(record) -> str:
    return record.asset_materialization.tags["dagster/data_version"]


@pytest.mark.slow
def test_cycle_folder_added_to_a_known_plate_recatalogs_that_plate_only(
    tmp_path: Path, instance
) -> None:
    root = make_sample(
        tmp_path / "out", ("Plate1", "Plate2"), wells=("A1",), size=80, sites=1, cycles=4
    )
    # cycle 4 of Plate1 is imaged weeks later
    [late] = list(root.glob("*/*/images/Plate1/10X_c4*"))
    held = tmp_path / late.name
    shutil.move(late, held)
    age(root)
    defs = build_defs(settings(root, tmp_path / "ws"))
    first, scur, acur = drive(defs, instance)
    assert [r.error for r in first.failed] == []
    index_md = _materialisations(instance, "index", "Plate1")[0].asset_materialization.metadata
    assert index_md["sbs_cycles"].value == "1, 2, 3"
    plate2 = {a: len(_materialisations(instance, a, "Plate2|A1")) for a in WELL_ASSETS}
    cp = {
        (a, p): _version(_materialisations(instance, a, p)[0])
        for a, p in [
            ("illum_cp", "Plate1"),
            ("corrected_cp", "Plate1|A1"),
            ("segmentation", "Plate1|A1"),
        ]
    }

    # a tick with nothing new starts nothing; then the cycle folder arrives
    assert tick(defs, instance, scur).run_requests == []
    shutil.move(held, late)
    age(late)
    result = tick(defs, instance, scur)
    [req] = result.run_requests
    assert req.partition_key == "Plate1" and result.dynamic_partitions_requests == []
    assert {k.to_user_string() for k in req.asset_selection} == {"inventory", "index"}
    assert req.tags["starrynight/trigger"] == "plate_changed"

    second, scur, acur = drive(defs, instance, sensor_cursor=scur, automation_cursor=acur)
    assert [r.error for r in second.failed] == []
    assert {r.partition.split("|")[0] for r in second.runs} == {"Plate1"}
    index_md = _materialisations(instance, "index", "Plate1")[0].asset_materialization.metadata
    assert index_md["sbs_cycles"].value == "1, 2, 3, 4"
    # the plate's SBS products followed: the new cycle's illumination exists
    assert len(_materialisations(instance, "illum_sbs", "Plate1")) == 2
    assert len(_materialisations(instance, "aligned_sbs", "Plate1|A1")) == 2
    assert next((tmp_path / "ws" / "illum" / "Plate1").glob("Plate1_Cycle4_Illum*.npy"))
    # ...while the data of its Cell Painting products stayed the same (their runs, pulled
    # along by the index, found their work complete), and the other plate saw no run
    for (key, partition), version in cp.items():
        assert _version(_materialisations(instance, key, partition)[0]) == version, key
    for key in WELL_ASSETS:
        assert len(_materialisations(instance, key, "Plate2|A1")) == plate2[key], key
    # and once catalogued, the plate is quiet again
    assert tick(defs, instance, scur).run_requests == []
