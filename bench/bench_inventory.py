"""Inventory speed: ``inventory.generate`` on a local tree vs ``find DIR -type f``.

Builds a tree of N empty files in the Cell Painting Gallery layout (default 200,000),
then times ``find DIR -type f`` (the baseline, in the same run) and
``starrynight.inventory.generate`` (list + stat every file + write the parquet). The
target is a ratio of at most 2. A second, fair baseline is printed alongside:
``find DIR -type f -printf '%s %T@ %P\n'``, which stats every file for its size and
mtime as the inventory must. Each is run REPEATS times (default 5), interleaved;
min and median are reported, ratios on medians.

Usage: ``.venv/bin/python bench/bench_inventory.py [N] [REPEATS]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from starrynight import inventory


def build_tree(root: Path, n: int) -> None:
    wells = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    made, plate = 0, 0
    while made < n:
        plate += 1
        folders = [f"20X_CP_Plate{plate}"] + [f"10X_c{k}_SBS-{k}" for k in range(1, 11)]
        for folder in folders:
            d = root / "source_1" / "Batch1" / "images" / f"Plate{plate}" / folder
            d.mkdir(parents=True)
            for well in wells:
                for site in range(25):
                    if made >= n:
                        return
                    name = f"Well{well}_Point{well}_{site:04d}_ChannelC,A,T,G,DAPI_Seq0.tiff"
                    os.close(os.open(d / name, os.O_CREAT | os.O_WRONLY, 0o644))
                    made += 1


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "ds")
        build_tree(root, n)
        ws = Path(tmp, "ws")

        def run_find() -> None:
            subprocess.run(["find", str(root), "-type", "f"], check=True, stdout=subprocess.DEVNULL)

        def run_find_stat() -> None:
            subprocess.run(
                ["find", str(root), "-type", "f", "-printf", "%s %T@ %P\n"],
                check=True,
                stdout=subprocess.DEVNULL,
            )

        def run_inventory() -> None:
            summary = inventory.generate(str(root), str(ws), progress=False)
            assert summary.files == n

        run_find()  # warm the dentry and inode caches for all
        run_find_stat()
        times: dict[str, list[float]] = {"find": [], "find_stat": [], "inventory": []}
        for _ in range(repeats):
            times["find"].append(timed(run_find))
            times["find_stat"].append(timed(run_find_stat))
            times["inventory"].append(timed(run_inventory))
    best = {k: min(v) for k, v in times.items()}
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    for key, label in (
        ("find", "find -type f"),
        ("find_stat", "find -type f -printf '%s %T@ %P'"),
        ("inventory", "inventory gen"),
    ):
        print(
            f"{label}: {n:,} files, min {best[key]:.2f} s, median {med[key]:.2f} s "
            f"({n / med[key]:,.0f} files/s)"
        )
    ratio = med["inventory"] / med["find"]
    print(
        f"ratio: {ratio:.2f}x the time of find (median; min/min "
        f"{best['inventory'] / best['find']:.2f}x; target <= 2): "
        f"{'met' if ratio <= 2 else 'NOT met'}"
    )
    print(
        f"ratio to find -printf (also stats every file): "
        f"{med['inventory'] / med['find_stat']:.2f}x (median)"
    )


if __name__ == "__main__":
    main()
