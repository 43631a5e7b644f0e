"""Profiles and hits of a screen of 1,000,000 cells x 500 features (issue 18).

Target: ``results profiles`` + ``results hits`` in at most 5 minutes on 2 cores, with
peak memory near the feature table itself. Each step runs in a fresh process, which
reports its wall and CPU seconds (CPU is what a shared machine cannot inflate) and its
peak resident memory; the baseline is reading the same table in the same way.

Run: ``python bench/bench_results.py [--cells 1000000] [--features 500]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
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


def _child(task: str, ws: str, wells: int, out: multiprocessing.Queue) -> None:
    """One measured task in a fresh process: its wall and CPU seconds and peak memory."""
    t, cpu = time.perf_counter(), time.process_time()
    info = ""
    if task == "read":
        tables = [pq.read_table(workspace.cell_features_path(ws, "P1", f"A{w + 1}"))
                  for w in range(wells)]  # fmt: skip
        info = f"{sum(t.num_rows for t in tables)} rows"
    elif task == "profiles":
        res = plate_profiles(ws, "P1")
        info = f"kept {res.counts.kept} of {res.counts.total} cells"
    else:
        hits = screen_hits(ws, null_size=10000)
        info = (f"{hits.n_hits} hits of {hits.n_scored} scored genes (20 planted), "
                f"{hits.n_features} features selected")  # fmt: skip
    out.put((time.perf_counter() - t, time.process_time() - cpu, _rss_gib(), info))


def _measure(task: str, ws: str, wells: int) -> tuple[float, float, float, str]:
    q: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(task, ws, wells, q))
    proc.start()
    result = q.get()
    proc.join()
    return result


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
        print(f"{args.cells} cells x {args.features} features (float32 {table_gib:.2f} GiB), "
              f"{args.genes} genes x 4 guides + 100 controls, {args.wells} wells")  # fmt: skip
        base = _measure("read", ws, args.wells)
        print(f"{'baseline: read the table':<26} wall {base[0]:7.1f} s  cpu {base[1]:7.1f} s  "
              f"peak {base[2]:5.2f} GiB  ({base[3]})")  # fmt: skip
        total_wall = total_cpu = 0.0
        for task in ("profiles", "hits"):
            wall, cpu, rss, info = _measure(task, ws, args.wells)
            total_wall += wall
            total_cpu += cpu
            print(f"{'results ' + task:<26} wall {wall:7.1f} s  cpu {cpu:7.1f} s  peak {rss:5.2f} "
                  f"GiB = {rss / table_gib:.2f}x table  (wall {wall / base[0]:.1f}x, cpu "
                  f"{cpu / base[1]:.1f}x baseline; {info})")  # fmt: skip
        load = os.getloadavg()[0]
        print(f"{'total (target 300 s)':<26} wall {total_wall:7.1f} s  cpu {total_cpu:7.1f} s  "
              f"(wall {total_wall / base[0]:.1f}x baseline); load average {load:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
