"""``illum calc --preset cellprofiler`` against CellProfiler 4.2.8 on the same images.

Usage: python bench/bench_illum_cellprofiler.py [--sites 16] [--size 1024] [--reps 3]
       [--cellprofiler PATH]

Generates a Cell Painting sample plate (1 well x SITES sites, SIZE px, 3 channels), then
runs ours (``calc_illum``, cp arm, best of REPS) and CellProfiler headless with
``tests/data/cellprofiler/illum_calc.cppipe`` (the legacy Broad settings; see
``tests/starrynight/test_illum_cellprofiler.py``) on our ``illum_calc_cp`` LoadData CSV.
Prints per channel the correlation and the largest absolute and relative differences,
then both wall times and their ratio. CellProfiler's time includes its start-up (the
JVM and module imports), so it is also run on the CSV's first row alone: the
difference of the two is its time for the other images.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from starrynight import experiment, index, inventory, storage, workspace  # noqa: E402
from starrynight.cellprofiler import loaddata as ld  # noqa: E402
from starrynight.cellprofiler.run import cellprofiler_argv  # noqa: E402
from starrynight.modules.illum import calc_illum  # noqa: E402
from starrynight.sample import SampleSpec, generate  # noqa: E402
from tests.starrynight.cellprofiler_helpers import PIPELINES, find_cellprofiler  # noqa: E402

PIPE = str(PIPELINES / "illum_calc.cppipe")
CHANNELS = {"DNA": "DAPI", "Phalloidin": "PhalloAF750", "ZO1AF488": "ZO1-AF488"}


def run_cellprofiler(cellprofiler: str, csv_uri: str, out: Path) -> float:
    """Run the pipeline headless on one LoadData CSV; return its wall time in seconds."""
    out.mkdir(parents=True, exist_ok=True)
    argv = cellprofiler_argv(cellprofiler, PIPE, csv_uri, str(out))
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"CellProfiler failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def first_row_csv(csv_uri: str, dest: Path) -> str:
    """A copy of a LoadData CSV with only its first image set (for the start-up time)."""
    rows = list(csv.reader(io.StringIO(storage.read_bytes(csv_uri).decode())))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows[:2])
    dest.write_text(buffer.getvalue())
    return str(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=16)
    parser.add_argument("--size", type=int, default=1024, help="a multiple of 4")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cellprofiler", default=None)
    args = parser.parse_args()
    cellprofiler = args.cellprofiler or find_cellprofiler()
    if cellprofiler is None:
        raise SystemExit("CellProfiler not found: pass --cellprofiler or run `make cellprofiler`")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        spec = SampleSpec(wells=("A1",), sites=args.sites, cycles=0, size=args.size, n_barcodes=4)
        result = generate(spec, tmp / "data")
        ws = str(tmp / "ws")
        inventory.generate(result.dataset_root, ws, progress=False)
        index.generate(ws, ws)
        experiment.new(ws, experiment.init(ws))

        ours = []
        for _ in range(args.reps):
            start = time.perf_counter()
            calc_illum(ws, "Plate1", arm="cp", preset="cellprofiler", force=True)
            ours.append(time.perf_counter() - start)

        (unit,) = ld.write_loaddata(ws, "illum_calc_cp").csvs
        cp_time = run_cellprofiler(cellprofiler, unit.uri, tmp / "cp")
        one = first_row_csv(unit.uri, tmp / "one.csv")
        cp_startup = run_cellprofiler(cellprofiler, one, tmp / "cp1")

        print(f"{args.sites} images of {args.size} px, 3 channels (legacy settings: "
              "x0.25, median 10, robust minimum, x4)")  # fmt: skip
        print(f"  {'channel':12s} {'corr':>10s} {'max abs':>9s} {'max rel':>9s}")
        for name, channel in CHANNELS.items():
            a = np.load(workspace.illum_path(ws, "Plate1", index.normalise_channel(channel)))
            b = np.load(tmp / "cp" / f"Plate1_Illum{name}.npy")
            if a.shape != b.shape:
                print(f"  {channel:12s} shapes differ: ours {a.shape}, CellProfiler {b.shape}")
                continue
            a, b = a.astype(np.float64), b.astype(np.float64)
            diff = np.abs(a - b)
            corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
            print(f"  {channel:12s} {corr:10.7f} {diff.max():9.2e} {(diff / b).max():9.2e}")
        best = min(ours)
        print(f"  ours: {best:.2f} s (best of {args.reps}); CellProfiler: {cp_time:.2f} s "
              f"-> {cp_time / best:.1f}x faster")  # fmt: skip
        rest = cp_time - cp_startup
        print(f"  CellProfiler on 1 image: {cp_startup:.2f} s (start-up); on the other "
              f"{args.sites - 1}: {rest:.2f} s -> ours {rest / best:.1f}x faster without "
              "its start-up")  # fmt: skip


if __name__ == "__main__":
    main()
