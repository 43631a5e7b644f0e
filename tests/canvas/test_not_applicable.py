"""A well without the images an asset needs reads ``n/a``, not ``missing`` or ``done``.

The toy graph's ``corrected_cp`` declares ``starrynight/arms: cp`` as the real well
products do; the sample's well B02 loses its Cell Painting images here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from conductor.graph import AssetInfo, asset_graph
from conductor.runs import NOT_APPLICABLE, mark_not_applicable
from tests.canvas.conftest import RW, post_form
from tests.canvas.test_pages import _create


def test_mark_not_applicable_only_touches_wells_lacking_arms() -> None:
    graph = (
        AssetInfo("illum_cp", ("plate",), (), ()),
        AssetInfo("aligned_sbs", ("plate", "well"), (), (), ("sbs",)),
        AssetInfo("cell_features", ("plate", "well"), (), (), ("cp", "sbs")),
    )
    statuses = {
        "illum_cp": {"P1": "done"},
        "aligned_sbs": {"P1|A1": "done", "P1|A2": "done", "P1|A3": "missing"},
        "cell_features": {"P1|A1": "stale", "P1|A2": "done", "P1|A3": "missing"},
    }
    arms = {("P1", "A1"): frozenset({"cp", "sbs"}), ("P1", "A2"): frozenset({"cp"})}
    out = mark_not_applicable(graph, statuses, arms)
    assert out["illum_cp"] == {"P1": "done"}
    assert out["aligned_sbs"] == {"P1|A1": "done", "P1|A2": "n/a", "P1|A3": "n/a"}
    assert out["cell_features"] == {"P1|A1": "stale", "P1|A2": "n/a", "P1|A3": "n/a"}
    assert statuses["aligned_sbs"]["P1|A2"] == "done"  # the input is left as it was


def test_real_graph_declares_the_arms_of_its_well_products() -> None:
    arms = {a.name: a.arms for a in asset_graph("dagster_defs.definitions")}
    assert arms["corrected_cp"] == ("cp",)
    assert arms["aligned_sbs"] == ("sbs",)
    assert arms["cell_features"] == ("cp", "sbs")
    assert arms["illum_cp"] == () and arms["gene_summary"] == ()


def test_plate_map_and_api_show_n_a_for_a_well_without_cp_images(
    ui: TestClient, small_sample, tmp_path: Path
) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(small_sample.dataset_root, dataset)
    cp_images = [p for p in dataset.rglob("WellB02_*") if "_CP_" in p.parent.name]
    assert cp_images
    for path in cp_images:
        path.unlink()
    pid = _create(ui, str(dataset), tmp_path / "ws")
    r = post_form(ui, f"/ui/projects/{pid}/configure", {}, page=f"/ui/projects/{pid}")
    assert r.status_code == 303, r.text

    page = ui.get(f"/ui/projects/{pid}/plates?asset=corrected_cp").text
    assert f'<td class="st-na"><a href="/ui/projects/{pid}/plates/Plate1/wells/B02"' in page
    assert 'aria-label="B02: n/a">N</a>' in page
    assert 'aria-label="A1: missing">M</a>' in page
    assert "N</span> n/a</span>" in page  # in the legend, with its letter
    well = ui.get(f"/ui/projects/{pid}/plates/Plate1/wells/B02").text
    assert "n/a</span>" in well

    api = ui.get(
        f"/api/v1/projects/{pid}/partitions", headers={"Authorization": f"Bearer {RW}"}
    ).json()
    assert api["assets"]["corrected_cp"] == {"Plate1|A1": "missing", "Plate1|B02": NOT_APPLICABLE}
    assets = ui.get("/api/v1/assets", headers={"Authorization": f"Bearer {RW}"}).json()
    assert next(a for a in assets if a["name"] == "corrected_cp")["arms"] == ["cp"]
