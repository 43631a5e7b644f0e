"""Pipecraft scheduling overhead and Snakefile compile time for a 10,000-node scatter.

Run: ``.venv/bin/python bench/bench_pipecraft.py [--nodes N] [--workers W]``

Prints
- the local backend's overhead per node (wall time of ``run().wait()`` for N no-op
  PyFunction nodes, divided by N), against a baseline measured here: the same N calls
  through a bare ThreadPoolExecutor (the least any pooled scheduler must pay);
- the time to compile the pipeline into a DAG and then into a Snakefile, against a
  baseline of serialising the same DAG to JSON.
Targets (issue 3): local overhead < 1 ms per node; Snakefile compile < 2 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from pipecraft import LocalBackend, Pipeline, PyFunction, RunStatus, Scatter
from pipecraft.backends.snakemake import SnakemakeBackend
from pipecraft.testing import noop


def scatter(n: int) -> Pipeline:
    return Pipeline(
        "bench", Scatter("site", range(n), lambda i: PyFunction(name=f"noop-{i}", func=noop))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10_000, help="number of scatter nodes")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="local worker slots")
    args = ap.parse_args()
    n = args.nodes

    # -- Snakefile compilation ---------------------------------------------------
    t0 = time.perf_counter()
    pipeline = scatter(n)
    dag = pipeline.compile()
    t_dag = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as wd:
        t0 = time.perf_counter()
        text = SnakemakeBackend(wd).compile(dag)
        t_snake = time.perf_counter() - t0
    t0 = time.perf_counter()
    dag.to_json()
    t_json = time.perf_counter() - t0
    compile_total = t_dag + t_snake
    print(f"nodes: {n}, workers: {args.workers}")
    print(f"pipeline -> DAG compile:  {t_dag:8.3f} s")
    print(f"DAG -> Snakefile compile: {t_snake:8.3f} s  ({len(text) / 1e6:.1f} MB)")
    print(
        f"total compile:            {compile_total:8.3f} s  "
        f"(target < 2 s: {'OK' if compile_total < 2 else 'MISSED'}; "
        f"{compile_total / t_json:.1f}x the JSON serialisation baseline of {t_json:.3f} s)"
    )

    # -- local backend scheduling overhead ----------------------------------------
    nodes = list(dag.nodes.values())
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        for f in [pool.submit(node.call) for node in nodes]:
            f.result()
    t_pool = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as wd:
        backend = LocalBackend(wd, max_workers=args.workers)
        t0 = time.perf_counter()
        handle = backend.run(dag)
        status = handle.wait()
        t_run = time.perf_counter() - t0
        assert status is RunStatus.SUCCEEDED, status
        t0 = time.perf_counter()
        handle = backend.run(dag)  # every node complete: all skipped
        handle.wait()
        t_skip = time.perf_counter() - t0

    us = t_run / n * 1e6
    print(f"bare ThreadPoolExecutor:  {t_pool / n * 1e6:8.1f} us/node (baseline)")
    print(
        f"local backend run:        {us:8.1f} us/node  "
        f"(target < 1000 us: {'OK' if us < 1000 else 'MISSED'}; "
        f"{t_run / t_pool:.1f}x the baseline; includes each node's completion "
        "journal entry)"
    )
    print(
        f"local backend re-run:     {t_skip / n * 1e6:8.1f} us/node (all nodes skipped as complete)"
    )


if __name__ == "__main__":
    main()
