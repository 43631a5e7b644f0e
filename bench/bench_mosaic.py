"""Mosaic speed and memory against reading and writing the same pixels.

Usage: python bench/bench_mosaic.py [--data bench_out/geometry] [--grid 20] [--size 1480]
                                    [--memory-grids 10,20] [--workers 2]

Reuses (or makes) the real-geometry samples of ``bench_geometry.py`` (``data<grid>`` /
``ws<grid>`` under ``--data``), corrects their illumination and places their sites,
then times in the same run

1. the baseline: reading every corrected image once and writing an array of the
   mosaic's level-0 size to Zarr with the same chunks and codec, band by band;
2. ours: ``mosaic`` (placement, nearest-centre seams, every pyramid level, thumbnail).

Prints both, their ratio, and the peak resident memory of ``mosaic`` in a fresh
process for each of ``--memory-grids``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from starrynight import storage, workspace
from starrynight.modules import mosaic as mos
from starrynight.modules.geometry import geometry_well
from starrynight.modules.illum import apply_illum, calc_illum

sys.path.insert(0, str(Path(__file__).parent))
from bench_geometry import prepare


def ready(root: Path, grid: int, size: int, workers: int) -> str:
    ws, _ = prepare(root, grid, size, workers)
    if not storage.exists(workspace.illum_stats_path(ws, "Plate1")):
        calc_illum(ws, "Plate1", arm="cp", workers=workers)
    apply_illum(ws, "Plate1", "A1", workers=workers)
    geometry_well(ws, "Plate1", "A1", arms=("cp",), workers=workers)
    return ws


def baseline(ws: str, chunk: int, workers: int) -> float:
    import zarr
    from numcodecs import Blosc

    plan = mos._plan(ws, "Plate1", "A1", "cp", required=True)
    _, tiles, channels, _, shape = plan
    uris = [u for t in tiles for u in t.uris]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda u: mos._TileRows(u).rows(0, mos._TileRows(u).shape[0]).sum(), uris))
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.open_group(tmp, mode="w", zarr_format=2).create_array(
            "0", shape=(len(channels), *shape), chunks=(1, chunk, chunk), dtype="uint16",
            compressors=Blosc(cname="zstd", clevel=3, shuffle=2), fill_value=0,
        )  # fmt: skip
        rng = np.random.default_rng(0)
        band = rng.integers(100, 4000, size=(len(channels), chunk, shape[1]), dtype=np.uint16)
        for b0 in range(0, shape[0], chunk):
            b1 = min(shape[0], b0 + chunk)
            arr[:, b0:b1, :] = band[:, : b1 - b0]
    return time.perf_counter() - start


def ours(ws: str, chunk: int, workers: int) -> tuple[float, mos.MosaicReport]:
    start = time.perf_counter()
    report = mos.mosaic_well(ws, "Plate1", "A1", arms=("cp",), force=True, workers=workers,
                             chunk=chunk)  # fmt: skip
    return time.perf_counter() - start, report


def peak_memory_mb(ws: str, workers: int) -> float:
    code = (
        "import resource\n"
        "from starrynight.modules.mosaic import mosaic_well\n"
        f"mosaic_well({ws!r}, 'Plate1', 'A1', arms=('cp',), force=True, workers={workers})\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="bench_out/geometry")
    parser.add_argument("--grid", type=int, default=20)
    parser.add_argument("--size", type=int, default=1480)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--memory-grids", default="10,20")
    args = parser.parse_args()
    root = Path(args.data)
    ws = ready(root, args.grid, args.size, args.workers)
    base = min(baseline(ws, args.chunk, args.workers) for _ in range(2))
    seconds, report = ours(ws, args.chunk, args.workers)
    arm = report.arms[0]
    c, h, w = arm.shape
    print(f"{arm.sites} sites -> {c} x {h} x {w} px, {arm.levels} levels, chunk {args.chunk}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) after the timed runs: {load}, {os.cpu_count()} cores")
    print(f"read every tile + write level 0: {base:7.2f} s  (baseline)")
    print(f"ours (mosaic step):              {seconds:7.2f} s  ratio {seconds / base:.2f}")
    for g in [int(x) for x in args.memory_grids.split(",") if x]:
        mws = ready(root, g, args.size, args.workers)
        mb = peak_memory_mb(mws, args.workers)
        print(f"peak RSS of mosaic, {g * g:4d} sites: {mb:7.0f} MB")


if __name__ == "__main__":
    main()
