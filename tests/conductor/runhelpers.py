"""Helpers for tests that launch real Dagster runs through the API."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi.testclient import TestClient

API = "/api/v1"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def make_configured_project(client: TestClient, dataset_root: str, workspace: str) -> int:
    """Create a project on ``dataset_root`` and configure it; return its id."""
    body = {"name": "sample", "dataset_uri": dataset_root, "workspace_uri": workspace}
    created = client.post(f"{API}/projects", json=body)
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    configured = client.post(f"{API}/projects/{project_id}/configure", json={})
    assert configured.status_code == 200, configured.text
    return project_id


def wait_for(client: TestClient, run_id: int, until: set[str], limit_s: float = 120) -> dict:
    """Poll ``GET /runs/{id}`` until its status is in ``until`` (a hang guard, not a timing)."""
    deadline = time.monotonic() + limit_s
    while True:
        run = client.get(f"{API}/runs/{run_id}").json()
        if run["status"] in until:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']}: {run}")
        time.sleep(0.2)


def wait_step_started(client: TestClient, run_id: int, limit_s: float = 120) -> dict:
    """Poll until some step of the run is STARTED."""
    deadline = time.monotonic() + limit_s
    while True:
        run = client.get(f"{API}/runs/{run_id}").json()
        if any(s["status"] == "STARTED" for s in run["steps"]):
            return run
        if run["status"] in TERMINAL or time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} never started a step: {run}")
        time.sleep(0.1)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse a server-sent events body into ``(event, data)`` pairs."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((fields.get("event", "message"), json.loads(fields["data"])))
    return out
