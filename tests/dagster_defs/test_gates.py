"""QC gates through the driver (the daemon's sensor + automation ticks): a closed gate
holds what follows it for its plate only; an approval lets it run; a report made again
closes the gate again."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus as CheckStatus,
)

from dagster_defs.assets.qc import GATE_CHECKS
from dagster_defs.definitions import build_defs
from dagster_defs.driver import drive, execute
from starrynight import gates
from tests.dagster_defs.helpers import age, make_sample, settings

PLATES = ("Plate1", "Plate2")
BEHIND_GATES = ["merge", "cell_features", "gene_summary"]


def _latest(instance: dg.DagsterInstance, gate: str, plate: str):
    history = instance.event_log_storage.get_asset_check_execution_history(
        GATE_CHECKS[gate], limit=100
    )
    return next((r for r in history if r.partition == plate), None)


def _plates_of(instance: dg.DagsterInstance, asset: str) -> set[str]:
    parts = instance.get_materialized_partitions(dg.AssetKey(asset))
    return {str(p).split("|")[0] for p in parts}


@pytest.mark.slow
def test_gate_holds_downstream_until_approved_per_plate(tmp_path, instance) -> None:
    root = make_sample(tmp_path / "out", PLATES, wells=("A1",), size=96, sites=1, cycles=3)
    age(root)
    ws = tmp_path / "ws"
    defs = build_defs(settings(root, ws, qc={"gates": ["painting", "barcoding"]}))
    first, scur, acur = drive(defs, instance)
    assert [r.error for r in first.failed] == []
    # upstream and the reports materialised for both plates; nothing behind the gates
    for asset in ("segmentation", "barcode_calls", "geometry", "qc_painting", "qc_barcoding"):
        assert _plates_of(instance, asset) == set(PLATES), asset
    for asset in BEHIND_GATES:
        assert _plates_of(instance, asset) == set(), asset
    for plate in PLATES:
        for gate in gates.GATES:
            rec = _latest(instance, gate, plate)
            assert rec is not None and rec.status is CheckStatus.FAILED, (plate, gate)
            md = rec.event.asset_check_evaluation.metadata
            assert "starrynight qc approve" in md["waiting_for"].value
    # nothing changed: another round requests nothing
    idle, scur, acur = drive(defs, instance, sensor_cursor=scur, automation_cursor=acur)
    assert idle.runs == []

    # approve Plate1's gates: the sensor requests check-only runs, they pass, the rest of
    # Plate1 follows; Plate2 stays held
    for gate in gates.GATES:
        gates.record(str(ws), "Plate1", gate, True, "ada", "illumination and alignment fine")
    second, scur, acur = drive(defs, instance, sensor_cursor=scur, automation_cursor=acur)
    assert [r.error for r in second.failed] == []
    check_runs = [r for r in second.runs if r.checks]
    assert sorted(c for r in check_runs for c in r.checks) == sorted(
        f"qc_{g}:{g}_approved" for g in gates.GATES
    )
    assert all(r.assets == [] and r.partition == "Plate1" for r in check_runs)
    for gate in gates.GATES:
        assert _latest(instance, gate, "Plate1").status is CheckStatus.SUCCEEDED
        assert _latest(instance, gate, "Plate2").status is CheckStatus.FAILED
    for asset in BEHIND_GATES:
        assert _plates_of(instance, asset) == {"Plate1"}, asset

    # a report made again (an upstream step re-ran) needs a new approval
    rerun = execute(defs, instance, [dg.AssetKey("qc_painting")], "Plate1")
    assert rerun.success, rerun.error
    rec = _latest(instance, "painting", "Plate1")
    assert rec.status is CheckStatus.FAILED
    assert "made again after ada's approval" in (
        rec.event.asset_check_evaluation.metadata["waiting_for"].value
    )
    # closing a gate is also seen by the sensor, and keeps it failed
    gates.record(str(ws), "Plate1", "barcoding", False, "bob", "cycle 3 looks off")
    third, _, _ = drive(defs, instance, sensor_cursor=scur, automation_cursor=acur)
    assert [r.checks for r in third.runs] == [["qc_barcoding:barcoding_approved"]]
    rec = _latest(instance, "barcoding", "Plate1")
    assert rec.status is CheckStatus.FAILED
    assert "closed by bob" in rec.event.asset_check_evaluation.metadata["waiting_for"].value


def test_gate_off_passes_saying_so(tmp_path, instance) -> None:
    from dagster_defs.assets.qc import gate_result

    defs = build_defs(settings(tmp_path, tmp_path / "ws"))
    project = defs.resources["project"]
    result = gate_result(instance, project, "Plate1", "painting")
    assert result.passed and result.metadata["gate"].value == "gate off"
