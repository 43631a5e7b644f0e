"""Index generation speed: ``index.generate`` on a 1,000,000-path inventory.

Synthesises realistic Cell Painting Gallery keys (CP and SBS arms, several plates,
folder spellings with and without timestamps, a few rejects), writes them as an
inventory parquet, then times ``starrynight.index.generate`` end to end (read the
inventory, parse, check, write index and rejects). The baseline, measured in the same
run, is a per-path parser in a Python loop (``re.fullmatch`` per key, the way a
per-path grammar parser works) on a sample of the same keys.

Usage: ``.venv/bin/python bench/bench_index.py [N]``; prints paths/s, the ratio to the
baseline and the peak resident memory.
"""

from __future__ import annotations

import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from starrynight import index, inventory

CP_CHANNELS = "PhalloAF750,ZO1-AF488,DAPI"
SBS_CHANNELS = ["C,A,T,G,DAPI", "405 nm,477 nm,G,T"]


def synth_keys(n: int) -> list[str]:
    """``n`` realistic keys: 1 CP folder + 10 SBS cycles per plate, 384 wells."""
    wells = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    keys: list[str] = []
    plate = 0
    while len(keys) < n:
        plate += 1
        folders = [(f"20X_CP_Plate{plate}_20240101_120000", CP_CHANNELS)]
        for k in range(1, 11):
            spelling = [f"10X_c{k}_SBS-{k}", f"10X_c{k}-SBS-{k}", f"10X-SBS-{k}_20240102"][k % 3]
            folders.append((spelling, SBS_CHANNELS[plate % 2]))
        prefix = f"source_4/Batch{plate % 3 + 1}/images/Plate{plate}"
        for wi, well in enumerate(wells):
            for site in range(0, 25):
                for folder, chans in folders:
                    seq = wi * 25 + site
                    keys.append(
                        f"{prefix}/{folder}/Well{well}_Point{well}_{site:04d}_"
                        f"Channel{chans}_Seq{seq:04d}.ome.tiff"
                    )
                    if len(keys) >= n:
                        break
        keys.append(f"source_4/workspace/metadata/Plate{plate}_Barcodes.csv")
    return keys[:n]


def write_inventory(keys: list[str], path: Path) -> None:
    arr = pa.array(keys, pa.string())
    folder = pc.replace_substring_regex(arr, r"/?[^/]*$", "")
    name = pc.replace_substring_regex(arr, r"^.*/", "")
    n = len(keys)
    batch = pa.Table.from_arrays(
        [
            arr,
            pa.array([1 << 20] * n, pa.int64()),
            pa.array([0] * n, pa.int64()).cast(pa.timestamp("ns")),
            pc.dictionary_encode(folder),
            name,
        ],
        schema=inventory._schema("/data/cpg0032"),
    )
    pq.write_table(batch, path)


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
    keys = synth_keys(n)
    sample = keys[:: max(1, n // 100_000)]
    t0 = time.perf_counter()
    baseline_rows = baseline_parse(sample)
    base_rate = len(sample) / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        inv = Path(tmp, "inventory.parquet")
        write_inventory(keys, inv)
        del keys
        ws = Path(tmp, "ws")
        t0 = time.perf_counter()
        summary = index.generate(str(inv), str(ws))
        elapsed = time.perf_counter() - t0
    assert summary.images + summary.rejects == n, "every path is an image or a reject"
    assert sum(r is not None for r in baseline_rows) > 0
    rate = n / elapsed
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(summary.line())
    print(f"index gen: {n:,} paths in {elapsed:.2f} s = {rate:,.0f} paths/s")
    print(f"baseline (per-path Python re loop, {len(sample):,} paths): {base_rate:,.0f} paths/s")
    print(
        f"ratio: {rate / base_rate:.1f}x the baseline; target 500,000 paths/s: "
        f"{'met' if rate >= 500_000 else 'NOT met'}"
    )
    print(f"peak resident memory of the whole process: {peak_mb:,.0f} MB (target < 2,048 MB)")


if __name__ == "__main__":
    main()
