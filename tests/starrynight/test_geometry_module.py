"""``geometry`` on the real-geometry sample, scored against its ground-truth positions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile

from starrynight import index, inventory, workspace
from starrynight.modules.geometry import geometry_well
from starrynight.modules.illum import calc_illum
from starrynight.sample import SampleSpec, generate
from tests.starrynight.cli_helpers import run_cli

SPEC = SampleSpec(
    geometry="real", wells=("A1",), cycles=2, size=320, cp_grid=(3, 3), sbs_grid=(2, 2),
    overlap_pct=20.0, stage_error_um=1.5, n_barcodes=8, seed=4, workers=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def well(tmp_path_factory):
    out = tmp_path_factory.mktemp("geometry")
    result = generate(SPEC, out / "data")
    ws = str(out / "ws")
    inventory.generate(result.dataset_root, ws)
    index.generate(ws, ws)
    calc_illum(ws, "Plate1")
    return ws, Path(result.ground_truth), result.dataset_root


def _copy_ws(src: str, dst: Path) -> str:
    """A workspace of its own over a copy of the dataset (tests edit the images)."""
    data = Path(src).parent / "data" / SPEC.dataset
    shutil.copytree(data, dst.parent / "data" / SPEC.dataset)
    ws = str(dst)
    inventory.generate(str(dst.parent / "data" / SPEC.dataset), ws)
    index.generate(ws, ws)
    shutil.copytree(Path(src) / "illum", dst / "illum")
    return ws


def _errors_px(ws: str, truth: Path, arm: str, cycle: int | None):
    rows = pq.read_table(workspace.positions_path(ws, "Plate1", "A1", arm, cycle)).to_pylist()
    true = {
        r["site"]: r
        for r in pq.read_table(truth / "site_positions.parquet").to_pylist()
        if r["arm"] == arm and r["cycle"] == (cycle or 0)
    }
    ps = rows[0]["pixel_size_x_um"]

    def rel(key_y: str, key_x: str) -> np.ndarray:
        d = np.array(
            [[r[key_y] - true[r["site"]]["true_y_um"], r[key_x] - true[r["site"]]["true_x_um"]]
             for r in rows]
        ) / ps  # fmt: skip
        # Positions are defined up to one translation per arm: compare shapes.
        return np.linalg.norm(d - d.mean(axis=0), axis=1)

    return rel("y_um", "x_um"), rel("recorded_y_um", "recorded_x_um"), rows


def test_refined_positions_match_the_truth(well):
    ws, truth, _ = well
    result = geometry_well(ws, "Plate1", "A1", force=True)
    labels = [g.label for g in result.groups]
    assert labels == ["CP", "SBS_Cycle01", "SBS_Cycle02"]
    for arm, cycle in (("cp", None), ("sbs", 1), ("sbs", 2)):
        refined, recorded, rows = _errors_px(ws, truth, arm, cycle)
        assert np.sqrt(np.mean(recorded**2)) > 1.0  # the stage really was off
        assert np.sqrt(np.mean(refined**2)) <= 0.5, (arm, cycle, refined)
        assert refined.max() <= 1.0, (arm, cycle, refined)
        assert {r["status"] for r in rows} == {"refined"}
        assert {r["source"] for r in rows} == {"metadata"}
    for g in result.groups:
        pairs = pq.read_table(g.pairs_table).to_pylist()
        assert g.pairs_used == len(pairs) == g.pairs
        assert min(p["correlation"] for p in pairs) >= 0.9, g.label
        assert g.kept_recorded == [] and g.unplaced_fraction == 0.0
        assert g.illum_corrected
        # Nearly every pair passed: the recorded axes were kept without comparing others.
        assert (g.stage_axes, g.stage_axes_decided, g.stage_axes_scores) == (
            "as_recorded", "recorded", {},
        )  # fmt: skip
    report = json.loads(Path(result.report).read_text())
    assert report["stage_point"] == "centre"
    assert [g["label"] for g in report["groups"]] == labels


def test_pixel_sizes_come_from_the_files(well):
    ws, _, _ = well
    result = geometry_well(ws, "Plate1", "A1", arms=("cp", "sbs"))
    cp, sbs = result.groups[0], result.groups[1]
    assert cp.pixel_size_um == pytest.approx((0.65, 0.65))
    assert sbs.pixel_size_um[1] / cp.pixel_size_um[1] == pytest.approx(1.99)


def test_a_blank_site_keeps_its_recorded_position_and_says_so(well, tmp_path):
    ws = _copy_ws(well[0], tmp_path / "ws")
    from starrynight.modules.illum import plate_rows

    row = next(r for r in plate_rows(ws, "Plate1") if r.arm == "cp" and r.site == 4)
    blank = Path(tmp_path / "blank.ome.tiff")
    src = Path(row.uri)
    with tifffile.TiffFile(src) as tif:
        xml = tif.ome_metadata
        data = tif.asarray()
    rng = np.random.default_rng(0)
    data[:] = (100 + rng.normal(0, 3, data.shape)).astype(data.dtype)  # an empty field
    tifffile.imwrite(blank, data, description=xml.encode(), photometric="minisblack")
    shutil.copy(blank, src)
    result = geometry_well(ws, "Plate1", "A1", arms=("cp",), force=True)
    cp = result.groups[0]
    assert [k["site"] for k in cp.kept_recorded] == [4]
    # 4 of 12 pairs failed, so other stage orientations were tried; none fits better.
    assert cp.stage_axes == "as_recorded" and len(cp.stage_axes_scores) == 8
    assert cp.stage_axes_decided == "recorded (no orientation fitted clearly better)"
    assert "no neighbour pair passed registration" in cp.kept_recorded[0]["reason"]
    rows = {r["site"]: r for r in pq.read_table(cp.positions).to_pylist()}
    assert rows[4]["status"] == "kept_recorded"
    assert rows[4]["x_um"] == rows[4]["recorded_x_um"]
    assert rows[0]["status"] == "refined"


def test_cli_prints_the_report(well, capsys):
    ws, _, _ = well
    code, out, err = run_cli(["geometry", "-w", ws, "--plate", "Plate1", "--well", "A1", "--force",
                             "--arm", "sbs", "--cycle", "2"], capsys)  # fmt: skip
    assert code == 0, err
    assert "SBS_Cycle02: 4 site(s) from metadata, 4/4 pairs used" in out


def _strip_positions(ws: str, keep_first: bool) -> None:
    from starrynight.modules.illum import plate_rows

    rows = [r for r in plate_rows(ws, "Plate1") if r.arm == "cp"]
    for n, row in enumerate(rows):
        if keep_first and n == 0:
            continue
        data = tifffile.imread(row.uri)
        tifffile.imwrite(
            row.uri, data, ome=True, photometric="minisblack",
            metadata={"axes": "CYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65},
        )  # fmt: skip


def _no_outputs(ws: str) -> bool:
    return not Path(workspace.geometry_dir(ws, "Plate1", "A1")).exists()


def test_files_with_and_without_positions_are_one_clear_error(well, tmp_path, capsys):
    ws = _copy_ws(well[0], tmp_path / "ws")
    _strip_positions(ws, keep_first=True)
    code, _, err = run_cli(["geometry", "-w", ws, "--plate", "Plate1", "--well", "A1"], capsys)
    assert code == 2
    assert "no Plane PositionX/Y in its OME-XML, but" in err and err.count("\n") == 1
    assert "Traceback" not in err and _no_outputs(ws)


def _write_experiment(ws: str, layout: dict) -> None:
    from starrynight import experiment

    experiment.init(ws)
    data = json.loads(Path(experiment.init_path(ws)).read_text())
    data["cp"]["layout"] = layout
    Path(experiment.init_path(ws)).write_text(json.dumps(data))
    experiment.new(ws, experiment.init_path(ws))


def test_declared_layout_places_sites_and_refines(well, tmp_path):
    ws = _copy_ws(well[0], tmp_path / "ws")
    _strip_positions(ws, keep_first=False)
    _write_experiment(ws, {"rows": 3, "columns": 3, "order": "rows", "overlap_pct": 20})
    result = geometry_well(ws, "Plate1", "A1", arms=("cp",))
    cp = result.groups[0]
    assert cp.source == "layout" and cp.pairs_used == cp.pairs == 12
    refined, recorded, _ = _errors_px(ws, well[1], "cp", None)
    assert np.sqrt(np.mean(refined**2)) <= 0.5 < np.sqrt(np.mean(recorded**2))


@pytest.mark.parametrize(
    ("layout", "fragment"),
    [
        ({"rows": 2, "columns": 3}, "the declared layout has 6 sites but the files have 9"),
        ({"round": "999"}, "round: unknown layout '999'"),
        ({"rows": 3, "columns": 3, "first_site": 1}, "site 0 is outside the layout"),
    ],
)  # fmt: skip
def test_bad_layouts_are_one_clear_error(well, tmp_path, capsys, layout, fragment):
    ws = _copy_ws(well[0], tmp_path / "ws")
    _strip_positions(ws, keep_first=False)
    if "unknown layout" in fragment:
        with pytest.raises(Exception) as info:
            _write_experiment(ws, layout)
        assert fragment in str(info.value)
        return
    _write_experiment(ws, layout)
    code, _, err = run_cli(["geometry", "-w", ws, "--plate", "Plate1", "--well", "A1",
                           "--arm", "cp"], capsys)  # fmt: skip
    assert code == 2 and fragment in err and "Traceback" not in err
    assert _no_outputs(ws)


def test_disagreeing_pixel_sizes_are_one_clear_error(well, tmp_path, capsys):
    ws = _copy_ws(well[0], tmp_path / "ws")
    from starrynight.modules.illum import plate_rows

    row = next(r for r in plate_rows(ws, "Plate1") if r.arm == "cp" and r.site == 2)
    with tifffile.TiffFile(row.uri) as tif:
        xml = tif.ome_metadata.replace('PhysicalSizeX="0.65"', 'PhysicalSizeX="0.5"')
        data = tif.asarray()
    tifffile.imwrite(row.uri, data, description=xml.encode(), photometric="minisblack")
    code, _, err = run_cli(["geometry", "-w", ws, "--plate", "Plate1", "--well", "A1"], capsys)
    assert code == 2 and "PhysicalSizeX/Y" in err and "disagrees with" in err
    assert Path(row.uri).name in err and _no_outputs(ws)


def test_a_site_with_no_neighbour_is_an_error_unless_allowed(well, tmp_path, capsys):
    ws = _copy_ws(well[0], tmp_path / "ws")
    from starrynight.modules.illum import plate_rows

    row = next(r for r in plate_rows(ws, "Plate1") if r.arm == "cp" and r.site == 8)
    with tifffile.TiffFile(row.uri) as tif:
        xml = tif.ome_metadata
        data = tif.asarray()
    import re

    xml = re.sub(r'PositionX="[0-9.]+"', 'PositionX="90000"', xml)
    tifffile.imwrite(row.uri, data, description=xml.encode(), photometric="minisblack")
    argv = ["geometry", "-w", ws, "--plate", "Plate1", "--well", "A1", "--arm", "cp"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "site 8 (CP) overlaps no other site" in err and _no_outputs(ws)
    code, out, err = run_cli([*argv, "--allow-isolated"], capsys)
    assert code == 0, err
    assert "site 8: kept recorded position: no overlapping neighbour" in out


def _turn_stage(ws: str, axes: str) -> None:
    """Rewrite the CP files' stage positions as a stage whose axes lie ``axes`` would."""
    import re

    from starrynight.modules.illum import plate_rows

    for row in (r for r in plate_rows(ws, "Plate1") if r.arm == "cp"):
        with tifffile.TiffFile(row.uri) as tif:
            xml = tif.ome_metadata
            data = tif.asarray()

        def turn(m: re.Match) -> str:
            x, y = float(m["x"]), float(m["y"])
            if axes.startswith("swap_xy"):
                x, y = y, x
            x = -x if "flip_x" in axes else x
            y = -y if axes.endswith(("flip_y", "flip_xy")) else y
            return f'{m["a"]}PositionX="{x}"{m["b"]}PositionY="{y}"'

        xml, n = re.subn(r'(?P<a>\s)PositionX="(?P<x>[^"]+)"(?P<b>.*?\s)PositionY="(?P<y>[^"]+)"',
                         turn, xml)  # fmt: skip
        assert n >= 1
        tifffile.imwrite(row.uri, data, description=xml.encode(), photometric="minisblack")


@pytest.mark.parametrize("axes", ["flip_y", "flip_xy", "swap_xy"])
def test_a_stage_whose_axes_are_not_the_images_is_detected(well, tmp_path, axes):
    ws = _copy_ws(well[0], tmp_path / "ws")
    _turn_stage(ws, axes)
    cp = geometry_well(ws, "Plate1", "A1", arms=("cp",)).groups[0]
    assert (cp.stage_axes, cp.stage_axes_decided) == (axes, "detected")
    scores = cp.stage_axes_scores
    assert scores[axes] == max(scores.values()) >= scores["as_recorded"] + 0.2
    assert cp.pairs_used == cp.pairs == 12 and cp.kept_recorded == []
    refined, recorded, _ = _errors_px(ws, well[1], "cp", None)
    assert np.sqrt(np.mean(refined**2)) <= 0.5 and refined.max() <= 1.0
    assert np.sqrt(np.mean(recorded**2)) < 5  # turned back: only the stage error is left
    report = json.loads(Path(workspace.geometry_report_path(ws, "Plate1", "A1")).read_text())
    assert report["groups"][0]["stage_axes"] == axes


def test_cli_names_detected_stage_axes(well, tmp_path, capsys):
    ws = _copy_ws(well[0], tmp_path / "ws")
    _turn_stage(ws, "flip_x")
    code, out, err = run_cli(["geometry", "-w", ws, "--plate", "Plate1", "--well", "A1",
                             "--arm", "cp"], capsys)  # fmt: skip
    assert code == 0, err
    assert "CP: 9 site(s) from metadata, 12/12 pairs used" in out
    assert (
        "CP: stage axes flip_x (detected); mean correlation of probe pairs: as_recorded 0." in out
    )
    assert "flip_x 1.00, flip_y" in out


def test_declared_stage_axes_are_used_without_comparing(well, tmp_path):
    ws = _copy_ws(well[0], tmp_path / "ws")
    _turn_stage(ws, "flip_y")
    _write_experiment(ws, {"stage_axes": "flip_y"})
    cp = geometry_well(ws, "Plate1", "A1", arms=("cp",)).groups[0]
    assert (cp.stage_axes, cp.stage_axes_decided, cp.stage_axes_scores) == (
        "flip_y", "declared", {},
    )  # fmt: skip
    assert cp.pairs_used == cp.pairs == 12
    # Declared wrongly (the files are as the image): kept as declared, and it shows.
    ws2 = _copy_ws(well[0], tmp_path / "b" / "ws")
    _write_experiment(ws2, {"stage_axes": "flip_x"})
    cp = geometry_well(ws2, "Plate1", "A1", arms=("cp",)).groups[0]
    assert cp.stage_axes_decided == "declared" and cp.pairs_used < cp.pairs


def test_positions_csv_is_used_when_declared(well, tmp_path):
    ws = _copy_ws(well[0], tmp_path / "ws")
    truth = pq.read_table(well[1] / "site_positions.parquet").to_pylist()
    csv = tmp_path / "cp_positions.csv"
    lines = ["site,x_um,y_um"] + [
        f"{r['site']},{r['recorded_x_um']},{r['recorded_y_um']}" for r in truth if r["arm"] == "cp"
    ]
    csv.write_text("\n".join(lines) + "\n")
    _strip_positions(ws, keep_first=False)
    _write_experiment(ws, {"positions_csv": str(csv), "source": "csv"})
    result = geometry_well(ws, "Plate1", "A1", arms=("cp",))
    assert result.groups[0].source == "csv"
    refined, _, _ = _errors_px(ws, well[1], "cp", None)
    assert np.sqrt(np.mean(refined**2)) <= 0.5


def test_arms_placed_by_separate_calls_share_one_report(well, tmp_path):
    ws = _copy_ws(well[0], tmp_path / "ws")
    first = geometry_well(ws, "Plate1", "A1", arms=("cp",))
    assert [g.label for g in first.groups] == ["CP"] and not first.skipped
    second = geometry_well(ws, "Plate1", "A1", arms=("sbs",), cycles=(1,))
    assert [g.label for g in second.groups] == ["SBS_Cycle01"] and not second.skipped
    report = json.loads(Path(second.report).read_text())
    assert [g["label"] for g in report["groups"]] == ["CP", "SBS_Cycle01"]
    again = geometry_well(ws, "Plate1", "A1", arms=("cp",))
    assert again.skipped and again.groups[0].label == "CP"


def test_processes_and_threads_measure_the_same_pairs():
    from scipy import ndimage

    from starrynight.algorithms import stitch
    from starrynight.modules.geometry import measure_streaming

    rng = np.random.default_rng(11)
    scene = ndimage.gaussian_filter(rng.normal(0, 1, (700, 700)), 2.0) * 1000 + 3000
    origins = [(10 + r * 200 + rng.integers(-3, 4), 10 + c * 200 + rng.integers(-3, 4))
               for r in range(3) for c in range(3)]  # fmt: skip
    tiles = [scene[y : y + 240, x : x + 240].astype(np.uint16) for y, x in origins]
    recorded = np.array([(r * 200.0, c * 200.0) for r in range(3) for c in range(3)])
    pairs = stitch.neighbour_pairs(recorded, (240, 240))
    gain = np.linspace(0.9, 1.1, 240 * 240, dtype=np.float32).reshape(240, 240)

    def read(k, boxes):
        return [tiles[k][b] for b in boxes]

    order = list(range(9))
    args = (order, pairs, (240, 240), read, 8, 2, gain, 100.0)
    threads = measure_streaming(*args, processes=False)
    processes = measure_streaming(*args, processes=True)
    assert [(m.i, m.j) for m in processes] == [(p.i, p.j) for p in pairs]
    assert processes == threads
    true = {(p.i, p.j): np.subtract(origins[p.j], origins[p.i]) for p in pairs}
    for m in processes:
        np.testing.assert_allclose(m.offset, true[(m.i, m.j)], atol=0.1)
