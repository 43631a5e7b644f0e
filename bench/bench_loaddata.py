"""LoadData CSV generation at plate scale, and its existence check against a per-file one.

Usage: python bench/bench_loaddata.py [--wells 96] [--sites 25] [--cycles 4]

Lays out one plate of empty image files in the Gallery layout (CP + SBS cycles; the
files are never read), indexes it, writes fake illumination functions, then times
``write_loaddata`` for ``illum_calc_cp`` (one CSV per plate), ``illum_apply_cp`` and
``illum_apply_sbs`` (one CSV per well). The existence check, the part that talks to
storage, is timed on its own against the baseline of one ``storage.exists`` per file
(what a naive generator does; on S3 each is a HEAD request), same files, same process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from starrynight import experiment, index, inventory, storage, workspace
from starrynight.cellprofiler import loaddata as ld

CP = "PhalloAF750,ZO1-AF488,DAPI"
SBS = "C,A,T,G,DAPI"


def _layout(root: Path, wells: int, sites: int, cycles: int) -> None:
    plate = root / "source_1" / "Batch1" / "images" / "Plate1"
    names = [f"{r}{c}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)][:wells]
    folders = [(plate / "20X_CP_Plate1", CP)]
    folders += [(plate / f"10X_c{k}_SBS-{k}", SBS) for k in range(1, cycles + 1)]
    for folder, channels in folders:
        folder.mkdir(parents=True)
        for w in names:
            for s in range(sites):
                (folder / f"Well{w}_Point{w}_{s:04d}_Channel{channels}_Seq{s:04d}.ome.tiff").touch()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wells", type=int, default=96, help="Wells in the plate.")
    parser.add_argument("--sites", type=int, default=25, help="Sites per well.")
    parser.add_argument("--cycles", type=int, default=4, help="SBS cycles.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, ws = Path(tmp) / "sample", str(Path(tmp) / "ws")
        _layout(root, args.wells, args.sites, args.cycles)
        inventory.generate(str(root), ws, progress=False)
        index.generate(ws, ws)
        experiment.new(ws, experiment.init(ws))
        for ch in ("PhalloAF750", "ZO1AF488", "DAPI"):
            storage.write_bytes(workspace.illum_path(ws, "Plate1", ch), b"")
        for k in range(1, args.cycles + 1):
            for ch in SBS.split(","):
                storage.write_bytes(workspace.illum_path(ws, "Plate1", ch, k), b"")
        n_files = args.wells * args.sites * (1 + args.cycles)
        print(f"plate: {args.wells} wells x {args.sites} sites, {args.cycles} SBS cycles "
              f"= {n_files} image files")  # fmt: skip
        for step in ("illum_calc_cp", "illum_apply_cp", "illum_apply_sbs"):
            t0 = time.perf_counter()
            r = ld.write_loaddata(ws, step)
            dt = time.perf_counter() - t0
            rows = sum(c.rows for c in r.csvs)
            print(f"{step:16s} {len(r.csvs):3d} CSV(s) {rows:6d} rows  {dt * 1000:8.1f} ms  "
                  f"({dt / rows * 1e6:.1f} us/row)")  # fmt: skip
        units, _ = ld.build_units(ws, "illum_apply_sbs", check_files=False)
        uris: set[str] = set()
        for rows in units.values():
            for row in rows:
                for col, value in row.items():
                    if col.startswith("FileName_"):
                        uris.add(storage.join(str(row["PathName_" + col[9:]]), str(value)))
        t0 = time.perf_counter()
        missing = ld.missing_files(uris)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        naive = [u for u in uris if not storage.exists(u)]
        base = time.perf_counter() - t0
        assert missing == naive == []
        print(f"existence check of {len(uris)} files: per folder {ours * 1000:.1f} ms, "
              f"one exists() per file {base * 1000:.1f} ms -> "
              f"{base / ours:.1f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
