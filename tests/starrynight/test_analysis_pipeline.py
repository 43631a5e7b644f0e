"""Segment, call barcodes and analyse a generated sample; score against its ground truth.

The corrected CP and aligned SBS inputs are made here from the generator's true
illumination fields and shifts, so these tests measure this step alone (issue 5's
steps are tested on their own).
"""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
from scipy import ndimage as ndi

from starrynight import workspace
from starrynight.algorithms import features as feat
from starrynight.algorithms import segmentation as seg
from starrynight.cli.main import main
from starrynight.imageio import write_tiff
from starrynight.modules.analysis import analyse_well, cells_schema, summarise_plate
from starrynight.modules.barcodes import CELLS_SCHEMA, SPOTS_SCHEMA, call_well
from starrynight.modules.segment import (
    COUNTS_SCHEMA,
    OBJECTS_SCHEMA,
    SegmentParams,
    segcheck_well,
    segment_well,
)
from starrynight.sample import SampleSpec, generate

PLATE, WELL, SITES = "Plate1", "A1", 2


def _make_inputs(out: Path, ws: Path) -> None:
    truth = out / "ground_truth"
    spec = json.loads((truth / "manifest.json").read_text())["spec"]
    offset = spec["camera_offset"]
    images = out / "sample" / "source_1" / "Batch1" / "images" / PLATE
    shifts = pq.read_table(truth / "shifts.parquet").to_pylist()
    for site in range(SITES):
        cp = tifffile.imread(
            glob.glob(str(images / f"20X_CP_*/Well{WELL}_Point{WELL}_{site:04d}_*"))[0]
        )
        for i, ch in enumerate(spec["cp_channels"]):
            field = np.load(truth / "illum" / f"cp_{ch}.npy")
            corr = np.clip((cp[i].astype(np.float32) - offset) / field, 0, 65535)
            name = ch.replace("-", "")
            write_tiff(
                workspace.corrected_path(str(ws), PLATE, WELL, site, name), corr.astype(np.uint16)
            )
        for k in range(1, spec["cycles"] + 1):
            raw = tifffile.imread(
                glob.glob(str(images / f"10X_c{k}_SBS-{k}/Well{WELL}_Point{WELL}_{site:04d}_*"))[0]
            )
            sh = next(
                r for r in shifts if r["site"] == site and r["cycle"] == k and r["well"] == WELL
            )
            for i, ch in enumerate(spec["sbs_channels"]):
                field = np.load(truth / "illum" / f"sbs_{ch}.npy")
                corr = (raw[i].astype(np.float32) - offset) / field
                moved = ndi.shift(corr, (-sh["dy"], -sh["dx"]), order=1, cval=0)
                uri = workspace.aligned_path(str(ws), PLATE, WELL, site, k, ch)
                write_tiff(uri, np.clip(moved, 0, 65535).astype(np.uint16))
    shutil.copy(out / "sample/source_1/workspace/metadata/Barcodes.csv", ws / "Barcodes.csv")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("sample")
    generate(SampleSpec(wells=(WELL,), sites=SITES, workers=2), out)
    ws = out / "ws"
    _make_inputs(out, ws)
    return out, ws


@pytest.fixture(scope="module")
def done(sample: tuple[Path, Path]) -> dict:
    _, ws = sample
    params = SegmentParams(nuclei=seg.NucleiParams(diameter=18))
    s = segment_well(str(ws), PLATE, WELL, params=params)
    from starrynight.modules.barcodes import BarcodeParams

    b = call_well(str(ws), PLATE, WELL, barcodes=str(ws / "Barcodes.csv"),
                  params=BarcodeParams(nuclei=seg.NucleiParams(diameter=18)))  # fmt: skip
    a = analyse_well(str(ws), PLATE, WELL)
    return {"segment": s, "barcodes": b, "analysis": a}


def test_nuclei_f1_against_ground_truth(sample: tuple[Path, Path], done: dict) -> None:
    out, ws = sample
    total = seg.MatchScore(0, 0, 0)
    for site in range(SITES):
        pred = tifffile.imread(
            workspace.segmentation_mask_path(str(ws), PLATE, WELL, site, "Nuclei")
        )
        truth = tifffile.imread(
            out / "ground_truth" / "masks" / PLATE / WELL / f"Site_{site}_nuclei.tiff"
        )
        s = seg.match_labels(pred.astype(np.int32), truth.astype(np.int32))
        total = seg.MatchScore(total.tp + s.tp, total.fp + s.fp, total.fn + s.fn)
    assert total.f1 >= 0.9, total
    counts = pq.read_table(workspace.segmentation_counts_path(str(ws), PLATE, WELL)).to_pylist()
    assert [c["site"] for c in counts] == [0, 1] and not any(c["flagged"] for c in counts)
    objects = pq.read_table(workspace.segmentation_objects_path(str(ws), PLATE, WELL))
    assert set(objects["object"].to_pylist()) == {"Nuclei", "Cells"}


def test_rerun_skips_completed_well(sample: tuple[Path, Path], done: dict) -> None:
    _, ws = sample
    again = segment_well(str(ws), PLATE, WELL)
    assert again.skipped == SITES and again.computed == 0
    assert again.nuclei == done["segment"].nuclei
    assert call_well(str(ws), PLATE, WELL, barcodes=str(ws / "Barcodes.csv")).skipped
    assert analyse_well(str(ws), PLATE, WELL).skipped


def test_barcode_accuracy_and_consistent_join(sample: tuple[Path, Path], done: dict) -> None:
    out, ws = sample
    cells = pq.read_table(workspace.cell_features_path(str(ws), PLATE, WELL)).to_pylist()
    assert cells, "no cells in the analysis table"
    keys = [(c["site"], c["cell"]) for c in cells]
    assert len(keys) == len(set(keys))
    sbs = [(c["site"], c["sbs_cell"]) for c in cells if c["sbs_cell"] is not None]
    assert len(sbs) == len(set(sbs))  # no SBS cell matched to two CP cells
    truth = {(r["site"], r["cell_id"]): r for r in
             pq.read_table(out / "ground_truth" / "cells.parquet").to_pylist()}  # fmt: skip
    right = wrong = missed = 0
    for site in range(SITES):
        gt = tifffile.imread(
            out / "ground_truth" / "masks" / PLATE / WELL / f"Site_{site}_nuclei.tiff"
        )
        pred = tifffile.imread(
            workspace.segmentation_mask_path(str(ws), PLATE, WELL, site, "Nuclei")
        )
        pa_, pb_, inter = seg.overlap_pairs(pred.astype(np.int64), gt.astype(np.int64))
        best = {}
        for a, b, n in zip(pa_, pb_, inter, strict=True):
            if n > best.get(a, (0, 0))[1]:
                best[int(a)] = (int(b), n)
        for c in (c for c in cells if c["site"] == site):
            if c["barcode_reason"] == "outside the area imaged in every cycle":
                continue  # not in the field of every cycle: its barcode cannot be read
            if c["cell"] not in best:
                continue
            t = truth[(site, best[c["cell"]][0])]
            if c["barcode"] is None:
                missed += 1
            elif c["barcode"] == t["barcode"] and c["gene_symbol"] == t["gene_symbol"]:
                right += 1
            else:
                wrong += 1
    n = right + wrong + missed
    assert n > 300
    assert right / n >= 0.95, (right, wrong, missed)
    assert wrong / n < 0.02, (right, wrong, missed)


def test_features_and_gene_summary(sample: tuple[Path, Path], done: dict) -> None:
    _, ws = sample
    t = pq.read_table(workspace.cell_features_path(str(ws), PLATE, WELL))
    for col in ("plate", "well", "site", "cell", "barcode", "gene_symbol",
                "Cells_AreaShape_Area", "Cells_Intensity_MeanIntensity_DAPI",
                "Nuclei_Intensity_UpperQuartileIntensity_ZO1AF488",
                "Cells_Texture_Contrast_PhalloAF750_3_00_256", "field_edge"):  # fmt: skip
        assert col in t.column_names, col
    res = summarise_plate(str(ws), PLATE)
    uri, n_genes = res.uri, res.genes
    summary = pq.read_table(uri)
    assert summary.num_rows == n_genes >= 10
    assert sum(summary["n_cells"].to_pylist()) == sum(1 for g in t["gene_symbol"].to_pylist() if g)


def test_segcheck_writes_overlays_and_counts(sample: tuple[Path, Path]) -> None:
    _, ws = sample
    res = segcheck_well(str(ws), PLATE, WELL, every=2, workers=1,
                        params=SegmentParams(nuclei=seg.NucleiParams(diameter=18)))  # fmt: skip
    pngs = [u for u in res.outputs if u.endswith(".png")]
    assert len(pngs) == 1 and Path(pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.nuclei > 100 and not res.flagged


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "barcode table not found"),
        ("guide,gene\nACGTACGT,G\n", "missing column(s) sgRNA, gene_symbol"),
        ("sgRNA,gene_symbol\nACGTACGT,G\nACGTACGT,H\n", "duplicates row 2"),
        ("sgRNA,gene_symbol\nACGTACGT,G\nACGTAC,H\n", "mixed"),
        ("sgRNA,gene_symbol\nACG,G\nTTT,H\n", "4 SBS cycles but the sgRNAs are 3 bases long"),
        ("sgRNA,gene_symbol\nACGTA,G\nACGTC,H\n", "share the first 4 bases"),
    ],
)
def test_cli_bad_barcode_tables(
    sample: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    content: str | None, expected: str,
) -> None:  # fmt: skip
    _, ws = sample
    csv = tmp_path / "Barcodes.csv"
    if content is not None:
        csv.write_text(content)
    code, err = _cli(["barcodes", "call", "-w", str(ws), "--plate", PLATE, "--well", WELL,
                      "--barcodes", str(csv), "--force"], capsys)  # fmt: skip
    assert code == 2
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_cli_missing_inputs_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _cli(["segment", "-w", str(tmp_path), "--plate", "P", "--well", "A1"], capsys)
    assert code == 2 and "no corrected images" in err
    code, err = _cli(["analysis", "summary", "-w", str(tmp_path), "--plate", "P"], capsys)
    assert code == 2 and "no analysed wells" in err


def test_cli_all_zero_site_reports_no_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = str(tmp_path)
    for ch in ("DAPI", "Actin"):
        write_tiff(workspace.corrected_path(ws, "P", "B2", 1, ch), np.zeros((64, 64), np.uint16))
    code, err = _cli(
        ["segment", "-w", ws, "--plate", "P", "--well", "B2", "--workers", "1"], capsys
    )
    assert code == 0
    assert "no cells found" in err and "flagged site 1" in err
    counts = pq.read_table(workspace.segmentation_counts_path(ws, "P", "B2")).to_pylist()
    assert counts == [{"site": 1, "n_nuclei": 0, "n_cells": 0, "flagged": True,
                       "reason": "0 objects (fewer than 1)", "diameter": 20.0,
                       "diameter_source": "default (too few isolated nuclei to estimate)"},
                      ]  # fmt: skip


def _assert_typed(uri: str, schema: pa.Schema, rows: int | None = 0) -> None:
    read = pq.read_schema(uri)
    assert read.equals(schema), (uri, read)
    assert not any(pa.types.is_null(f.type) for f in read), uri
    if rows is not None:
        assert pq.read_metadata(uri).num_rows == rows, uri


def _write_zero_site(ws: str, well: str, site: int, cp: tuple[str, ...], size: int) -> None:
    zeros = np.zeros((size, size), np.uint16)
    for ch in cp:
        write_tiff(workspace.corrected_path(ws, PLATE, well, site, ch), zeros)
    for k in range(1, 5):
        for ch in ("A", "C", "G", "T", "DAPI"):
            write_tiff(workspace.aligned_path(ws, PLATE, well, site, k, ch), zeros)


def _run_well(ws: str, well: str, csv: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    errs = []
    for args in (["segment"], ["barcodes", "call", "--barcodes", str(csv)], ["analysis", "run"]):
        code, err = _cli([*args, "-w", ws, "--plate", PLATE, "--well", well, "--workers", "1"],
                         capsys)  # fmt: skip
        assert code == 0, (args, err)
        errs.append(err)
    return errs


def test_all_zero_well_gives_no_cells_and_typed_empty_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = str(tmp_path)
    for site in (0, 1):
        _write_zero_site(ws, "B2", site, ("DAPI", "Actin"), 64)
    csv = tmp_path / "Barcodes.csv"
    csv.write_text("sgRNA,gene_symbol\nACGTAA,G1\nTTGCAA,G2\n")
    seg_err, bc_err, an_err = _run_well(ws, "B2", csv, capsys)
    assert "no cells found in this well" in seg_err and "flagged site 1" in seg_err
    assert "no cells found in this well" in bc_err and "no cells found in this well" in an_err
    code, err = _cli(["analysis", "summary", "-w", ws, "--plate", PLATE], capsys)
    assert code == 0 and "Traceback" not in err
    _assert_typed(workspace.segmentation_objects_path(ws, PLATE, "B2"), OBJECTS_SCHEMA)
    _assert_typed(workspace.segmentation_counts_path(ws, PLATE, "B2"), COUNTS_SCHEMA, rows=2)
    _assert_typed(workspace.cell_barcodes_path(ws, PLATE, "B2"), CELLS_SCHEMA)
    _assert_typed(workspace.spots_path(ws, PLATE, "B2"), SPOTS_SCHEMA)
    features = cells_schema(["Actin", "DAPI"])
    _assert_typed(workspace.cell_features_path(ws, PLATE, "B2"), features)
    summary = pq.read_schema(workspace.gene_summary_path(ws, PLATE))
    assert summary.names[:5] == ["plate", "gene_symbol", "n_cells", "n_wells", "n_barcodes"]
    assert not any(pa.types.is_null(f.type) for f in summary)
    assert len(summary) == 5 + len(feat.feature_names(["Actin", "DAPI"]))


def test_site_without_cells_next_to_sites_with_cells(
    sample: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, src = sample
    ws = str(tmp_path / "ws")
    # Site 0 is a real site of the sample; site 1 is all zeros.
    for ch in ("DAPI", "PhalloAF750", "ZO1AF488"):
        uri = workspace.corrected_path(ws, PLATE, "C3", 0, ch)
        write_tiff(uri, tifffile.imread(workspace.corrected_path(str(src), PLATE, WELL, 0, ch)))
    for k in range(1, 5):
        for ch in ("A", "C", "G", "T", "DAPI"):
            image = tifffile.imread(workspace.aligned_path(str(src), PLATE, WELL, 0, k, ch))
            write_tiff(workspace.aligned_path(ws, PLATE, "C3", 0, k, ch), image)
    _write_zero_site(ws, "C3", 1, ("DAPI", "PhalloAF750", "ZO1AF488"), image.shape[0])
    seg_err, bc_err, an_err = _run_well(ws, "C3", src / "Barcodes.csv", capsys)
    assert "flagged site 1: 0 objects" in seg_err
    assert "no cells found at site(s) 1" in bc_err and "no cells found at site(s) 1" in an_err
    _assert_typed(workspace.segmentation_objects_path(ws, PLATE, "C3"), OBJECTS_SCHEMA, None)
    _assert_typed(workspace.cell_barcodes_path(ws, PLATE, "C3"), CELLS_SCHEMA, None)
    _assert_typed(workspace.spots_path(ws, PLATE, "C3"), SPOTS_SCHEMA, None)
    uri = workspace.cell_features_path(ws, PLATE, "C3")
    _assert_typed(uri, cells_schema(["DAPI", "PhalloAF750", "ZO1AF488"]), None)
    assert set(pq.read_table(uri)["site"].to_pylist()) == {0}
    assert analyse_well(ws, PLATE, "C3").no_cells == [1]  # also when skipped


def test_families_choose_the_columns_and_other_families_recompute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = str(tmp_path)
    _write_zero_site(ws, "B2", 0, ("DAPI", "Actin"), 64)
    csv = tmp_path / "Barcodes.csv"
    csv.write_text("sgRNA,gene_symbol\nACGTAA,G1\nTTGCAA,G2\n")
    _run_well(ws, "B2", csv, capsys)
    unit = ["-w", ws, "--plate", PLATE, "--well", "B2", "--workers", "1"]
    table = workspace.cell_features_path(ws, PLATE, "B2")
    code, err = _cli(["analysis", "run", *unit, "--families", "shape,intensity"], capsys)
    assert code == 0, err
    _assert_typed(table, cells_schema(["Actin", "DAPI"], ("shape", "intensity")))
    # without --force: the families are part of what the table was made from
    code, err = _cli(["analysis", "run", *unit], capsys)
    assert code == 0, err
    _assert_typed(table, cells_schema(["Actin", "DAPI"]))
    code, err = _cli(["analysis", "run", *unit, "--families", "shape,haralick"], capsys)
    assert code == 2 and "haralick: expected some of shape, intensity" in err
