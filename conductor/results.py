"""The screen's results as the API and Canvas show them: gene table, gene detail, montage.

Everything is read from the workspace products of ``starrynight results`` (paths from
:mod:`starrynight.workspace`): ``results/screen/hits.parquet`` and ``screen.json``, the
gene profiles, and for the montage the per-cell tables (``features/<plate>-<well>/
cells.parquet``: site and ``Nuclei_AreaShape_Center_X/Y``) and the corrected images.
A project without results yet has an empty table and says why; an unknown gene is a 404.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from conductor.errors import NotFound
from starrynight import storage, workspace
from starrynight.errors import UserError

#: Columns of the gene table, in order (``top_features`` last).
COLUMNS = (
    "gene_symbol", "n_cells", "n_guides", "mAP", "p_value", "q_value", "hit",
    "guide_consistency", "activity_status", "top_features",
)  # fmt: skip
SORTABLE = COLUMNS[:-1]
#: Cells per side of a montage, and the crop's side in pixels.
MONTAGE_CELLS = 8
CROP = 64
CENTRE = ("Nuclei_AreaShape_Center_X", "Nuclei_AreaShape_Center_Y")


@dataclass
class ScreenResults:
    """What ``results hits`` wrote, or why there is nothing yet."""

    status: str  # "scored", "no_usable_plates" or "none"
    message: str
    genes: list[dict[str, Any]] = field(default_factory=list)
    plates: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    control_label: str = "NTC"
    threshold: float = 0.05
    unit: str = ""
    n_features: int = 0

    @property
    def n_hits(self) -> int:
        """Genes called hits."""
        return sum(bool(g["hit"]) for g in self.genes)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def load_results(ws: str) -> ScreenResults:
    """The screen's gene table (one dict per gene, JSON-safe) and its report."""
    report_uri = workspace.screen_results_path(ws, "screen.json")
    if not storage.exists(report_uri):
        return ScreenResults(
            "none", "no screen results yet: they appear once plate_profiles and "
            "screen_hits have run (starrynight results profiles / hits)",
        )  # fmt: skip
    try:
        rep = json.loads(storage.read_bytes(report_uri))
    except (UserError, ValueError) as exc:
        return ScreenResults("none", f"{report_uri}: unreadable ({exc})")
    out = ScreenResults(
        rep.get("status", "scored"), rep.get("message", ""), plates=rep.get("plates", []),
        excluded=rep.get("excluded", {}), control_label=rep.get("control_label", "NTC"),
        threshold=float(rep.get("threshold", 0.05)), unit=rep.get("unit", ""),
        n_features=int(rep.get("n_features", 0)),
    )  # fmt: skip
    hits_uri = workspace.screen_results_path(ws, "hits.parquet")
    if out.status == "scored" and storage.exists(hits_uri):
        fs, path = storage.filesystem(hits_uri)
        table = pq.read_table(path, filesystem=fs)
        cols = [c for c in COLUMNS if c in table.column_names]
        out.genes = [
            {k: _finite(v) for k, v in row.items()} for row in table.select(cols).to_pylist()
        ]
    return out


def sort_genes(genes: list[dict[str, Any]], key: str, descending: bool) -> list[dict[str, Any]]:
    """``genes`` sorted by ``key``; missing values (unscored genes) always last."""
    present = [g for g in genes if g.get(key) is not None]
    absent = [g for g in genes if g.get(key) is None]
    return sorted(present, key=lambda g: g[key], reverse=descending) + absent


def gene_row(results: ScreenResults, gene: str) -> dict[str, Any]:
    """The table row of ``gene``, or :class:`NotFound` naming it."""
    for row in results.genes:
        if row["gene_symbol"] == gene:
            return row
    raise NotFound(
        f"gene {gene!r} is not in the screen's results ({len(results.genes)} genes)"
        if results.genes
        else f"gene {gene!r}: the project has no screen results yet"
    )


def feature_shifts(ws: str, gene: str, n: int = 15) -> list[tuple[str, float]]:
    """The ``n`` features of ``gene``'s profile furthest from the controls (robust z)."""
    uri = workspace.screen_results_path(ws, "gene_profiles.parquet")
    if not storage.exists(uri):
        return []
    fs, path = storage.filesystem(uri)
    table = pq.read_table(path, filesystem=fs, filters=[("gene_symbol", "=", gene)])
    if table.num_rows == 0:
        return []
    row = table.to_pylist()[0]
    values = [
        (k, float(v)) for k, v in row.items()
        if k not in ("gene_symbol", "n_cells") and isinstance(v, float) and math.isfinite(v)
    ]  # fmt: skip
    return sorted(values, key=lambda kv: -abs(kv[1]))[:n]


def _well_tables(ws: str, plates: list[str]) -> list[tuple[str, str, str]]:
    """``(plate, well, uri)`` of every per-cell table of the plates, in order."""
    root = storage.join(ws, "features")
    if not storage.exists(root):
        return []
    out = []
    for entry in storage.list_files(root):
        folder, _, name = entry.key.partition("/")
        plate, _, well = folder.partition("-")
        if name == "cells.parquet" and plate in plates and well:
            out.append((plate, well, storage.join(root, entry.key)))
    return sorted(out)


def _cells_of(
    ws: str, plates: list[str], gene: str, k: int
) -> list[tuple[str, str, int, float, float]]:
    """Up to ``k`` cells of ``gene`` as ``(plate, well, site, x, y)``, spread over wells.

    Reads only the gene, site and centre columns, well by well, and stops once enough
    cells are found (a screen has thousands of wells).
    """
    chosen: list[tuple[str, str, int, float, float]] = []
    for plate, well, uri in _well_tables(ws, plates):
        fs, path = storage.filesystem(uri)
        try:
            t = pq.read_table(path, filesystem=fs, columns=["gene_symbol", "site", *CENTRE])
        except (OSError, ValueError, KeyError):
            continue  # a table of an older version without centres: no crops from it
        genes = t.column("gene_symbol").to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(genes == gene)
        if rows.size == 0:
            continue
        # Evenly spaced through the table: not only the first site's cells.
        take = rows[np.linspace(0, rows.size - 1, min(rows.size, k), dtype=int)]
        site = t.column("site").to_numpy()
        x, y = (t.column(c).to_numpy(zero_copy_only=False) for c in CENTRE)
        for r in take[: k - len(chosen)]:
            if math.isfinite(x[r]) and math.isfinite(y[r]):
                chosen.append((plate, well, int(site[r]), float(x[r]), float(y[r])))
        if len(chosen) >= k:
            break
    return chosen


def _site_images(ws: str, plate: str, well: str, site: int) -> list[np.ndarray]:
    """Up to three corrected channels of a site (name order), as float arrays."""
    from starrynight.imageio import read_image

    folder = workspace.corrected_dir(ws, plate, well)
    if not storage.exists(folder):
        return []
    prefix = f"Plate_{plate}_Well_{well}_Site_{site}_Corr"
    names = sorted(
        e.key for e in storage.list_files(folder) if e.key.startswith(prefix)
        and e.key.endswith((".tiff", ".tif"))
    )  # fmt: skip
    planes = []
    for name in names[:3]:
        image = np.asarray(read_image(storage.join(folder, name)), np.float32)
        planes.append(image[0] if image.ndim == 3 else image)  # one channel per file
    return planes


def _crop(planes: list[np.ndarray], x: float, y: float) -> np.ndarray:
    """A ``CROP`` x ``CROP`` x 3 float crop centred on (x, y), zero outside the image."""
    out = np.zeros((CROP, CROP, 3), np.float32)
    h = CROP // 2
    cy, cx = round(y), round(x)
    for i, plane in enumerate(planes):
        y0, x0 = max(cy - h, 0), max(cx - h, 0)
        y1, x1 = min(cy + h, plane.shape[0]), min(cx + h, plane.shape[1])
        if y0 < y1 and x0 < x1:
            out[y0 - (cy - h) : y1 - (cy - h), x0 - (cx - h) : x1 - (cx - h), i] = plane[
                y0:y1, x0:x1
            ]
    if len(planes) == 1:
        out[..., 1] = out[..., 2] = out[..., 0]
    return out


def montage_png(ws: str, gene: str, results: ScreenResults) -> bytes:
    """Crops of ``gene``'s cells (top row) and of control cells (bottom row) as a PNG.

    Channels are the site's first three corrected images (red, green, blue), scaled
    together for both rows (1st-99.5th percentile), so brightness compares between
    the gene and the controls. Raises :class:`NotFound` when no crop can be made.
    """
    from PIL import Image

    rows = []
    cache: dict[tuple[str, str, int], list[np.ndarray]] = {}
    for label in (gene, results.control_label):
        crops = []
        for plate, well, site, x, y in _cells_of(ws, results.plates, label, MONTAGE_CELLS):
            key = (plate, well, site)
            if key not in cache:
                cache[key] = _site_images(ws, plate, well, site)
            if cache[key]:
                crops.append(_crop(cache[key], x, y))
        rows.append(crops)
    if not rows[0]:
        raise NotFound(f"gene {gene!r}: no cells with corrected images to show")
    every = np.concatenate([c.reshape(-1, 3) for r in rows for c in r])
    lo = np.percentile(every, 1, axis=0)
    hi = np.maximum(np.percentile(every, 99.5, axis=0), lo + 1e-6)
    gap = 2
    canvas = np.full((2 * CROP + gap, MONTAGE_CELLS * (CROP + gap) - gap, 3), 255, np.uint8)
    for r, crops in enumerate(rows):
        for c, crop in enumerate(crops):
            scaled = np.clip((crop - lo) / (hi - lo), 0, 1) * 255
            y0, x0 = r * (CROP + gap), c * (CROP + gap)
            canvas[y0 : y0 + CROP, x0 : x0 + CROP] = scaled.astype(np.uint8)
    import io

    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def volcano_points(
    results: ScreenResults, width: int = 560, height: int = 360, pad: int = 44
) -> dict[str, Any]:
    """Pixel positions of the genes for the page's SVG volcano plot (mAP vs -log10 q)."""
    scored = [g for g in results.genes if g.get("mAP") is not None and g.get("q_value")]
    ys = [-math.log10(max(g["q_value"], 1e-300)) for g in scored]
    y_max = max([*ys, -math.log10(results.threshold), 1.0]) * 1.08
    sx = lambda v: pad + v * (width - 2 * pad)  # noqa: E731 - mAP lies in [0, 1]
    sy = lambda v: height - pad - v / y_max * (height - 2 * pad)  # noqa: E731
    points = [
        {"gene": g["gene_symbol"], "x": round(sx(g["mAP"]), 1), "y": round(sy(v), 1),
         "hit": bool(g["hit"]), "mAP": g["mAP"], "q": g["q_value"]}
        for g, v in zip(scored, ys, strict=True)
    ]  # fmt: skip
    ticks_y = [round(t, 1) for t in np.linspace(0, y_max / 1.08, 4)]
    return {
        "width": width, "height": height, "pad": pad, "points": points,
        "threshold_y": round(sy(-math.log10(results.threshold)), 1),
        "ticks_x": [(round(sx(t), 1), f"{t:g}") for t in (0, 0.25, 0.5, 0.75, 1.0)],
        "ticks_y": [(round(sy(t), 1), f"{t:g}") for t in ticks_y],
    }  # fmt: skip
