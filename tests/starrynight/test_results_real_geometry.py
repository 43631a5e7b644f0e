"""The whole chain on the real-geometry sample (the CLI default: 20X CP and 10X SBS on
their own overlapping grids, SBS rotated and shifted, stage errors) with planted
phenotypes: every planted gene is a hit at q < 0.05 and at most one other gene is.

Unlike ``test_results_sample`` nothing comes from the ground truth: illumination,
alignment, geometry, segmentation, barcodes, merge, analysis and results run as a user
runs them, through the CLI.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from starrynight import workspace
from starrynight.cli.main import main
from starrynight.modules.analysis import analyse_well
from starrynight.sample import CONTROL_GENE, SampleSpec, default_phenotypes, generate

P, WELLS = "Plate1", ("A1", "A2")
PLANTED = default_phenotypes(5)
SPEC = SampleSpec(
    geometry="real", wells=WELLS, cp_grid=(3, 3), sbs_grid=(2, 2), size=512,
    phenotypes=PLANTED, seed=0, workers=2,
)  # fmt: skip


def _cli(args: list[str]) -> None:
    try:
        main(args)
    except SystemExit as exc:
        assert not exc.code, f"{args}: exit {exc.code}"


@pytest.mark.slow
def test_planted_genes_are_hits_on_real_geometry(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    res = generate(SPEC, tmp_path / "data")
    ws = str(tmp_path / "ws")
    _cli(["inventory", "gen", "-d", res.dataset_root, "-o", ws, "--no-progress"])
    _cli(["index", "gen", "-i", ws, "-o", ws])
    _cli(["illum", "calc", "-w", ws, "--plate", P])
    for well in WELLS:
        u = ["-w", ws, "--plate", P, "--well", well]
        for args in (["illum", "apply", *u], ["align", *u], ["geometry", *u],
                     ["segment", *u], ["barcodes", "call", *u], ["merge", *u]):  # fmt: skip
            _cli(args)
        # The families the planted phenotypes move; the others cost minutes here.
        analyse_well(ws, P, well, families=("shape", "intensity"))
    for args in (
        ["results", "profiles", "-w", ws, "--plate", P, "--control-label", CONTROL_GENE],
        ["results", "hits", "-w", ws, "--unit", "cell", "--null-size", "5000"],
    ):
        _cli(args)
    hits = pq.read_table(workspace.screen_results_path(ws, "hits.parquet")).to_pandas()
    genes = {p.split(":")[0] for p in PLANTED}
    called = set(hits.loc[hits["hit"], "gene_symbol"])
    table = hits[["gene_symbol", "n_cells", "mAP", "q_value", "top_features"]].to_string()
    print(table, f"\n{time.perf_counter() - t0:.0f} s")
    assert genes <= called, table
    assert len(called - genes) <= 1, table
