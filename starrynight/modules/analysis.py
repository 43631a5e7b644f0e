"""Per-cell analysis of a plate x well, and the per-gene summary of a plate.

``analyse_well`` gives every Cell Painting cell (``segment``) its barcode and gene and
its features measured on the corrected CP channels. When ``starrynight merge`` has run
for the well, its table says which SBS cell each CP cell is (registered in the well
frame, across site grids) and which CP cells are second copies of a cell seen in two
sites: those are left out, so every physical cell has one row. Without a merge table
the arms must share one site grid, and the SBS cells (``barcodes call``) are joined site
by site: the SBS nuclei are registered to the CP nuclei (offset by voting, scale 1 or
the magnification ratio) and matched one to one as mutual nearest neighbours.

``summarise_plate`` reduces the wells' tables to one row per gene: cell count and the
median of every feature.
"""

from __future__ import annotations

import dataclasses
import json
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
    concat_typed,
    corrected_sites,
    empty_sites,
    read_mask,
    read_table,
    typed_table,
    write_table,
)
from starrynight.siterunner import SiteTask, mark_well_done, run_sites, well_current

META = (
    "plate", "well", "site", "cell", "sbs_site", "sbs_cell", "barcode", "sgRNA", "gene_symbol",
    "field_edge",
)  # fmt: skip

#: Leading columns of the per-cell table; the features follow (see :func:`cells_schema`).
META_FIELDS = [
    ("plate", pa.string()),
    ("well", pa.string()),
    ("site", pa.int32()),
    ("cell", pa.int32()),
    ("sbs_site", pa.int32()),
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
    bad_files: list[tuple[str, str]] = field(default_factory=list)


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


def _site_job(task: SiteTask) -> dict[str, Any]:
    ws, plate, well, site, channels, sbs_cells, scales, max_distance, families = task.args
    nuclei = read_mask(workspace.segmentation_mask_path(ws, plate, well, site, "Nuclei"))
    cells = read_mask(workspace.segmentation_mask_path(ws, plate, well, site, "Cells"))
    images = {
        ch: read_image(workspace.corrected_path(ws, plate, well, site, ch), 1)[0] for ch in channels
    }
    measured = feat.measure_cells(nuclei, cells, images, families=families)
    ids = measured.pop("label").astype(np.int64)
    if isinstance(sbs_cells, MergedSite):
        edge = feat.touches_border(cells, ids)
        return _merged_site(plate, well, site, channels, ids, measured, sbs_cells, families, edge)
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
        "sbs_site": pa.array([None if c is None else site for c in sbs_cell], pa.int32()),
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


@dataclass(frozen=True)
class MergedSite:
    """One CP site's rows of the merge table (``starrynight merge``).

    ``kept``: label -> row, for the cells kept; ``dropped``: labels of second copies of a
    cell kept in another site.
    """

    kept: dict[int, dict[str, Any]]
    dropped: frozenset[int]


_MERGE_COLUMNS = ("site", "cell", "duplicate_sites", "duplicate_cells", "sbs_site", "sbs_cell",
                  "barcode", "sgRNA", "gene_symbol", "barcode_status", "barcode_reason",
                  "barcode_confidence", "status")  # fmt: skip


def merged_sites(uri: str) -> dict[int, MergedSite]:
    """The merge table of a well, by CP site."""
    table = read_table(uri)
    missing = [c for c in _MERGE_COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(f"{uri}: not a merge table (columns {missing} missing)")
    kept: dict[int, dict[int, dict[str, Any]]] = {}
    dropped: dict[int, set[int]] = {}
    for r in table.select(list(_MERGE_COLUMNS)).to_pylist():
        kept.setdefault(r["site"], {})[r["cell"]] = r
        for s, c in zip(r["duplicate_sites"], r["duplicate_cells"], strict=True):
            dropped.setdefault(s, set()).add(c)
    return {
        s: MergedSite(kept.get(s, {}), frozenset(dropped.get(s, ())))
        for s in set(kept) | set(dropped)
    }


def _merged_site(
    plate: str, well: str, site: int, channels: list[str], ids: np.ndarray,
    measured: dict[str, np.ndarray], merged: MergedSite, families: tuple[str, ...],
    field_edge: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    """A site's table from the merge: one row per kept cell, copies left out."""
    unknown = [int(i) for i in ids if int(i) not in merged.kept and int(i) not in merged.dropped]
    if unknown:
        raise UserError(
            f"plate {plate!r} well {well!r} site {site}: cell(s) {unknown[:5]} are not in the "
            "merge table, which is older than the segmentation; re-run `starrynight merge "
            "--force`"
        )
    keep = np.array([int(i) in merged.kept for i in ids], bool)
    rows = [merged.kept[int(i)] for i in ids[keep]]
    n = len(rows)
    matched = [r["status"] == "matched" for r in rows]

    def col(name: str) -> list[Any]:
        return [r[name] for r in rows]

    columns: dict[str, Any] = {
        "plate": [plate] * n,
        "well": [well] * n,
        "site": np.full(n, site, np.int32),
        "cell": ids[keep].astype(np.int32),
        "sbs_site": col("sbs_site"),
        "sbs_cell": col("sbs_cell"),
        "barcode": col("barcode"),
        "sgRNA": col("sgRNA"),
        "gene_symbol": col("gene_symbol"),
        "barcode_status": [r["barcode_status"] if m else "unassigned"
                           for r, m in zip(rows, matched, strict=True)],
        "barcode_reason": [r["barcode_reason"] if m else r["status"]
                           for r, m in zip(rows, matched, strict=True)],
        "barcode_confidence": col("barcode_confidence"),
        "field_edge": np.asarray(field_edge, bool)[keep],
        **{name: values[keep] for name, values in measured.items()},
    }  # fmt: skip
    return {
        "site": site,
        "table": typed_table(columns, cells_schema(channels, families)),
        "matched": sum(r["sbs_cell"] is not None for r in rows),
        "offset": (float("nan"), float("nan")),
    }


def _usable_merge(ws: str, plate: str, well: str) -> dict[int, MergedSite] | None:
    """The well's merge table, when it should decide the barcodes.

    A registered merge always does. One that could not register the arms decides only
    where the arms' site grids differ (its cells then say "not registered"); where both
    arms share one grid, sites are paired by number as before (shared-grid data, whose
    sites are not one continuous well frame).
    """
    report_uri = workspace.merge_report_path(ws, plate, well)
    cells_uri = workspace.merge_cells_path(ws, plate, well)
    if not (storage.exists(report_uri) and storage.exists(cells_uri)):
        return None
    status = json.loads(storage.read_bytes(report_uri)).get("status")
    if status == "registered" or grids_differ(ws, plate, well):
        return merged_sites(cells_uri)
    return None


def grids_differ(ws: str, plate: str, well: str) -> str | None:
    """Why the arms' site grids differ (from ``geometry``'s positions), or None."""
    cp_uri = workspace.positions_path(ws, plate, well, "cp")
    sbs_uri = workspace.positions_path(ws, plate, well, "sbs", 1)
    if not (storage.exists(cp_uri) and storage.exists(sbs_uri)):
        return None
    cp, sbs = read_table(cp_uri), read_table(sbs_uri)
    if sorted(cp["site"].to_pylist()) != sorted(sbs["site"].to_pylist()):
        return f"{cp.num_rows} CP sites and {sbs.num_rows} SBS sites"
    px_cp = float(np.median(cp["pixel_size_x_um"].to_numpy()))
    px_sbs = float(np.median(sbs["pixel_size_x_um"].to_numpy()))
    if abs(px_sbs / px_cp - 1) > 1e-3:
        return f"pixel sizes {px_cp:g} um (CP) and {px_sbs:g} um (SBS)"
    return None


def analyse_well(
    ws: str,
    plate: str,
    well: str,
    *,
    scale: float | None = None,
    max_distance: float = 6.0,
    workers: int = 2,
    force: bool = False,
    skip_bad: bool = False,
    progress: bool | None = None,
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
    skip_bad : bool
        Leave out sites whose image or mask cannot be read (listed in the result).
    progress : bool, optional
        Progress line (default: on a terminal).
    families : tuple of str
        Feature families measured (see :data:`starrynight.algorithms.features.FAMILIES`).

    Returns
    -------
    AnalysisResult
    """
    out_uri = workspace.cell_features_path(ws, plate, well)
    counts_uri = workspace.segmentation_counts_path(ws, plate, well)
    calls_uri = workspace.cell_barcodes_path(ws, plate, well)
    manifest = workspace.site_manifest_path(ws, "cell_features", plate, well)
    listed = corrected_sites(ws, plate, well)
    if not storage.exists(counts_uri):
        raise UserError(
            f"plate {plate!r} well {well!r}: no segmentation ({counts_uri} missing); "
            "run `starrynight segment` first"
        )
    merge_uri = workspace.merge_cells_path(ws, plate, well)
    merged = _usable_merge(ws, plate, well)
    differ = None if merged is not None else grids_differ(ws, plate, well)
    if differ:
        raise UserError(
            f"plate {plate!r} well {well!r}: the arms have different site grids ({differ}); "
            f"sites cannot be paired by number: run `starrynight merge -w {ws} --plate {plate} "
            f"--well {well}` first"
        )
    if merged is None and not storage.exists(calls_uri):
        raise UserError(
            f"plate {plate!r} well {well!r}: no barcode calls ({calls_uri} missing); "
            "run `starrynight barcodes call` first"
        )
    from starrynight.index import well_channels, well_sites

    sites = well_sites(ws, plate, well, "cp") or sorted(listed)
    channels = sorted(well_channels(ws, plate, well, "cp") or set.intersection(*listed.values()))
    # The barcodes come from the merge table when the well has one, else from the calls.
    barcode_source = merge_uri if merged is not None else calls_uri
    tasks = [
        SiteTask(
            s,
            (
                counts_uri,
                barcode_source,
                workspace.segmentation_mask_path(ws, plate, well, s, "Nuclei"),
                workspace.segmentation_mask_path(ws, plate, well, s, "Cells"),
                *(workspace.corrected_path(ws, plate, well, s, ch) for ch in channels),
            ),
            (),
            # other families make another table: a re-run with them recomputes
            settings=",".join(families),
        )
        for s in sites
    ]
    if well_current(manifest, tasks, [out_uri], force):
        t = read_table(out_uri)
        segmented = read_table(counts_uri)["site"].to_pylist()
        return AnalysisResult(
            plate, well, t.num_rows, _valid(t["sbs_cell"]), _valid(t["barcode"]), True, {},
            [out_uri], empty_sites(segmented, t),
        )  # fmt: skip
    segmented = {int(s) for s in read_table(counts_uri).column("site").to_pylist()}
    missing = sorted(set(sites) - segmented)
    if missing:
        raise UserError(
            f"plate {plate!r} well {well!r}: sites {missing} are not segmented; "
            "re-run `starrynight segment`"
        )
    by_site: dict[int, list[dict[str, Any]]] = {}
    for r in read_table(calls_uri).to_pylist() if merged is None else ():
        by_site.setdefault(int(r["site"]), []).append(r)
    if scale is not None:
        scales: tuple[float, ...] = (scale,)
    else:
        ratio = magnification_ratio(ws, plate)
        scales = (1.0,) if ratio is None or ratio == 1.0 else (1.0, ratio)
    tasks = [
        dataclasses.replace(
            t,
            args=(ws, plate, well, t.site, channels,
                  {t.site: by_site.get(t.site, [])} if merged is None
                  else merged.get(t.site, MergedSite({}, frozenset())),
                  scales, max_distance, families),
        )
        for t in tasks
    ]  # fmt: skip
    run = run_sites(
        "analysis run", _site_job, tasks, manifest=manifest, workers=workers, processes=True,
        force=force, skip_bad=skip_bad, progress=progress,
        missing_hint=f"run 'starrynight segment -w {ws} --plate {plate} --well {well}'",
    )  # fmt: skip
    results = run.ordered()
    schema = cells_schema(channels, families)
    table = concat_typed([r["table"] for r in results], schema)
    write_table(out_uri, table, schema)
    mark_well_done(manifest, tasks)
    return AnalysisResult(
        plate, well, table.num_rows, sum(r["matched"] for r in results),
        _valid(table["barcode"]), False, {r["site"]: r["offset"] for r in results}, [out_uri],
        empty_sites(sites, table), run.bad_files,
    )  # fmt: skip


def _valid(column: pa.ChunkedArray) -> int:
    """Number of non-null values of a column."""
    return int(pc.sum(pc.is_valid(column)).as_py() or 0)


@dataclass(frozen=True)
class PlateSummary:
    """What ``summarise_plate`` wrote.

    ``wells``: the analysed wells it summarises; ``missing``: the plate's CP wells in the
    index that have no analysis yet, left out of the summary (also recorded in the
    table's metadata, keys ``wells`` and ``missing_wells``).
    """

    uri: str
    genes: int
    wells: list[str]
    missing: list[str]


def summarise_plate(ws: str, plate: str) -> PlateSummary:
    """Per-gene summary of every analysed well of a plate.

    One row per gene (cells without a barcode are left out): ``gene_symbol``,
    ``n_cells``, ``n_wells``, ``n_barcodes`` and the median of every numeric feature.
    The wells summarised, and the plate's wells left out because they are not analysed,
    are written into the table's metadata: a partial summary says that it is one.

    Returns
    -------
    PlateSummary
        Output URI, number of genes, wells summarised and wells missing.
    """
    from starrynight.index import plate_wells

    root = storage.join(ws, "features")
    prefix = f"{plate}-"
    found: dict[str, str] = {}
    if storage.exists(root):
        for entry in storage.list_files(root):
            folder, _, name = entry.key.partition("/")
            if folder.startswith(prefix) and name == "cells.parquet":
                found[folder[len(prefix) :]] = storage.join(root, folder, name)
    if not found:
        raise UserError(
            f"plate {plate!r}: no analysed wells under {root} (run `starrynight analysis run`)"
        )
    expected = plate_wells(ws, plate, "cp") or []
    missing = [w for w in expected if w not in found]
    analysed = sorted(found)
    table = pa.concat_tables([read_table(found[w]) for w in analysed], promote_options="default")
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
    schema = pa.schema(
        SUMMARY_FIELDS + [(f"{n}_median", pa.float64()) for n in features],
        metadata={"wells": json.dumps(analysed), "missing_wells": json.dumps(missing)},
    )
    write_table(uri, out, schema)
    return PlateSummary(uri, len(order), analysed, missing)
