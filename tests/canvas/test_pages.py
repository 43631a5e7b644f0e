"""The Canvas pages through HTTP: projects, configure, plate map, runs, QC gallery."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from tests.canvas.conftest import RW, csrf_of, post_form
from tests.conductor.runhelpers import API, TERMINAL

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a1b1c5d80000000049454e44ae426082"
)


def _create(ui: TestClient, dataset: str, ws: Path, name: str = "screen") -> int:
    body = {"name": name, "dataset_uri": dataset, "workspace_uri": str(ws),
            "experiment_type": "ops"}  # fmt: skip
    r = post_form(ui, "/ui/projects", body)
    assert r.status_code == 303, r.text
    return int(r.headers["location"].rsplit("/", 1)[1])


def _configured(ui: TestClient, small_sample, tmp_path: Path) -> int:
    pid = _create(ui, small_sample.dataset_root, tmp_path / "ws")
    r = post_form(ui, f"/ui/projects/{pid}/configure", {}, page=f"/ui/projects/{pid}")
    assert r.status_code == 303, r.text
    return pid


def _error_for(html: str, name: str) -> str:
    m = re.search(rf'id="err-{re.escape(name)}" role="alert">([^<]*)<', html)
    assert m, f"no error shown for {name}"
    return m.group(1)


def test_create_shows_errors_next_to_fields(ui: TestClient, tmp_path: Path) -> None:
    r = post_form(ui, "/ui/projects", {"name": "bad name!", "dataset_uri": "relative/path",
                                       "workspace_uri": str(tmp_path / "w")})  # fmt: skip
    assert r.status_code == 422
    assert "letters, digits" in _error_for(r.text, "name")
    assert "must be absolute" in _error_for(r.text, "dataset_uri")
    assert 'value="bad name!"' in r.text  # what the user typed is kept
    r = post_form(ui, "/ui/projects", {"name": "ok", "dataset_uri": str(tmp_path / "none"),
                                       "workspace_uri": str(tmp_path / "w"),
                                       "experiment_type": "ops"})  # fmt: skip
    assert r.status_code == 422
    assert "no such folder" in _error_for(r.text, "dataset_uri")


def test_create_form_holds_the_qc_gates_ticked_by_default(ui: TestClient, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    form = ui.get("/ui/projects").text
    boxes = re.findall(r'<input type="checkbox" name="qc_gates" value="(\w+)" (checked)?', form)
    assert boxes == [("painting", "checked"), ("barcoding", "checked")]  # as the API's default

    def gates_of(name: str, **fields) -> list[str]:
        body = {"name": name, "dataset_uri": str(tmp_path / "data"),
                "workspace_uri": str(tmp_path / name), "experiment_type": "ops"}  # fmt: skip
        body.update(fields)
        r = post_form(ui, "/ui/projects", body)
        assert r.status_code == 303, r.text
        pid = int(r.headers["location"].rsplit("/", 1)[1])
        got = ui.get(f"{API}/projects/{pid}", headers={"Authorization": f"Bearer {RW}"})
        return got.json()["qc_gates"]

    assert gates_of("one", qc_gates_shown="1", qc_gates=["painting"]) == ["painting"]
    # none ticked: the project runs straight through (as make demo's)
    assert gates_of("none", qc_gates_shown="1") == []
    # a post without the field (another client) gets the default, both gates
    assert gates_of("default") == ["painting", "barcoding"]
    bad = post_form(ui, "/ui/projects", {
        "name": "bad", "dataset_uri": str(tmp_path / "data"), "workspace_uri": str(tmp_path / "b"),
        "experiment_type": "ops", "qc_gates_shown": "1", "qc_gates": ["painting", "merge"],
    })  # fmt: skip
    assert bad.status_code == 422
    assert "painting" in _error_for(bad.text, "qc_gates")
    # what was ticked is kept on the form shown again
    assert re.findall(r'name="qc_gates" value="(\w+)" (checked)?', bad.text) == [
        ("painting", "checked"), ("barcoding", "")]  # fmt: skip


def test_create_list_duplicate_and_delete(ui: TestClient, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    pid = _create(ui, str(tmp_path / "data"), tmp_path / "ws")
    listing = ui.get("/ui/projects").text
    assert ">screen</a>" in listing
    assert "not configured" in listing
    again = post_form(ui, "/ui/projects", {"name": "screen", "dataset_uri": str(tmp_path / "data"),
                                           "workspace_uri": str(tmp_path / "ws2"),
                                           "experiment_type": "ops"})  # fmt: skip
    assert again.status_code == 422
    assert "already exists" in _error_for(again.text, "name")
    page = f"/ui/projects/{pid}/delete"
    wrong = post_form(ui, page, {"confirm": "other"})
    assert wrong.status_code == 422
    assert "type the project name" in wrong.text
    done = post_form(ui, page, {"confirm": "screen"})
    assert done.status_code == 303
    assert ui.get(f"{API}/projects/{pid}", headers={"Authorization": "Bearer x"}).status_code == 401
    assert ">screen</a>" not in ui.get("/ui/projects").text


def test_configure_shows_what_was_found_and_saves_roles(
    ui: TestClient, small_sample, tmp_path: Path
) -> None:
    pid = _create(ui, small_sample.dataset_root, tmp_path / "ws")
    before = ui.get(f"/ui/projects/{pid}").text
    assert "Scan the dataset" in before
    r = post_form(ui, f"/ui/projects/{pid}/configure", {}, page=f"/ui/projects/{pid}")
    assert r.status_code == 303
    page = ui.get(r.headers["location"]).text
    assert "Inventory and index done." in page
    assert "1 (Plate1)" in page  # plates
    assert "PhalloAF750, ZO1-AF488, DAPI" in page
    assert "C, A, T, G, DAPI" in page
    assert "metadata file" in page  # Barcodes.csv is rejected with its reason
    assert '<option value="DAPI" selected>DAPI</option>' in page  # guessed nuclei
    # Two bases on one channel: refused next to the field, nothing saved.
    roles = {"cp.nuclei": "DAPI", "cp.cell": "PhalloAF750", "cp.mito": "", "sbs.nuclei": "DAPI"}
    roles |= {"sbs.A": "A", "sbs.C": "A", "sbs.G": "G", "sbs.T": "T"}
    bad = post_form(ui, f"/ui/projects/{pid}/roles", roles, page=f"/ui/projects/{pid}")
    assert bad.status_code == 422
    assert "already base A" in _error_for(bad.text, "sbs-C")
    missing = post_form(ui, f"/ui/projects/{pid}/roles", {**roles, "sbs.C": "C", "cp.cell": ""},
                        page=f"/ui/projects/{pid}")  # fmt: skip
    assert "choose the cell outline channel" in _error_for(missing.text, "cp-cell")
    forged = post_form(ui, f"/ui/projects/{pid}/roles", {**roles, "sbs.C": "C", "cp.mito": "GFP"},
                       page=f"/ui/projects/{pid}")  # fmt: skip
    assert "not a cp channel" in _error_for(forged.text, "cp-mito")
    chosen = {**roles, "sbs.C": "C", "cp.mito": "ZO1-AF488"}
    good = post_form(ui, f"/ui/projects/{pid}/roles", chosen, page=f"/ui/projects/{pid}")
    assert good.status_code == 303
    saved = json.loads((tmp_path / "ws" / "experiment" / "experiment.json").read_text())
    assert saved["cp"]["roles"]["mito"] == "ZO1-AF488"
    assert saved["sbs"]["roles"]["C"] == "C"
    assert "Channel roles saved." in ui.get(good.headers["location"]).text
    assert "last run" not in ui.get("/ui/projects").text
    assert "<td>1</td>" in ui.get("/ui/projects").text  # plate count


def test_configure_error_is_readable(ui: TestClient, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    pid = _create(ui, str(tmp_path / "empty"), tmp_path / "ws")
    r = post_form(ui, f"/ui/projects/{pid}/configure", {}, page=f"/ui/projects/{pid}")
    assert r.status_code == 422
    assert 'class="error-box" role="alert"' in r.text
    assert "Traceback" not in r.text
    plates = ui.get(f"/ui/projects/{pid}/plates")
    assert plates.status_code == 409
    assert "not configured yet" in plates.text


def test_run_from_the_form_then_plate_map_and_compare(
    ui: TestClient, small_sample, tmp_path: Path
) -> None:
    pid = _configured(ui, small_sample, tmp_path)
    pm = ui.get(f"/ui/projects/{pid}/plates").text
    assert 'aria-label="A1: missing">M</a>' in pm
    assert "(6-well;" in pm  # A1 and B02 fit a 6-well plate
    unknown = post_form(ui, f"/ui/projects/{pid}/runs", {"wells": "Z9"})
    assert unknown.status_code == 422
    assert "Z9 not in plate" in unknown.text
    bad = post_form(ui, f"/ui/projects/{pid}/runs", {"wells": "A|1"})
    assert "expected letters" in _error_for(bad.text, "wells")
    ids = []
    for data in ({"assets": ["inventory", "illum_cp"]}, {"stale_only": "on", "wells": "A1"}):
        r = post_form(ui, f"/ui/projects/{pid}/runs", data)
        assert r.status_code == 303, r.text
        run_id = int(r.headers["location"].rsplit("/", 1)[1])
        ids.append(run_id)
        _wait(ui, run_id)
    detail = ui.get(f"/ui/runs/{ids[1]}").text
    assert 'class="run run-success">SUCCESS' in detail
    assert "Cancel run" not in detail
    cancel = post_form(ui, f"/ui/runs/{ids[1]}/cancel", {}, page=f"/ui/projects/{pid}/runs")
    assert cancel.status_code == 409
    assert "already finished" in cancel.text
    pm = ui.get(f"/ui/projects/{pid}/plates?asset=corrected_cp").text
    assert 'aria-label="A1: done">D</a>' in pm
    assert 'aria-label="B02: missing">M</a>' in pm
    pm384 = ui.get(f"/ui/projects/{pid}/plates?asset=illum_cp&format=384").text
    assert "(384-well;" in pm384
    assert pm384.count('aria-label="B02: done"') == 1
    well = ui.get(f"/ui/projects/{pid}/plates/Plate1/wells/A1").text
    assert f'href="/ui/runs/{ids[1]}">Run {ids[1]}</a>' in well
    assert "/assets/corrected_cp?view=partitions&amp;partition=Plate1%7CA1" in well
    assert "Plate1_IllumDAPI" in well  # the toy illum heat-map of the plate
    cmp = ui.get(f"/ui/projects/{pid}/compare?a={ids[0]}&b={ids[1]}").text
    assert f"Compare run {ids[0]} and run {ids[1]}" in cmp
    assert "inventory, illum_cp" in cmp and "Stale only</th><td>yes" in cmp
    # Each finished step's duration, from Dagster's run records.
    assert len(re.findall(r"</span></td><td>\d+(?:\.\d+)?</td></tr>", cmp)) == 2, cmp
    status = ui.get(f"/ui/runs/{ids[0]}/status.json").json()
    assert status["status"] == "SUCCESS" and status["percent"] == 100
    events = ui.get(f"/ui/runs/{ids[0]}/events").text
    assert "event: end" in events and "ASSET_MATERIALIZATION" in events
    runs_page = ui.get(f"/ui/projects/{pid}/runs").text
    assert "History (2)" in runs_page


def _wait(ui: TestClient, run_id: int) -> dict:
    import time

    deadline = time.monotonic() + 120
    while True:
        run = ui.get(f"/ui/runs/{run_id}/status.json").json()
        if run["status"] in TERMINAL:
            assert run["status"] == "SUCCESS", run
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.2)


def _write(path: Path, data: bytes | dict | pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, dict):
        path.write_text(json.dumps(data))
    else:
        pq.write_table(data, path)


def test_qc_gallery_shows_images_with_their_numbers(
    ui: TestClient, small_sample, tmp_path: Path
) -> None:
    pid = _configured(ui, small_sample, tmp_path)
    ws = tmp_path / "ws"
    for ch in ("DAPI", "PhalloAF750"):
        _write(ws / "illum" / "Plate1" / f"Plate1_Illum{ch}.png", PNG)
    _write(ws / "illum/Plate1/Plate1_IllumStats.json", {"n_images": 6, "channels": [
        {"channel": "DAPI", "file": "Plate1_IllumDAPI.npy", "dark_level": 101.5}]})  # fmt: skip
    for site in range(14):
        _write(ws / f"segcheck/Plate1-A1/Plate_Plate1_Well_A1_Site_{site}_overlay.png", PNG)
    _write(ws / "segcheck/Plate1-A1/counts.parquet",
           pa.table({"site": [0, 1], "n_nuclei": [41, 7], "flagged": [False, True]}))  # fmt: skip
    _write(ws / "alignment/Plate1-A1/Plate_Plate1_Well_A1_alignment.parquet",
           pa.table({"site": [0, 0], "cycle": [2, 3], "dy": [1.0, -2.0], "dx": [0.5, 3.0],
                     "correlation": [0.9, 0.5], "status": ["ok", "flagged"]}))  # fmt: skip
    _write(
        ws / "barcodes/Plate1-B02/cells.parquet",
        pa.table({"status": ["assigned", "assigned", "assigned", "unassigned"]}),
    )
    illum = ui.get(f"/ui/projects/{pid}/qc?kind=illum").text
    assert "(2 figures)" in illum
    assert "dark_level</th><td>101.5" in illum
    img = re.search(r'<img src="([^"]+)"', illum).group(1).replace("&amp;", "&")
    served = ui.get(img)
    assert served.status_code == 200 and served.content == PNG
    seg = ui.get(f"/ui/projects/{pid}/qc?kind=segcheck").text
    assert "(14 figures)" in seg and "page 1 of 2" in seg
    assert "n_nuclei</th><td>41" in seg
    seg2 = ui.get(f"/ui/projects/{pid}/qc?kind=segcheck&page=2").text
    assert seg2.count("<figure") == 2
    align = ui.get(f"/ui/projects/{pid}/qc?kind=alignment").text
    assert "flagged</th><td>1" in align and "<svg" in align
    assert "max shift (px)</th><td>3.6056" in align
    bc = ui.get(f"/ui/projects/{pid}/qc?kind=barcodes").text
    assert "assignment rate</th><td>0.75" in bc
    assert 'aria-label="assignment rate 75%"' in bc
    outside = ui.get(f"/ui/projects/{pid}/files/preview", params={"path": "../../etc/passwd"})
    assert outside.status_code == 422
    assert "not allowed" in outside.text


def test_qc_page_shows_the_after_merge_report_beside_the_gates(
    ui: TestClient, small_sample, tmp_path: Path
) -> None:
    pid = _configured(ui, small_sample, tmp_path)
    folder = tmp_path / "ws/qc_reports/Plate1/merge"
    _write(folder / "match_rate.png", PNG)
    figure = {"name": "match_rate", "title": "Match rate per well", "png": "match_rate.png",
              "parquet": "match_rate.parquet", "finding": "lowest match rate: A1 72%",
              "attention": True}  # fmt: skip
    _write(folder / "index.json", {"plate": "Plate1", "gate": "merge", "figures": [figure]})
    page = ui.get(f"/ui/projects/{pid}/qc", params={"kind": "gates", "plate": "Plate1"}).text
    assert "Plate Plate1: painting gate" in page and "Plate Plate1: barcoding gate" in page
    after = page[page.index("Plate Plate1: after the merge") :]
    assert "lowest match rate: A1 72%" in after and "needs a look" in after
    assert "qc_reports/Plate1/merge/match_rate.parquet" in after
    assert "Approve Plate1 merge" not in page  # it gates nothing
    img = re.search(r'<img src="([^"]+)" alt="merge report', after).group(1).replace("&amp;", "&")
    assert ui.get(img).content == PNG
    # before the merge it says so
    (folder / "index.json").unlink()
    before = ui.get(f"/ui/projects/{pid}/qc", params={"kind": "gates", "plate": "Plate1"}).text
    assert "No after-merge report for this plate yet" in before


@pytest.mark.parametrize("asset", ["nope", "corrected_cp"])
def test_plate_map_unknown_plate_or_asset(ui: TestClient, small_sample, tmp_path, asset) -> None:
    pid = _configured(ui, small_sample, tmp_path)
    r = ui.get(f"/ui/projects/{pid}/plates", params={"asset": asset, "plate": "PlateX"})
    assert r.status_code == 404
    assert ("PlateX" in r.text) or ("asset 'nope' unknown" in r.text)
    assert csrf_of(r.text)  # the page keeps its normal frame (signed-in header)
