"""Per-site cost of every CLI step at a real image size (issue 19: the costed screen).

Generates a sample (1 plate, 1 well, SITES sites, CYCLES SBS cycles, SIZE x SIZE px),
runs each ``starrynight`` step in a fresh process as a pipeline node would, and prints
per step: wall seconds, CPU seconds (user + system of the step's process tree), peak RSS
(of the step's largest process) and bytes written, each per unit (site, or site x cycle
for the SBS steps). The baseline,
measured in the same run, is reading every input image once with tifffile (the I/O
floor); each step's CPU time per site is also printed as a ratio to that floor.
``docs/scaling.md`` scales these figures to a screen.

Run: ``.venv/bin/python bench/bench_site_costs.py [--size 1480] [--cycles 4]
[--geometry real --cp-grid 3x3 --sbs-grid 2x2 | --geometry shared --sites 4]``. The
default real geometry (CP and SBS on their own grids) adds the geometry, mosaic and
merge steps, whose unit is a CP site.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tifffile


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def run_step(argv: list[str]) -> tuple[float, float, int]:
    """Wall s, CPU s and peak RSS (MB) of ``starrynight <argv>`` in a fresh process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "starrynight.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        # wait4 gives this child's own usage (RUSAGE_CHILDREN would mix in earlier ones)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-500:]
            sys.exit(f"error: starrynight {' '.join(argv)} failed: {tail}")
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss // 1024  # KiB on Linux


def _sites(grid: str) -> int:
    rows, _, cols = grid.partition("x")
    return int(rows) * int(cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1480, help="image side in pixels")
    ap.add_argument("--sites", type=int, default=4, help="sites in the well (shared geometry)")
    ap.add_argument(
        "--geometry",
        choices=("shared", "real"),
        default="real",
        help="real: CP and SBS on their own grids (--cp-grid, --sbs-grid), which adds the "
        "geometry, mosaic and merge steps",
    )
    ap.add_argument("--cp-grid", default="3x3", help="real geometry: CP sites ROWSxCOLUMNS")
    ap.add_argument("--sbs-grid", default="2x2", help="real geometry: SBS sites ROWSxCOLUMNS")
    ap.add_argument("--cycles", type=int, default=4, help="SBS cycles")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, ws = Path(tmp, "data"), Path(tmp, "ws")
        gen = ["sample", "generate", "-o", str(data), "--wells", "A1", "--workers", "1"]
        gen += ["--geometry", args.geometry, "--cycles", str(args.cycles)]
        if args.geometry == "real":
            gen += ["--cp-grid", args.cp_grid, "--sbs-grid", args.sbs_grid]
            s, b = _sites(args.cp_grid), _sites(args.sbs_grid)
        else:
            gen += ["--sites", str(args.sites)]
            s = b = args.sites
        gen += ["--size", str(args.size)]
        run_step(gen)
        dataset = str(data / "sample")
        images = sorted(glob.glob(f"{dataset}/**/*.ome.tiff", recursive=True))
        in_bytes = sum(os.path.getsize(p) for p in images)
        start = time.process_time()
        t0 = time.perf_counter()
        for p in images:
            tifffile.imread(p)
        read_wall = time.perf_counter() - t0
        floor = (time.process_time() - start) / len(images)  # CPU s per image read
        unit = ["-w", str(ws), "--plate", "Plate1", "--well", "A1"]
        c = args.cycles
        steps = [
            ("inventory", ["inventory", "gen", "-d", dataset, "-o", str(ws), "--no-progress"], 1),
            ("index", ["index", "gen", "-i", str(ws), "-o", str(ws)], 1),
            ("experiment", ["exp", "init", "-w", str(ws)], 1),
            (
                "experiment",
                ["exp", "new", "-w", str(ws), "-i", str(ws / "experiment/experiment.init.json")],
                1,
            ),
            (
                "illum_cp",
                [
                    "illum",
                    "calc",
                    "-w",
                    str(ws),
                    "--plate",
                    "Plate1",
                    "--arm",
                    "cp",
                    "--workers",
                    "1",
                ],
                s,
            ),
            (
                "illum_sbs",
                [
                    "illum",
                    "calc",
                    "-w",
                    str(ws),
                    "--plate",
                    "Plate1",
                    "--arm",
                    "sbs",
                    "--workers",
                    "1",
                ],
                b * c,
            ),
            ("corrected_cp", ["illum", "apply", *unit, "--workers", "1"], s),
            ("aligned_sbs", ["align", *unit, "--workers", "1"], b * c),
            ("segmentation", ["segment", *unit, "--workers", "1"], s),
            ("barcode_calls", ["barcodes", "call", *unit, "--workers", "1"], b),
        ]
        if args.geometry == "real":
            # per CP site: each step's work grows with the well's CP area
            steps += [
                ("geometry", ["geometry", *unit, "--workers", "1"], s),
                ("mosaic", ["mosaic", *unit, "--workers", "1"], s),
                ("merge", ["merge", *unit], s),
            ]
        steps += [
            ("cell_features", ["analysis", "run", *unit, "--workers", "1"], s),
            ("gene_summary", ["analysis", "summary", "-w", str(ws), "--plate", "Plate1"], 1),
        ]
        print(
            f"sample: 1 well, {s} CP / {b} SBS sites ({args.geometry} geometry), {c} cycles, "
            f"{args.size}x{args.size} px; "
            f"{len(images)} input files, {in_bytes / 1e6:.0f} MB"
        )
        print(
            f"baseline: tifffile reads every input once: {floor * 1000:.0f} ms CPU per file "
            f"({read_wall:.1f} s wall for all)"
        )
        print(
            f"{'step':14s} {'units':>5s} {'wall/unit s':>11s} {'cpu/unit s':>10s} "
            f"{'x read':>7s} {'peak MB':>7s} {'written/unit MB':>15s}"
        )
        results = []
        for name, argv, units in steps:
            size0 = tree_bytes(ws) if ws.exists() else 0
            wall, cpu, rss = run_step(argv)
            written = (tree_bytes(ws) - size0) / units
            ratio = cpu / units / floor if floor > 0 else float("nan")
            print(
                f"{name:14s} {units:5d} {wall / units:11.2f} {cpu / units:10.2f} "
                f"{ratio:7.1f} {rss:7d} {written / 1e6:15.2f}"
            )
            results.append(
                dict(
                    step=name,
                    units=units,
                    wall_s=wall,
                    cpu_s=cpu,
                    peak_rss_mb=rss,
                    written_bytes=written * units,
                )
            )
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    dict(
                        size=args.size,
                        sites=s,
                        cp_sites=s,
                        sbs_sites=b,
                        geometry=args.geometry,
                        cycles=c,
                        input_bytes=in_bytes,
                        files=len(images),
                        read_cpu_s_per_file=floor,
                        steps=results,
                    ),
                    indent=1,
                )
            )


if __name__ == "__main__":
    main()
