"""Barcode calling of a plate x well: ``starrynight barcodes call``.

Inputs are the aligned SBS images (:func:`starrynight.workspace.aligned_path`, every
cycle in the frame of cycle 1, uncovered pixels 0) and Barcodes.csv. Per site: nuclei
from the cycle-1 nuclear stain, cells as nuclei grown by a fixed distance (SBS has no
cell stain), then spots, reads and cell calls (:func:`algorithms.barcodes.read_site`; the spot
scale is measured on each site's images unless given, and recorded per cell row).
Per well: ``spots.parquet`` and ``cells.parquet``; SBS masks per site (needed by the
analysis join).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from starrynight import storage, workspace
from starrynight.algorithms import barcodes as bc
from starrynight.algorithms import segmentation as seg
from starrynight.errors import UserError
from starrynight.imageio import read_image
from starrynight.modules.segment import (
    concat_typed,
    empty_sites,
    read_table,
    typed_table,
    write_mask,
    write_table,
)
from starrynight.siterunner import SiteTask, mark_well_done, run_sites, well_current

REQUIRED_COLUMNS = ("sgRNA", "gene_symbol")

#: One row per SBS cell: its barcode, or "unassigned" and the reason.
CELLS_SCHEMA = pa.schema(
    [
        ("site", pa.int32()),
        ("sbs_cell", pa.int32()),
        ("nucleus_y", pa.float64()),
        ("nucleus_x", pa.float64()),
        ("barcode", pa.string()),
        ("sgRNA", pa.string()),
        ("gene_symbol", pa.string()),
        ("n_spots", pa.int32()),
        ("n_matched", pa.int32()),
        ("count", pa.int32()),
        ("second_count", pa.int32()),
        ("second_barcode", pa.string()),
        ("second_gene_symbol", pa.string()),
        ("confidence", pa.float32()),
        ("status", pa.string()),
        ("reason", pa.string()),
        # The spot scale (LoG sigma, pixels) the site was read with and its source:
        # "estimated" from the site's images, "given", or "fallback".
        ("spot_sigma", pa.float32()),
        ("spot_sigma_source", pa.string()),
    ]
)

#: One row per detected spot: position, cell, read and the barcode it matched.
SPOTS_SCHEMA = pa.schema(
    [
        ("site", pa.int32()),
        ("y", pa.int32()),
        ("x", pa.int32()),
        ("sbs_cell", pa.int32()),
        ("read", pa.string()),
        ("quality", pa.float32()),
        ("barcode", pa.string()),
        ("distance", pa.int16()),
        ("match", pa.string()),
    ]
)


def load_barcodes(uri: str, n_cycles: int) -> bc.Library:
    """Read and validate Barcodes.csv for ``n_cycles`` SBS cycles.

    Raises
    ------
    UserError
        Missing file, missing columns, no rows, bad or duplicate sgRNAs, mixed lengths,
        more cycles than bases, or prefixes the cycles cannot tell apart.
    """
    if not storage.exists(uri):
        raise UserError(f"{uri}: barcode table not found (expected a CSV with sgRNA,gene_symbol)")
    try:
        text = storage.read_bytes(uri).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{uri}: not a UTF-8 text CSV") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UserError(
            f"{uri}: missing column(s) {', '.join(missing)}; expected columns "
            f"sgRNA,gene_symbol (found: {', '.join(header) or 'none'})"
        )
    rows = [{(k or "").strip(): v for k, v in r.items()} for r in reader]
    try:
        return bc.build_library(
            [r["sgRNA"] or "" for r in rows], [r["gene_symbol"] or "" for r in rows], n_cycles
        )
    except ValueError as exc:
        raise UserError(f"{uri}: {exc}") from exc


def default_barcodes_uri(ws: str) -> str:
    """Barcodes.csv from the experiment, else ``<dataset>/<source>/workspace/metadata``."""
    if storage.exists(workspace.experiment_path(ws)):
        from starrynight.experiment import load_experiment

        exp = load_experiment(ws)
        if exp.barcodes:
            return exp.barcodes
    if storage.exists(workspace.index_path(ws)):
        from starrynight.index import dataset_root, load_index

        sources = sorted(set(load_index(ws).column("source").to_pylist()))
        if sources:
            return storage.join(
                dataset_root(ws), sources[0], "workspace", "metadata", "Barcodes.csv"
            )
    raise UserError("no barcode table known for this workspace: give --barcodes PATH")


def aligned_inventory(ws: str, plate: str, well: str) -> dict[int, dict[int, set[str]]]:
    """site -> cycle -> channels (normalised) of the aligned SBS images of a well."""
    root = storage.join(ws, "images_aligned", "barcoding")
    prefix = f"{plate}-Well{well}-"
    pattern = re.compile(
        rf"{re.escape(prefix)}(\d+)/Plate_{re.escape(plate)}_Well_{re.escape(well)}"
        r"_Site_(\d+)_Cycle(\d+)_([A-Za-z0-9_]+)\.tiff"
    )
    found: dict[int, dict[int, set[str]]] = {}
    if storage.exists(root):
        for entry in storage.list_files(root):
            m = pattern.fullmatch(entry.key)
            if m and m.group(1) == m.group(2):
                site, cycle = int(m.group(2)), int(m.group(3))
                found.setdefault(site, {}).setdefault(cycle, set()).add(m.group(4))
    if not found:
        raise UserError(
            f"plate {plate!r} well {well!r}: no aligned SBS images under {root} "
            "(run the SBS alignment step first)"
        )
    return found


@dataclass(frozen=True)
class BarcodeParams:
    """Options of :func:`call_well`."""

    spots: bc.SpotParams = field(default_factory=bc.SpotParams)
    nuclei: seg.NucleiParams = field(default_factory=seg.NucleiParams)
    cell_expansion: float | None = None  # default: 0.75 * nucleus diameter


@dataclass(frozen=True)
class BarcodeResult:
    """What ``call_well`` did."""

    plate: str
    well: str
    sites: int
    spots: int
    cells: int
    assigned: int
    skipped: bool
    reasons: dict[str, int]
    outputs: list[str]
    no_cells: list[int] = field(default_factory=list)  # sites without a single cell
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def _sbs_roles(ws: str, channels: set[str]) -> tuple[str, list[str]]:
    """Nuclear channel and the A, C, G, T channels of the aligned images (normalised)."""
    from starrynight.experiment import resolve_channels

    found = resolve_channels(ws, "sbs", channels, ("nuclei", *bc.BASES), what="aligned images")
    return found["nuclei"], [found[b] for b in bc.BASES]


def _call_job(task: SiteTask) -> dict[str, Any]:
    ws, plate, well, site, cycles, nuclei_ch, bases, library, params = task.args
    stack = np.stack(
        [
            np.stack(
                [
                    read_image(workspace.aligned_path(ws, plate, well, site, k, ch), 1)[0]
                    for ch in bases
                ]
            )
            for k in cycles
        ]
    )
    dna = read_image(workspace.aligned_path(ws, plate, well, site, cycles[0], nuclei_ch), 1)[0]
    nuclei_params = seg.resolve_diameter(params.nuclei, dna)
    nuclei = seg.segment_nuclei(dna, nuclei_params)
    expansion = params.cell_expansion
    if expansion is None:
        expansion = 0.75 * nuclei_params.diameter
    cells = seg.expand_nuclei(nuclei, expansion)
    write_mask(workspace.sbs_mask_path(ws, plate, well, site, "Cells"), cells)
    write_mask(workspace.sbs_mask_path(ws, plate, well, site, "Nuclei"), nuclei)
    reads = bc.read_site(stack.astype(np.float32), cells, library, params.spots)
    props = seg.object_table(nuclei)
    calls = reads.cells
    n = len(calls.label)
    idx = calls.barcode_index
    cells_cols = {
        "site": np.full(n, site, np.int32),
        "sbs_cell": calls.label.astype(np.int32),
        "nucleus_y": props["centroid_y"],
        "nucleus_x": props["centroid_x"],
        "barcode": [library.barcodes[i] if i >= 0 else None for i in idx],
        "sgRNA": [library.sgrnas[i] if i >= 0 else None for i in idx],
        "gene_symbol": [library.genes[i] if i >= 0 else None for i in idx],
        "n_spots": calls.n_spots,
        "n_matched": calls.n_matched,
        "count": calls.count,
        "second_count": calls.second_count,
        "second_barcode": [library.barcodes[i] if i >= 0 else None for i in calls.second_index],
        "second_gene_symbol": [library.genes[i] if i >= 0 else None for i in calls.second_index],
        "confidence": calls.confidence,
        "status": ["assigned" if i >= 0 else "unassigned" for i in idx],
        "reason": calls.reason,
        "spot_sigma": np.full(n, reads.spot_sigma, np.float32),
        "spot_sigma_source": [reads.spot_sigma_source] * n,
    }
    s = reads.spots
    m = len(s["y"])
    spot_idx = np.asarray(s["barcode_index"])
    spots_cols = {
        "site": np.full(m, site, np.int32),
        "y": s["y"],
        "x": s["x"],
        "sbs_cell": s["cell"],
        "read": s["read"],
        "quality": s["quality"],
        "barcode": [library.barcodes[i] if i >= 0 else None for i in spot_idx],
        "distance": s["distance"],
        "match": np.where(spot_idx >= 0, "matched", np.where(spot_idx == -2, "ambiguous", "none")),
    }
    return {
        "cells": typed_table(cells_cols, CELLS_SCHEMA),
        "spots": typed_table(spots_cols, SPOTS_SCHEMA),
    }


def call_well(
    ws: str,
    plate: str,
    well: str,
    *,
    barcodes: str | None = None,
    params: BarcodeParams | None = None,
    workers: int = 2,
    force: bool = False,
    skip_bad: bool = False,
    progress: bool | None = None,
) -> BarcodeResult:
    """Call the barcode of every SBS cell of a well.

    Parameters
    ----------
    ws : str
        Workspace URI.
    plate, well : str
        The unit of work.
    barcodes : str, optional
        Barcodes.csv URI; default from the experiment or the dataset's metadata.
    params : BarcodeParams, optional
    workers : int
        Sites processed in parallel.
    force : bool
        Recompute when the well's tables exist.
    skip_bad : bool
        Leave out sites whose aligned image cannot be read (listed in the result).
    progress : bool, optional
        Progress line (default: on a terminal).

    Returns
    -------
    BarcodeResult
    """
    params = params or BarcodeParams()
    cells_uri = workspace.cell_barcodes_path(ws, plate, well)
    spots_uri = workspace.spots_path(ws, plate, well)
    outputs = [cells_uri, spots_uri]
    manifest = workspace.site_manifest_path(ws, "barcode_calls", plate, well)
    inventory = aligned_inventory(ws, plate, well)
    cycle_sets = {tuple(sorted(c)) for c in inventory.values()}
    if len(cycle_sets) != 1:
        raise UserError(
            f"plate {plate!r} well {well!r}: sites have different aligned cycles "
            f"({sorted(cycle_sets)}); re-run alignment"
        )
    cycles = next(iter(cycle_sets))
    from starrynight.index import well_channels, well_sites

    channels = set(
        well_channels(ws, plate, well, "sbs")
        or set.intersection(*(ch for site in inventory.values() for ch in site.values()))
    )
    nuclei_ch, bases = _sbs_roles(ws, channels)
    library_uri = barcodes or default_barcodes_uri(ws)

    sites = well_sites(ws, plate, well, "sbs") or sorted(inventory)
    tasks = [
        SiteTask(
            s,
            (
                library_uri,
                *(workspace.aligned_path(ws, plate, well, s, k, ch)
                  for k in cycles for ch in dict.fromkeys([*bases, nuclei_ch])),
            ),
            (
                workspace.sbs_mask_path(ws, plate, well, s, "Cells"),
                workspace.sbs_mask_path(ws, plate, well, s, "Nuclei"),
            ),
        )
        for s in sites
    ]  # fmt: skip
    if well_current(manifest, tasks, outputs, force):
        cells = read_table(cells_uri)
        n_spots = read_table(spots_uri).num_rows
        return _summary(plate, well, sites, cells, n_spots, True, outputs)
    library = load_barcodes(library_uri, len(cycles))
    args = (list(cycles), nuclei_ch, bases, library, params)
    tasks = [dataclasses.replace(t, args=(ws, plate, well, t.site, *args)) for t in tasks]
    run = run_sites(
        "barcodes call", _call_job, tasks, manifest=manifest, workers=workers, processes=True,
        force=force, skip_bad=skip_bad, progress=progress,
        missing_hint=f"run 'starrynight align -w {ws} --plate {plate} --well {well}'",
    )  # fmt: skip
    results = run.ordered()
    spots = concat_typed([r["spots"] for r in results], SPOTS_SCHEMA)
    cells = concat_typed([r["cells"] for r in results], CELLS_SCHEMA)
    write_table(spots_uri, spots, SPOTS_SCHEMA)
    write_table(cells_uri, cells, CELLS_SCHEMA)
    mark_well_done(manifest, tasks)
    res = _summary(plate, well, sites, cells, spots.num_rows, False, outputs)
    return dataclasses.replace(res, bad_files=run.bad_files)


def _summary(
    plate: str, well: str, sites: list[int], cells: pa.Table, n_spots: int, skipped: bool,
    outputs: list[str],
) -> BarcodeResult:  # fmt: skip
    status = cells.column("status").to_pylist()
    reasons: dict[str, int] = {}
    for st, why in zip(status, cells.column("reason").to_pylist(), strict=True):
        if st != "assigned":
            reasons[why] = reasons.get(why, 0) + 1
    return BarcodeResult(
        plate, well, len(sites), n_spots, cells.num_rows, status.count("assigned"), skipped,
        reasons, outputs, empty_sites(sites, cells),
    )  # fmt: skip
