"""The whole chain on a generated screen with planted phenotypes: the known answer.

The sample plants 5 phenotypes (larger nuclei, dimmer nuclear or cytoplasmic stain) in
5 genes; segmentation, barcode calling, analysis and results then run as a user would
run them. Every planted gene must be a hit at q < 0.05 and at most one other gene.
Corrected CP and aligned SBS images come from the generator's true illumination and
shifts (those steps are tested on their own), as in ``test_analysis_pipeline``.
"""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
from scipy import ndimage as ndi

from starrynight import workspace
from starrynight.algorithms import segmentation as seg
from starrynight.imageio import write_tiff
from starrynight.modules.analysis import analyse_well
from starrynight.modules.barcodes import BarcodeParams, call_well
from starrynight.modules.results import plate_profiles, screen_hits
from starrynight.modules.segment import SegmentParams, segment_well
from starrynight.sample import CONTROL_GENE, SampleSpec, default_phenotypes, generate

PLATE, WELLS, SITES = "Plate1", ("A1", "A2"), 4


def _inputs(out: Path, ws: Path, well: str) -> None:
    truth = out / "ground_truth"
    spec = json.loads((truth / "manifest.json").read_text())["spec"]
    offset = spec["camera_offset"]
    images = out / "sample" / "source_1" / "Batch1" / "images" / PLATE
    shifts = pq.read_table(truth / "shifts.parquet").to_pylist()
    for site in range(SITES):
        stem = f"Well{well}_Point{well}_{site:04d}_*"
        cp = tifffile.imread(glob.glob(str(images / f"20X_CP_*/{stem}"))[0])
        for i, ch in enumerate(spec["cp_channels"]):
            field = np.load(truth / "illum" / f"cp_{ch}.npy")
            corr = np.clip((cp[i].astype(np.float32) - offset) / field, 0, 65535)
            uri = workspace.corrected_path(str(ws), PLATE, well, site, ch.replace("-", ""))
            write_tiff(uri, corr.astype(np.uint16))
        for k in range(1, spec["cycles"] + 1):
            raw = tifffile.imread(glob.glob(str(images / f"10X_c{k}_SBS-{k}/{stem}"))[0])
            sh = next(r for r in shifts if (r["site"], r["cycle"], r["well"]) == (site, k, well))
            for i, ch in enumerate(spec["sbs_channels"]):
                field = np.load(truth / "illum" / f"sbs_{ch}.npy")
                corr = (raw[i].astype(np.float32) - offset) / field
                moved = ndi.shift(corr, (-sh["dy"], -sh["dx"]), order=1, cval=0)
                uri = workspace.aligned_path(str(ws), PLATE, well, site, k, ch)
                write_tiff(uri, np.clip(moved, 0, 65535).astype(np.uint16))


@pytest.mark.slow
def test_planted_genes_are_found(tmp_path: Path) -> None:
    planted = default_phenotypes(5)
    generate(SampleSpec(wells=WELLS, sites=SITES, phenotypes=planted, workers=2), tmp_path)
    ws = tmp_path / "ws"
    shutil.copy(tmp_path / "sample/source_1/workspace/metadata/Barcodes.csv", ws.parent / "bc.csv")
    nuclei = seg.NucleiParams(diameter=18)
    for well in WELLS:
        _inputs(tmp_path, ws, well)
        segment_well(str(ws), PLATE, well, params=SegmentParams(nuclei=nuclei))
        call_well(str(ws), PLATE, well, barcodes=str(ws.parent / "bc.csv"),
                  params=BarcodeParams(nuclei=nuclei))  # fmt: skip
        analyse_well(str(ws), PLATE, well, families=("shape", "intensity"))
    profiles = plate_profiles(str(ws), PLATE, control_label=CONTROL_GENE)
    assert profiles.n_controls >= 50 and profiles.counts.field_edge > 0
    res = screen_hits(str(ws), unit="cell", null_size=5000)
    hits = pq.read_table(workspace.screen_results_path(str(ws), "hits.parquet")).to_pandas()
    genes = {p.split(":")[0] for p in planted}
    called = set(hits.loc[hits["hit"], "gene_symbol"])
    table = hits[["gene_symbol", "n_cells", "mAP", "q_value", "top_features"]]
    assert genes <= called, table
    assert len(called - genes) <= 1, table
    assert res.n_hits == len(called)


def test_planted_phenotypes_change_only_their_genes(tmp_path: Path) -> None:
    from starrynight.errors import UserError
    from starrynight.sample import parse_phenotypes

    spec = SampleSpec(wells=("A1",), sites=1, cycles=2, size=256, n_barcodes=12, seed=5,
                      phenotypes=("TP53:nucleus_grow:3",))  # fmt: skip
    generate(spec, tmp_path / "planted")
    generate(SampleSpec(**{**spec.__dict__, "phenotypes": ()}), tmp_path / "plain")
    areas = {}
    for name in ("planted", "plain"):
        truth = tmp_path / name / "ground_truth"
        cells = pq.read_table(truth / "cells.parquet").to_pandas()
        mask = tifffile.imread(truth / "masks" / PLATE / "A1" / "Site_0_nuclei.tiff")
        area = np.bincount(mask.ravel())
        cells["area"] = area[cells["cell_id"]]
        areas[name] = cells.groupby("gene_symbol")["area"].mean()
    manifest = json.loads((tmp_path / "planted/ground_truth/manifest.json").read_text())
    assert manifest["phenotypes"] == [{"gene": "TP53", "effect": "nucleus_grow", "amount": 3.0}]
    assert manifest["control_label"] == CONTROL_GENE
    assert areas["planted"]["TP53"] > 1.4 * areas["plain"]["TP53"]
    others = areas["plain"].index.drop("TP53")
    np.testing.assert_allclose(areas["planted"][others], areas["plain"][others])
    for bad, message in (("TP53", "GENE:EFFECT:AMOUNT"), ("TP53:glow:2", "unknown effect"),
                         ("NTC:nucleus_dim:0.5", "non-targeting"),
                         ("TP53:nucleus_dim:0", "out of range")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            parse_phenotypes([bad])
