"""Dagster overhead: the sample pipeline through Dagster vs the same CLI steps directly.

Both run in this process's run on the same freshly generated sample dataset (separate
workspaces): the baseline calls each ``starrynight`` CLI step one after the other, the
Dagster side runs the sensor + automation driver (every run recorded in a temporary
instance, local pipecraft backend). Prints both times, their ratio (target <= 1.5) and
the overhead per Dagster run (partition) in seconds.

Usage: python bench/bench_dagster.py [--size 512] [--sites 4] [--plates Plate1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "starrynight.cli"]


def cli_baseline(root: str, ws: str, plates: list[str], wells: list[str]) -> float:
    t0 = time.perf_counter()

    def run(*args: str) -> None:
        subprocess.run([*CLI, *args], check=True, capture_output=True)

    for plate in plates:
        run("inventory", "gen", "-d", root, "-o", ws, "--plate", plate, "--no-progress")
        run("index", "gen", "-i", ws, "-o", ws)
    run("exp", "init", "-w", ws)
    run("exp", "new", "-w", ws, "-i", f"{ws}/experiment/experiment.init.json")
    for plate in plates:
        run("illum", "calc", "-w", ws, "--plate", plate, "--arm", "cp")
        run("illum", "calc", "-w", ws, "--plate", plate, "--arm", "sbs")
        for well in wells:
            unit = ["-w", ws, "--plate", plate, "--well", well]
            run("illum", "apply", *unit)
            run("align", *unit)
            run("segment", *unit)
            run("barcodes", "call", *unit)
            run("analysis", "run", *unit)
        run("analysis", "summary", "-w", ws, "--plate", plate)
    return time.perf_counter() - t0


def through_dagster(root: str, tmp: str, workers: int) -> tuple[float, int, float]:
    """Seconds to drive the whole graph, the number of runs, seconds spent evaluating."""
    import dagster as dg

    import dagster_defs.driver as driver
    from dagster_defs.definitions import build_defs

    os.environ["DAGSTER_HOME"] = f"{tmp}/home"
    os.makedirs(os.environ["DAGSTER_HOME"])
    defs = build_defs(
        {
            "dataset_uri": root,
            "workspace_uri": f"{tmp}/ws_dagster",
            "backend": "local",
            "backend_options": {"max_workers": workers, "poll_seconds": 0.2},
            "stable_seconds": 0,
        }
    )
    evaluating = 0.0
    evaluate = driver.evaluate_automation

    def timed(*args, **kwargs):
        nonlocal evaluating
        t = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            evaluating += time.perf_counter() - t

    driver.evaluate_automation = timed
    try:
        t0 = time.perf_counter()
        with dg.DagsterInstance.get() as instance:
            result, _, _ = driver.drive(defs, instance)
        through = time.perf_counter() - t0
    finally:
        driver.evaluate_automation = evaluate
    if result.failed:
        sys.exit(f"dagster runs failed: {[r.error for r in result.failed]}")
    return through, len(result.runs), evaluating


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="image size (demo: 512)")
    ap.add_argument("--sites", type=int, default=4, help="sites per well (demo: 4)")
    ap.add_argument("--plates", default="Plate1", help="comma-separated plates (demo: Plate1)")
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="pipecraft local worker slots on the Dagster side (default 2)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="CLI / Dagster pairs, interleaved (default 1)"
    )
    args = ap.parse_args()
    from starrynight.sample import SampleSpec, generate

    plates = args.plates.split(",")
    wells = ["A1", "A2"]
    bases, throughs, evals = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = str(
            generate(
                SampleSpec(plates=tuple(plates), size=args.size, sites=args.sites),
                Path(tmp) / "out",
            ).dataset_root
        )
        for i in range(args.repeat):
            bases.append(cli_baseline(root, f"{tmp}/ws_cli{i}", plates, wells))
            os.makedirs(f"{tmp}/dagster{i}")
            through, n, evaluating = through_dagster(root, f"{tmp}/dagster{i}", args.workers)
            throughs.append(through)
            evals.append(evaluating)
            print(
                f"repeat {i + 1}: CLI {bases[-1]:.1f} s, Dagster {through:.1f} s "
                f"(automation evaluations {evaluating:.1f} s), ratio {through / bases[-1]:.2f}x",
                flush=True,
            )
    base, through = statistics.median(bases), statistics.median(throughs)
    print(
        f"sample: {len(plates)} plate(s) x {len(wells)} wells x {args.sites} sites, {args.size}px"
    )
    print(f"pipecraft local workers: {args.workers}; {args.repeat} repeat(s), min / median")
    print(f"CLI steps directly (baseline): {min(bases):.1f} / {base:.1f} s")
    print(f"through Dagster ({n} runs):     {min(throughs):.1f} / {through:.1f} s")
    print(f"  of which automation evaluations: {statistics.median(evals):.1f} s (median)")
    ratios = [t / b for t, b in zip(throughs, bases, strict=True)]
    print(
        f"ratio Dagster / CLI: {min(ratios):.2f}x / {statistics.median(ratios):.2f}x "
        "(target <= 1.5x)"
    )
    per_run = [(t - b) / n for t, b in zip(throughs, bases, strict=True)]
    print(f"overhead per run (partition): {min(per_run):.2f} / {statistics.median(per_run):.2f} s")


if __name__ == "__main__":
    main()
