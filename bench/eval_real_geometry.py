"""Right and wrong genes of a processed real-geometry sample, against its ground truth.

Usage: ``python bench/eval_real_geometry.py DATA WORKSPACE`` where DATA is the folder
``starrynight sample generate --geometry real -o DATA`` wrote and WORKSPACE the one the
pipeline (``make demo``, the Dagster driver or the CLI) filled. Each CP cell of the
per-cell tables is matched to the true nucleus under its centroid (the sample's masks),
so the figures count physical cells: right gene, wrong gene, none, and cells counted
twice (across sites, which the merge should have joined, and within one site, where
segmentation cut a nucleus in two); and, as the baseline of the same run, the share a
per-site join would have got right by chance (the share of the commonest gene).
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import tifffile


def main(data: Path, ws: Path) -> None:
    truth = pq.read_table(data / "ground_truth" / "cells.parquet").to_pandas()
    by_id = truth.set_index(["plate", "well", "site", "cell_id"])
    tables = [pq.read_table(f).to_pandas() for f in glob.glob(str(ws / "features/*/cells.parquet"))]
    cells = pd.concat(tables, ignore_index=True)
    masks: dict[tuple, np.ndarray] = {}
    true_gene, physical = [], []
    for r in cells.itertuples():
        key = (r.plate, r.well, int(r.site))
        if key not in masks:
            path = data / "ground_truth" / "masks" / r.plate / r.well
            path = path / f"Site_{int(r.site)}_nuclei.tiff"
            masks[key] = tifffile.imread(path) if path.exists() else np.zeros((1, 1), int)
        m = masks[key]
        y, x = round(r.Nuclei_AreaShape_Center_Y), round(r.Nuclei_AreaShape_Center_X)
        label = int(m[y, x]) if 0 <= y < m.shape[0] and 0 <= x < m.shape[1] else 0
        row = by_id.loc[(*key, label)] if label and (*key, label) in by_id.index else None
        true_gene.append(None if row is None else row["gene_symbol"])
        physical.append(None if row is None else row["well_cell_id"])
    cells["true_gene"], cells["physical"] = true_gene, physical
    known = cells[cells["true_gene"].notna()]
    called = known["gene_symbol"].notna()
    right = (known["gene_symbol"] == known["true_gene"]) & called
    shared = known[known[["plate", "well", "physical"]].duplicated(keep=False)]
    twice = len(shared)
    # Rows of one physical cell all in one site: segmentation cut the nucleus in two
    # (no other site's copy to merge them with); rows from two sites: a duplicate the
    # merge left.
    sites_per_cell = shared.groupby(["plate", "well", "physical"])["site"].nunique()
    split_rows = int(shared.set_index(["plate", "well", "physical"]).index.isin(
        sites_per_cell.index[sites_per_cell == 1]).sum())  # fmt: skip
    n = len(known)
    print(f"CP cells in the tables: {len(cells)} ({n} on a true nucleus)")
    print(f"right gene: {right.sum()} ({right.mean():.1%}), wrong gene: "
          f"{(called & ~right).sum()} ({(called & ~right).mean():.1%}), none: "
          f"{(~called).sum()} ({(~called).mean():.1%})")  # fmt: skip
    print(f"rows sharing a physical cell: {twice} ({twice - split_rows} across sites, "
          f"{split_rows} within one site: nuclei segmentation cut in two)")  # fmt: skip
    chance = known["true_gene"].value_counts(normalize=True).iloc[0]
    print(f"baseline (commonest gene, what guessing gets right): {chance:.1%}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
