"""Dagster daemon load: one automation evaluation over a screen's partitions (issue 19).

Run: ``.venv/bin/python bench/bench_daemon_tick.py [--plates 20] [--wells 6]``

Adds the screen's dynamic partitions (plates x wells) to a fresh instance and times
``evaluate_automation`` — what the daemon does every ``tick_seconds`` — three times
(the cursor carried over, as the daemon does), against a baseline measured in the same
run: the same evaluation with one plate. Nothing is materialised, so this is the cost of
deciding, not of a run history.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import dagster as dg

from dagster_defs.definitions import build_defs
from dagster_defs.driver import evaluate_automation

WELLS = [f"{r}{c}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]


def tick(defs: dg.Definitions, inst: dg.DagsterInstance, repeat: int = 3) -> tuple[float, float]:
    """(first evaluation without a cursor, fastest of the later ones with it), seconds."""
    cursor, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        cursor = evaluate_automation(defs, inst, cursor).cursor
        times.append(time.perf_counter() - t0)
    return times[0], min(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plates", type=int, default=20)
    ap.add_argument("--wells", type=int, default=6, help="wells per plate (at most 384)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        project = {"dataset_uri": f"{tmp}/ds", "workspace_uri": f"{tmp}/ws", "backend": "local"}
        defs = build_defs({**project, "backend_options": {}})
        os.makedirs(f"{tmp}/home")
        with dg.instance_for_test(temp_dir=f"{tmp}/home") as inst:
            inst.add_dynamic_partitions("well", WELLS[: args.wells])
            inst.add_dynamic_partitions("plate", ["Plate0"])
            base = tick(defs, inst)
            inst.add_dynamic_partitions("plate", [f"Plate{i}" for i in range(1, args.plates)])
            full = tick(defs, inst)
    for what, i in (("first (no cursor)", 0), ("steady (cursor)", 1)):
        print(
            f"automation tick {what}, {args.plates} plates x {args.wells} wells: "
            f"{full[i]:.2f} s (baseline 1 plate: {base[i]:.2f} s; ratio {full[i] / base[i]:.2f}x)"
        )


if __name__ == "__main__":
    main()
