"""Canvas "Results": gene table (sortable), volcano plot, gene page with shifts and montage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.canvas.conftest import post_form
from tests.conductor.resultshelpers import make_results_workspace


@pytest.fixture(scope="module")
def results_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results_workspace(tmp_path_factory.mktemp("results_pages") / "ws")


def _create(ui: TestClient, dataset: Path, ws: Path, name: str) -> int:
    body = {"name": name, "dataset_uri": str(dataset), "workspace_uri": str(ws),
            "experiment_type": "ops"}  # fmt: skip
    r = post_form(ui, "/ui/projects", body)
    assert r.status_code == 303, r.text
    return int(re.search(r"/ui/projects/(\d+)", r.headers["location"]).group(1))


def test_results_pages(ui: TestClient, tmp_path: Path, results_ws: Path) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    pid = _create(ui, dataset, results_ws, "screen")
    html = ui.get(f"/ui/projects/{pid}/results").text
    assert 'aria-sort="ascending"' in html and '<svg class="volcano"' in html
    assert html.count('<circle class="hit"') >= 5
    rows = re.findall(r'<tr(?: class="hit")?>\s*<td><a href="[^"]+">(\w+)</a>', html)
    assert len(rows) == 15
    by_name = ui.get(f"/ui/projects/{pid}/results?sort=gene_symbol&order=desc").text
    names = re.findall(r'<tr(?: class="hit")?>\s*<td><a href="[^"]+">(\w+)</a>', by_name)
    assert names == sorted(names, reverse=True)
    assert ui.get(f"/ui/projects/{pid}/results?sort=nope").status_code == 422

    gene = ui.get(f"/ui/projects/{pid}/results/genes/G01")
    assert gene.status_code == 200 and "Feature shifts" in gene.text
    assert "Cells_Intensity_F0" in gene.text
    png = ui.get(f"/ui/projects/{pid}/results/genes/G01/montage.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png.content))
    assert img.size[1] == 2 * 64 + 2  # gene row and control row
    missing = ui.get(f"/ui/projects/{pid}/results/genes/NOPE")
    assert missing.status_code == 404 and "NOPE" in missing.text

    empty_ws = tmp_path / "empty_ws"
    other = _create(ui, dataset, empty_ws, "empty")
    html = ui.get(f"/ui/projects/{other}/results").text
    assert "no screen results yet" in html and "<table" not in html
