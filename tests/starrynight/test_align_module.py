"""``align`` on the sample dataset, scored against its ground-truth shifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile

from starrynight import index, inventory, workspace
from starrynight.algorithms.align import AlignmentQC
from starrynight.modules.align import align_well
from starrynight.modules.illum import calc_illum
from starrynight.sample import SampleSpec, generate
from tests.starrynight.cli_helpers import run_cli


def make_workspace(out: Path, spec: SampleSpec) -> tuple[str, str]:
    result = generate(spec, out / "data")
    ws = str(out / "ws")
    inventory.generate(result.dataset_root, ws)
    index.generate(ws, ws)
    return ws, result.ground_truth


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    # 2 wells x 4 sites x 3 moved cycles = 24 shifts of up to +-30 px at the default noise.
    spec = SampleSpec(wells=("A1", "A2"), sites=4, cycles=4, size=256, workers=2)
    return make_workspace(tmp_path_factory.mktemp("align"), spec)


def test_recovered_shifts_match_ground_truth(plate):
    ws, truth = plate
    tables = []
    for well in ("A1", "A2"):
        result = align_well(ws, "Plate1", well, force=True)
        assert result.cycles == [1, 2, 3, 4] and not result.illum_corrected
        assert result.sites_written == 4 and not result.flagged
        tables.append(pq.read_table(result.table).to_pylist())
    got = {(r["well"], r["site"], r["cycle"]): (r["dy"], r["dx"]) for t in tables for r in t}
    expected = pq.read_table(Path(truth) / "shifts.parquet").to_pylist()
    errors = np.array(
        [
            np.hypot(got[e["well"], e["site"], e["cycle"]][0] - e["dy"],
                     got[e["well"], e["site"], e["cycle"]][1] - e["dx"])
            for e in expected
            if e["cycle"] > 1
        ]
    )  # fmt: skip
    assert len(errors) == 24
    assert np.sqrt(np.mean(errors**2)) <= 0.1, errors
    assert errors.max() <= 0.5, errors
    assert max(abs(e["dy"]) for e in expected) > 10  # the shifts are not trivially small
    assert all(r["correlation"] > 0.9 for t in tables for r in t)


def test_aligned_images_overlay_cycle_one(plate):
    ws, _ = plate
    align_well(ws, "Plate1", "A1")
    c1 = tifffile.imread(workspace.aligned_path(ws, "Plate1", "A1", 0, 1, "DAPI")).astype(float)
    c3 = tifffile.imread(workspace.aligned_path(ws, "Plate1", "A1", 0, 3, "DAPI")).astype(float)
    inner = (slice(40, -40), slice(40, -40))  # away from the zero padding
    assert np.corrcoef(c1[inner].ravel(), c3[inner].ravel())[0, 1] > 0.95
    for channel in ("A", "C", "G", "T", "DAPI"):
        path = Path(workspace.aligned_path(ws, "Plate1", "A1", 3, 4, channel))
        assert tifffile.imread(path).dtype == np.uint16
    again = align_well(ws, "Plate1", "A1")
    assert again.sites_skipped == 4 and again.sites_written == 0


def test_uses_sbs_illumination_functions_when_present(plate, capsys):
    ws, _ = plate
    calc_illum(ws, "Plate1", arm="sbs")
    code, out, _ = run_cli(
        ["align", "-w", ws, "--plate", "Plate1", "--well", "A2", "--force"], capsys
    )
    assert code == 0 and "illumination-corrected" in out and "0 flagged" in out
    table = pq.read_table(workspace.alignment_table_path(ws, "Plate1", "A2")).to_pylist()
    assert all(r["illum_corrected"] for r in table)


def test_qc_flags_are_reported_not_hidden(plate, capsys):
    ws, _ = plate
    result = align_well(ws, "Plate1", "A1", qc=AlignmentQC(max_shift=2.0), force=True)
    assert len(result.flagged) >= 1 and "exceeds 2 px" in result.flagged[0][2]
    assert result.sites_written == 4  # images are still written
    code, out, _ = run_cli(
        ["align", "-w", ws, "--plate", "Plate1", "--well", "A1", "--force",
         "--min-correlation", "0.9999", "--warn-correlation", "0.99999"],
        capsys,
    )  # fmt: skip
    assert code == 0 and "FLAG site" in out and "correlation after alignment" in out


def test_bad_inputs(tmp_path, capsys):
    ws, _ = make_workspace(
        tmp_path / "cp_only",
        SampleSpec(wells=("A1",), sites=1, cycles=0, size=64, nucleus_radius=5, workers=1),
    )
    code, _, err = run_cli(["align", "-w", ws, "--plate", "Plate1", "--well", "A1"], capsys)
    assert code == 2 and "no SBS cycles" in err
    ws, _ = make_workspace(
        tmp_path / "sbs",
        SampleSpec(wells=("A1",), sites=2, cycles=2, size=64, nucleus_radius=5, n_barcodes=4,
                   workers=1),
    )  # fmt: skip
    root = Path(index.dataset_root(ws))
    bad = sorted(root.glob("*/*/images/Plate1/10X_c2_*/*_0001_*.tiff"))[0]
    bad.write_bytes(bad.read_bytes()[:500])
    code, _, err = run_cli(["align", "-w", ws, "--plate", "Plate1", "--well", "A1"], capsys)
    assert code == 2 and str(bad) in err and len(err.strip().splitlines()) == 1
    assert not list(Path(ws).glob("images_aligned/**/*.tiff"))
    assert not list(Path(ws).glob("alignment/**/*.parquet"))
    code, out, err = run_cli(
        ["align", "-w", ws, "--plate", "Plate1", "--well", "A1", "--skip-bad"], capsys
    )
    assert code == 0 and "aligned 1 site(s)" in out and str(bad) in err
    code, _, err = run_cli(["align", "-w", ws, "--plate", "Plate1", "--well", "B7"], capsys)
    assert code == 2 and "'B7'" in err
