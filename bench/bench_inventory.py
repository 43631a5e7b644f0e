"""Inventory speed: ``inventory.generate`` on a local tree vs ``find DIR -type f``.

Builds a tree of N empty files in the Cell Painting Gallery layout (default 200,000),
then times ``find DIR -type f`` (the baseline, in the same run) and
``starrynight.inventory.generate`` (list + stat every file + write the parquet). Each is
run three times, best time kept. The target is a ratio of at most 2.

Usage: ``.venv/bin/python bench/bench_inventory.py [N]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
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


def best_of(fn, repeats: int = 3) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "ds")
        build_tree(root, n)
        ws = Path(tmp, "ws")

        def run_find() -> None:
            subprocess.run(["find", str(root), "-type", "f"], check=True, stdout=subprocess.DEVNULL)

        def run_inventory() -> None:
            summary = inventory.generate(str(root), str(ws), progress=False)
            assert summary.files == n

        run_find()  # warm the dentry cache for both
        t_find = best_of(run_find)
        t_inv = best_of(run_inventory)
    print(f"find -type f: {n:,} files in {t_find:.2f} s ({n / t_find:,.0f} files/s)")
    print(f"inventory gen: {n:,} files in {t_inv:.2f} s ({n / t_inv:,.0f} files/s)")
    print(
        f"ratio: {t_inv / t_find:.2f}x the time of find (target <= 2): "
        f"{'met' if t_inv <= 2 * t_find else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
