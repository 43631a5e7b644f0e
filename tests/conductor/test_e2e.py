"""End to end: a project on the sample dataset, configured, run to success, output fetched.

The Dagster code location is ``STARRYNIGHT_DAGSTER_MODULE`` when set (the real asset
graph), else the toy one under tests/conductor.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conductor.app import create_app
from conductor.settings import Settings
from tests.conductor.conftest import RW
from tests.conductor.runhelpers import (
    API,
    make_configured_project,
    sse_events,
    wait_for,
)


@pytest.fixture
def e2e_client(settings: Settings) -> Iterator[TestClient]:
    """The client, on the code location named by ``STARRYNIGHT_DAGSTER_MODULE`` if set."""
    module = os.environ.get("STARRYNIGHT_DAGSTER_MODULE", settings.dagster_module)
    app = create_app(dataclasses.replace(settings, dagster_module=module))
    with TestClient(app, headers={"Authorization": f"Bearer {RW}"}) as c:
        yield c


def test_sample_project_end_to_end(e2e_client: TestClient, small_sample, tmp_path: Path) -> None:
    client = e2e_client
    project_id = make_configured_project(client, small_sample.dataset_root, str(tmp_path / "ws"))
    project = client.get(f"{API}/projects/{project_id}").json()
    assert project["configured_at"] is not None
    experiment = client.get(f"{API}/projects/{project_id}/experiment").json()
    assert experiment["cp"]["roles"]["nuclei"] == "DAPI"

    before = client.get(f"{API}/projects/{project_id}/partitions").json()
    assert before["plates"] == ["Plate1"]
    assert before["wells"] == {"Plate1": ["A1", "B02"]}
    assert {st for keys in before["assets"].values() for st in keys.values()} == {"missing"}

    launched = client.post(f"{API}/projects/{project_id}/runs", json={})
    assert launched.status_code == 201, launched.text
    run = wait_for(client, launched.json()["id"], {"SUCCESS", "FAILURE", "CANCELED"})
    assert run["status"] == "SUCCESS", run
    assert run["progress"]["steps_done"] == run["progress"]["steps_total"]
    assert run["progress"]["assets_materialized"] == run["progress"]["assets_total"]
    assert run["finished_at"] is not None

    after = client.get(f"{API}/projects/{project_id}/partitions").json()
    assert {st for keys in after["assets"].values() for st in keys.values()} == {"done"}
    assert after["assets"]["corrected_cp"] == {"Plate1|A1": "done", "Plate1|B02": "done"}

    listing = client.get(f"{API}/projects/{project_id}/files", params={"prefix": "illum"}).json()
    png = next(f["path"] for f in listing["items"] if f["path"].endswith(".png"))
    preview = client.get(f"{API}/projects/{project_id}/files/preview", params={"path": png})
    assert preview.status_code == 200
    assert preview.content.startswith(b"\x89PNG")
    corrected = client.get(
        f"{API}/projects/{project_id}/files", params={"prefix": "images_corrected/painting"}
    ).json()["items"]
    assert {Path(f["path"]).parent.name for f in corrected} == {"Plate1-A1", "Plate1-B02"}
    first = corrected[0]
    download = client.get(
        f"{API}/projects/{project_id}/files/content", params={"path": first["path"]}
    )
    assert download.status_code == 200
    assert len(download.content) == first["size"] > 0

    events = sse_events(client.get(f"{API}/runs/{run['id']}/logs").text)
    assert events[-1] == ("end", {"status": "SUCCESS", "events": len(events) - 1})
    materialized = [
        (e["asset"], e["partition"])
        for kind, e in events
        if kind == "log" and e["event_type"] == "ASSET_MATERIALIZATION"
    ]
    expected = {(a, k) for a, keys in after["assets"].items() for k in keys}
    assert {(a, p or "default") for a, p in materialized} == expected
    # Each step's "materialized" (read from the asset index) is what its run's log says.
    from_log: dict[str, set[str]] = {}
    for kind, e in events:
        if kind == "log" and e["event_type"] == "ASSET_MATERIALIZATION":
            from_log.setdefault(e["dagster_run_id"], set()).add(e["asset"])
    steps = {s["dagster_run_id"]: s["materialized"] for s in run["steps"]}
    assert steps == {r: sorted(assets) for r, assets in from_log.items()}
    again = client.get(f"{API}/runs/{run['id']}").json()  # a finished run: kept, same answer
    assert again["steps"] == run["steps"]

    runs = client.get(f"{API}/projects/{project_id}/runs").json()
    assert runs["total"] == 1
    assert runs["items"][0]["status"] == "SUCCESS"
