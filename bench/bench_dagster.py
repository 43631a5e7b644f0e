"""Dagster overhead: the sample pipeline through Dagster vs the same CLI steps directly.

Both run in this process's run on the same freshly generated sample dataset (separate
workspaces): the baseline calls each ``starrynight`` CLI step one after the other, the
Dagster side runs the sensor + automation driver (every run recorded in a temporary
instance, local pipecraft backend). Prints both times, their ratio (target <= 1.5) and
the overhead per Dagster run (partition) in seconds.

Usage: python bench/bench_dagster.py [--size 512] [--sites 4] [--plates Plate1]
"""

from __future__ import annotations

import argparse
import os
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
    args = ap.parse_args()
    from starrynight.sample import SampleSpec, generate

    plates = args.plates.split(",")
    wells = ["A1", "A2"]
    with tempfile.TemporaryDirectory() as tmp:
        root = str(
            generate(
                SampleSpec(plates=tuple(plates), size=args.size, sites=args.sites),
                Path(tmp) / "out",
            ).dataset_root
        )
        base = cli_baseline(root, f"{tmp}/ws_cli", plates, wells)

        os.environ["DAGSTER_HOME"] = f"{tmp}/home"
        os.makedirs(os.environ["DAGSTER_HOME"])
        import dagster as dg

        from dagster_defs.definitions import build_defs
        from dagster_defs.driver import drive

        defs = build_defs(
            {
                "dataset_uri": root,
                "workspace_uri": f"{tmp}/ws_dagster",
                "backend": "local",
                "backend_options": {"max_workers": args.workers, "poll_seconds": 0.2},
                "stable_seconds": 0,
            }
        )
        t0 = time.perf_counter()
        with dg.DagsterInstance.get() as instance:
            result, _, _ = drive(defs, instance)
        through = time.perf_counter() - t0
        if result.failed:
            sys.exit(f"dagster runs failed: {[r.error for r in result.failed]}")
    n = len(result.runs)
    print(
        f"sample: {len(plates)} plate(s) x {len(wells)} wells x {args.sites} sites, {args.size}px"
    )
    print(f"CLI steps directly (baseline): {base:.1f} s")
    print(f"through Dagster ({n} runs):     {through:.1f} s")
    print(f"pipecraft local workers: {args.workers}")
    print(f"ratio Dagster / CLI: {through / base:.2f}x (target <= 1.5x)")
    print(f"overhead per run (partition): {(through - base) / n:.2f} s")


if __name__ == "__main__":
    main()
