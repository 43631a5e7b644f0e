"""The sample generator's ground truth is verified against what it wrote, not trusted."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
from click.testing import CliRunner
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from starrynight.cli.main import cli, main
from starrynight.errors import UserError
from starrynight.sample import SampleSpec, generate, make_barcodes
from tests.conftest import SMALL_SPEC

LAYOUT = re.compile(
    r"^(?P<dataset>[^/]+)/(?P<source>[^/]+)/(?P<batch>[^/]+)/images/(?P<plate>[^/]+)/"
    r"(?P<folder>20X_CP_(?P=plate)_\d{8}_\d{6}|10X_c(?P<c1>\d+)_SBS-(?P<c2>\d+))/"
    r"Well(?P<well>[A-Z]*\d+)_Point(?P=well)_(?P<site>\d{4})_Channel(?P<channels>[^_/]+)"
    r"_Seq(?P<seq>\d{4})\.ome\.tiff$"
)


def _images(root: Path) -> list[Path]:
    return sorted(p for p in (root).rglob("*.ome.tiff"))


def _sbs_file(dataset: Path, well: str, site: int, cycle: int) -> Path:
    folder = next(dataset.glob(f"*/*/images/Plate1/10X_c{cycle}_SBS-{cycle}"))
    return next(folder.glob(f"Well{well}_Point{well}_{site:04d}_*"))


def _cp_file(dataset: Path, well: str, site: int) -> Path:
    folder = next(dataset.glob("*/*/images/Plate1/20X_CP_*"))
    return next(folder.glob(f"Well{well}_Point{well}_{site:04d}_*"))


def test_every_path_matches_the_gallery_layout(small_sample):
    out = Path(small_sample.out)
    files = _images(out / SMALL_SPEC.dataset)
    spec = SMALL_SPEC
    assert len(files) == len(spec.wells) * spec.sites * (1 + spec.cycles)
    for f in files:
        m = LAYOUT.match(f.relative_to(out).as_posix())
        assert m, f
        assert m["c1"] == m["c2"]
        channels = m["channels"].split(",")
        arr = tifffile.imread(f)
        assert arr.dtype == np.uint16
        assert arr.shape == (len(channels), spec.size, spec.size)
        expected = spec.sbs_channels if m["c1"] else spec.cp_channels
        assert tuple(channels) == expected
    barcodes = out / spec.dataset / spec.source / "workspace/metadata/Barcodes.csv"
    assert barcodes.read_text().splitlines()[0] == "sgRNA,gene_symbol"
    # Ground truth lives outside the dataset tree that an inventory scans.
    assert not list((out / spec.dataset).rglob("*ground_truth*"))


def test_known_shift_is_recovered_by_phase_correlation(small_sample):
    dataset = Path(small_sample.dataset_root)
    shifts = pq.read_table(Path(small_sample.ground_truth) / "shifts.parquet").to_pylist()
    errors = []
    nuclear = SMALL_SPEC.sbs_channels.index("DAPI")
    field = np.load(Path(small_sample.ground_truth) / "illum" / "sbs_DAPI.npy")

    def flat(path: Path) -> np.ndarray:
        # The shared vignetting pulls a plain phase correlation towards zero shift.
        return (tifffile.imread(path)[nuclear] - float(SMALL_SPEC.camera_offset)) / field

    for row in shifts:
        if row["cycle"] == 1:
            assert row["dy"] == row["dx"] == 0
            continue
        ref = flat(_sbs_file(dataset, row["well"], row["site"], 1))
        mov = flat(_sbs_file(dataset, row["well"], row["site"], row["cycle"]))
        found, _, _ = phase_cross_correlation(ref, mov, upsample_factor=50, normalization=None)
        errors.append((found[0] + row["dy"], found[1] + row["dx"]))
    errors = np.array(errors)
    assert len(errors) == len(SMALL_SPEC.wells) * SMALL_SPEC.sites * (SMALL_SPEC.cycles - 1)
    assert np.abs(errors).max() < 0.6
    assert np.sqrt((errors**2).mean()) < 0.2


def test_illumination_field_is_visible_in_the_mean_image(tmp_path):
    spec = SampleSpec(size=128, wells=("A1",), sites=30, cycles=0, seed=5, nucleus_radius=4)
    result = generate(spec, tmp_path)
    dataset = Path(result.dataset_root)
    for i, channel in enumerate(spec.cp_channels):
        stack = [tifffile.imread(f)[i].astype(float) for f in _images(dataset)]
        mean = ndimage.gaussian_filter(np.mean(stack, axis=0) - spec.camera_offset, 8)
        truth = np.load(Path(result.ground_truth) / "illum" / f"cp_{channel}.npy")
        assert truth.mean() == pytest.approx(1.0, rel=1e-4)
        assert np.corrcoef(mean.ravel(), truth.ravel())[0, 1] > 0.9, channel


def test_masks_and_cells_agree_with_the_nuclear_channel(small_sample):
    truth = Path(small_sample.ground_truth)
    dataset = Path(small_sample.dataset_root)
    cells = pq.read_table(truth / "cells.parquet").to_pylist()
    assert cells and {c["site"] for c in cells} == set(range(SMALL_SPEC.sites))
    nuclei = tifffile.imread(truth / "masks/Plate1/A1/Site_0_nuclei.tiff")
    whole = tifffile.imread(truth / "masks/Plate1/A1/Site_0_cells.tiff")
    assert np.all(whole[nuclei > 0] == nuclei[nuclei > 0])  # a nucleus lies in its cell
    dapi = tifffile.imread(_cp_file(dataset, "A1", 0))[SMALL_SPEC.cp_channels.index("DAPI")]
    assert dapi[nuclei > 0].mean() > 3 * dapi[whole == 0].mean()
    site0 = [c for c in cells if c["well"] == "A1" and c["site"] == 0]
    assert {c["cell_id"] for c in site0} == set(np.unique(nuclei[nuclei > 0]).tolist())
    for c in site0[:20]:
        assert nuclei[round(c["y"]), round(c["x"])] in (c["cell_id"], 0)
        assert c["sgRNA"].startswith(c["barcode"]) and len(c["barcode"]) == SMALL_SPEC.cycles


def test_each_cell_shows_its_barcode_base_per_cycle(tmp_path):
    spec = SampleSpec(size=256, wells=("A1",), sites=2, cycles=3, noise=0.0, seed=11)
    result = generate(spec, tmp_path)
    truth = Path(result.ground_truth)
    dataset = Path(result.dataset_root)
    cells = pq.read_table(truth / "cells.parquet").to_pylist()
    offsets = {r["site"]: r for r in pq.read_table(truth / "cp_sbs_offsets.parquet").to_pylist()}
    shifts = {
        (r["site"], r["cycle"]): r for r in pq.read_table(truth / "shifts.parquet").to_pylist()
    }
    bases = ["A", "C", "G", "T"]
    right = total = 0
    for site in range(spec.sites):
        mask = tifffile.imread(truth / f"masks/Plate1/A1/Site_{site}_cells.tiff")
        for cycle in range(1, spec.cycles + 1):
            img = tifffile.imread(_sbs_file(dataset, "A1", site, cycle)).astype(float)
            dy = offsets[site]["dy"] + shifts[(site, cycle)]["dy"]
            dx = offsets[site]["dx"] + shifts[(site, cycle)]["dx"]
            back = ndimage.shift(img, (0, -dy, -dx), order=1)  # into the CP frame
            # Cells near the edge may be cut off in some cycle (shifts up to 42 px).
            central = [
                c for c in cells if c["site"] == site and 50 < c["y"] < 206 and 50 < c["x"] < 206
            ]
            for c in central:
                inside = mask == c["cell_id"]
                signal = [back[spec.sbs_channels.index(b)][inside].sum() for b in bases]
                total += 1
                right += bases[int(np.argmax(signal))] == c["barcode"][cycle - 1]
    assert total > 50
    assert right / total > 0.97


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    spec = SampleSpec(
        size=96, wells=("A1",), sites=3, cycles=2, n_barcodes=8, nucleus_radius=5, seed=9
    )
    a = generate(spec, tmp_path / "a")
    b = generate(SampleSpec(**{**spec.__dict__, "workers": 1}), tmp_path / "b")

    def digest(root: str) -> dict[str, str]:
        base = Path(root)
        return {
            p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in base.rglob("*")
            if p.is_file() and p.suffix != ".json"
        }

    assert digest(a.out) == digest(b.out)
    c = generate(SampleSpec(**{**spec.__dict__, "seed": 10}), tmp_path / "c")
    assert digest(a.out) != digest(c.out)


def test_barcode_prefixes_are_distinct_and_two_apart():
    spec = SampleSpec(cycles=6, n_barcodes=40)
    rows = make_barcodes(spec)
    prefixes = [s[:6] for s, _ in rows]
    assert len(set(prefixes)) == 40
    assert all(len(s) == 20 and set(s) <= set("ACGT") for s, _ in rows)
    for i, a in enumerate(prefixes):
        for b in prefixes[i + 1 :]:
            assert sum(x != y for x, y in zip(a, b, strict=True)) >= 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--sites", "0"], "sites must be at least 1"),
        (["--cp-channels", "A,B,C,D,E,F,G,H,I"], "expected 1 to 8 names"),
        (["--sbs-channels", "C,A,T,DAPI"], "missing base channel(s) ['G']"),
        (["--sbs-channels", "C,A,T,G"], "expected a nuclear stain"),
        (["--wells", "A1,,B2"], "without empty items"),
        (["--wells", "A1,W/1"], "well 'W/1'"),
        (["--size", "10"], "size must be"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(tmp_path, capsys, args, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "generate", "-o", str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_existing_output_needs_overwrite(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit):
        main(["sample", "generate", "-o", str(tmp_path), "--size", "128", "--sites", "1",
              "--geometry", "shared"])  # fmt: skip
    assert "not empty (use --overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious"
    result = CliRunner().invoke(
        cli,
        ["sample", "generate", "-o", str(tmp_path), "--size", "128", "--sites", "1", "--overwrite",
         "--geometry", "shared",
         "--cycles", "1", "--barcodes", "4", "--wells", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote 2 images" in result.output
    assert not (tmp_path / "keep.txt").exists()


def test_spec_validation_names_the_value():
    with pytest.raises(UserError, match="n_barcodes 20 cannot be told apart with 2 cycles"):
        SampleSpec(cycles=2, n_barcodes=20).validate()
