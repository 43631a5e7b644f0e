"""Index generation speed: ``index.generate`` on a 1,000,000-path inventory.

Synthesises realistic Cell Painting Gallery keys and writes them as an inventory parquet
the way ``inventory gen`` does, then times ``starrynight.index.generate`` end to end
(read the inventory, parse, write index and rejects, completeness) in a fresh child
process per repeat, so its peak memory is that of index generation alone. The
baseline, measured in the same run, is a per-path parser in a Python loop
(``re.fullmatch`` per key, the way a per-path grammar parser works) on a sample of the
same keys.

The synthetic screen mixes three plate formats seen in the Gallery:

- 6-well plates, wells ``A1``..``B3``: CP at 20X with 1,500 sites per well, 12 SBS
  cycles at 10X with 376 sites per well (36,072 images per plate);
- 6-well plates, numeric wells ``1``..``6``: 1,281 CP and 320 SBS sites per well, 11
  cycles (28,806 images);
- 384-well plates, wells ``A01``..``P24``: 16 CP and 4 SBS sites per well, 10 cycles,
  ``.tiff`` (21,504 images);

with three SBS folder spellings, two channel sets, a ``Barcodes.csv`` per plate (a
metadata reject) and a few missing images. Whole plates are generated, so the path
count is slightly above the one asked for.

Usage: ``.venv/bin/python bench/bench_index.py [N] [REPEATS]``; prints min/median
paths/s, the ratio to the baseline and the peak resident memory of index generation.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from starrynight import inventory

CP_CHANNELS = "PhalloAF750,ZO1-AF488,DAPI"
SBS_CHANNELS = ["C,A,T,G,DAPI", "405 nm,477 nm,G,T,DAPI"]
# (wells, CP sites per well, SBS sites per well, SBS cycles, extension)
PLATE_FORMATS = [
    ([f"{r}{c}" for r in "AB" for c in range(1, 4)], 1500, 376, 12, ".ome.tiff"),
    ([str(w) for w in range(1, 7)], 1281, 320, 11, ".ome.tiff"),
    ([f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)], 16, 4, 10, ".tiff"),
]
MISSING_EVERY = 250_007  # drop one image in this many: a few real gaps


def synth_keys(n: int) -> list[str]:
    """Whole plates of realistic keys until there are at least ``n``."""
    keys: list[str] = []
    plate = 0
    while len(keys) < n:
        plate += 1
        wells, cp_sites, sbs_sites, cycles, ext = PLATE_FORMATS[(plate - 1) % len(PLATE_FORMATS)]
        folders = [(f"20X_CP_Plate{plate}_20240101_120000", CP_CHANNELS, cp_sites)]
        for k in range(1, cycles + 1):
            spelling = [f"10X_c{k}_SBS-{k}", f"10X_c{k}-SBS-{k}", f"10X-SBS-{k}_20240102"][k % 3]
            folders.append((spelling, SBS_CHANNELS[plate % 2], sbs_sites))
        prefix = f"source_4/Batch{plate % 3 + 1}/images/Plate{plate}"
        for folder, chans, sites in folders:
            seq = 0
            for well in wells:
                head = f"{prefix}/{folder}/Well{well}_Point{well}_"
                tail = f"_Channel{chans}_Seq"
                for site in range(sites):
                    keys.append(f"{head}{site:04d}{tail}{seq:04d}{ext}")
                    seq += 1
        keys.append(f"source_4/workspace/metadata/Plate{plate}_Barcodes.csv")
    del keys[MISSING_EVERY::MISSING_EVERY]
    return keys


def write_inventory(keys: list[str], path: Path) -> None:
    """An inventory parquet as ``inventory gen`` writes it (same schema, zstd)."""
    arr = pa.array(keys, pa.string())
    folder = pc.replace_substring_regex(arr, r"/?[^/]*$", "")
    name = pc.replace_substring_regex(arr, r"^.*/", "")
    n = len(keys)
    table = pa.Table.from_arrays(
        [
            arr,
            pa.array([1 << 20] * n, pa.int64()),
            pa.array([0] * n, pa.int64()).cast(pa.timestamp("ns")),
            pc.dictionary_encode(folder),
            name,
        ],
        schema=inventory._schema("/data/cpg0032"),
    )
    pq.write_table(table, path, compression="zstd", row_group_size=65536)


CHILD = """
import json, resource, sys, time
from starrynight import index
t0 = time.perf_counter()
summary = index.generate(sys.argv[1], sys.argv[2])
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"elapsed": elapsed, "peak_mb": peak, "line": summary.line(),
                  "total": summary.images + summary.rejects}))
"""


def run_child(inv: Path, ws: Path) -> dict:
    """One timed ``index.generate`` in a fresh interpreter (imports not timed)."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(inv), str(ws)], check=True, capture_output=True
    )
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


BASELINE = re.compile(
    r"(?:(?P<dataset>[^/]+)/)?(?P<source>[^/]+)/(?P<batch>[^/]+)/images/(?P<plate>[^/]+)/"
    r"(?P<folder>[^/]+)/Well(?P<well>[A-Za-z]*\d+)_Point(?P<point>[A-Za-z]*\d+)_(?P<site>\d+)_"
    r"Channel(?P<channels>[^_/]+)_Seq\d+(?P<ext>\.ome\.tiff?|\.tiff?|\.nd2)"
)
CP = re.compile(r"(\d+X)_CP_.+")
SBS = re.compile(r"(\d+X)(?:_c(\d+))?[_-]SBS-(\d+)(?:_.+)?")


def baseline_parse(keys: list[str]) -> list[dict | None]:
    """Per-path Python loop: one match per key, then the folder and consistency checks."""
    rows: list[dict | None] = []
    for key in keys:
        m = BASELINE.fullmatch(key)
        if m is None:
            rows.append(None)
            continue
        row = m.groupdict()
        f = CP.fullmatch(row["folder"]) or SBS.fullmatch(row["folder"])
        if f is None or row["well"] != row["point"]:
            rows.append(None)
            continue
        row["channels"] = row["channels"].split(",")
        row["site"] = int(row["site"])
        rows.append(row)
    return rows


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    keys = synth_keys(n)
    n = len(keys)
    sample = keys[:: max(1, n // 100_000)]
    n_sample = len(sample)
    t0 = time.perf_counter()
    baseline_rows = baseline_parse(sample)
    base_rate = len(sample) / (time.perf_counter() - t0)
    assert sum(r is not None for r in baseline_rows) > 0
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        inv = Path(tmp, "inventory.parquet")
        write_inventory(keys, inv)
        del keys, sample, baseline_rows
        for i in range(repeats):
            runs.append(run_child(inv, Path(tmp, f"ws{i}")))
    assert all(r["total"] == n for r in runs), "every path is an image or a reject"
    times = sorted(r["elapsed"] for r in runs)
    best, median = times[0], times[len(times) // 2]
    peak_mb = max(r["peak_mb"] for r in runs)
    print(runs[0]["line"])
    print(
        f"index gen: {n:,} paths, {repeats} runs: min {best:.2f} s, median {median:.2f} s "
        f"= {n / median:,.0f} paths/s median, {n / best:,.0f} paths/s best"
    )
    print(f"baseline (per-path Python re loop, {n_sample:,} paths): {base_rate:,.0f} paths/s")
    print(
        f"ratio: {n / median / base_rate:.1f}x the baseline (median); target 500,000 paths/s: "
        f"{'met' if n / median >= 500_000 else 'NOT met'} (median)"
    )
    print(f"peak resident memory of index generation: {peak_mb:,.0f} MB (target < 2,048 MB)")


if __name__ == "__main__":
    main()
