"""``mosaic``: OME-Zarr pyramids of a well, checked against the tiles they were drawn from."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from PIL import Image

from starrynight import index, inventory, workspace
from starrynight.modules import mosaic as mos
from starrynight.modules.align import align_well
from starrynight.modules.geometry import geometry_well
from starrynight.modules.illum import apply_illum, calc_illum
from starrynight.sample import SampleSpec, generate
from tests.starrynight.cli_helpers import run_cli

SPEC = SampleSpec(
    geometry="real", wells=("A1",), cycles=2, size=256, cp_grid=(3, 3), sbs_grid=(2, 2),
    overlap_pct=20.0, n_barcodes=8, seed=5, workers=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    out = tmp_path_factory.mktemp("mosaic")
    result = generate(SPEC, out / "data")
    ws = str(out / "ws")
    inventory.generate(result.dataset_root, ws)
    index.generate(ws, ws)
    calc_illum(ws, "Plate1")
    apply_illum(ws, "Plate1", "A1")
    align_well(ws, "Plate1", "A1")
    return ws


def test_missing_positions_name_the_command(ws, capsys):
    code, _, err = run_cli(["mosaic", "-w", ws, "--plate", "Plate1", "--well", "A1", "--arm", "cp"],
                           capsys)  # fmt: skip
    assert code == 2 and "no cp site positions (run 'starrynight geometry" in err
    assert not Path(workspace.mosaic_path(ws, "Plate1", "A1", "cp")).exists()


def test_mosaic_is_an_ngff_pyramid_of_the_placed_tiles(ws, capsys, monkeypatch):
    geometry_well(ws, "Plate1", "A1")
    monkeypatch.setattr(mos, "THUMBNAIL_SIDE", 200)
    code, out, err = run_cli(["mosaic", "-w", ws, "--plate", "Plate1", "--well", "A1",
                             "--chunk", "128"], capsys)  # fmt: skip
    assert code == 0, err
    assert "Plate1 A1 cp: 9 site(s) -> 3 channel(s)" in out
    assert "Plate1 A1 sbs: 4 site(s) -> 10 channel(s)" in out

    target = workspace.mosaic_path(ws, "Plate1", "A1", "cp")
    root = zarr.open_group(target, mode="r")
    ms = root.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [c["label"] for c in root.attrs["omero"]["channels"]] == list(SPEC.cp_channels)
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales[0] == [1.0, 0.65, 0.65] and scales[1] == [1.0, 1.3, 1.3]
    levels = [root[d["path"]] for d in ms["datasets"]]
    assert len(levels) >= 3 and max(levels[-1].shape[1:]) <= 200
    for a, b in itertools.pairwise(levels):
        assert b.shape[1:] == tuple((s + 1) // 2 for s in a.shape[1:])
    full = levels[0][:]
    half = levels[1][:]
    expect = (full[:, 0:2, 0:2].astype(np.uint32).sum(axis=(1, 2)) + 2) // 4
    np.testing.assert_array_equal(half[:, 0, 0], expect)

    # Each field's centre pixel is drawn from that field, unresampled.
    rows = pq.read_table(workspace.positions_path(ws, "Plate1", "A1", "cp")).to_pylist()
    y0 = np.floor(min(r["y_px"] for r in rows))
    x0 = np.floor(min(r["x_px"] for r in rows))
    for r in rows:
        ty, tx = round(r["y_px"] - y0), round(r["x_px"] - x0)
        tile = tifffile.imread(workspace.corrected_path(ws, "Plate1", "A1", r["site"], "DAPI"))
        block = full[2, ty + 100 : ty + 156, tx + 100 : tx + 156]
        np.testing.assert_array_equal(block, tile[100:156, 100:156])

    png = Image.open(io.BytesIO(Path(workspace.mosaic_thumbnail_path(ws, "Plate1", "A1", "cp"))
                                .read_bytes()))  # fmt: skip
    assert max(png.size) <= 200 and png.mode == "L"

    sbs = zarr.open_group(workspace.mosaic_path(ws, "Plate1", "A1", "sbs"), mode="r")
    labels = [c["label"] for c in sbs.attrs["omero"]["channels"]]
    assert labels[:2] == ["Cycle01_C", "Cycle01_A"] and labels[-1] == "Cycle02_DAPI"
    scale = sbs.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[1] == pytest.approx(0.65 * 1.99)


def test_band_height_does_not_change_the_pixels(ws, tmp_path):
    geometry_well(ws, "Plate1", "A1")
    plan = mos._plan(ws, "Plate1", "A1", "cp", required=True)
    _, tiles, channels, pixel_size, shape = plan
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    mos.write_mosaic(a, tiles, channels, pixel_size, shape, chunk=64, workers=1)
    mos.write_mosaic(b, tiles, channels, pixel_size, shape, chunk=512, workers=2)
    za, zb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    np.testing.assert_array_equal(za["0"][:], zb["0"][:])
    assert not list(tmp_path.glob(".*.tmp"))  # staging folders are gone


def test_row_ranges_drawn_in_processes_equal_one_thread(ws, tmp_path, monkeypatch):
    geometry_well(ws, "Plate1", "A1")
    _, tiles, channels, pixel_size, shape = mos._plan(ws, "Plate1", "A1", "cp", required=True)
    monkeypatch.setattr(mos, "THUMBNAIL_SIDE", 96)  # several levels on a small well
    drawn = []
    real = mos._draw_in_processes
    monkeypatch.setattr(mos, "_draw_in_processes", lambda *a: drawn.append(a[-1]) or real(*a))
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    levels_a, png_a = mos.write_mosaic(a, tiles, channels, pixel_size, shape, chunk=16, workers=1)
    levels_b, png_b = mos.write_mosaic(b, tiles, channels, pixel_size, shape, chunk=16, workers=2)
    assert len(drawn) == 1 and len(drawn[0]) == 2  # workers=2: two row ranges, forked
    assert levels_a == levels_b >= 3 and png_a == png_b
    za, zb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    for k in range(levels_a):
        np.testing.assert_array_equal(za[str(k)][:], zb[str(k)][:])


def test_segments_cut_at_top_level_chunk_rows():
    assert mos._segments(1000, 256, 2) == [(0, 512), (512, 1000)]
    assert mos._segments(1000, 256, 1) == [(0, 1000)]
    assert mos._segments(200, 256, 2) == [(0, 200)]
    assert mos._segments(26797, 16384, 2) == [(0, 16384), (16384, 26797)]


def test_rerun_skips_and_force_redraws(ws, capsys):
    geometry_well(ws, "Plate1", "A1")
    argv = ["mosaic", "-w", ws, "--plate", "Plate1", "--well", "A1", "--arm", "cp"]
    assert run_cli(argv, capsys)[0] == 0
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and "(already done)" in out
    code, out, _ = run_cli([*argv, "--force"], capsys)
    assert code == 0 and "(already done)" not in out
    attrs = json.loads(Path(workspace.mosaic_path(ws, "Plate1", "A1", "cp"), ".zattrs").read_text())
    assert attrs["multiscales"][0]["name"] == "cp"


def test_a_killed_drawing_leaves_nothing_behind_the_next_one(ws, capsys):
    # kill -9 mid-drawing leaves the staging folder (no mosaic: it is renamed in last)
    geometry_well(ws, "Plate1", "A1")
    final = Path(workspace.mosaic_path(ws, "Plate1", "A1", "cp"))
    stale = final.parent / f".{final.name}.0123abcd.tmp"
    (stale / "0").mkdir(parents=True)
    (stale / "0" / "chunk").write_bytes(b"partial")
    argv = ["mosaic", "-w", ws, "--plate", "Plate1", "--well", "A1", "--arm", "cp", "--force"]
    assert run_cli(argv, capsys)[0] == 0
    assert not stale.exists() and (final / ".zattrs").exists()
    assert not list(final.parent.glob(f".{final.name}.*"))


def test_an_ngff_reader_finds_every_level(ws):
    """What an NGFF 0.4 reader (ome-zarr, napari) follows: multiscales -> datasets ->
    arrays of halving size with the declared axes and channels. (ome-zarr itself is not
    a dependency: its S3 extra pins a botocore below the boto3 we need.)"""
    import zarr

    geometry_well(ws, "Plate1", "A1")
    mos.mosaic_well(ws, "Plate1", "A1", arms=("cp",))
    group = zarr.open_group(workspace.mosaic_path(ws, "Plate1", "A1", "cp"), mode="r")
    attrs = dict(group.attrs)
    (ms,) = attrs["multiscales"]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    shapes = [group[d["path"]].shape for d in ms["datasets"]]
    assert all(s[0] == len(SPEC.cp_channels) for s in shapes)
    for big, small in itertools.pairwise(shapes):
        assert small[1] == -(-big[1] // 2) and small[2] == -(-big[2] // 2)
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert all(b[1] == pytest.approx(2 * a[1]) for a, b in itertools.pairwise(scales))
    assert [c["label"] for c in attrs["omero"]["channels"]] == list(SPEC.cp_channels)
