"""``GET /projects/{id}/results``: the screen's gene table as JSON (SQLite and Postgres)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conductor.conftest import project_body
from tests.conductor.resultshelpers import make_results_workspace
from tests.starrynight.test_results import PLANTED


@pytest.fixture(scope="module")
def results_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results_workspace(tmp_path_factory.mktemp("results_api") / "ws")


def _project(client: TestClient, tmp_path: Path, dataset: Path, ws: Path | None) -> int:
    body = project_body(tmp_path, dataset)
    if ws is not None:
        body["workspace_uri"] = str(ws)
    r = client.post("/api/v1/projects", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_gene_table_sorted_and_one_gene(
    client: TestClient, tmp_path: Path, dataset: Path, results_ws: Path
) -> None:
    pid = _project(client, tmp_path, dataset, results_ws)
    body = client.get(f"/api/v1/projects/{pid}/results").json()
    assert body["status"] == "scored" and body["plates"] == ["P1", "P2"]
    genes = body["genes"]
    assert len(genes) == 15 and body["n_hits"] == sum(g["hit"] for g in genes)
    assert set(PLANTED) <= {g["gene_symbol"] for g in genes if g["hit"]}
    qs = [g["q_value"] for g in genes]
    assert qs == sorted(qs)
    by_cells = client.get(f"/api/v1/projects/{pid}/results?sort=n_cells&order=desc").json()
    cells = [g["n_cells"] for g in by_cells["genes"]]
    assert cells == sorted(cells, reverse=True)
    one = client.get(f"/api/v1/projects/{pid}/results/genes/G01").json()
    assert one["hit"] and one["n_guides"] == 2
    # G01's planted features (F00-F02) lead its shifts.
    assert next(iter(one["feature_shifts"])).startswith("Cells_Intensity_F0")
    r = client.get(f"/api/v1/projects/{pid}/results/genes/NOPE")
    assert r.status_code == 404 and "NOPE" in r.json()["detail"]
    assert client.get(f"/api/v1/projects/{pid}/results?sort=bogus").status_code == 422


def test_no_results_yet_is_an_empty_table(
    client: TestClient, tmp_path: Path, dataset: Path
) -> None:
    pid = _project(client, tmp_path, dataset, None)
    body = client.get(f"/api/v1/projects/{pid}/results").json()
    assert body["status"] == "none" and body["genes"] == []
    assert "no screen results" in body["message"]
    assert client.get(f"/api/v1/projects/{pid}/results/genes/G01").status_code == 404
    assert client.get("/api/v1/projects/999/results").status_code == 404
