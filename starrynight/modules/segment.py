"""Segmentation of a plate x well: ``segment`` (every site) and ``segcheck`` (a sample).

Inputs are the illumination-corrected Cell Painting images
(:func:`starrynight.workspace.corrected_path`). ``segment_well`` writes, per site, the
nuclei and cell label masks, then per well an object table and per-site counts with
flags. ``segcheck_well`` segments every n-th site and renders outline overlays (PNG)
for review by eye, with the same counts and flags.

Sites run on a process pool (one site per task). A site whose two masks exist is not
recomputed; the well tables are written last, so their presence marks the well done.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from starrynight import storage, workspace
from starrynight.algorithms import segmentation as seg
from starrynight.errors import UserError
from starrynight.imageio import read_image, write_tiff
from starrynight.siterunner import (
    SiteTask,
    mark_well_done,
    require_inputs,
    run_sites,
    well_current,
)

# --------------------------------------------------------------------------- shared I/O


#: Per-object table of ``segment`` (one row per nucleus and per cell).
OBJECTS_SCHEMA = pa.schema(
    [
        ("site", pa.int32()),
        ("object", pa.string()),
        ("label", pa.int32()),
        ("area", pa.int64()),
        ("centroid_y", pa.float64()),
        ("centroid_x", pa.float64()),
        ("bbox_y0", pa.int32()),
        ("bbox_x0", pa.int32()),
        ("bbox_y1", pa.int32()),
        ("bbox_x1", pa.int32()),
    ]
)

#: Per-site counts and flags of ``segment`` and ``segcheck``.
COUNTS_SCHEMA = pa.schema(
    [
        ("site", pa.int32()),
        ("n_nuclei", pa.int64()),
        ("n_cells", pa.int64()),
        ("flagged", pa.bool_()),
        ("reason", pa.string()),
        ("diameter", pa.float64()),
        ("diameter_source", pa.string()),
    ]
)


def typed_table(columns: dict[str, Any] | pa.Table, schema: pa.Schema) -> pa.Table:
    """Columns in the order and types of ``schema``.

    Types come from the schema, never from the values, so a table without rows
    still has its string, integer and float columns (inferring from an empty list
    gives the ``null`` type, which readers cannot use).

    Raises
    ------
    ValueError
        When ``columns`` lacks a field of ``schema`` or has one it does not declare.
    """
    names = columns.column_names if isinstance(columns, pa.Table) else list(columns)
    missing = [n for n in schema.names if n not in names]
    extra = [n for n in names if n not in schema.names]
    if missing or extra:
        raise ValueError(f"table columns differ from the schema: missing {missing}, extra {extra}")
    arrays = []
    for f in schema:
        values = columns[f.name]
        if isinstance(values, pa.Array | pa.ChunkedArray):
            arrays.append(values.cast(f.type))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def concat_typed(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    """Concatenate tables of ``schema`` (an empty sequence gives an empty typed table)."""
    return pa.concat_tables(tables) if tables else schema.empty_table()


def write_table(
    uri: str, columns: dict[str, Any] | pa.Table, schema: pa.Schema | None = None
) -> None:
    """Write a parquet table atomically, typed by ``schema`` when given."""
    if schema is not None:
        table = typed_table(columns, schema)
    else:
        table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    with storage.atomic_local_path(uri, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def read_table(uri: str) -> pa.Table:
    """Read a parquet table from a local path or ``s3://`` URI."""
    try:
        return pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except pa.ArrowInvalid as exc:
        raise UserError(f"{uri}: not a readable parquet file ({exc})") from exc


def write_png(uri: str, rgb: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 image as PNG atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    storage.write_bytes(uri, buf.getvalue())


def read_mask(uri: str) -> np.ndarray:
    """Read a label mask written by these steps as ``int32``."""
    return read_image(uri, expected_channels=1)[0].astype(np.int32)


def write_mask(uri: str, labels: np.ndarray) -> None:
    """Write labels as uint16 TIFF (uint32 beyond 65535 objects), zlib-compressed."""
    dtype = np.uint16 if labels.max(initial=0) < 65535 else np.uint32
    write_tiff(uri, labels.astype(dtype), compression="zlib")


def corrected_sites(ws: str, plate: str, well: str) -> dict[int, set[str]]:
    """Sites of a well with corrected CP images, and their (normalised) channels.

    Raises
    ------
    UserError
        When the well has no corrected images.
    """
    folder = workspace.corrected_dir(ws, plate, well)
    pattern = re.compile(
        rf"Plate_{re.escape(plate)}_Well_{re.escape(well)}_Site_(\d+)_Corr([A-Za-z0-9_]+)\.tiff"
    )
    sites: dict[int, set[str]] = {}
    if storage.exists(folder):
        for entry in storage.list_files(folder):
            m = pattern.fullmatch(entry.key)
            if m:
                sites.setdefault(int(m.group(1)), set()).add(m.group(2))
    if not sites:
        raise UserError(
            f"plate {plate!r} well {well!r}: no corrected images in {folder} "
            "(expected Plate_<plate>_Well_<well>_Site_<n>_Corr<Channel>.tiff; "
            "run `starrynight illum apply` first)"
        )
    return sites


def cp_channel_roles(
    ws: str, available: set[str], nuclei: str | None, cell: str | None
) -> tuple[str, str]:
    """Nuclei and cell channels (normalised names): options, else experiment, else guess.

    The guess takes the DAPI-like channel for nuclei and the first other channel in
    alphabetical order for cells (see :func:`experiment.resolve_channels`).
    """
    from starrynight.experiment import resolve_channels

    found = resolve_channels(
        ws, "cp", available, ("nuclei", "cell"), {"nuclei": nuclei, "cell": cell},
        what="corrected images",
    )  # fmt: skip
    return found["nuclei"], found["cell"]


def empty_sites(sites: Iterable[int], table: pa.Table) -> list[int]:
    """The sites, sorted, that have no row in ``table`` (by its ``site`` column)."""
    present = set(table.column("site").to_pylist())
    return [s for s in sorted(sites) if s not in present]


# --------------------------------------------------------------------------- segment


@dataclass(frozen=True)
class SegmentParams:
    """Options of the segmentation steps (see :class:`seg.NucleiParams`)."""

    nuclei: seg.NucleiParams = field(default_factory=seg.NucleiParams)
    cell_threshold_factor: float = 0.7
    cell_max_distance: float = 40.0
    min_count: int = 1
    max_ratio: float = 3.0


@dataclass(frozen=True)
class SegmentResult:
    """What a segmentation step did for one well."""

    plate: str
    well: str
    sites: int
    computed: int
    skipped: int
    nuclei: int
    cells: int
    flagged: dict[int, str]
    outputs: list[str]
    diameter: float | None = None
    diameter_source: str = ""
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def _segment_images(
    ws: str, plate: str, well: str, site: int, nuclei_ch: str, cell_ch: str, params: SegmentParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read a site's nuclear and cell stains and segment them.

    Returns
    -------
    tuple
        ``(dna, stain, nuclei, cells)``: the two images and the two label masks.
    """
    dna = read_image(workspace.corrected_path(ws, plate, well, site, nuclei_ch), 1)[0]
    stain = read_image(workspace.corrected_path(ws, plate, well, site, cell_ch), 1)[0]
    nuclei = seg.segment_nuclei(dna, params.nuclei)
    cells = seg.segment_cells(
        stain,
        nuclei,
        threshold_factor=params.cell_threshold_factor,
        max_distance=params.cell_max_distance,
    )
    return dna, stain, nuclei, cells


def _site_counts(site: int, nuclei: np.ndarray, cells: np.ndarray) -> dict[str, int]:
    # Labels are 1..n with 0 as background, hence the - 1.
    return {
        "site": site,
        "n_nuclei": int(len(np.unique(nuclei)) - 1),
        "n_cells": int(len(np.unique(cells)) - 1),
    }


def _cp_inputs(
    ws: str, plate: str, well: str, nuclei_channel: str | None, cell_channel: str | None
) -> tuple[list[int], str, str]:
    """Sites a well must have, and its nuclei and cell channels (normalised).

    Sites and channels come from the index (every CP site of the well), or, in a
    workspace without an index, from the corrected images present. Roles: see
    :func:`cp_channel_roles`.
    """
    from starrynight.index import well_channels, well_sites

    listed = corrected_sites(ws, plate, well)
    # The channels the well should have (index), not those a killed upstream left.
    channels = well_channels(ws, plate, well, "cp") or set.intersection(*listed.values())
    nuclei_ch, cell_ch = cp_channel_roles(ws, set(channels), nuclei_channel, cell_channel)
    expected = well_sites(ws, plate, well, "cp")
    return (expected if expected else sorted(listed)), nuclei_ch, cell_ch


def segment_tasks(
    ws: str, plate: str, well: str, sites: Sequence[int], nuclei_ch: str, cell_ch: str,
    params: SegmentParams,
) -> list[SiteTask]:  # fmt: skip
    """One task per site: reads the two corrected stains, writes the two masks."""
    return [
        SiteTask(
            s,
            (
                workspace.corrected_path(ws, plate, well, s, nuclei_ch),
                workspace.corrected_path(ws, plate, well, s, cell_ch),
            ),
            (
                workspace.segmentation_mask_path(ws, plate, well, s, "Cells"),
                workspace.segmentation_mask_path(ws, plate, well, s, "Nuclei"),
            ),
            (ws, plate, well, s, nuclei_ch, cell_ch, params),
        )
        for s in sites
    ]


def _flags(results: Iterable[dict[str, Any]], params: SegmentParams) -> dict[int, str]:
    return seg.flag_counts(
        {r["site"]: r["n_nuclei"] for r in results},
        min_count=params.min_count,
        max_ratio=params.max_ratio,
    )


def _result(
    plate: str, well: str, rows: Sequence[dict[str, Any]], computed: int,
    flags: dict[int, str], outputs: list[str],
) -> SegmentResult:  # fmt: skip
    """A well's result from its per-site counts (site results or counts-table rows)."""
    return SegmentResult(
        plate, well, len(rows), computed, len(rows) - computed,
        sum(r["n_nuclei"] for r in rows), sum(r["n_cells"] for r in rows), flags, outputs,
        rows[0].get("diameter") if rows else None,
        rows[0].get("diameter_source", "") if rows else "",
    )  # fmt: skip


#: Sites of a well whose nuclear stain the diameter estimate measures (evenly spread).
DIAMETER_SITES = 6


def well_diameter(
    ws: str, plate: str, well: str, sites: Sequence[int], nuclei_ch: str, params: SegmentParams
) -> tuple[SegmentParams, str]:
    """``params`` with the well's nucleus diameter, and where that diameter came from.

    A given diameter is kept (``"given"``). Otherwise it is estimated once per well
    (:func:`seg.estimate_diameter`) from the nuclear stain of up to
    :data:`DIAMETER_SITES` sites spread over the well, read one at a time, so every
    site of the well is segmented at the same scale (``"estimated"``). A well with
    too few isolated nuclei to measure takes :data:`seg.FALLBACK_DIAMETER` and says
    so.
    """
    nuc = params.nuclei
    if nuc.diameter is not None:
        return params, "given"
    chosen = sorted(set(np.linspace(0, len(sites) - 1, min(DIAMETER_SITES, len(sites))).round()))
    images = (
        read_image(workspace.corrected_path(ws, plate, well, sites[int(i)], nuclei_ch), 1)[0]
        for i in chosen
    )
    d = seg.estimate_diameter(images, nuc.smoothing_sigma, nuc.threshold_factor)
    if d is None:
        d, source = seg.FALLBACK_DIAMETER, "default (too few isolated nuclei to estimate)"
    else:
        source = f"estimated from {len(chosen)} site(s)"
    return replace(params, nuclei=replace(nuc, diameter=d)), source


def segment_site(
    ws: str,
    plate: str,
    well: str,
    site: int,
    nuclei_ch: str,
    cell_ch: str,
    params: SegmentParams,
    reuse: bool = True,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Segment one site (or load its masks when both exist and ``reuse``).

    Returns
    -------
    tuple
        ``(nuclei, cells, computed)``.
    """
    nuc_uri = workspace.segmentation_mask_path(ws, plate, well, site, "Nuclei")
    cell_uri = workspace.segmentation_mask_path(ws, plate, well, site, "Cells")
    if reuse and storage.exists(nuc_uri) and storage.exists(cell_uri):
        return read_mask(nuc_uri), read_mask(cell_uri), False
    _, _, nuclei, cells = _segment_images(ws, plate, well, site, nuclei_ch, cell_ch, params)
    # Cells first: a site counts as done only when the nuclei mask exists too.
    write_mask(cell_uri, cells)
    write_mask(nuc_uri, nuclei)
    return nuclei, cells, True


def _segment_job(task: SiteTask) -> dict[str, Any]:
    ws, plate, well, site, nuclei_ch, cell_ch, params = task.args
    nuclei, cells, computed = segment_site(
        ws, plate, well, site, nuclei_ch, cell_ch, params, reuse=task.current
    )
    tables = []
    for obj, labels in (("Nuclei", nuclei), ("Cells", cells)):
        t = seg.object_table(labels)
        n = len(t["label"])
        columns = {"site": np.full(n, site, np.int32), "object": [obj] * n, **t}
        tables.append(typed_table(columns, OBJECTS_SCHEMA))
    return {
        **_site_counts(site, nuclei, cells),
        "computed": computed,
        "objects": concat_typed(tables, OBJECTS_SCHEMA),
    }


def _counts_table(
    results: Iterable[dict[str, Any]], flags: dict[int, str], diameter: float | None,
    source: str,
) -> pa.Table:  # fmt: skip
    res = sorted(results, key=lambda r: r["site"])
    columns = {
        "site": [r["site"] for r in res],
        "n_nuclei": [r["n_nuclei"] for r in res],
        "n_cells": [r["n_cells"] for r in res],
        "flagged": [r["site"] in flags for r in res],
        "reason": [flags.get(r["site"], "") for r in res],
        # The nucleus diameter (pixels) the sites were segmented with.
        "diameter": [diameter] * len(res),
        "diameter_source": [source] * len(res),
    }
    return typed_table(columns, COUNTS_SCHEMA)


def segment_well(
    ws: str,
    plate: str,
    well: str,
    *,
    nuclei_channel: str | None = None,
    cell_channel: str | None = None,
    params: SegmentParams | None = None,
    workers: int = 2,
    force: bool = False,
    skip_bad: bool = False,
    progress: bool | None = None,
) -> SegmentResult:
    """Segment every site of a well and write masks, object table and counts.

    Parameters
    ----------
    ws : str
        Workspace URI.
    plate, well : str
        The unit of work.
    nuclei_channel, cell_channel : str, optional
        Normalised channel names; default from the experiment, else guessed.
    params : SegmentParams, optional
    workers : int
        Sites processed in parallel.
    force : bool
        Recompute sites and tables that already exist.
    skip_bad : bool
        Leave out sites whose corrected image cannot be read (listed in the result).
    progress : bool, optional
        Progress line (default: on a terminal).

    Returns
    -------
    SegmentResult
    """
    params = params or SegmentParams()
    counts_uri = workspace.segmentation_counts_path(ws, plate, well)
    objects_uri = workspace.segmentation_objects_path(ws, plate, well)
    outputs = [objects_uri, counts_uri]
    manifest = workspace.site_manifest_path(ws, "segmentation", plate, well)
    sites, nuclei_ch, cell_ch = _cp_inputs(ws, plate, well, nuclei_channel, cell_channel)
    # Existing outputs are kept whatever the options (--force redoes them).
    tasks = segment_tasks(ws, plate, well, sites, nuclei_ch, cell_ch, params)
    if well_current(manifest, tasks, outputs, force):
        counts = read_table(counts_uri).to_pylist()
        flags = {r["site"]: r["reason"] for r in counts if r["flagged"]}
        return _result(plate, well, counts, 0, flags, outputs)
    hint = f"run 'starrynight illum apply -w {ws} --plate {plate} --well {well}'"
    require_inputs("segment", tasks, hint)
    params, source = well_diameter(ws, plate, well, sites, nuclei_ch, params)
    tasks = segment_tasks(ws, plate, well, sites, nuclei_ch, cell_ch, params)
    run = run_sites(
        "segment", _segment_job, tasks, manifest=manifest, workers=workers, processes=True,
        force=force, skip_bad=skip_bad, progress=progress, missing_hint=hint,
    )  # fmt: skip
    results = run.ordered()
    write_table(
        objects_uri, concat_typed([r["objects"] for r in results], OBJECTS_SCHEMA), OBJECTS_SCHEMA
    )
    # The counts table goes last: its flags need every site, and it marks the well done.
    flags = _flags(results, params)
    counts = _counts_table(results, flags, params.nuclei.diameter, source)
    write_table(counts_uri, counts, COUNTS_SCHEMA)
    mark_well_done(manifest, tasks)
    res = _result(plate, well, counts.to_pylist(), sum(r["computed"] for r in results), flags,
                  outputs)  # fmt: skip
    return dataclasses.replace(res, bad_files=run.bad_files)


# --------------------------------------------------------------------------- segcheck


def overlay(image: np.ndarray, nuclei: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Contrast-stretched grey image with cell (green) and nucleus (magenta) outlines.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8.
    """
    from skimage.segmentation import find_boundaries

    img = image.astype(np.float32)
    lo, hi = np.percentile(img, (0.5, 99.5))
    grey = np.clip((img - lo) / ((hi - lo) or 1.0), 0, 1) * 255
    rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    rgb[find_boundaries(cells, mode="inner")] = (0, 255, 0)
    rgb[find_boundaries(nuclei, mode="inner")] = (255, 0, 255)
    return rgb


def _segcheck_job(task: SiteTask) -> dict[str, Any]:
    ws, plate, well, site, nuclei_ch, cell_ch, params = task.args
    dna, stain, nuclei, cells = _segment_images(ws, plate, well, site, nuclei_ch, cell_ch, params)
    # Nuclei outlines on the DNA image and cell outlines on the cell stain, side by side.
    panel = np.concatenate([overlay(dna, nuclei, cells), overlay(stain, nuclei, cells)], axis=1)
    uri = workspace.segcheck_overlay_path(ws, plate, well, site)
    write_png(uri, panel)
    return {**_site_counts(site, nuclei, cells), "png": uri}


def segcheck_well(
    ws: str,
    plate: str,
    well: str,
    *,
    every: int = 4,
    nuclei_channel: str | None = None,
    cell_channel: str | None = None,
    params: SegmentParams | None = None,
    workers: int = 2,
) -> SegmentResult:
    """Segment every ``every``-th site of a well and render outline overlays.

    Writes one PNG per checked site (DNA with outlines | cell stain with outlines) and
    ``segcheck/<plate>-<well>/counts.parquet`` with counts and flags. Always
    recomputes: it exists to try parameters.

    Returns
    -------
    SegmentResult
        ``outputs`` lists the PNGs, then the counts table.
    """
    if every < 1:
        raise UserError(f"--every {every}: expected a positive number of sites")
    params = params or SegmentParams()
    sites, nuclei_ch, cell_ch = _cp_inputs(ws, plate, well, nuclei_channel, cell_channel)
    tasks = [
        dataclasses.replace(t, outputs=(workspace.segcheck_overlay_path(ws, plate, well, t.site),))
        for t in segment_tasks(ws, plate, well, sites[::every], nuclei_ch, cell_ch, params)
    ]
    hint = f"run 'starrynight illum apply -w {ws} --plate {plate} --well {well}'"
    require_inputs("segcheck", tasks, hint)
    params, source = well_diameter(ws, plate, well, sites, nuclei_ch, params)
    tasks = [dataclasses.replace(t, args=(*t.args[:-1], params)) for t in tasks]
    run = run_sites(
        "segcheck", _segcheck_job, tasks,
        manifest=workspace.site_manifest_path(ws, "segcheck", plate, well),
        workers=workers, processes=True, force=True, missing_hint=hint,
    )  # fmt: skip
    results = run.ordered()
    flags = _flags(results, params)
    counts_uri = workspace.segcheck_counts_path(ws, plate, well)
    counts = _counts_table(results, flags, params.nuclei.diameter, source)
    write_table(counts_uri, counts, COUNTS_SCHEMA)
    outputs = [r["png"] for r in results] + [counts_uri]
    return _result(plate, well, counts.to_pylist(), len(results), flags, outputs)
