"""``cp tiles`` speed and memory against reading the same mosaics once.

Usage: python bench/bench_tiles.py [--grid 10] [--size 1480] [--tiles-per-side 10]
                                   [--workers 2] [--out DIR]

Builds a synthetic workspace (no images, no pipeline): a CP mosaic of a ``--grid`` x
``--grid`` well of ``--size`` px fields (10 % overlap, 3 channels) and an SBS mosaic of
the same area at 1.99x coarser pixels (2 cycles: 9 channels), both OME-NGFF written
band by band, site positions with sub-pixel offsets, an experiment and a merge report
holding a similarity (1.99 px ratio, 0.7 degree, a shift). Then times in the same run

1. the baseline: reading every chunk of both mosaics' level 0 once (every channel);
2. ours: ``cp tiles`` (every CP image cut, every SBS image resampled into the CP grid),

and prints both, their ratio and the peak resident memory of ``cp tiles`` in a fresh
process next to the size of the mosaics (to show it streams).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from starrynight import workspace

P, W = "Plate1", "A1"
CP_CHANNELS = ["PhalloAF750", "ZO1-AF488", "DAPI"]
SBS_CHANNELS = ["C", "A", "T", "G", "DAPI"]
CYCLES = (1, 2)
CP_UM, RATIO = 0.65, 1.99


def _positions(uri: str, grid: int, size: int, pixel_um: float, seed: int) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    step = size * 0.9
    rows = []
    for r in range(grid):
        for c in range(grid):
            y, x = (
                1000 + r * step + rng.uniform(-0.5, 0.5),
                1000 + c * step + rng.uniform(-0.5, 0.5),
            )
            rows.append({"site": r * grid + c, "y_px": y, "x_px": x, "y_um": y * pixel_um,
                         "x_um": x * pixel_um, "height_px": size, "width_px": size,
                         "pixel_size_y_um": pixel_um, "pixel_size_x_um": pixel_um})  # fmt: skip
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), uri)
    y0 = math.floor(min(p["y_px"] for p in rows))
    x0 = math.floor(min(p["x_px"] for p in rows))
    return (
        max(round(p["y_px"] - y0) for p in rows) + size,
        max(round(p["x_px"] - x0) for p in rows) + size,
    )


def _mosaic(uri: str, shape: tuple[int, int], channels: list[str], pixel_um: float) -> None:
    import zarr
    from numcodecs import Blosc

    from starrynight.modules.mosaic import ngff_attrs

    root = zarr.open_group(uri, mode="w", zarr_format=2)
    arr = root.create_array(
        "0", shape=(len(channels), *shape), chunks=(1, 512, 512), dtype="uint16",
        compressors=Blosc(cname="zstd", clevel=3, shuffle=2), fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )  # fmt: skip
    rng = np.random.default_rng(1)
    for c in range(len(channels)):
        for y in range(0, shape[0], 512):
            band = rng.integers(100, 4000, (min(512, shape[0] - y), shape[1]), dtype=np.uint16)
            arr[c, y : y + band.shape[0]] = band
    datasets = [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, pixel_um, pixel_um]}]}]  # fmt: skip
    omero = {"channels": [{"label": c} for c in channels]}
    root.attrs.update(ngff_attrs(Path(uri).stem, datasets, omero))


def build(ws: Path, grid: int, size: int) -> int:
    """Write the synthetic workspace; returns the mosaics' level-0 bytes (uncompressed)."""
    exp = {
        "dataset": "bench",
        "cp": {"channels": CP_CHANNELS, "roles": {"nuclei": "DAPI", "cell": "PhalloAF750"}},
        "sbs": {"cycles": list(CYCLES), "channels": SBS_CHANNELS,
                "roles": {"nuclei": "DAPI", "A": "A", "C": "C", "G": "G", "T": "T"}},
        "frame": {"type": "square", "overlap_pct": 10.0},
    }  # fmt: skip
    Path(workspace.experiment_path(str(ws))).parent.mkdir(parents=True, exist_ok=True)
    Path(workspace.experiment_path(str(ws))).write_text(json.dumps(exp))
    cp_shape = _positions(workspace.positions_path(str(ws), P, W, "cp"), grid, size, CP_UM, 2)
    sbs_grid = max(1, round(grid / RATIO))
    sbs_shape = _positions(
        workspace.positions_path(str(ws), P, W, "sbs", 1), sbs_grid, size, CP_UM * RATIO, 3
    )
    _mosaic(workspace.mosaic_path(str(ws), P, W, "cp"), cp_shape, CP_CHANNELS, CP_UM)
    sbs = [f"Cycle{k:02d}_{c}" for k in CYCLES for c in SBS_CHANNELS]
    _mosaic(workspace.mosaic_path(str(ws), P, W, "sbs"), sbs_shape, sbs, CP_UM * RATIO)
    a = math.radians(0.7)
    matrix = [[math.cos(a), -math.sin(a), 12.0], [math.sin(a), math.cos(a), -8.0], [0, 0, 1]]
    report = {"status": "registered", "reason": "", "flags": [], "sbs": {"cycle": 1},
              "transform": {"model": "similarity", "scale": 1.0, "scale_px": RATIO,
                            "rotation_deg": 0.7, "matrix_xy_um": matrix}}  # fmt: skip
    Path(workspace.merge_report_path(str(ws), P, W)).parent.mkdir(parents=True, exist_ok=True)
    Path(workspace.merge_report_path(str(ws), P, W)).write_text(json.dumps(report))
    return 2 * (
        len(CP_CHANNELS) * cp_shape[0] * cp_shape[1] + len(sbs) * sbs_shape[0] * sbs_shape[1]
    )


def read_once(ws: Path) -> float:
    """Seconds to read every chunk of both mosaics' level 0 once."""
    import zarr

    t = time.perf_counter()
    for arm in ("cp", "sbs"):
        arr = zarr.open_group(workspace.mosaic_path(str(ws), P, W, arm), mode="r")["0"]
        for c in range(arr.shape[0]):
            for y in range(0, arr.shape[1], 512):
                np.asarray(arr[c, y : y + 512])
    return time.perf_counter() - t


_CHILD = """
import resource, sys, time
from starrynight.cellprofiler.tiles import tile_well
t = time.perf_counter()
r = tile_well(
    sys.argv[1], "Plate1", "A1", tiles_per_side=int(sys.argv[2]), workers=int(sys.argv[3])
)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, r.tile_size)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=10)
    ap.add_argument("--size", type=int, default=1480)
    ap.add_argument("--tiles-per-side", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        ws = Path(tmp) / "ws"
        nbytes = build(ws, args.grid, args.size)
        base = read_once(ws)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(ws), str(args.tiles_per_side), str(args.workers)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        secs, rss_kb, tile = out.stdout.split()
        ours = float(secs)
        print(f"well: CP {args.grid}x{args.grid} fields of {args.size} px, SBS at 1/{RATIO}; "
              f"mosaics {nbytes / 1e9:.2f} GB uncompressed at level 0")  # fmt: skip
        print(f"baseline, read both mosaics once: {base:.2f} s")
        print(f"cp tiles, {args.tiles_per_side}^2 tiles of {tile} px x 12 images: {ours:.2f} s "
              f"(ratio {ours / base:.1f})")  # fmt: skip
        print(f"peak RSS of cp tiles (fresh process): {int(rss_kb) / 1024:.0f} MB")


if __name__ == "__main__":
    main()
