"""Runs that fail or are canceled, through real Dagster (toy code location)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from conductor.models import Run
from conductor.runs import instance, launcher_alive
from conductor.settings import Settings
from tests.conductor.runhelpers import API, make_configured_project, wait_for, wait_step_started

DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def test_failure_and_cancel(
    client: TestClient, settings: Settings, small_sample, tmp_path: Path, monkeypatch
) -> None:
    pid = make_configured_project(client, small_sample.dataset_root, str(tmp_path / "ws"))
    monkeypatch.setenv("STARRYNIGHT_TOY_FAIL_WELL", "A1")
    failed = client.post(f"{API}/projects/{pid}/runs", json={}).json()
    run = wait_for(client, failed["id"], DONE)
    assert run["status"] == "FAILURE"
    assert run["message"] == "corrected_cp failed for partition Plate1|A1"
    assert [s["status"] for s in run["steps"]] == ["SUCCESS", "FAILURE", "NOT_RUN"]
    status = client.get(f"{API}/projects/{pid}/partitions").json()["assets"]["corrected_cp"]
    assert status == {"Plate1|A1": "failed", "Plate1|B02": "missing"}

    monkeypatch.delenv("STARRYNIGHT_TOY_FAIL_WELL")
    monkeypatch.setenv("STARRYNIGHT_TOY_SLEEP", "60")
    slow = client.post(
        f"{API}/projects/{pid}/runs", json={"assets": ["corrected_cp"], "wells": ["B02"]}
    ).json()
    started = wait_step_started(client, slow["id"])
    dagster_run_id = started["steps"][0]["dagster_run_id"]
    with client.app.state.sessionmaker() as s:
        launcher = s.get(Run, slow["id"]).launcher_pid
    assert launcher_alive(launcher)
    canceled = client.post(f"{API}/runs/{slow['id']}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "CANCELED"
    assert not launcher_alive(launcher)
    dagster_run = instance(settings, pid).get_run_by_id(dagster_run_id)
    assert dagster_run.status.value == "CANCELED"
    assert client.get(f"{API}/runs/{slow['id']}").json()["status"] == "CANCELED"
    again = client.post(f"{API}/runs/{slow['id']}/cancel")
    assert again.status_code == 409
    assert "already finished with CANCELED" in again.json()["detail"]
