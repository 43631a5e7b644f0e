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

from dagster_defs.partitions import plate_partitions, plate_well_partitions
from starrynight import storage
from starrynight import workspace as wsp

ILLUM_CP = dg.AssetKey("illum_cp")
ILLUM_SBS = dg.AssetKey("illum_sbs")
ALIGNED = dg.AssetKey("aligned_sbs")
SEGMENTATION = dg.AssetKey("segmentation")
BARCODES = dg.AssetKey("barcode_calls")
GEOMETRY = dg.AssetKey("geometry")
MERGE = dg.AssetKey("merge")

ILLUM_CHECK = "illum_finite_and_at_least_one"
ALIGN_CHECK = "flagged_site_share_below_threshold"
SEG_CHECK = "cell_counts_plausible"
BARCODE_CHECK = "barcode_assignment_rate"
GEOMETRY_CHECK = "unplaced_site_share_below_threshold"
MERGE_WARN_CHECK = "merge_match_rate"
MERGE_CHECK = "merge_match_rate_above_minimum"

_CHECKS = [
    (ILLUM_CP, ILLUM_CHECK, "Every CP function is finite and >= 1.", False),
    (ILLUM_SBS, ILLUM_CHECK, "Every SBS function is finite and >= 1.", False),
    (ALIGNED, ALIGN_CHECK, "Share of sites alignment flagged is small.", False),
    (SEGMENTATION, SEG_CHECK, "Cells per site within plausible limits.", False),
    (BARCODES, BARCODE_CHECK, "Share of SBS cells assigned a barcode.", False),
    # Blocking: downstream of a failed one does not materialise (in the run, and by
    # automation: follow_upstream requires every upstream blocking check to pass).
    (GEOMETRY, GEOMETRY_CHECK, "Share of sites the refinement could not place is small "
     "(blocks the mosaic and the merge).", True),
    (MERGE, MERGE_WARN_CHECK, "CP cells inside the SBS area that got an SBS match (warns "
     "below the warning rate).", False),
    (MERGE, MERGE_CHECK, "Match rate above the minimum (blocks the per-cell table and so "
     "the plate's gene summary).", True),
]  # fmt: skip

#: Checks are partitioned like their asset: an unpartitioned check on a partitioned asset
#: has one status, its latest execution's, so one well's failed (or never run) blocking
#: check would hold back every well of every plate.
_PARTITIONS = {ILLUM_CP: plate_partitions, ILLUM_SBS: plate_partitions}

SPECS: dict[dg.AssetKey, list[dg.AssetCheckSpec]] = {}
for _asset, _name, _description, _blocking in _CHECKS:
    SPECS.setdefault(_asset, []).append(
        dg.AssetCheckSpec(
            _name,
            asset=_asset,
            description=_description,
            blocking=_blocking,
            partitions_def=_PARTITIONS.get(_asset, plate_well_partitions),
        )
    )


def not_applicable(asset: dg.AssetKey, why: str) -> list[dg.AssetCheckResult]:
    """Passed results of every check of ``asset``, saying why they do not apply.

    A check the run planned but never executed counts as not passed: a blocking one
    would then hold back what follows an absent product forever.
    """
    return [
        dg.AssetCheckResult(
            asset_key=asset, check_name=spec.name, passed=True, metadata={"applies": f"no: {why}"}
        )
        for spec in SPECS.get(asset, [])
    ]


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


def geometry_check(ws: str, plate: str, well: str, max_share: float) -> dg.AssetCheckResult:
    """Share of a well's sites that had overlapping neighbours but kept their recorded
    position (no pair passed registration) is at most ``max_share``.

    Sites with no overlapping neighbour at all (a layout without overlap, a well of one
    site) are counted apart: there is nothing to refine them against, which is not a
    failed refinement.
    """
    report = read_json(wsp.geometry_report_path(ws, plate, well))
    sites = unplaced = isolated = 0
    worst: list[str] = []
    for g in report["groups"]:
        sites += g["sites"]
        for kept in g["kept_recorded"]:
            reason = kept.get("reason", "")
            if "no overlapping neighbour" in reason or reason.startswith("single site"):
                isolated += 1
            else:
                unplaced += 1
                worst.append(f"{g['label']} site {kept.get('site')}: {kept.get('reason')}")
    share = unplaced / sites if sites else 0.0
    return dg.AssetCheckResult(
        asset_key=GEOMETRY,
        check_name=GEOMETRY_CHECK,
        passed=share <= max_share,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "sites": sites,
            "unplaced": unplaced,
            "unplaced_share": round(share, 4),
            "without_overlapping_neighbour": isolated,
            "threshold": max_share,
            "examples": "; ".join(worst[:5]) or "none",
        },
    )


def merge_checks(
    ws: str, plate: str, well: str, warn_rate: float, min_rate: float
) -> list[dg.AssetCheckResult]:
    """The merge's match rate: a warning below ``warn_rate``, an error below ``min_rate``.

    A well whose arms could not be registered has no match rate and fails both.
    """
    report = read_json(wsp.merge_report_path(ws, plate, well))
    if report["status"] != "registered":
        from starrynight.modules.analysis import grids_differ

        if not grids_differ(ws, plate, well):
            # Both arms share one site grid (not one continuous well frame): the per-cell
            # table pairs sites by number, as it did before the merge existed.
            md = {"status": report["status"], "applies": "no: both arms share one site grid"}
            return [
                dg.AssetCheckResult(asset_key=MERGE, check_name=name, passed=True, metadata=md)
                for name in (MERGE_WARN_CHECK, MERGE_CHECK)
            ]
    rate = report["match"]["match_rate"]
    md = {
        "status": report["status"],
        "reason": report.get("reason") or "",
        "match_rate": rate if rate is None else round(rate, 4),
        "inside_sbs_area": report["match"]["inside_sbs_area"],
        "matched": report["match"]["matched"],
        "flags": ", ".join(report.get("flags") or []) or "none",
    }
    ok_rate = rate if rate is not None else -1.0
    return [
        dg.AssetCheckResult(
            asset_key=MERGE, check_name=MERGE_WARN_CHECK, passed=ok_rate >= warn_rate,
            severity=dg.AssetCheckSeverity.WARN, metadata={**md, "threshold": warn_rate},
        ),
        dg.AssetCheckResult(
            asset_key=MERGE, check_name=MERGE_CHECK, passed=ok_rate >= min_rate,
            severity=dg.AssetCheckSeverity.ERROR, metadata={**md, "threshold": min_rate},
        ),
    ]  # fmt: skip
