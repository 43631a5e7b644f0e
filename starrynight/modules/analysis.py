"""Per-cell analysis of a plate x well, and the per-gene summary of a plate.

``analyse_well`` joins the Cell Painting cells (``segment``) with the SBS cells and
their barcodes (``barcodes call``) site by site: the SBS nuclei are registered to the
CP nuclei (offset by voting, scale 1 or the magnification ratio) and matched one to one
as mutual nearest neighbours. Every CP cell gets one row with its barcode and gene (or
the reason it has none) and its features measured on the corrected CP channels.

``summarise_plate`` reduces the wells' tables to one row per gene: cell count and the
median of every feature.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from starrynight import storage, workspace
from starrynight.algorithms import features as feat
from starrynight.algorithms import matching
from starrynight.errors import UserError
from starrynight.imageio import read_image
from starrynight.modules.segment import (
    corrected_sites,
    empty_sites,
    read_mask,
    read_table,
    run_well,
    typed_table,
    well_done,
    write_table,
)

META = (
    "plate", "well", "site", "cell", "sbs_cell", "barcode", "sgRNA", "gene_symbol", "field_edge",
)  # fmt: skip

#: Leading columns of the per-cell table; the features follow (see :func:`cells_schema`).
META_FIELDS = [
    ("plate", pa.string()),
    ("well", pa.string()),
    ("site", pa.int32()),
    ("cell", pa.int32()),
    ("sbs_cell", pa.int32()),
    ("barcode", pa.string()),
    ("sgRNA", pa.string()),
    ("gene_symbol", pa.string()),
    ("barcode_status", pa.string()),
    ("barcode_reason", pa.string()),
    ("barcode_confidence", pa.float32()),
    ("field_edge", pa.bool_()),  # the cell touches the site's border (cut off)
]

#: Leading columns of the per-gene summary; one ``<feature>_median`` column follows
#: per numeric feature.
SUMMARY_FIELDS = [
    ("plate", pa.string()),
    ("gene_symbol", pa.string()),
    ("n_cells", pa.int64()),
    ("n_wells", pa.int64()),
    ("n_barcodes", pa.int64()),
]


def cells_schema(channels: list[str], families: tuple[str, ...] = feat.FAMILIES) -> pa.Schema:
    """Schema of a well's per-cell table measured on ``channels`` (normalised names)."""
    names = feat.feature_names(channels, families)
    return pa.schema(META_FIELDS + [(n, pa.float64()) for n in names])


@dataclass(frozen=True)
class AnalysisResult:
    """What ``analyse_well`` did."""

    plate: str
    well: str
    cells: int
    matched: int
    with_barcode: int
    skipped: bool
    offsets: dict[int, tuple[float, float]]
    outputs: list[str]
    no_cells: list[int] = field(default_factory=list)  # sites without a single cell


def magnification_ratio(ws: str, plate: str) -> float | None:
    """SBS over CP magnification from the index (e.g. 10X/20X = 0.5), if known."""
    if not storage.exists(workspace.index_path(ws)):
        return None
    from starrynight.index import load_index

    t = load_index(ws)
    t = t.filter(pc.equal(t["plate"], plate))
    mags: dict[str, set[float]] = {}
    for arm, mag in zip(t["arm"].to_pylist(), t["magnification"].to_pylist(), strict=True):
        m = re.match(r"(\d+(?:\.\d+)?)", mag or "")
        if m:
            mags.setdefault(arm, set()).add(float(m.group(1)))
    if len(mags.get("cp", ())) != 1 or len(mags.get("sbs", ())) != 1:
        return None
    return next(iter(mags["sbs"])) / next(iter(mags["cp"]))


def _site_job(*args: Any) -> dict[str, Any]:
    ws, plate, well, site, channels, sbs_cells, scales, max_distance, families = args
    nuclei = read_mask(workspace.segmentation_mask_path(ws, plate, well, site, "Nuclei"))
    cells = read_mask(workspace.segmentation_mask_path(ws, plate, well, site, "Cells"))
    images = {
        ch: read_image(workspace.corrected_path(ws, plate, well, site, ch), 1)[0] for ch in channels
    }
    measured = feat.measure_cells(nuclei, cells, images, families=families)
    ids = measured.pop("label").astype(np.int64)
    n = len(ids)
    cp_pts = np.stack(
        [measured["Nuclei_AreaShape_Center_Y"], measured["Nuclei_AreaShape_Center_X"]], axis=1
    ) if n else np.zeros((0, 2))  # fmt: skip
    sbs = sbs_cells.get(site, [])
    sbs_pts = np.array([[r["nucleus_y"], r["nucleus_x"]] for r in sbs]).reshape(-1, 2)
    ok = np.all(np.isfinite(cp_pts), axis=1)
    match = matching.register_and_match(cp_pts[ok], sbs_pts, scales, max_distance=max_distance)
    cp_rows = np.flatnonzero(ok)[match.cp_index]
    partner = np.full(n, -1, np.int64)
    partner[cp_rows] = match.sbs_index
    sbs_cell, barcode, sgrna, gene, status, reason, conf = [], [], [], [], [], [], []
    for i in range(n):
        j = partner[i]
        if j < 0:
            sbs_cell.append(None)
            barcode.append(None)
            sgrna.append(None)
            gene.append(None)
            status.append("unassigned")
            reason.append("no SBS cell matched")
            conf.append(None)
            continue
        r = sbs[j]
        sbs_cell.append(int(r["sbs_cell"]))
        barcode.append(r["barcode"])
        sgrna.append(r["sgRNA"])
        gene.append(r["gene_symbol"])
        status.append(r["status"])
        reason.append(r["reason"])
        conf.append(float(r["confidence"]) if r["barcode"] is not None else None)
    columns: dict[str, Any] = {
        "plate": [plate] * n,
        "well": [well] * n,
        "site": np.full(n, site, np.int32),
        "cell": ids.astype(np.int32),
        "sbs_cell": pa.array(sbs_cell, pa.int32()),
        "barcode": pa.array(barcode, pa.string()),
        "sgRNA": pa.array(sgrna, pa.string()),
        "gene_symbol": pa.array(gene, pa.string()),
        "barcode_status": pa.array(status, pa.string()),
        "barcode_reason": pa.array(reason, pa.string()),
        "barcode_confidence": pa.array(conf, pa.float32()),
        "field_edge": feat.touches_border(cells, ids),
        **measured,
    }
    return {
        "site": site,
        "table": typed_table(columns, cells_schema(channels, families)),
        "matched": len(match.cp_index),
        "offset": match.offset,
    }


def analyse_well(
    ws: str,
    plate: str,
    well: str,
    *,
    scale: float | None = None,
    max_distance: float = 6.0,
    workers: int = 2,
    force: bool = False,
    families: tuple[str, ...] = feat.FAMILIES,
) -> AnalysisResult:
    """Join CP and SBS cells of a well, attach barcode and gene, measure features.

    Parameters
    ----------
    ws : str
        Workspace URI.
    plate, well : str
        The unit of work.
    scale : float, optional
        SBS pixels per CP pixel; by default 1 and the index's magnification ratio are
        both tried and the better-supported one kept.
    max_distance : float
        Largest distance (SBS pixels) between matched nuclei after registration.
    workers : int
        Sites processed in parallel.
    force : bool
        Recompute when the well's table exists.
    families : tuple of str
        Feature families measured (see :data:`starrynight.algorithms.features.FAMILIES`).

    Returns
    -------
    AnalysisResult
    """
    out_uri = workspace.cell_features_path(ws, plate, well)
    counts_uri = workspace.segmentation_counts_path(ws, plate, well)
    if well_done([out_uri], force):
        t = read_table(out_uri)
        segmented = read_table(counts_uri)["site"].to_pylist() if storage.exists(counts_uri) else []
        return AnalysisResult(
            plate, well, t.num_rows, _valid(t["sbs_cell"]), _valid(t["barcode"]), True, {},
            [out_uri], empty_sites(segmented, t),
        )  # fmt: skip
    sites = corrected_sites(ws, plate, well)
    if not storage.exists(counts_uri):
        raise UserError(
            f"plate {plate!r} well {well!r}: no segmentation ({counts_uri} missing); "
            "run `starrynight segment` first"
        )
    calls_uri = workspace.cell_barcodes_path(ws, plate, well)
    if not storage.exists(calls_uri):
        raise UserError(
            f"plate {plate!r} well {well!r}: no barcode calls ({calls_uri} missing); "
            "run `starrynight barcodes call` first"
        )
    by_site: dict[int, list[dict[str, Any]]] = {}
    for r in read_table(calls_uri).to_pylist():
        by_site.setdefault(int(r["site"]), []).append(r)
    segmented = {int(s) for s in read_table(counts_uri).column("site").to_pylist()}
    missing = sorted(set(sites) - segmented)
    if missing:
        raise UserError(
            f"plate {plate!r} well {well!r}: sites {missing} are not segmented; "
            "re-run `starrynight segment`"
        )
    channels = sorted(set.intersection(*sites.values()))
    if scale is not None:
        scales: tuple[float, ...] = (scale,)
    else:
        ratio = magnification_ratio(ws, plate)
        scales = (1.0,) if ratio is None or ratio == 1.0 else (1.0, ratio)
    jobs = [
        (ws, plate, well, s, channels, {s: by_site.get(s, [])}, scales, max_distance, families)
        for s in sorted(sites)
    ]
    results, tables = run_well(
        _site_job, jobs, workers, {"table": (out_uri, cells_schema(channels, families))}
    )
    table = tables["table"]
    return AnalysisResult(
        plate, well, table.num_rows, sum(r["matched"] for r in results),
        _valid(table["barcode"]), False, {r["site"]: r["offset"] for r in results}, [out_uri],
        empty_sites(sites, table),
    )  # fmt: skip


def _valid(column: pa.ChunkedArray) -> int:
    """Number of non-null values of a column."""
    return int(pc.sum(pc.is_valid(column)).as_py() or 0)


def summarise_plate(ws: str, plate: str) -> tuple[str, int]:
    """Per-gene summary of every analysed well of a plate.

    One row per gene (cells without a barcode are left out): ``gene_symbol``,
    ``n_cells``, ``n_wells``, ``n_barcodes`` and the median of every numeric feature.

    Returns
    -------
    tuple of (str, int)
        Output URI and number of genes.
    """
    root = storage.join(ws, "features")
    prefix = f"{plate}-"
    uris = []
    if storage.exists(root):
        for entry in storage.list_files(root):
            folder, _, name = entry.key.partition("/")
            if folder.startswith(prefix) and name == "cells.parquet":
                uris.append(storage.join(root, folder, name))
    if not uris:
        raise UserError(
            f"plate {plate!r}: no analysed wells under {root} (run `starrynight analysis run`)"
        )
    table = pa.concat_tables([read_table(u) for u in sorted(uris)], promote_options="default")
    table = table.filter(pc.is_valid(table["gene_symbol"]))
    features = [
        name for name in table.column_names
        if name not in META and pa.types.is_floating(table.schema.field(name).type)
        and not name.startswith("barcode_")
    ]  # fmt: skip
    genes = table["gene_symbol"].to_numpy(zero_copy_only=False)
    wells = np.asarray(table["well"].to_pylist(), dtype=object)
    bcs = np.asarray(table["barcode"].to_pylist(), dtype=object)
    order = sorted(set(genes.tolist()))
    out: dict[str, Any] = {
        "plate": [plate] * len(order),
        "gene_symbol": order,
        "n_cells": [int((genes == g).sum()) for g in order],
        "n_wells": [len(set(wells[genes == g])) for g in order],
        "n_barcodes": [len(set(bcs[genes == g])) for g in order],
    }
    for name in features:
        values = table[name].to_numpy(zero_copy_only=False).astype(np.float64)
        out[f"{name}_median"] = [
            float(np.nanmedian(values[genes == g])) if np.isfinite(values[genes == g]).any()
            else float("nan")
            for g in order
        ]  # fmt: skip
    uri = workspace.gene_summary_path(ws, plate)
    schema = pa.schema(SUMMARY_FIELDS + [(f"{n}_median", pa.float64()) for n in features])
    write_table(uri, out, schema)
    return uri, len(order)
