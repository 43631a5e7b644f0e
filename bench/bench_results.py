"""Profiles and hits of a screen of 1,000,000 cells x 500 features (issue 18).

Target: ``results profiles`` + ``results hits`` in at most 5 minutes on 2 cores, with
peak memory near the feature table itself. Prints both times, their ratio to reading
the same table in this run (the baseline), and the peak resident memory over the
table's in-memory size (float32).

Run: ``python bench/bench_results.py [--cells 1000000] [--features 500]``.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from starrynight import workspace
from starrynight.modules.results import plate_profiles, screen_hits


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _write_well(ws: str, plate: str, well: str, n: int, f: int, genes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    guides = genes * 4 + 100  # 4 guides per gene, 100 non-targeting guides
    guide = rng.integers(0, guides, n)
    gene = np.where(guide < 100, "NTC", np.char.add("G", (guide // 4).astype(str)))
    sg = np.char.add("sg", guide.astype(str))
    cols = {
        "plate": pa.array(np.full(n, plate)), "well": pa.array(np.full(n, well)),
        "site": pa.array(rng.integers(0, 100, n).astype(np.int32)),
        "cell": pa.array(np.arange(n, dtype=np.int32)), "sgRNA": pa.array(sg),
        "gene_symbol": pa.array(gene),
    }  # fmt: skip
    x = rng.normal(size=(n, f)).astype(np.float32)
    active = np.isin(guide // 4, np.arange(25, 45)) & (guide >= 100)  # 20 active genes
    x[active, :10] += 1.0
    for j in range(f):
        cols[f"Cells_Feature_{j:03d}"] = pa.array(x[:, j])
    uri = workspace.cell_features_path(ws, plate, well)
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), uri)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=500)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--wells", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_results_") as ws:
        per_well = args.cells // args.wells
        for w in range(args.wells):
            _write_well(ws, "P1", f"A{w + 1}", per_well, args.features, args.genes, w)
        table_gib = args.cells * args.features * 4 / 2**30
        rss0 = _rss_gib()
        t = time.perf_counter()
        tables = [
            pq.read_table(workspace.cell_features_path(ws, "P1", f"A{w + 1}"))
            for w in range(args.wells)
        ]
        baseline = time.perf_counter() - t
        del tables
        t = time.perf_counter()
        res = plate_profiles(ws, "P1")
        t_profiles = time.perf_counter() - t
        rss_profiles = _rss_gib()
        t = time.perf_counter()
        hits = screen_hits(ws, null_size=10000)
        t_hits = time.perf_counter() - t
        total = t_profiles + t_hits
        print(
            f"{args.cells} cells x {args.features} features, {args.genes} genes, {args.wells} wells"
        )
        print(f"baseline: read the feature table   {baseline:7.1f} s")
        steps = (
            ("results profiles (plate)", t_profiles),
            ("results hits (screen, unit guide)", t_hits),
            ("total (target 300 s)", total),
        )
        for name, sec in steps:
            print(f"{name:<34} {sec:7.1f} s  ({sec / baseline:.1f}x baseline)")
        peak = max(rss_profiles, _rss_gib())
        print(
            f"feature table {table_gib:.2f} GiB; peak RSS {peak:.2f} GiB "
            f"(before {rss0:.2f}; {peak / table_gib:.2f}x the table)"
        )
        print(
            f"kept {res.counts.kept} cells; {hits.n_hits} hits of {hits.n_scored} scored genes "
            f"(20 planted), {hits.n_features} features selected"
        )


if __name__ == "__main__":
    main()
