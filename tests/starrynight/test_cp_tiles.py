"""``cp tiles``: both arms of a real-geometry well (CP 20X 3x3, SBS 10X 2x2) cut into one
PCPIP tile grid, and the analysis LoadData over the tiles."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from scipy.spatial import cKDTree
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import label, regionprops
from skimage.transform import AffineTransform, warp

from starrynight import storage, workspace
from starrynight.algorithms import tiles as tl
from starrynight.cellprofiler import loaddata as ld
from starrynight.cellprofiler import run as cprun
from starrynight.cli.main import main
from starrynight.errors import UserError
from starrynight.sample import SampleSpec, generate
from tests.starrynight.cellprofiler_helpers import (
    PIPELINES,
    require_cellprofiler,
    requires_cellprofiler,
)
from tests.starrynight.cli_helpers import run_cli
from tests.starrynight.test_storage import s3_endpoint  # noqa: F401 - the moto server fixture

P, W = "Plate1", "A1"
SPEC = SampleSpec(
    geometry="real", wells=(W,), cycles=2, size=256, cp_grid=(3, 3), sbs_grid=(2, 2),
    overlap_pct=15.0, n_barcodes=8, nucleus_radius=8, seed=4, workers=2,
)  # fmt: skip
IMAGES = [
    "CorrPhalloidin", "CorrZO1AF488", "CorrDNA", "Cycle01_A", "Cycle01_C", "Cycle01_G",
    "Cycle01_T", "Cycle01_DAPI", "Cycle02_A", "Cycle02_C", "Cycle02_G", "Cycle02_T",
]  # fmt: skip


_run = run_cli


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sample's workspace up to the merge and mosaics, before any tiles."""
    out = tmp_path_factory.mktemp("tiles")
    res = generate(SPEC, out / "data")
    ws = str(out / "ws")
    u = ["-w", ws, "--plate", P, "--well", W]
    init = str(Path(workspace.experiment_path(ws)).with_name("experiment.init.json"))
    for args in (
        ["inventory", "gen", "-d", res.dataset_root, "-o", ws, "--no-progress"],
        ["index", "gen", "-i", ws, "-o", ws],
        ["exp", "init", "-w", ws],
        ["exp", "new", "-w", ws, "-i", init],
        ["illum", "calc", "-w", ws, "--plate", P],
        ["illum", "apply", *u, "--no-progress"],
        ["align", *u, "--no-progress"],
        ["geometry", *u],
        ["mosaic", *u],
        ["segment", *u, "--diameter", "16", "--no-progress"],
        ["barcodes", "call", *u, "--diameter", "8", "--no-progress"],
        ["merge", *u],
    ):
        main(args)
    return ws, Path(res.ground_truth)


@pytest.fixture(scope="module")
def tiled(built):
    ws, truth = built
    main(["cp", "tiles", "-w", ws, "--plate", P, "--well", W])
    return ws, truth


def _copy(ws: str, dst: Path, *skip: str) -> str:
    shutil.copytree(ws, dst, ignore=shutil.ignore_patterns(*skip) if skip else None)
    return str(dst)


def _tile(ws: str, image: str, site: int) -> np.ndarray:
    return tifffile.imread(workspace.cropped_path(ws, P, W, image, site))


def _nuclei(img: np.ndarray) -> np.ndarray:
    """Centroids (y, x) of the bright blobs of a nuclear image (Otsu on a light blur)."""
    g = gaussian(img.astype(np.float64), 1)
    if not (g > 0).any():
        return np.zeros((0, 2))
    lab = label(g > threshold_otsu(g[g > 0]))
    return np.array([r.centroid for r in regionprops(lab) if r.area > 30]).reshape(-1, 2)


def _mutual(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours: indices into ``a`` and ``b``."""
    if not len(a) or not len(b):
        return np.zeros(0, int), np.zeros(0, int)
    ab = cKDTree(b).query(a)[1]
    ba = cKDTree(a).query(b)[1]
    ok = ba[ab] == np.arange(len(a))
    return np.flatnonzero(ok), ab[ok]


# ----------------------------------------------------------------------- algorithms


def test_grid_follows_pcpip_and_refuses_grids_that_do_not_fit():
    g = tl.tile_grid((692, 694), field_px=256)  # about one field per tile
    assert (g.tiles_per_side, g.tile_size, g.canvas) == (3, 232, 696)
    assert tl.tile_grid((692, 694), tiles_per_side=2).tile_size == 347
    assert tl.tile_grid((692, 694), tile_size=300).tiles_per_side == 3
    # PCPIP numbers tiles column-major from 1: tile 2 is below tile 1.
    first = g.tiles()[:4]
    assert first == [(1, 0, 0, 0, 0), (2, 1, 0, 232, 0), (3, 2, 0, 464, 0), (4, 0, 1, 0, 232)]
    assert tl.tile_site(2, 1, 3) == 6
    with pytest.raises(ValueError, match="larger than the well's canvas"):
        tl.tile_grid((692, 694), tile_size=5000)
    with pytest.raises(ValueError, match="expected a tile size of at least 347 px"):
        tl.tile_grid((692, 694), tiles_per_side=2, tile_size=100)
    with pytest.raises(ValueError, match="only padding"):
        tl.tile_grid((692, 694), tiles_per_side=9, tile_size=100)


def test_resampling_matches_skimage_warp():
    rng = np.random.default_rng(0)
    src = (rng.random((300, 300)) * 60000).astype(np.uint16)
    # CP canvas -> SBS source: about half the scale, a small rotation, a shift.
    a = np.array([[0.5 * np.cos(0.02), -0.5 * np.sin(0.02), 20.3],
                  [0.5 * np.sin(0.02), 0.5 * np.cos(0.02), 11.7], [0, 0, 1]])  # fmt: skip
    y0, x0, size = 40, 60, 200
    coords = tl.source_coordinates(a, y0, x0, size)
    sampler = tl.resampler(coords, src.shape)
    ys, ye, xs, xe = sampler.box
    ours = sampler(src[ys:ye, xs:xe])  # only the box of the source is read
    # skimage's inverse map acts on (x, y): canvas pixel (x, y) -> source (x, y).
    shift = np.array([[1, 0, y0], [0, 1, x0], [0, 0, 1]], float)
    inv_yx = a @ shift
    p = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], float)
    ref = warp(src, AffineTransform(matrix=p @ inv_yx @ p), output_shape=(size, size), order=1,
               preserve_range=True, mode="constant", cval=0)  # fmt: skip
    assert np.abs(ours[2:-2, 2:-2].astype(float) - ref[2:-2, 2:-2]).max() <= 1.0


def test_pasting_shifts_are_undone():
    # One field pasted 0.4 px up and 0.3 px right of where it is: its content lies there.
    fields = tl.MosaicFields.from_positions(np.array([[0.4, -0.3], [0.0, 90.0]]), (100, 100))
    assert np.allclose(fields.shift[0], [0.4, -0.3]) and np.allclose(fields.shift[1], 0)
    pts = np.array([[10.0, 10.0], [10.0, 150.0], [10.0, 500.0]])
    got = fields.shifts_at(pts, np.arange(2))
    assert np.allclose(got, [[0.4, -0.3], [0, 0], [0, 0]])  # second field, then none
    # The owner is the nearest centre among the fields holding the point (the seam).
    assert np.allclose(fields.shifts_at(np.array([[10.0, 94.0]]), np.arange(2)), [[0.4, -0.3]])
    assert np.allclose(fields.shifts_at(np.array([[10.0, 96.0]]), np.arange(2)), [[0, 0]])


# ----------------------------------------------------------------------- the well


def test_tiles_cover_the_well_and_cut_the_cp_mosaic_as_it_is(tiled, capsys):
    ws, _ = tiled
    report = json.loads(Path(workspace.tiles_report_path(ws, P, W)).read_text())
    assert report["status"] == "complete" and report["tiles"] == 9
    assert sorted(report["images"]) == sorted(IMAGES)
    assert report["transform"]["source"] == "merge"
    n, t = report["tiles_per_side"], report["tile_size"]
    root = zarr.open_group(workspace.mosaic_path(ws, P, W, "cp"), mode="r")
    labels = [c["label"] for c in root.attrs["omero"]["channels"]]
    level0 = root[root.attrs["multiscales"][0]["datasets"][0]["path"]]
    h, w = level0.shape[1:]
    assert n * t >= max(h, w) and (n - 1) * t < max(h, w)
    canvas = np.zeros((n * t, n * t), np.uint16)
    table = pq.read_table(workspace.tiles_table_path(ws, P, W)).to_pylist()
    assert [r["site"] for r in table] == list(range(1, 10))
    for r in table:
        assert r["site"] == r["tile_col"] * n + r["tile_row"] + 1
        tile = _tile(ws, "CorrDNA", r["site"])
        assert tile.shape == (t, t) and tile.dtype == np.uint16
        canvas[r["y0_px"] : r["y0_px"] + t, r["x0_px"] : r["x0_px"] + t] = tile
    # Every pixel of the CP mosaic is in exactly one tile; the rest is zero padding.
    assert np.array_equal(canvas[:h, :w], np.asarray(level0[labels.index("DAPI")]))
    assert not canvas[h:].any() and not canvas[:, w:].any()
    assert all(r["cp_fraction"] > 0.9 for r in table)
    assert min(r["sbs_fraction"] for r in table) > 0.5


def test_sbs_tiles_are_registered_to_the_cp_tiles(tiled):
    ws, truth = tiled
    table = pq.read_table(workspace.tiles_table_path(ws, P, W)).to_pylist()
    cells = pq.read_table(truth / "cells.parquet").to_pandas()
    truth_um = cells.drop_duplicates("well_cell_id")[["well_y_um", "well_x_um"]].to_numpy()
    dists, cp_um, cp_count = [], [], 0
    for r in table:
        cp = _nuclei(_tile(ws, "CorrDNA", r["site"]))
        sbs = _nuclei(_tile(ws, "Cycle01_DAPI", r["site"]))
        i, j = _mutual(cp, sbs)
        cp_count += len(cp)
        dists.append(np.hypot(*(cp[i] - sbs[j]).T))
        cp_um.append((cp[i] + 0.5) * 0.65 + [r["y_um"], r["x_um"]])
    d = np.concatenate(dists)
    # Nuclei found in a CP tile and in the same SBS tile (2x coarser, rotated ~1 degree
    # in the sample) agree to a fraction of a CP pixel.
    assert len(d) >= 0.9 * cp_count and cp_count > 400
    assert np.median(d) <= 0.5 and np.percentile(d, 95) <= 1.0, np.percentile(d, [50, 95])
    # And they are the sample's cells: tile pixels map to well micrometres through the
    # table, in the frame of the refined CP positions. That frame is the stage's, up to
    # the refinement's one free translation; the truth's cells are in a frame centred on
    # the well (both offsets measured from the truth's own sites and cells).
    ours = pq.read_table(workspace.positions_path(ws, P, W, "cp")).to_pandas().set_index("site")
    sites = pq.read_table(truth / "site_positions.parquet").to_pandas()
    sites = sites[sites["arm"] == "cp"].set_index("site")
    true_corner = sites[["true_y_um", "true_x_um"]]
    refine = np.median(
        ours[["y_um", "x_um"]].to_numpy() - true_corner.loc[ours.index].to_numpy(), 0
    )
    stage = true_corner.loc[cells["site"]].to_numpy() + (cells[["y", "x"]].to_numpy() + 0.5) * 0.65
    origin = np.median(stage - cells[["well_y_um", "well_x_um"]].to_numpy(), axis=0)
    near, _ = cKDTree(truth_um).query(np.concatenate(cp_um) - refine - origin)
    # (the CP mosaic pastes each field up to half a pixel, 0.33 um, from where it is)
    assert np.median(near) <= 0.6 and np.percentile(near, 95) <= 2.0, np.percentile(near, [50, 95])


def test_analysis_loaddata_over_tiles_is_what_9_analysis_reads(tiled, capsys):
    ws, _ = tiled
    code, _, err = _run(["cp", "loaddata", "-w", ws, "--step", "analysis"], capsys)
    assert code == 0, err
    with open(workspace.loaddata_path(ws, "analysis", f"{P}-{W}")) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["Metadata_Site"]) for r in rows] == list(range(1, 10))
    assert list(rows[0])[:4] == [
        "Metadata_Plate", "Metadata_Well", "Metadata_Well_Value", "Metadata_Site",
    ]  # fmt: skip
    names = [c[len("FileName_") :] for c in rows[0] if c.startswith("FileName_")]
    assert names == IMAGES
    # The images PCPIP's 9_Analysis (our fixture of it) measures are all there.
    fixture = (PIPELINES / "pcpip_9_analysis.cppipe").read_text()
    wanted = re.search(r"Select images to measure:(.*)", fixture).group(1)
    assert {x.strip() for x in wanted.split(",")} <= set(names)
    folder = Path(workspace.cropped_well_dir(ws, P, W))
    assert folder.name == "Plate1_WellA1"
    for r in rows:
        for name in names:
            assert r[f"FileName_{name}"] == f"{name}_Site_{r['Metadata_Site']}.tiff"
            assert r[f"PathName_{name}"] == str(folder / name)
    by_site = ld.write_loaddata(ws, "analysis", by=("plate", "well", "site"))
    assert [c.unit for c in by_site.csvs] == [f"{P}-{W}-{k}" for k in range(1, 10)]
    # Without tiles, sites are never paired by number across different grids.
    with pytest.raises(UserError, match=r"different site grids.*starrynight cp tiles"):
        ld.write_loaddata(ws, "analysis", grid="sites")


def test_rerun_skips_complete_tiles_and_another_grid_replaces_them(tiled, tmp_path, capsys):
    ws = _copy(tiled[0], tmp_path / "ws")
    u = ["cp", "tiles", "-w", ws, "--plate", P, "--well", W]
    code, out, _ = _run(u, capsys)
    assert code == 0 and "wrote 0, skipped 9 complete" in out
    Path(workspace.cropped_path(ws, P, W, "Cycle02_T", 5)).unlink()
    code, out, _ = _run(u, capsys)
    assert code == 0 and "wrote 1, skipped 8 complete" in out
    code, out, _ = _run([*u, "--tiles-per-side", "2"], capsys)
    assert code == 0 and "4 tile(s) of 347 px" in out and "wrote 4, skipped 0" in out
    files = sorted(p.name for p in Path(workspace.cropped_well_dir(ws, P, W)).rglob("*.tiff"))
    assert len(files) == 4 * len(IMAGES) and not any("_Site_5" in f for f in files)
    rows = ld.build_units(ws, "analysis")[0][f"{P}-{W}"]
    assert [r["Metadata_Site"] for r in rows] == [1, 2, 3, 4]


def test_bad_input_is_one_clear_line(built, tiled, tmp_path, capsys):
    ws, _ = tiled
    u = ["--plate", P, "--well", W]
    before = {p: p.stat().st_mtime_ns for p in Path(ws, "images_corrected_cropped").rglob("*")}
    code, _, err = _run(["cp", "tiles", "-w", ws, *u, "--tile-size", "5000"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "tile size 5000 px is larger than the well's canvas (692 x 694 px)" in err
    after = {p: p.stat().st_mtime_ns for p in Path(ws, "images_corrected_cropped").rglob("*")}
    assert after == before  # nothing touched

    no_mosaic = _copy(ws, tmp_path / "no_mosaic", "mosaics", "images_corrected_cropped", "tiles")
    code, _, err = _run(["cp", "tiles", "-w", no_mosaic, *u], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "no CP mosaic yet (run 'starrynight mosaic -w" in err
    assert not Path(no_mosaic, "images_corrected_cropped").exists()
    with pytest.raises(UserError, match="different site grids"):
        ld.write_loaddata(no_mosaic, "analysis")  # the refusal stays where no tiles exist
    with pytest.raises(UserError, match="no complete tiles"):
        ld.write_loaddata(no_mosaic, "analysis", grid="tiles")

    no_merge = _copy(ws, tmp_path / "no_merge", "merge", "images_corrected_cropped", "tiles")
    code, _, err = _run(["cp", "tiles", "-w", no_merge, *u], capsys)
    assert code == 2 and err.count("\n") == 1 and "--transform stage" in err
    code, out, err = _run(["cp", "tiles", "-w", no_merge, *u, "--transform", "stage"], capsys)
    assert code == 0 and "SBS placed by the stage positions (no registration)" in out, err


def test_tiles_of_a_workspace_on_s3_are_the_same(tiled, s3_endpoint):  # noqa: F811
    ws, _ = tiled
    storage.s3_client().create_bucket(Bucket="tiles")
    remote = "s3://tiles/ws"
    for part in ("experiment", "geometry", "mosaics", "merge", "index"):
        for f in Path(ws, part).rglob("*"):
            if f.is_file():
                rel = f.relative_to(ws).as_posix()
                storage.write_bytes(storage.join(remote, *rel.split("/")), f.read_bytes())
    from starrynight.cellprofiler.tiles import tile_well

    res = tile_well(remote, P, W)
    assert res.written == 9
    for site in (1, 5, 9):
        for image in ("CorrDNA", "Cycle02_G", "Cycle01_DAPI"):
            data = storage.read_bytes(workspace.cropped_path(remote, P, W, image, site))
            assert np.array_equal(tifffile.imread(io.BytesIO(data)), _tile(ws, image, site))


@requires_cellprofiler
@pytest.mark.slow
def test_cellprofiler_finds_the_same_nuclei_in_both_arms_of_a_tile(tiled, tmp_path):
    # A stock-module stand-in for 9_Analysis (tiles_nuclei.cppipe: IdentifyPrimaryObjects
    # on CorrDNA and on Cycle01_DAPI); the real one needs the CallBarcodes plugin.
    ws = _copy(tiled[0], tmp_path / "ws")
    ld.write_loaddata(ws, "analysis", grid="tiles")
    report = cprun.run_pipeline(
        ws, "analysis", str(PIPELINES / "tiles_nuclei.cppipe"),
        cellprofiler=require_cellprofiler(),
    )  # fmt: skip
    assert report.status.value == "succeeded", report.failures
    out = Path(workspace.cellprofiler_output_dir(ws, "analysis", f"{P}-{W}"))

    def objects(name: str) -> dict[int, np.ndarray]:
        found: dict[int, list] = {}
        for r in csv.DictReader((out / f"MyExpt_{name}.csv").open()):
            found.setdefault(int(r["ImageNumber"]), []).append(
                (float(r["Location_Center_Y"]), float(r["Location_Center_X"]))
            )
        return {k: np.array(v) for k, v in found.items()}

    images = list(csv.DictReader((out / "MyExpt_Image.csv").open()))
    assert sorted(int(r["Metadata_Site"]) for r in images) == list(range(1, 10))
    cp, sbs = objects("Nuclei"), objects("SBSNuclei")
    d, n = [], 0
    for k, a in cp.items():
        i, j = _mutual(a, sbs.get(k, np.zeros((0, 2))))
        n += len(a)
        d.append(np.hypot(*(a[i] - sbs[k][j]).T))
    dist = np.concatenate(d)
    assert n > 300 and len(dist) >= 0.85 * n
    assert np.median(dist) <= 0.5 and np.percentile(dist, 90) <= 1.0
