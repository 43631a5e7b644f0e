"""Asset checks for the QC the science needs, read from the files the steps wrote.

Each function takes the workspace and partition, reads the step's own outputs (stats
JSON, parquet tables, ``.npy`` functions) and returns an :class:`AssetCheckResult`; the
assets yield them right after their materialisation. Nothing is recomputed here.
"""

from __future__ import annotations

import io
import json

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from starrynight import storage
from starrynight import workspace as wsp

ILLUM_CP = dg.AssetKey("illum_cp")
ILLUM_SBS = dg.AssetKey("illum_sbs")
ALIGNED = dg.AssetKey("aligned_sbs")
SEGMENTATION = dg.AssetKey("segmentation")
BARCODES = dg.AssetKey("barcode_calls")

ILLUM_CHECK = "illum_finite_and_at_least_one"
ALIGN_CHECK = "flagged_site_share_below_threshold"
SEG_CHECK = "cell_counts_plausible"
BARCODE_CHECK = "barcode_assignment_rate"

SPECS = {
    asset: [dg.AssetCheckSpec(name, asset=asset, description=description)]
    for asset, name, description in [
        (ILLUM_CP, ILLUM_CHECK, "Every CP function is finite and >= 1."),
        (ILLUM_SBS, ILLUM_CHECK, "Every SBS function is finite and >= 1."),
        (ALIGNED, ALIGN_CHECK, "Share of sites alignment flagged is small."),
        (SEGMENTATION, SEG_CHECK, "Cells per site within plausible limits."),
        (BARCODES, BARCODE_CHECK, "Share of SBS cells assigned a barcode."),
    ]
}


def read_json(uri: str) -> dict:
    """Parse a JSON file of the workspace."""
    return json.loads(storage.read_bytes(uri))


def read_parquet(uri: str):
    """Read a parquet table of the workspace (local or s3)."""
    fs, path = storage.filesystem(uri)
    return pq.read_table(path, filesystem=fs)


def illum_function_check(
    ws: str, plate: str, asset: dg.AssetKey, cycles: list[int | None]
) -> dg.AssetCheckResult:
    """Every illumination function listed in the stats of ``cycles`` is finite and >= 1."""
    bad: list[str] = []
    lowest = np.inf
    n = 0
    for cycle in cycles:
        stats = read_json(wsp.illum_stats_path(ws, plate, cycle))
        folder = wsp.illum_dir(ws, plate)
        for ch in stats["channels"]:
            func = np.load(io.BytesIO(storage.read_bytes(storage.join(folder, ch["file"]))))
            n += 1
            finite = bool(np.isfinite(func).all())
            low = float(np.nanmin(func)) if func.size else float("nan")
            lowest = min(lowest, low)
            # float32 functions rescaled to a minimum of 1 may sit a hair below it
            if not finite or not low >= 1.0 - 1e-6:
                bad.append(f"{ch['file']} (finite={finite}, min={low:.4g})")
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=ILLUM_CHECK,
        passed=not bad and n > 0,
        metadata={"functions": n, "lowest_value": float(lowest), "bad": ", ".join(bad) or "none"},
    )


def alignment_check(ws: str, plate: str, well: str, max_share: float) -> dg.AssetCheckResult:
    """Share of sites with any cycle flagged by alignment QC is at most ``max_share``."""
    table = read_parquet(wsp.alignment_table_path(ws, plate, well)).to_pydict()
    sites = set(table["site"])
    flagged = {s for s, st in zip(table["site"], table["status"], strict=True) if st == "flagged"}
    share = len(flagged) / len(sites) if sites else 1.0
    return dg.AssetCheckResult(
        asset_key=ALIGNED,
        check_name=ALIGN_CHECK,
        passed=bool(sites) and share <= max_share,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "sites": len(sites),
            "flagged_sites": len(flagged),
            "flagged_share": round(share, 4),
            "threshold": max_share,
        },
    )


def segmentation_check(
    ws: str, plate: str, well: str, low: float, high: float, max_flagged: float
) -> dg.AssetCheckResult:
    """Every site's cell count is within ``[low, high]`` and few sites are flagged."""
    t = read_parquet(wsp.segmentation_counts_path(ws, plate, well)).to_pydict()
    cells = t["n_cells"]
    outside = [s for s, c in zip(t["site"], cells, strict=True) if not low <= c <= high]
    flagged = sum(bool(f) for f in t["flagged"])
    share = flagged / len(cells) if cells else 1.0
    return dg.AssetCheckResult(
        asset_key=SEGMENTATION,
        check_name=SEG_CHECK,
        passed=bool(cells) and not outside and share <= max_flagged,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "sites": len(cells),
            "min_cells": min(cells) if cells else 0,
            "max_cells": max(cells) if cells else 0,
            "sites_outside_limits": len(outside),
            "flagged_share": round(share, 4),
        },
    )


def barcode_check(ws: str, plate: str, well: str, min_rate: float) -> dg.AssetCheckResult:
    """Share of SBS cells assigned a barcode is at least ``min_rate``."""
    status = read_parquet(wsp.cell_barcodes_path(ws, plate, well)).column("status").to_pylist()
    assigned = sum(s == "assigned" for s in status)
    rate = assigned / len(status) if status else 0.0
    return dg.AssetCheckResult(
        asset_key=BARCODES,
        check_name=BARCODE_CHECK,
        passed=rate >= min_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "cells": len(status),
            "assigned": assigned,
            "assignment_rate": round(rate, 4),
            "threshold": min_rate,
        },
    )
