"""The real-geometry sample: its ground truth is checked against what it wrote."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile

from starrynight import geometry as geo
from starrynight import sample_geometry as sg
from starrynight.sample import SampleSpec, generate

SPEC = SampleSpec(
    geometry="real", wells=("A1",), cycles=2, size=192, cp_grid=(2, 3), sbs_grid=(1, 2),
    overlap_pct=15.0, n_barcodes=8, nucleus_radius=6, seed=11, workers=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return generate(SPEC, tmp_path_factory.mktemp("real"))


def _files(root: str, folder: str) -> list[Path]:
    return sorted(Path(root).glob(f"*/*/images/Plate1/{folder}/*.ome.tiff"))


def test_arms_have_their_own_grids_and_pixel_sizes(sample):
    cp = _files(sample.dataset_root, "20X_CP_*")
    sbs1 = _files(sample.dataset_root, "10X_c1_SBS-1")
    assert len(cp) == 6 and len(sbs1) == 2
    h_cp, h_sbs = geo.read_ome_header(str(cp[0])), geo.read_ome_header(str(sbs1[0]))
    assert h_cp.pixel_size_um == (0.65, 0.65)
    ratio = h_sbs.pixel_size_um[1] / h_cp.pixel_size_um[1]
    assert ratio == pytest.approx(1.99) and ratio != 2
    assert h_cp.position_um is not None and h_sbs.position_um is not None


def test_recorded_positions_are_the_commanded_centres(sample):
    truth = pq.read_table(Path(sample.ground_truth) / "site_positions.parquet").to_pylist()
    by_key = {(r["arm"], r["cycle"], r["site"]): r for r in truth}
    for path in _files(sample.dataset_root, "20X_CP_*"):
        site = int(path.name.split("_")[2])
        h = geo.read_ome_header(str(path))
        r = by_key["cp", 0, site]
        half = SPEC.size * 0.65 / 2
        assert h.position_um[0] - half == pytest.approx(r["recorded_y_um"], abs=1e-3)
        assert h.position_um[1] - half == pytest.approx(r["recorded_x_um"], abs=1e-3)
    offs = np.array([[r["true_y_um"] - r["recorded_y_um"], r["true_x_um"] - r["recorded_x_um"]]
                     for r in truth])  # fmt: skip
    assert 0.2 < offs.std() < 3.0  # stage error ~1 um, unrecorded


def test_overlapping_fields_show_the_same_cells(sample):
    """Site 0 and 1 of CP overlap: their true offset maps nuclei onto each other."""
    truth = {(r["arm"], r["site"]): r
             for r in pq.read_table(Path(sample.ground_truth) / "site_positions.parquet")
             .to_pylist() if r["cycle"] == 0}  # fmt: skip
    a, b = (
        tifffile.imread(p)[-1].astype(float) for p in _files(sample.dataset_root, "20X_CP_*")[:2]
    )
    dy = (truth["cp", 1]["true_y_um"] - truth["cp", 0]["true_y_um"]) / 0.65
    dx = (truth["cp", 1]["true_x_um"] - truth["cp", 0]["true_x_um"]) / 0.65
    iy, ix = round(dy), round(dx)
    w = SPEC.size - ix
    strip_a = a[max(0, iy) : SPEC.size + min(0, iy), ix:]
    strip_b = b[max(0, -iy) : SPEC.size - max(0, iy), :w]
    assert np.corrcoef(strip_a.ravel(), strip_b.ravel())[0, 1] > 0.8


def test_cells_have_one_identity_in_both_arms(sample):
    cp = pq.read_table(Path(sample.ground_truth) / "cells.parquet").to_pylist()
    sbs = pq.read_table(Path(sample.ground_truth) / "sbs_cells.parquet").to_pylist()
    genes_cp = {r["well_cell_id"]: r["gene_symbol"] for r in cp}
    shared = [r for r in sbs if r["well_cell_id"] in genes_cp]
    assert len(shared) > 50
    assert all(genes_cp[r["well_cell_id"]] == r["gene_symbol"] for r in shared)
    # Overlaps: some CP cells are seen in two sites, with one identity.
    ids = [r["well_cell_id"] for r in cp]
    assert len(ids) > len(set(ids))
    frames = pq.read_table(Path(sample.ground_truth) / "sbs_frames.parquet").to_pylist()
    assert {r["cycle"] for r in frames} == {1, 2}
    assert all(abs(r["rotation_deg"]) <= 1.0 for r in frames)


def test_same_seed_same_bytes_whatever_the_workers(sample, tmp_path):
    other = generate(SampleSpec(**{**SPEC.__dict__, "workers": 1}), tmp_path / "b")

    def digest(root: str) -> dict[str, str]:
        base = Path(root)
        return {
            p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in base.rglob("*")
            if p.is_file() and p.suffix != ".json"
        }

    assert digest(sample.out) == digest(other.out)


def test_amplicons_lie_in_their_own_cell():
    # Rolling-circle products stay in the cell that made them: every SBS field's spots
    # fall inside their own cell's truth mask (29 % fell in a neighbour's before).
    spec = SampleSpec(geometry="real", wells=("A1",), cycles=2)
    plan = sg.well_plan(spec, 0, 0)
    inside = own = 0
    for frame in plan.sbs_frames[0][:2]:
        lo, hi = sg._world_box([frame], spec.size, 0)
        cells = sg.cells_near(spec, 0, 0, lo, hi, 8)
        r_px = spec.nucleus_radius * spec.cp_pixel_um / frame.pixel
        field = sg.render_field(spec, frame, cells, spec.size, 0, r_px)
        rc = np.rint(field.spot_rc).astype(int)
        ok = np.all(rc < spec.size, axis=1)
        label = field.cells[rc[ok, 0], rc[ok, 1]]
        inside += int((label > 0).sum())
        own += int((field.index[label[label > 0]] == field.spot_cell[ok][label > 0]).sum())
    assert inside > 5_000 and own / inside >= 0.99, (own, inside)
    per_cell = np.bincount(sg.block_cells(spec, 0, 0, 0, 0, 8).spot_owner)
    # Nearly every cell still finds room for all its spots.
    assert (per_cell >= sg.MIN_SPOTS).mean() >= 0.95 and per_cell.max() <= sg.MAX_SPOTS
