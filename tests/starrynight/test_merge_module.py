"""``starrynight merge`` on the real-geometry sample (CP 20X and SBS 10X on their own grids),
scored against its ground truth: registration, one-to-one pairs, cells counted once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import tifffile

from starrynight import workspace
from starrynight.algorithms import segmentation as seg
from starrynight.cli.main import main
from starrynight.modules.analysis import analyse_well, summarise_plate
from starrynight.sample import SampleSpec, generate
from tests.starrynight.cli_helpers import run_cli

P, W = "Plate1", "A1"
SPEC = SampleSpec(
    geometry="real", wells=(W,), cycles=2, size=320, cp_grid=(3, 3), sbs_grid=(2, 2),
    overlap_pct=15.0, n_barcodes=8, nucleus_radius=8, seed=4, workers=2,
)  # fmt: skip


_run = run_cli


@pytest.fixture(scope="module")
def well(tmp_path_factory):
    out = tmp_path_factory.mktemp("merge")
    res = generate(SPEC, out / "data")
    ws = str(out / "ws")
    u = ["-w", ws, "--plate", P, "--well", W]
    for args in (
        ["inventory", "gen", "-d", res.dataset_root, "-o", ws, "--no-progress"],
        ["index", "gen", "-i", ws, "-o", ws],
        ["illum", "calc", "-w", ws, "--plate", P],
        ["illum", "apply", *u],
        ["align", *u],
        ["geometry", *u],
        ["segment", *u, "--diameter", "16"],
        ["barcodes", "call", *u, "--diameter", "8"],
        ["merge", *u],
    ):
        main(args)
    return ws, Path(res.ground_truth)


def _truth_of(ws: str, truth: Path, prefix: str, table: str, mask) -> dict:
    """(site, label) of every segmented nucleus -> its ground-truth cell (largest overlap)."""
    rows = {(r["site"], r["cell_id"]): r for r in pq.read_table(truth / table).to_pylist()}
    out = {}
    for s in sorted({k[0] for k in rows}):
        gt = tifffile.imread(truth / "masks" / P / W / f"{prefix}Site_{s}_nuclei.tiff")
        pred = tifffile.imread(mask(s))
        a, b, n = seg.overlap_pairs(pred.astype(np.int64), gt.astype(np.int64))
        best: dict[int, tuple[int, int]] = {}
        for x, y, k in zip(a.tolist(), b.tolist(), n.tolist(), strict=True):
            if k > best.get(x, (0, 0))[1]:
                best[x] = (y, k)
        out.update({(s, x): rows[(s, y)] for x, (y, _) in best.items()})
    return out


def test_registration_matches_the_truth(well):
    ws, truth = well
    report = json.loads(Path(workspace.merge_report_path(ws, P, W)).read_text())
    frame = pq.read_table(truth / "sbs_frames.parquet").to_pylist()[0]
    assert report["status"] == "registered" and report["flags"] == []
    t = report["transform"]
    assert t["scale_px"] == pytest.approx(frame["scale"], rel=0.002)
    assert abs(t["rotation_deg"] - frame["rotation_deg"]) <= 0.05
    assert report["registration"]["residual_um"]["rms"] <= 1.0
    assert report["registration"]["inlier_share"] >= 0.8


def test_every_cp_cell_once_with_its_own_sbs_cell(well):
    ws, truth = well
    cells = pq.read_table(workspace.merge_cells_path(ws, P, W)).to_pylist()
    cp = _truth_of(ws, truth, "", "cells.parquet",
                   lambda s: workspace.segmentation_mask_path(ws, P, W, s, "Nuclei"))  # fmt: skip
    sbs = _truth_of(ws, truth, "SBS_", "sbs_cells.parquet",
                    lambda s: workspace.sbs_mask_path(ws, P, W, s, "Nuclei"))  # fmt: skip
    in_sbs = {r["well_cell_id"] for r in sbs.values()}
    seen: dict[int, int] = {}
    right = wrong = inside = 0
    call_rows = pq.read_table(workspace.cell_barcodes_path(ws, P, W)).to_pylist()
    calls = {(r["site"], r["sbs_cell"]): r for r in call_rows}
    for c in cells:
        t = cp[(c["site"], c["cell"])]
        seen[t["well_cell_id"]] = seen.get(t["well_cell_id"], 0) + 1
        if c["sbs_cell"] is not None:
            call = calls[(c["sbs_site"], c["sbs_cell"])]
            assert c["gene_symbol"] == call["gene_symbol"] and c["status"] == "matched"
        if t["well_cell_id"] not in in_sbs:
            continue
        inside += 1
        if c["sbs_cell"] is None:
            continue
        # The right gene is the gene of the cell's own SBS nucleus (the truth pairs them).
        if sbs[(c["sbs_site"], c["sbs_cell"])]["well_cell_id"] == t["well_cell_id"]:
            right += 1
        else:
            wrong += 1
    assert inside > 400
    assert right / inside >= 0.95, (right, wrong, inside)
    assert wrong / inside <= 0.01, (right, wrong, inside)
    assert max(seen.values()) == 1  # no physical cell counted twice
    assert len(seen) == len({t["well_cell_id"] for t in cp.values()})  # nor dropped
    sbs_pairs = [(c["sbs_site"], c["sbs_cell"]) for c in cells if c["sbs_cell"] is not None]
    assert len(sbs_pairs) == len(set(sbs_pairs))
    dropped = sum(len(c["duplicate_cells"]) for c in cells)
    assert dropped > 50 and all(c["n_copies"] == 1 + len(c["duplicate_cells"]) for c in cells)


def test_cli_reports_skips_and_recomputes(well, capsys):
    ws, _ = well
    u = ["merge", "-w", ws, "--plate", P, "--well", W]
    code, out, _ = _run(u, capsys)
    assert code == 0 and "(already done)" in out and "inside the SBS area matched" in out
    code, out, _ = _run([*u, "--force"], capsys)
    assert code == 0 and "(already done)" not in out and "rotation" in out
    png = Path(workspace.merge_qc_path(ws, P, W)).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_qc_report_shows_the_wells_numbers(well):
    from starrynight.modules import qc

    ws, _ = well
    rep = qc.write_report(ws, P, "merge")
    assert rep.status == "complete" and rep.missing == []
    merged = json.loads(Path(workspace.merge_report_path(ws, P, W)).read_text())
    data = {
        f["name"]: pq.read_table(workspace.qc_figure_path(ws, P, "merge", f["name"], "parquet"))
        for f in rep.figures
    }
    rate = data["match_rate"].to_pylist()[0]
    assert rate["match_rate"] == pytest.approx(merged["match"]["match_rate"])
    assert rate["level"] == "ok" and rate["merge_status"] == "registered"
    # every matched cell is in the distance histogram, within the reach
    cells = pq.read_table(workspace.merge_cells_path(ws, P, W), columns=["status"])
    n_matched = pc.sum(pc.equal(cells["status"], "matched")).as_py()
    assert pc.sum(data["match_distance"]["cells"]).as_py() == n_matched == rate["matched"]
    residual = data["registration_residual"].to_pylist()[0]
    assert residual["rms_um"] == pytest.approx(merged["registration"]["residual_um"]["rms"])
    counts = merged["registration"]["residual_um"]["histogram"]["counts"]
    assert data["residual_distribution"]["pairs"].to_pylist() == counts


def test_analysis_uses_the_merge_table(well):
    ws, _truth = well
    # the join is under test, not the measurements: two cheap families keep it quick
    res = analyse_well(ws, P, W, force=True, families=("shape", "intensity"))
    merged = pq.read_table(workspace.merge_cells_path(ws, P, W))
    t = pq.read_table(workspace.cell_features_path(ws, P, W))
    assert res.cells == t.num_rows == merged.num_rows
    for col in ("site", "Nuclei_AreaShape_Center_X", "Nuclei_AreaShape_Center_Y", "gene_symbol",
                "sbs_site", "sbs_cell"):  # fmt: skip
        assert col in t.column_names
    by_key = {(r["site"], r["cell"]): r["gene_symbol"] for r in merged.to_pylist()}
    assert all(by_key[(r["site"], r["cell"])] == r["gene_symbol"] for r in t.to_pylist())
    n = summarise_plate(ws, P).genes
    summary = pq.read_table(workspace.gene_summary_path(ws, P))
    with_gene = sum(g is not None for g in merged["gene_symbol"].to_pylist())
    assert n > 0 and sum(summary["n_cells"].to_pylist()) == with_gene  # each cell once


def test_analysis_refuses_to_pair_sites_by_number_without_merge(well, tmp_path):
    ws, _ = well
    report = Path(workspace.merge_report_path(ws, P, W))
    moved = tmp_path / "report.json"
    shutil.move(report, moved)
    try:
        from starrynight.errors import UserError

        with pytest.raises(UserError, match="different site grids"):
            analyse_well(ws, P, W, force=True)
    finally:
        shutil.move(moved, report)


def _partial_ws(src: str, dst: Path, *parts: str) -> str:
    for rel in parts:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(src) / rel, target)
    return str(dst)


def _rel(uri: str, ws: str) -> str:
    return str(Path(uri).relative_to(ws))


def test_cp_only_well_keeps_cells_with_no_sbs_images(well, tmp_path, capsys):
    ws, _ = well
    cp_only = _partial_ws(
        ws, tmp_path / "ws", _rel(workspace.segmentation_objects_path(ws, P, W), ws),
        _rel(workspace.positions_path(ws, P, W, "cp"), ws),
    )  # fmt: skip
    code, _out, err = _run(["merge", "-w", cp_only, "--plate", P, "--well", W], capsys)
    assert code == 0 and "no SBS images" in err
    t = pq.read_table(workspace.merge_cells_path(cp_only, P, W))
    assert t.num_rows > 400 and set(t["status"].to_pylist()) == {"no SBS images"}
    assert t["gene_symbol"].null_count == t.num_rows


def test_sbs_only_well_is_one_clear_line(well, tmp_path, capsys):
    ws, _ = well
    sbs_only = _partial_ws(
        ws, tmp_path / "ws", _rel(workspace.cell_barcodes_path(ws, P, W), ws),
        _rel(workspace.positions_path(ws, P, W, "sbs", 1), ws),
    )  # fmt: skip
    code, _, err = _run(["merge", "-w", sbs_only, "--plate", P, "--well", W], capsys)
    assert code == 2 and err.count("\n") == 1 and "no Cell Painting cells" in err


def test_too_few_nuclei_flags_the_well_and_gives_no_barcode(well, tmp_path, capsys):
    ws, _ = well
    few = _partial_ws(
        ws, tmp_path / "ws", _rel(workspace.segmentation_objects_path(ws, P, W), ws),
        _rel(workspace.positions_path(ws, P, W, "cp"), ws),
        _rel(workspace.positions_path(ws, P, W, "sbs", 1), ws),
    )  # fmt: skip
    calls = pq.read_table(workspace.cell_barcodes_path(ws, P, W)).slice(0, 8)
    uri = Path(workspace.cell_barcodes_path(few, P, W))
    uri.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(calls, uri)
    code, _, err = _run(["merge", "-w", few, "--plate", P, "--well", W], capsys)
    assert code == 0 and "not registered: too few nuclei" in err
    t = pq.read_table(workspace.merge_cells_path(few, P, W))
    assert set(t["status"].to_pylist()) == {"not registered"}
    assert t["barcode"].null_count == t.num_rows


def test_wrong_pixel_size_is_not_registered(well, tmp_path, capsys):
    ws, _ = well
    bad = _partial_ws(
        ws, tmp_path / "ws", _rel(workspace.segmentation_objects_path(ws, P, W), ws),
        _rel(workspace.positions_path(ws, P, W, "cp"), ws),
        _rel(workspace.cell_barcodes_path(ws, P, W), ws),
    )  # fmt: skip
    pos = pq.read_table(workspace.positions_path(ws, P, W, "sbs", 1)).to_pandas()
    for c in ("pixel_size_y_um", "pixel_size_x_um", "y_um", "x_um"):
        pos[c] *= 1.03  # the files claim 3 % larger pixels than the optics give
    uri = Path(workspace.positions_path(bad, P, W, "sbs", 1))
    pos.to_parquet(uri)
    code, _, err = _run(["merge", "-w", bad, "--plate", P, "--well", W], capsys)
    assert code == 0 and "not registered: fitted scale" in err and "pixel sizes" in err
    t = pq.read_table(workspace.merge_cells_path(bad, P, W))
    assert set(t["status"].to_pylist()) == {"not registered"}
    assert t["barcode"].null_count == t.num_rows


def test_sbs_covering_part_of_the_well(well, tmp_path):
    """SBS sites 0 and 1 only (the top half): the rest of CP is outside the SBS area."""
    ws, truth = well
    part = _partial_ws(
        ws, tmp_path / "ws", _rel(workspace.segmentation_objects_path(ws, P, W), ws),
        _rel(workspace.positions_path(ws, P, W, "cp"), ws),
    )  # fmt: skip
    for uri in (
        workspace.cell_barcodes_path(ws, P, W),
        workspace.positions_path(ws, P, W, "sbs", 1),
    ):
        t = pq.read_table(uri)
        t = t.filter(pc.is_in(t["site"], pa.array([0, 1], pa.int32())))
        target = Path(part) / _rel(uri, ws)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, target)
    from starrynight.modules.merge import merge_well

    r = merge_well(part, P, W)
    frame = pq.read_table(truth / "sbs_frames.parquet").to_pylist()[0]
    assert r.status == "registered" and not r.flags
    assert r.transform["scale_px"] == pytest.approx(frame["scale"], rel=0.002)
    assert abs(r.transform["rotation_deg"] - frame["rotation_deg"]) <= 0.05
    cells = pq.read_table(workspace.merge_cells_path(part, P, W)).to_pylist()
    cp = _truth_of(ws, truth, "", "cells.parquet",
                   lambda s: workspace.segmentation_mask_path(ws, P, W, s, "Nuclei"))  # fmt: skip
    sbs = _truth_of(ws, truth, "SBS_", "sbs_cells.parquet",
                    lambda s: workspace.sbs_mask_path(ws, P, W, s, "Nuclei"))  # fmt: skip
    in_sbs = {r["well_cell_id"] for (s, _), r in sbs.items() if s in (0, 1)}
    status = [c["status"] for c in cells]
    assert 0.2 * len(cells) < status.count("outside the SBS area") < 0.8 * len(cells)
    inside = [c for c in cells if cp[(c["site"], c["cell"])]["well_cell_id"] in in_sbs]
    right = sum(
        c["sbs_cell"] is not None
        and sbs[(c["sbs_site"], c["sbs_cell"])]["well_cell_id"]
        == cp[(c["site"], c["cell"])]["well_cell_id"]
        for c in inside
    )
    wrong = sum(c["sbs_cell"] is not None for c in cells) - right
    assert right >= 0.95 * len(inside) and wrong <= 0.01 * len(inside), (right, wrong, len(inside))
