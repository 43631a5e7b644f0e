"""Runs through real Dagster (toy code location): staleness, failure, cancel, bad selections."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from tests.conductor.runhelpers import API, make_configured_project, wait_for

DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def test_stale_partitions_and_all_stale(client: TestClient, small_sample, tmp_path: Path) -> None:
    pid = make_configured_project(client, small_sample.dataset_root, str(tmp_path / "ws"))
    first = client.post(f"{API}/projects/{pid}/runs", json={"wells": ["A1"]}).json()
    assert [(s["assets"], s["partition"]) for s in first["steps"]] == [
        (["inventory", "illum_cp"], "Plate1"),
        (["corrected_cp"], "Plate1|A1"),
    ]
    done = wait_for(client, first["id"], DONE)
    assert done["status"] == "SUCCESS", done
    redo = client.post(
        f"{API}/projects/{pid}/runs", json={"assets": ["illum_cp"], "plates": ["Plate1"]}
    ).json()
    done = wait_for(client, redo["id"], DONE)
    assert done["status"] == "SUCCESS", done
    status = client.get(f"{API}/projects/{pid}/partitions").json()["assets"]
    assert status == {
        "inventory": {"Plate1": "done"},
        "illum_cp": {"Plate1": "done"},
        "corrected_cp": {"Plate1|A1": "stale", "Plate1|B02": "missing"},
    }
    fix = client.post(f"{API}/projects/{pid}/runs", json={"stale_only": True}).json()
    assert [(s["assets"], s["partition"]) for s in fix["steps"]] == [
        (["corrected_cp"], "Plate1|A1"),
        (["corrected_cp"], "Plate1|B02"),
    ]
    assert wait_for(client, fix["id"], DONE)["status"] == "SUCCESS"
    nothing = client.post(f"{API}/projects/{pid}/runs", json={"stale_only": True}).json()
    assert (nothing["status"], nothing["steps"]) == ("SUCCESS", [])
    assert "nothing to do" in nothing["message"]


def test_selection_and_configuration_errors(
    client: TestClient, small_sample, tmp_path: Path, dataset: Path
) -> None:
    body = {"name": "early", "dataset_uri": str(dataset), "workspace_uri": str(tmp_path / "e")}
    early = client.post(f"{API}/projects", json=body).json()
    not_configured = client.post(f"{API}/projects/{early['id']}/runs", json={})
    assert not_configured.status_code == 409
    assert "not configured" in not_configured.json()["detail"]

    pid = make_configured_project(client, small_sample.dataset_root, str(tmp_path / "ws"))
    cases = [
        ({"assets": ["illum_sbs"]}, "unknown illum_sbs; known: inventory, illum_cp, corrected_cp"),
        ({"plates": ["Plate9"]}, "plates: unknown Plate9; known: Plate1"),
        ({"wells": ["Z9"]}, "wells: Z9 not in plate(s) Plate1; known: A1, B02"),
        ({"plates": ["Plate1|A1"]}, "no | [ ] ,"),
    ]
    for selection, message in cases:
        response = client.post(f"{API}/projects/{pid}/runs", json=selection)
        assert response.status_code == 422, response.text
        assert message in json.dumps(response.json()), response.text
    assert client.get(f"{API}/runs/999").status_code == 404

    template = client.get(f"{API}/projects/{pid}/experiment/template").json()
    template["cp"]["roles"]["nuclei"] = "Hoechst"
    bad = client.post(f"{API}/projects/{pid}/configure", json={"experiment": template})
    assert bad.status_code == 422
    detail = bad.json()["detail"]
    assert "cp.roles.nuclei = 'Hoechst' is not a channel of the cp arm" in detail
    assert "PhalloAF750, ZO1-AF488, DAPI" in detail
