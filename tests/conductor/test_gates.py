"""QC gates through the API (SQLite and Postgres): approve, close, refusals; and the
launch refusal of what follows a closed gate."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from fastapi.testclient import TestClient

from conductor.errors import Conflict
from conductor.gates import refuse_closed
from conductor.graph import AssetInfo
from conductor.models import Project
from conductor.runs.instances import instance
from starrynight import gates
from starrynight import workspace as wsp
from tests.conductor.conftest import RO
from tests.conductor.runhelpers import API, make_configured_project


def _report(ws: str, plate: str, gate: str) -> None:
    index = Path(wsp.qc_index_path(ws, plate, gate))
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps({"plate": plate, "gate": gate, "status": "complete",
                                 "figures": []}))  # fmt: skip


def test_approve_close_and_refusals(client: TestClient, small_sample, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    pid = make_configured_project(client, small_sample.dataset_root, ws)
    assert client.get(f"{API}/projects/{pid}").json()["qc_gates"] == ["painting", "barcoding"]
    _report(ws, "Plate1", "painting")
    url = f"{API}/projects/{pid}/plates/Plate1/gates/painting"

    ro = client.post(url, json={"approved": True}, headers={"Authorization": f"Bearer {RO}"})
    assert ro.status_code == 403 and "read-only" in ro.json()["detail"]
    assert gates.read_gate(ws, "Plate1", "painting").current is None

    ok = client.post(url, json={"approved": True, "comment": "flat fields look right"})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["state"] == "approved" and body["enabled"] and body["report"]
    assert [(d["decided_by"], d["approved"], d["comment"]) for d in body["history"]] == [
        ("alice", True, "flat fields look right")
    ]
    # written where Dagster reads it, by the token's holder
    state = gates.read_gate(ws, "Plate1", "painting")
    assert (state.state, state.current.by) == ("approved", "alice")

    closed = client.post(url, json={"approved": False, "comment": "wrong plate"}).json()
    assert closed["state"] == "closed" and not closed["open"]
    assert [d["approved"] for d in closed["history"]] == [True, False]
    assert len(gates.read_gate(ws, "Plate1", "painting").history) == 2

    listed = client.get(f"{API}/projects/{pid}/gates", headers={"Authorization": f"Bearer {RO}"})
    assert {(g["plate"], g["gate"], g["state"]) for g in listed.json()} == {
        ("Plate1", "painting", "closed"), ("Plate1", "barcoding", "closed")
    }  # fmt: skip

    unknown = client.post(
        f"{API}/projects/{pid}/plates/Nope/gates/painting", json={"approved": True}
    )
    assert unknown.status_code == 404 and "Nope" in unknown.json()["detail"]
    no_report = client.post(
        f"{API}/projects/{pid}/plates/Plate1/gates/barcoding", json={"approved": True}
    )
    assert no_report.status_code == 409 and "no barcoding QC report" in no_report.json()["detail"]
    bad_gate = client.post(f"{API}/projects/{pid}/plates/Plate1/gates/colour", json={"approved": 1})
    assert bad_gate.status_code == 422 and "colour" in bad_gate.json()["detail"]


GRAPH = (
    AssetInfo("segmentation", ("plate", "well"), (), (), ()),
    AssetInfo("qc_painting", ("plate",), ("segmentation",), (), ()),
    AssetInfo("cell_features", ("plate", "well"), ("segmentation", "qc_painting"), (), ()),
)


def _plan(*assets: str) -> list[dict]:
    return [{"assets": [a], "values": {"plate": "Plate1", "well": "A1"}} for a in assets]


def test_launch_refuses_what_follows_a_closed_gate(settings, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    project = Project(id=7, name="p", workspace_uri=ws, qc_gates=["painting"])
    # what precedes the gate, and the report itself, may run
    refuse_closed(settings, project, GRAPH, _plan("segmentation", "qc_painting"))
    with pytest.raises(Conflict, match="plate Plate1: the painting QC gate is closed"):
        refuse_closed(settings, project, GRAPH, _plan("segmentation", "cell_features"))
    _report(ws, "Plate1", "painting")
    inst = instance(settings, 7)
    inst.report_runless_asset_event(dg.AssetMaterialization("qc_painting", partition="Plate1"))
    gates.record(ws, "Plate1", "painting", True, "alice")
    refuse_closed(settings, project, GRAPH, _plan("cell_features"))
    # a report made after the approval closes the gate again
    inst.report_runless_asset_event(dg.AssetMaterialization("qc_painting", partition="Plate1"))
    with pytest.raises(Conflict, match="painting QC gate is closed"):
        refuse_closed(settings, project, GRAPH, _plan("cell_features"))
    # a project without gates launches anything
    refuse_closed(settings, Project(id=8, name="q", workspace_uri=ws, qc_gates=[]), GRAPH,
                  _plan("cell_features"))  # fmt: skip
