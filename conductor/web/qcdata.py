"""The QC products the pipeline writes, read for display: images and their numbers.

Paths come from :mod:`starrynight.workspace`; a missing or unreadable table gives no
numbers rather than an error, because a QC page must show whatever exists.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pyarrow.parquet as pq

from conductor import files
from starrynight import storage, workspace

_SITE = re.compile(r"_Site_(\d+)_")
KINDS = ("illum", "segcheck", "alignment", "barcodes")


@dataclass
class Figure:
    """One QC item: an image (workspace-relative PNG path) and/or numbers and points."""

    title: str
    plate: str
    well: str | None = None
    image: str | None = None
    numbers: dict[str, Any] = field(default_factory=dict)
    points: list[tuple[float, float, bool]] = field(default_factory=list)


def relative(ws: str, uri: str) -> str:
    """``uri`` relative to the workspace root."""
    return uri[len(ws.rstrip("/")) + 1 :]


def _listing(ws: str, prefix: str) -> list[str]:
    items, _ = files.list_files(ws, prefix)
    return [i["path"] for i in items]


def _read_table(ws: str, rel: str) -> dict[str, list] | None:
    try:
        fs, path = storage.filesystem(storage.join(ws, rel))
        return pq.read_table(path, filesystem=fs).to_pydict()
    except (OSError, ValueError):
        return None


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else str(value)
    return value


def illum_figures(ws: str, plate: str | None = None) -> list[Figure]:
    """Heat-maps ``illum/<plate>/*.png`` with the channel's line of ``*_IllumStats.json``."""
    paths = _listing(ws, f"illum/{plate}" if plate else "illum")
    stats: dict[str, dict[str, Any]] = {}
    for rel in paths:
        if rel.endswith("_IllumStats.json"):
            try:
                data = json.loads(storage.read_bytes(storage.join(ws, rel)))
            except (OSError, ValueError):
                continue
            folder = str(PurePosixPath(rel).parent)
            for ch in data.get("channels", []) if isinstance(data, dict) else []:
                if isinstance(ch, dict) and "file" in ch:
                    stem = PurePosixPath(str(ch["file"])).stem
                    numbers = {
                        k: _round(v)
                        for k, v in ch.items()
                        if k != "file" and not isinstance(v, list | dict)
                    }
                    numbers.setdefault("images", data.get("n_images"))
                    stats[f"{folder}/{stem}"] = numbers
    out = []
    for rel in paths:
        if not rel.endswith(".png"):
            continue
        p = PurePosixPath(rel)
        fig_plate = p.parent.name
        key = f"{p.parent}/{p.stem}"
        out.append(Figure(p.stem, fig_plate, None, rel, stats.get(key, {})))
    return out


def segcheck_figures(ws: str, plate: str | None = None, well: str | None = None) -> list[Figure]:
    """Overlays ``segcheck/<plate>-<well>/*_overlay.png`` with the site's counts."""
    prefix = "segcheck"
    if plate and well:
        prefix = relative(ws, workspace.well_product_dir(ws, "segcheck", plate, well))
    paths = _listing(ws, prefix)
    counts: dict[str, dict[str, list] | None] = {}
    out = []
    for rel in paths:
        if not rel.endswith("_overlay.png"):
            continue
        folder = str(PurePosixPath(rel).parent)
        name = PurePosixPath(rel).name
        m = re.match(r"Plate_(.+)_Well_(.+)_Site_(\d+)_overlay\.png$", name)
        fig_plate, fig_well, site = (m.group(1), m.group(2), int(m.group(3))) if m else ("", "", -1)
        if plate and fig_plate != plate:
            continue
        if folder not in counts:
            counts[folder] = _read_table(ws, f"{folder}/counts.parquet")
        table = counts[folder]
        numbers: dict[str, Any] = {"site": site}
        if table and "site" in table:
            for i, s in enumerate(table["site"]):
                if s == site:
                    numbers.update({k: _round(v[i]) for k, v in table.items() if k != "site"})
        out.append(Figure(f"{fig_plate} {fig_well} site {site}", fig_plate, fig_well, rel, numbers))
    return out


def well_tables(ws: str, kind: str) -> list[tuple[str, str, str]]:
    """(plate, well, relative path) of every ``alignment`` or ``barcodes`` table present."""
    from conductor.web import summary

    product, name_of = {
        "alignment": ("alignment", workspace.alignment_table_path),
        "barcodes": ("barcodes", workspace.cell_barcodes_path),
    }[kind]
    found = summary.plates_and_wells(ws)
    if found is None:
        return []
    present = set(_listing(ws, product))
    out = []
    for plate in found[0]:
        for well in found[1][plate]:
            rel = relative(ws, name_of(ws, plate, well))
            if rel in present:
                out.append((plate, well, rel))
    return out


def alignment_figure(ws: str, plate: str, well: str, rel: str | None = None) -> Figure | None:
    """Shifts and correlations of a well's SBS cycles (points: dx, dy, flagged)."""
    rel = rel or relative(ws, workspace.alignment_table_path(ws, plate, well))
    table = _read_table(ws, rel)
    if not table or "dy" not in table or "dx" not in table:
        return None
    status = table.get("status", ["ok"] * len(table["dy"]))
    corr = [c for c in table.get("correlation", []) if c is not None and math.isfinite(c)]
    shifts = [math.hypot(dy, dx) for dy, dx in zip(table["dy"], table["dx"], strict=True)]
    numbers = {
        "sites": len(set(table.get("site", []))),
        "rows": len(shifts),
        "max shift (px)": _round(max(shifts, default=0.0)),
        "mean correlation": _round(sum(corr) / len(corr)) if corr else "n/a",
        "min correlation": _round(min(corr)) if corr else "n/a",
        "flagged": sum(s == "flagged" for s in status),
    }
    points = [
        (float(dx), float(dy), st == "flagged")
        for dy, dx, st in zip(table["dy"], table["dx"], status, strict=True)
    ]
    return Figure(f"{plate} {well} alignment", plate, well, None, numbers, points)


def barcode_figure(ws: str, plate: str, well: str, rel: str | None = None) -> Figure | None:
    """Barcode assignment rate of a well's SBS cells."""
    rel = rel or relative(ws, workspace.cell_barcodes_path(ws, plate, well))
    table = _read_table(ws, rel)
    if not table or "status" not in table:
        return None
    status = table["status"]
    assigned = sum(s == "assigned" for s in status)
    rate = assigned / len(status) if status else 0.0
    numbers = {"cells": len(status), "assigned": assigned, "assignment rate": round(rate, 4)}
    return Figure(f"{plate} {well} barcodes", plate, well, None, numbers)


def well_figure(ws: str, kind: str, plate: str, well: str, rel: str | None = None):
    """The alignment or barcode figure of one well (None when its table is absent)."""
    make = alignment_figure if kind == "alignment" else barcode_figure
    return make(ws, plate, well, rel)


def figures(ws: str, kind: str, plate: str | None = None) -> list[Figure]:
    """Every image figure of ``illum`` or ``segcheck`` (optionally of one plate)."""
    if kind == "illum":
        return illum_figures(ws, plate)
    if kind == "segcheck":
        return segcheck_figures(ws, plate)
    raise ValueError(f"kind {kind!r}: per-well tables are read with well_figure")


def report_figures(ws: str, plate: str, gate: str) -> list[dict[str, Any]]:
    """The figures of a plate's QC report for ``gate`` (from its ``index.json``):
    title, finding, whether it needs a look, the PNG and its data (workspace-relative)."""
    from starrynight import storage
    from starrynight import workspace as wsp

    index = wsp.qc_index_path(ws, plate, gate)
    if not storage.exists(index):
        return []
    try:
        doc = json.loads(storage.read_bytes(index))
    except ValueError:
        return []
    rel = f"qc_reports/{plate}/{gate}"
    return [
        {
            "name": f.get("name", ""),
            "title": f.get("title", f.get("name", "")),
            "finding": f.get("finding", ""),
            "attention": bool(f.get("attention")),
            "image": f"{rel}/{f['png']}" if f.get("png") else None,
            "data": f"{rel}/{f['parquet']}" if f.get("parquet") else None,
        }
        for f in doc.get("figures") or []
    ]
