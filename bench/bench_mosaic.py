"""Mosaic speed and memory against reading and writing the same pixels.

Usage: python bench/bench_mosaic.py [--data bench_out/geometry] [--grid 20] [--size 1480]
                                    [--memory-grids 10,20] [--workers 2]

Reuses (or makes) the real-geometry samples of ``bench_geometry.py`` (``data<grid>`` /
``ws<grid>`` under ``--data``), corrects their illumination and places their sites,
then times in the same run

1. the baseline: reading every corrected image once and writing an array of the
   mosaic's level-0 size to Zarr with the same chunks and codec, band by band (a band
   of the fields' own pixels, so the codec sees image statistics; a band of random
   values, which compresses several times faster, is timed too for comparison);
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
from bench_geometry import PEAK_RSS_CODE, cpu_seconds, prepare


def ready(root: Path, grid: int, size: int, workers: int) -> str:
    ws, _ = prepare(root, grid, size, workers)
    if not storage.exists(workspace.illum_stats_path(ws, "Plate1")):
        calc_illum(ws, "Plate1", arm="cp", workers=workers)
    apply_illum(ws, "Plate1", "A1", workers=workers)
    geometry_well(ws, "Plate1", "A1", arms=("cp",), workers=workers)
    return ws


def real_band(uris: list[str], channels: int, rows: int, width: int) -> np.ndarray:
    """A band of the mosaic's width made of the fields' own pixels, side by side (no
    placement): what the writer compresses then has the statistics of the mosaic."""
    band = np.zeros((channels, rows, width), np.uint16)
    k = 0
    for c in range(channels):
        x = 0
        while x < width:
            reader = mos._TileRows(uris[k % len(uris)])
            part = reader.rows(0, min(rows, reader.shape[0]))[:, : width - x]
            band[c, : part.shape[0], x : x + part.shape[1]] = part
            x += part.shape[1]
            k += 1
    return band


def baseline(ws: str, chunk: int, workers: int, random: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds (all threads and child processes) of the baseline.

    The band written is made of the fields' pixels (``random``: of uniform random values
    in 100-4000, as this bench first did; those compress several times faster than
    images do, so that baseline wrote cheaper pixels than the mosaic's).
    """
    import zarr

    plan = mos._plan(ws, "Plate1", "A1", "cp", required=True)
    _, tiles, channels, _, shape = plan
    uris = [u for t in tiles for u in t.uris]
    if random:
        rng = np.random.default_rng(0)
        band = rng.integers(100, 4000, size=(len(channels), chunk, shape[1]), dtype=np.uint16)
    else:
        band = real_band(uris, len(channels), chunk, shape[1])
    start, cpu = time.perf_counter(), cpu_seconds()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda u: mos._TileRows(u).rows(0, mos._TileRows(u).shape[0]).sum(), uris))
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.open_group(tmp, mode="w", zarr_format=2).create_array(
            "0", shape=(len(channels), *shape), chunks=(1, chunk, chunk), dtype="uint16",
            compressors=mos.compressor(), fill_value=0,
        )  # fmt: skip
        for b0 in range(0, shape[0], chunk):
            b1 = min(shape[0], b0 + chunk)
            arr[:, b0:b1, :] = band[:, : b1 - b0]
    return time.perf_counter() - start, cpu_seconds() - cpu


def ours(ws: str, chunk: int, workers: int) -> tuple[float, float, mos.MosaicReport]:
    start, cpu = time.perf_counter(), cpu_seconds()
    report = mos.mosaic_well(ws, "Plate1", "A1", arms=("cp",), force=True, workers=workers,
                             chunk=chunk)  # fmt: skip
    return time.perf_counter() - start, cpu_seconds() - cpu, report


def peak_memory_mb(ws: str, workers: int) -> tuple[float, float]:
    """Peak RSS (MB) of a fresh process drawing the mosaic, and of its largest worker."""
    code = PEAK_RSS_CODE + (
        "import resource\n"
        "from starrynight.modules.mosaic import mosaic_well\n"
        f"mosaic_well({ws!r}, 'Plate1', 'A1', arms=('cp',), force=True, workers={workers})\n"
        "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    me, kid = (float(x) for x in out.stdout.strip().splitlines()[-1].split())
    return me, kid


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
    base, base_cpu = min(baseline(ws, args.chunk, args.workers) for _ in range(2))
    rand, rand_cpu = baseline(ws, args.chunk, args.workers, random=True)
    seconds, cpu, report = ours(ws, args.chunk, args.workers)
    arm = report.arms[0]
    c, h, w = arm.shape
    print(f"{arm.sites} sites -> {c} x {h} x {w} px, {arm.levels} levels, chunk {args.chunk}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) after the timed runs: {load}, {os.cpu_count()} cores")
    print(f"read every tile + write level 0: {base:7.2f} s  (baseline; CPU {base_cpu:.2f} s)")
    print(f"  the same, random pixels written: {rand:7.2f} s  (CPU {rand_cpu:.2f} s; not used)")
    print(f"ours (mosaic step):              {seconds:7.2f} s  ratio {seconds / base:.2f}")
    print(
        f"CPU s (threads + worker processes): baseline {base_cpu:.2f}, ours {cpu:.2f}, "
        f"ratio {cpu / base_cpu:.2f}; codec {mos.compressor()}"
    )
    for g in [int(x) for x in args.memory_grids.split(",") if x]:
        mws = ready(root, g, args.size, args.workers)
        me, kid = peak_memory_mb(mws, args.workers)
        print(f"peak RSS of mosaic, {g * g:4d} sites: {me:7.0f} MB, largest worker {kid:.0f} MB")


if __name__ == "__main__":
    main()
