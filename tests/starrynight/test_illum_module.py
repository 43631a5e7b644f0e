"""``illum calc`` / ``illum apply`` on the sample dataset, scored against its ground truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from starrynight import index, inventory, workspace
from starrynight.modules.illum import apply_illum, calc_illum
from starrynight.sample import SampleSpec, generate
from tests.starrynight.cli_helpers import run_cli

CP = ("PhalloAF750", "ZO1-AF488", "DAPI")
SBS = ("C", "A", "T", "G", "DAPI")


def make_workspace(out: Path, spec: SampleSpec) -> tuple[str, str]:
    """Generate a sample, inventory and index it; return (workspace, ground truth)."""
    result = generate(spec, out / "data")
    ws = str(out / "ws")
    inventory.generate(result.dataset_root, ws)
    index.generate(ws, ws)
    return ws, result.ground_truth


def residual_vignetting(true: np.ndarray, function: np.ndarray) -> float:
    """CV of the smoothed corrected field over CV of the raw field (0 = perfect)."""
    sigma = max(true.shape) / 64
    corrected = ndimage.gaussian_filter(true / function, sigma)
    raw = ndimage.gaussian_filter(true, sigma)
    return float((corrected.std() / corrected.mean()) / (raw.std() / raw.mean()))


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    # 24 sites of 512 x 512: a plate-wise estimate needs a few dozen images.
    spec = SampleSpec(wells=("A1", "A2", "A3"), sites=8, cycles=1, n_barcodes=4, workers=2)
    return make_workspace(tmp_path_factory.mktemp("illum"), spec)


@pytest.fixture
def tiny(tmp_path):
    spec = SampleSpec(wells=("A1",), sites=3, cycles=1, size=64, nucleus_radius=5,
                      n_barcodes=4, workers=1)  # fmt: skip
    return make_workspace(tmp_path, spec)


def _function(ws: str, arm: str, channel: str) -> np.ndarray:
    cycle = 1 if arm == "sbs" else None
    return np.load(workspace.illum_path(ws, "Plate1", index.normalise_channel(channel), cycle))


def test_default_preset_matches_true_field_and_beats_cellprofiler(plate):
    ws, truth = plate
    result = calc_illum(ws, "Plate1", preset="cellprofiler")
    assert [(g.arm, g.cycle, g.n_images) for g in result.groups] == [
        ("cp", None, 24),
        ("sbs", 1, 24),
    ]
    cp_preset = {
        (a, c): _function(ws, a, c) for a, chans in (("cp", CP), ("sbs", SBS)) for c in chans
    }
    calc_illum(ws, "Plate1", preset="default", force=True)
    for arm, channels in (("cp", CP), ("sbs", SBS)):
        for channel in channels:
            true = np.load(Path(truth) / "illum" / f"{arm}_{channel}.npy")
            got = _function(ws, arm, channel)
            assert got.dtype == np.float32 and got.min() >= 1.0
            corr = np.corrcoef(got.ravel(), true.ravel())[0, 1]
            left = residual_vignetting(true, got)
            left_cp = residual_vignetting(true, cp_preset[arm, channel])
            assert corr >= 0.95, (arm, channel, corr)
            assert left <= 0.3, (arm, channel, left)
            assert left <= left_cp, (arm, channel, left, left_cp)
    stats = json.loads(Path(workspace.illum_stats_path(ws, "Plate1")).read_text())
    assert stats["n_images"] == 24 and stats["preset"] == "default"
    # The generator's camera offset is 100; the estimate is the darkest pixel.
    assert all(90 <= c["dark_level"] <= 120 for c in stats["channels"])
    png = Path(workspace.illum_png_path(ws, "Plate1", "DAPI"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calc_skips_complete_groups_and_force_redoes(plate):
    ws, _ = plate
    calc_illum(ws, "Plate1", arm="cp")
    npy = Path(workspace.illum_path(ws, "Plate1", "DAPI"))
    before = npy.stat().st_mtime_ns
    again = calc_illum(ws, "Plate1", arm="cp")
    assert again.groups[0].skipped and npy.stat().st_mtime_ns == before
    redo = calc_illum(ws, "Plate1", arm="cp", force=True)
    assert not redo.groups[0].skipped and npy.stat().st_mtime_ns != before


def test_apply_corrects_vignetting_of_a_well(plate):
    ws, truth = plate
    calc_illum(ws, "Plate1", arm="cp")
    result = apply_illum(ws, "Plate1", "A1")
    assert (result.sites_written, result.files_written) == (8, 24)
    out = Path(workspace.corrected_path(ws, "Plate1", "A1", 0, "ZO1AF488"))
    corrected = tifffile.imread(out)
    assert corrected.dtype == np.uint16 and corrected.shape == (512, 512)
    # The mean of the corrected well is flatter than the raw one.
    raw_mean = np.zeros((512, 512))
    cor_mean = np.zeros((512, 512))
    rows = sorted(Path(truth).parent.glob("sample/*/*/images/Plate1/20X_CP_*/WellA1_*"))
    for site, path in enumerate(rows):
        raw_mean += tifffile.imread(path)[1]
        cor_mean += tifffile.imread(workspace.corrected_path(ws, "Plate1", "A1", site, "ZO1AF488"))
    field = np.load(Path(truth) / "illum" / "cp_ZO1-AF488.npy")
    corr_raw = np.corrcoef(ndimage.gaussian_filter(raw_mean, 16).ravel(), field.ravel())[0, 1]
    corr_cor = np.corrcoef(ndimage.gaussian_filter(cor_mean, 16).ravel(), field.ravel())[0, 1]
    assert corr_raw > 0.8 and abs(corr_cor) < 0.5
    assert apply_illum(ws, "Plate1", "A1").sites_skipped == 8


def _cp_files(ws: str) -> list[Path]:
    root = Path(index.dataset_root(ws))
    return sorted(root.glob("*/*/images/Plate1/20X_CP_*/*.tiff"))


def test_cli_calc_and_apply(tiny, capsys):
    ws, _ = tiny
    code, out, _ = run_cli(["illum", "calc", "-w", ws, "--plate", "Plate1"], capsys)
    assert code == 0 and "cp: 3 function(s) from 3 images" in out and "sbs cycle 1" in out
    code, out, _ = run_cli(
        ["illum", "apply", "-w", ws, "--plate", "Plate1", "--well", "A1"], capsys
    )
    assert code == 0 and "corrected 3 site(s) (9 files)" in out
    code, out, _ = run_cli(["illum", "calc", "-w", ws, "--plate", "Plate1", "--arm", "cp"], capsys)
    assert code == 0 and "complete, skipped" in out


def test_truncated_tiff_is_one_line_error_and_no_output(tiny, capsys):
    ws, _ = tiny
    bad = _cp_files(ws)[1]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    code, _, err = run_cli(["illum", "calc", "-w", ws, "--plate", "Plate1", "--arm", "cp"], capsys)
    assert code == 2 and err.startswith("error: ") and str(bad) in err
    assert len(err.strip().splitlines()) == 1
    assert not Path(workspace.illum_dir(ws, "Plate1")).exists()
    code, out, err = run_cli(
        ["illum", "calc", "-w", ws, "--plate", "Plate1", "--arm", "cp", "--skip-bad"], capsys
    )
    assert code == 0 and "from 2 images" in out and f"skipped bad image: {bad}" in err
    # apply stops at the bad site and removes what it wrote in that run
    code, _, err = run_cli(
        ["illum", "apply", "-w", ws, "--plate", "Plate1", "--well", "A1"], capsys
    )
    assert code == 2 and str(bad) in err
    assert not list(Path(ws).glob("images_corrected/**/*.tiff"))
    code, out, err = run_cli(
        ["illum", "apply", "-w", ws, "--plate", "Plate1", "--well", "A1", "--skip-bad"], capsys
    )
    assert code == 0 and "corrected 2 site(s)" in out and str(bad) in err


def test_shape_mismatch_and_missing_channel_name_the_file(tiny, capsys):
    ws, _ = tiny
    files = _cp_files(ws)
    tifffile.imwrite(files[2], np.zeros((3, 32, 32), np.uint16))
    code, _, err = run_cli(["illum", "calc", "-w", ws, "--plate", "Plate1", "--arm", "cp"], capsys)
    assert code == 2 and str(files[2]) in err and "32x32" in err and "64x64" in err
    tifffile.imwrite(files[2], np.zeros((2, 64, 64), np.uint16))  # a channel frame missing
    code, _, err = run_cli(["illum", "calc", "-w", ws, "--plate", "Plate1", "--arm", "cp"], capsys)
    assert code == 2 and str(files[2]) in err and "expected 3 channel frames" in err
    assert not Path(workspace.illum_dir(ws, "Plate1")).exists()


def test_apply_without_functions_names_the_missing_file(tiny, capsys):
    ws, _ = tiny
    code, _, err = run_cli(
        ["illum", "apply", "-w", ws, "--plate", "Plate1", "--well", "A1"], capsys
    )
    assert code == 2 and "Plate1_IllumPhalloAF750.npy" in err and "illum calc" in err
    code, _, err = run_cli(["illum", "calc", "-w", ws, "--plate", "Nope"], capsys)
    assert code == 2 and "'Nope'" in err
    shutil.rmtree(Path(ws) / "index")
    code, _, err = run_cli(["illum", "calc", "-w", ws, "--plate", "Plate1"], capsys)
    assert code == 2 and "index" in err
