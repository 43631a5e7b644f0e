"""QC reports: per plate, one page of figures per gate for a reviewer to decide from.

``write_report`` renders a report's figures for a plate into
``qc_reports/<plate>/<report>/`` (:func:`starrynight.workspace.qc_report_dir`): per figure
a PNG (matplotlib, Agg) and, beside it, the figure's data as parquet so it can be
re-plotted in pandas; then ``index.json`` listing the figures with their title, files and
a one-line finding, so Canvas and Dagster show a report without knowing its plots.

- painting: illumination functions per channel, segmentation overlays of a sample of
  sites, cells per site on the well's site map, sites with implausible counts;
- barcoding: SBS illumination functions, alignment shifts and correlations (site map,
  site x cycle, distributions with the QC thresholds), base frequencies expected from
  Barcodes.csv vs read, exact / one-mismatch matches and the mismatch position per
  cycle, read quality, mapping rate per well, top barcodes, barcodes per cell;
- merge (after the merge; it gates nothing): match rate per well with the merge checks'
  thresholds, match distances, registration residuals and inlier share
  (:mod:`starrynight.modules.qc_merge`).

A missing input (a step not run for a well, a plate without SBS, a well without cells
or reads) is drawn as such in its figure and listed in the index, never an error: the
report exists to show what is wrong. The index is written last and marks the report
complete; figures a previous run listed and this one does not are removed.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from starrynight import storage, workspace
from starrynight.algorithms import qc as alg
from starrynight.algorithms.align import AlignmentQC
from starrynight.errors import UserError
from starrynight.modules.qcfigures import (
    NO_DATA_GREY,
    Figure,
    PlateLayout,
    load_npy,
    mark_empty,
    message_figure,
    new_figure,
    panels,
    pct,
    plate_layout,
    read_parquet,
    say,
)

GATES = ("painting", "barcoding")
#: The report after the merge (it gates nothing).
MERGE_REPORT = "merge"
#: Every report: one per gate, and the after-merge one.
REPORTS = (*GATES, MERGE_REPORT)
#: Side in pixels of the illumination functions kept in a report's parquet.
ILLUM_DATA_SIDE = 64
#: Display side of a segmentation overlay panel.
OVERLAY_SIDE = 384
#: Barcodes shown in the top-barcodes figure.
TOP_BARCODES = 20
#: Bins of the read-quality histogram over [0, 1].
QUALITY_BINS = 50


# --------------------------------------------------------------------------- report model


@dataclass
class Report:
    """What :func:`write_report` wrote for one plate and report (``gate``).

    ``status`` is ``complete`` (every input present), ``incomplete`` (some inputs
    missing, listed in ``missing``) or ``not_applicable`` (the plate has no images of
    this gate's arm).
    """

    plate: str
    gate: str
    status: str
    index: str
    figures: list[dict[str, Any]]
    missing: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- writing


def write_report(
    ws: str,
    plate: str,
    gate: str,
    *,
    sample_sites: int = 6,
    warn_match_rate: float | None = None,
    min_match_rate: float | None = None,
) -> Report:
    """Render one QC report of a plate into ``qc_reports/<plate>/<gate>/``.

    Parameters
    ----------
    ws : str
        Workspace (local folder or ``s3://`` prefix) holding the index.
    plate : str
        Plate name as in the index.
    gate : {"painting", "barcoding", "merge"}
        A gate's report, or the after-merge report (see :data:`REPORTS`).
    sample_sites : int
        Sites shown with segmentation overlays (painting), spread over the wells;
        sites with implausible counts come first.
    warn_match_rate, min_match_rate : float, optional
        Match-rate thresholds the merge report draws (default: those of
        :mod:`starrynight.modules.qc_merge`).

    Returns
    -------
    Report

    Raises
    ------
    UserError
        Unknown report, no index, or a plate not in the index.
    """
    if gate not in REPORTS:
        raise UserError(f"--report {gate!r}: expected one of {', '.join(REPORTS)} or all")
    if sample_sites < 0:
        raise UserError(f"--sample-sites {sample_sites}: expected 0 or more sites")
    layout = plate_layout(ws, plate)
    missing: list[str] = []
    if gate == "painting":
        figures, status = painting_figures(ws, layout, missing, sample_sites), None
    elif gate == "barcoding":
        figures, status = barcoding_figures(ws, layout, missing)
    else:
        from starrynight.modules import qc_merge

        rates = {"warn_rate": warn_match_rate, "min_rate": min_match_rate}
        rates = {k: v for k, v in rates.items() if v is not None}
        figures, status = qc_merge.merge_figures(ws, layout, missing, **rates)
    status = status or ("incomplete" if missing else "complete")
    entries = [_write_figure(ws, plate, gate, f) for f in figures]
    index_uri = workspace.qc_index_path(ws, plate, gate)
    previous = _previous_files(index_uri)
    attention = [e["name"] for e in entries if e["attention"]]
    doc = {
        "plate": plate,
        "gate": gate,
        "status": status,
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "summary": _summary(status, len(entries), attention, missing),
        "attention": attention,
        "missing": missing,
        "figures": entries,
    }
    storage.write_bytes(index_uri, json.dumps(doc, indent=2).encode())
    current = {e["png"] for e in entries} | {e["parquet"] for e in entries}
    for stale in sorted(previous - current):
        storage.remove(storage.join(workspace.qc_report_dir(ws, plate, gate), stale))
    return Report(plate, gate, status, index_uri, entries, missing)


def _summary(status: str, n: int, attention: list[str], missing: list[str]) -> str:
    if status == "not_applicable":
        return "nothing to review for this report"
    parts = [f"{n} figure(s)", f"{len(attention)} need attention"]
    if missing:
        parts.append(f"{len(missing)} input(s) missing")
    return ", ".join(parts)


def _previous_files(index_uri: str) -> set[str]:
    if not storage.exists(index_uri):
        return set()
    try:
        doc = json.loads(storage.read_bytes(index_uri))
        return {f[k] for f in doc.get("figures", []) for k in ("png", "parquet") if f.get(k)}
    except (UserError, ValueError, TypeError, AttributeError):
        return set()  # an unreadable old index names nothing to clean up


def _write_figure(ws: str, plate: str, gate: str, fig: Figure) -> dict[str, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    png_uri = workspace.qc_figure_path(ws, plate, gate, fig.name, "png")
    data_uri = workspace.qc_figure_path(ws, plate, gate, fig.name, "parquet")
    FigureCanvasAgg(fig.figure)
    buf = io.BytesIO()
    fig.figure.savefig(buf, format="png", dpi=100)
    storage.write_bytes(png_uri, buf.getvalue())
    with storage.atomic_local_path(data_uri, suffix=".parquet") as tmp:
        pq.write_table(fig.data, tmp)
    return {
        "name": fig.name,
        "title": fig.title,
        "png": png_uri.rsplit("/", 1)[-1],
        "parquet": data_uri.rsplit("/", 1)[-1],
        "finding": fig.finding,
        "attention": fig.attention,
    }


# --------------------------------------------------------------------------- site maps


def site_map(ws: str, plate: str, well: str, sites: Sequence[int], arm: str) -> alg.SiteMap:
    """The well's site map: geometry positions when written, else a square grid.

    SBS uses cycle 1's positions (every cycle is aligned to it).
    """
    uri = workspace.positions_path(ws, plate, well, arm, 1 if arm == "sbs" else None)
    table = read_parquet(uri)
    if (
        table is None
        or table.num_rows == 0
        or not {"site", "x_um", "y_um"} <= set(table.column_names)
    ):
        return alg.square_grid(sites)
    cols = table.to_pydict()
    width = height = None
    if {"width_px", "pixel_size_x_um"} <= set(cols):
        width = np.asarray(cols["width_px"], float) * np.asarray(cols["pixel_size_x_um"], float)
    if {"height_px", "pixel_size_y_um"} <= set(cols):
        height = np.asarray(cols["height_px"], float) * np.asarray(cols["pixel_size_y_um"], float)
    try:
        return alg.positions_map(cols["site"], cols["x_um"], cols["y_um"], width, height)
    except ValueError as exc:
        raise UserError(f"{uri}: {exc}") from exc


def _note_layout(ax: Any, m: alg.SiteMap) -> None:
    """Say under a site-map panel when the layout is the fallback grid."""
    if m.source == "grid":
        ax.set_xlabel("square grid by site number\n(no positions table for this well)", fontsize=8)


def _draw_site_map(
    ax: Any,
    m: alg.SiteMap,
    values: dict[int, float],
    *,
    cmap: str,
    norm: Any,
    outlined: set[int] = frozenset(),
    label_sites: bool = True,
    fmt: str = "{:.0f}",
) -> Any:
    """Fields as rectangles coloured by ``values`` (grey: no value), ``outlined`` in red."""
    from matplotlib import colormaps
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle
    from matplotlib.patheffects import withStroke

    colours = colormaps[cmap]
    rects, faces, edges = [], [], []
    for s, x, y, w, h in zip(m.sites, m.x, m.y, m.width, m.height, strict=True):
        rects.append(Rectangle((x, y), w, h))
        v = values.get(int(s))
        faces.append(NO_DATA_GREY if v is None or not np.isfinite(v) else colours(norm(v)))
        edges.append("red" if int(s) in outlined else "white")
    ax.add_collection(PatchCollection(rects, facecolors=faces, edgecolors=edges, linewidths=1.5))
    if len(m.sites):
        ax.set_xlim(float(m.x.min()), float((m.x + m.width).max()))
        ax.set_ylim(float((m.y + m.height).max()), float(m.y.min()))  # image convention
    ax.set_aspect("equal")
    if m.source == "grid":
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    if label_sites and len(m.sites) <= 64:
        for s, x, y, w, h in zip(m.sites, m.x, m.y, m.width, m.height, strict=True):
            v = values.get(int(s))
            shown = "" if v is None or not np.isfinite(v) else "\n" + fmt.format(v)
            ax.text(
                x + w / 2,
                y + h / 2,
                f"site {int(s)}{shown}",
                ha="center",
                va="center",
                fontsize=7,
                path_effects=[withStroke(linewidth=2, foreground="white")],
            )
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)


def _map_columns(well: str, m: alg.SiteMap) -> dict[str, list]:
    return {
        "well": [well] * len(m.sites),
        "site": m.sites.tolist(),
        "map_x": m.x.tolist(),
        "map_y": m.y.tolist(),
        "map_width": m.width.tolist(),
        "map_height": m.height.tolist(),
        "map_source": [m.source] * len(m.sites),
    }


# --------------------------------------------------------------------------- illumination


def _illum_figure(
    ws: str,
    plate: str,
    name: str,
    title: str,
    groups: list[tuple[str, int | None]],
    missing: list[str],
) -> Figure:
    """Heat-maps of illumination functions, one panel per (channel, cycle).

    Each function is drawn relative to its mean, on one colour scale shared by every
    panel, so channels and cycles compare at a glance; the parquet holds the values.
    """
    from matplotlib.colors import Normalize

    loaded: dict[tuple[str, int | None], np.ndarray] = {}
    absent = []
    for channel, cycle in groups:
        uri = workspace.illum_path(ws, plate, channel, cycle)
        function = load_npy(uri)
        if function is None:
            absent.append(channel if cycle is None else f"cycle {cycle} {channel}")
            missing.append(uri)
        else:
            loaded[channel, cycle] = function
    relative = {k: f / m for k, f in loaded.items() if (m := float(np.mean(f))) > 0}
    lo = min((float(r.min()) for r in relative.values()), default=0.0)
    hi = max((float(r.max()) for r in relative.values()), default=1.0)
    norm = Normalize(min(lo, 1.0), max(hi, 1.0 + 1e-6))
    fig = new_figure(2.8 * min(len(groups), 5) + 1, 2.6 * math.ceil(len(groups) / 5))
    axes = panels(fig, len(groups), 5)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("y", "x", "value", "relative")}
    labels: list[tuple[str, int | None, int, int]] = []
    worst: tuple[float, str] = (math.nan, "")
    image = None
    for ax, (channel, cycle) in zip(axes, groups, strict=True):
        label = channel if cycle is None else f"cycle {cycle} {channel}"
        function = loaded.get((channel, cycle))
        if function is None:
            say(ax, f"{label}\nno illumination function\n(run starrynight illum calc)",
                 colour="firebrick")  # fmt: skip
            continue
        ratio = alg.flatness(function)
        if np.isfinite(ratio) and not ratio <= worst[0]:
            worst = (ratio, label)
        small, block = alg.downsample(function, ILLUM_DATA_SIDE)
        yy, xx = np.mgrid[0 : small.shape[0], 0 : small.shape[1]]
        parts["y"].append(yy.ravel() * block)
        parts["x"].append(xx.ravel() * block)
        parts["value"].append(small.ravel())
        parts["relative"].append(small.ravel() / float(np.mean(function)))
        labels.append((channel, cycle, block, small.size))
        shown = relative.get((channel, cycle))
        if shown is None:
            say(ax, f"{label}\nmean is not positive", colour="firebrick")
            continue
        shown, _ = alg.downsample(shown, 128)
        image = ax.imshow(shown, cmap="viridis", norm=norm,
                          extent=(0, function.shape[1], function.shape[0], 0))  # fmt: skip
        ax.set_title(f"{label}: max/min {ratio:.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="function / its mean")
    fig.suptitle(f"{plate}: {title}")
    columns = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    table = pa.table(
        {
            "channel": pa.array([c for c, _, _, n in labels for _ in range(n)], pa.string()),
            "cycle": pa.array([k for _, k, _, n in labels for _ in range(n)], pa.int32()),
            "y": pa.array(columns["y"].astype(np.int32), pa.int32()),
            "x": pa.array(columns["x"].astype(np.int32), pa.int32()),
            "value": pa.array(columns["value"], pa.float64()),
            "relative": pa.array(columns["relative"], pa.float64()),
            "block": pa.array(np.repeat([b for *_, b, _ in labels], [n for *_, n in labels])
                              .astype(np.int32), pa.int32()),
        }
    )  # fmt: skip
    finding = f"{len(groups) - len(absent)} of {len(groups)} function(s) present" + (
        f"; most uneven: {worst[1]} (max/min {worst[0]:.2f})" if worst[1] else ""
    )
    if absent:
        finding += f"; missing: {', '.join(absent[:4])}{' ...' if len(absent) > 4 else ''}"
    return Figure(name, title, finding, table, fig, bool(absent))


# --------------------------------------------------------------------------- painting


@dataclass
class _WellCounts:
    well: str
    sites: list[int]
    counts: pa.Table | None  # segmentation counts.parquet, None when not segmented


def painting_figures(
    ws: str, layout: PlateLayout, missing: list[str], sample_sites: int = 6
) -> list[Figure]:
    """The painting gate's figures (see the module docstring)."""
    plate = layout.plate
    if not layout.cp_wells:
        message = f"plate {plate} has no Cell Painting images in the index: nothing to review"
        return [
            message_figure(
                "cp_missing",
                "Cell Painting images",
                message,
                pa.table({"plate": [plate], "problem": [message]}),
            )
        ]
    wells = []
    for well, sites in layout.cp_wells.items():
        uri = workspace.segmentation_counts_path(ws, plate, well)
        counts = read_parquet(uri)
        if counts is None:
            missing.append(uri)
        wells.append(_WellCounts(well, sites, counts))
    return [
        _illum_figure(
            ws,
            plate,
            "illumination",
            "Illumination functions per channel",
            [(c, None) for c in layout.cp_channels],
            missing,
        ),
        _segmentation_overlays(ws, layout, wells, sample_sites, missing),
        _cells_per_site(ws, plate, wells),
        _implausible_counts(plate, wells),
    ]


def _count_rows(w: _WellCounts) -> list[dict[str, Any]]:
    return [] if w.counts is None else w.counts.to_pylist()


def _segmentation_overlays(
    ws: str, layout: PlateLayout, wells: list[_WellCounts], n: int, missing: list[str]
) -> Figure:
    from starrynight.modules.segment import cp_channel_roles

    plate = layout.plate
    title = "Segmentation check: outlines on a sample of sites"
    candidates = [(w.well, r) for w in wells for r in _count_rows(w)]
    flagged = [c for c in candidates if c[1]["flagged"]]
    chosen = flagged[: max(1, n // 3)] if n else []
    chosen += alg.sample_evenly([c for c in candidates if c not in chosen], n - len(chosen))
    chosen.sort(key=lambda c: (c[0], c[1]["site"]))
    schema = pa.schema(
        [
            ("well", pa.string()),
            ("site", pa.int32()),
            ("n_nuclei", pa.int64()),
            ("n_cells", pa.int64()),
            ("flagged", pa.bool_()),
            ("reason", pa.string()),
            ("nuclei_channel", pa.string()),
            ("cell_channel", pa.string()),
            ("nuclei_mask", pa.string()),
            ("cells_mask", pa.string()),
            ("problem", pa.string()),
        ]
    )
    if not chosen:
        why = (
            "no overlays requested (--sample-sites 0)"
            if n == 0
            else "no well segmented yet (run starrynight segment)"
            if all(w.counts is None for w in wells)
            else "no segmented site to show"
        )
        return message_figure("segmentation_overlays", title, why, schema.empty_table())
    try:
        nuc_ch, cell_ch = cp_channel_roles(ws, set(layout.cp_channels), None, None)
    except UserError as exc:
        return message_figure("segmentation_overlays", title, str(exc), schema.empty_table())
    fig = new_figure(8, 3.6 * len(chosen))
    axes = panels(fig, len(chosen), 1)
    rows = []
    for ax, (well, r) in zip(axes, chosen, strict=True):
        site = int(r["site"])
        masks = [
            workspace.segmentation_mask_path(ws, plate, well, site, o) for o in ("Nuclei", "Cells")
        ]
        images = [workspace.corrected_path(ws, plate, well, site, c) for c in (nuc_ch, cell_ch)]
        problem = ""
        absent = [u for u in (*masks, *images) if not storage.exists(u)]
        label = f"{well} site {site}: {r['n_nuclei']} nuclei, {r['n_cells']} cells"
        if r["flagged"]:
            label += f"  [implausible: {r['reason']}]"
        panel = None
        if absent:
            problem = f"missing {absent[0]}"
            missing.extend(absent)
        else:
            try:
                panel = _overlay_panel(masks, images)
            except UserError as exc:  # an unreadable or mismatched file: say which
                problem = str(exc)
        if panel is None:
            ax.set_title(label, fontsize=9)
            say(ax, problem.rsplit("/", 1)[-1], colour="firebrick")
        else:
            step = max(1, math.ceil(max(panel.shape[:2]) / (2 * OVERLAY_SIDE)))
            ax.imshow(panel[::step, ::step], interpolation="nearest")
            ax.set_title(label, fontsize=9, color="firebrick" if r["flagged"] else "black")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(
                f"{nuc_ch} (left) | {cell_ch} (right); nuclei magenta, cells green", fontsize=8
            )
        rows.append(
            {
                "well": well,
                "site": site,
                "n_nuclei": r["n_nuclei"],
                "n_cells": r["n_cells"],
                "flagged": r["flagged"],
                "reason": r["reason"],
                "nuclei_channel": nuc_ch,
                "cell_channel": cell_ch,
                "nuclei_mask": masks[0],
                "cells_mask": masks[1],
                "problem": problem,
            }
        )
    fig.suptitle(f"{plate}: {title}")
    n_flagged = sum(1 for r in rows if r["flagged"])
    finding = f"{len(rows)} site(s) shown"
    if n_flagged:
        finding += f", {n_flagged} of them with implausible counts"
    n_problem = sum(1 for r in rows if r["problem"])
    if n_problem:
        finding += f"; {n_problem} could not be drawn (inputs missing)"
    return Figure(
        "segmentation_overlays",
        title,
        finding,
        pa.Table.from_pylist(rows, schema),
        fig,
        bool(n_flagged or n_problem),
    )


def _overlay_panel(masks: Sequence[str], images: Sequence[str]) -> np.ndarray:
    """Nuclear stain | cell stain, each with both outlines (``segment.overlay``)."""
    from starrynight.imageio import read_image
    from starrynight.modules.segment import overlay, read_mask

    nuclei, cells = (read_mask(u) for u in masks)
    dna, stain = (read_image(u, 1)[0] for u in images)
    if not (nuclei.shape == cells.shape == dna.shape == stain.shape):
        raise UserError(
            f"{masks[0]}: mask is {nuclei.shape[0]}x{nuclei.shape[1]}, but {images[0]} is "
            f"{dna.shape[0]}x{dna.shape[1]} (re-run starrynight segment)"
        )
    return np.concatenate([overlay(dna, nuclei, cells), overlay(stain, nuclei, cells)], 1)


def _cells_per_site(ws: str, plate: str, wells: list[_WellCounts]) -> Figure:
    from matplotlib.colors import Normalize

    title = "Cells per site on the well's site map"
    maps = {w.well: site_map(ws, plate, w.well, w.sites, "cp") for w in wells}
    counts = {w.well: {int(r["site"]): r for r in _count_rows(w)} for w in wells}
    top = max([r["n_cells"] for c in counts.values() for r in c.values()], default=0)
    norm = Normalize(0, max(1, top))
    fig = new_figure(4.2 * min(len(wells), 3), 3.8 * math.ceil(len(wells) / 3))
    axes = panels(fig, len(wells), 3)
    table: dict[str, list] = {}
    notes = []
    for ax, w in zip(axes, wells, strict=True):
        m, by_site = maps[w.well], counts[w.well]
        values = {s: float(r["n_cells"]) for s, r in by_site.items()}
        flagged = {s for s, r in by_site.items() if r["flagged"]}
        cols = _map_columns(w.well, m)
        cols["n_cells"] = [by_site[s]["n_cells"] if s in by_site else None for s in cols["site"]]
        cols["n_nuclei"] = [by_site[s]["n_nuclei"] if s in by_site else None for s in cols["site"]]
        cols["flagged"] = [
            bool(by_site[s]["flagged"]) if s in by_site else None for s in cols["site"]
        ]
        for k, v in cols.items():
            table.setdefault(k, []).extend(v)
        if w.counts is None:
            notes.append(f"{w.well} not segmented")
            say(
                ax,
                f"well {w.well}: not segmented yet\n(run starrynight segment)",
                colour="firebrick",
            )
            continue
        mappable = _draw_site_map(ax, m, values, cmap="viridis", norm=norm, outlined=flagged)
        _note_layout(ax, m)
        total = int(sum(values.values()))
        state = "no cells in this well" if total == 0 else f"{total} cells"
        ax.set_title(
            f"well {w.well}: {state}",
            fontsize=9,
            color="firebrick" if total == 0 else "black",
        )
        if total == 0:
            notes.append(f"{w.well} has no cells")
            ax.text(
                0.5,
                0.5,
                "no cells in this well",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="firebrick",
                fontsize=12,
                bbox={"facecolor": "white", "alpha": 0.8},
            )
        fig.colorbar(mappable, ax=ax, shrink=0.8, label="cells")
    fig.suptitle(f"{plate}: {title} (red outline: implausible count, grey: no count)")
    grid = [w.well for w in wells if maps[w.well].source == "grid"]
    finding = f"{sum(len(c) for c in counts.values())} site(s) counted in {len(wells)} well(s)"
    if notes:
        finding += "; " + ", ".join(notes)
    if grid:
        finding += f"; square grid by site number for {len(grid)} well(s) (no positions table)"
    schema = pa.schema(
        [
            ("well", pa.string()),
            ("site", pa.int32()),
            ("map_x", pa.float64()),
            ("map_y", pa.float64()),
            ("map_width", pa.float64()),
            ("map_height", pa.float64()),
            ("map_source", pa.string()),
            ("n_cells", pa.int64()),
            ("n_nuclei", pa.int64()),
            ("flagged", pa.bool_()),
        ]
    )
    return Figure(
        "cells_per_site",
        title,
        finding,
        pa.table(table or schema.empty_table(), schema=schema),
        fig,
        bool(notes),
    )


def _implausible_counts(plate: str, wells: list[_WellCounts]) -> Figure:
    title = "Sites with implausible counts"
    rows = [{"well": w.well, **r} for w in wells for r in _count_rows(w)]
    schema = pa.schema(
        [
            ("well", pa.string()),
            ("site", pa.int32()),
            ("n_nuclei", pa.int64()),
            ("n_cells", pa.int64()),
            ("flagged", pa.bool_()),
            ("reason", pa.string()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema) if rows else schema.empty_table()
    if not rows:
        return message_figure(
            "implausible_counts",
            title,
            "no segmentation counts yet (run starrynight segment)",
            table,
        )
    bad = [r for r in rows if r["flagged"]]
    fig = new_figure(min(max(6, 0.25 * len(rows)), 16), 5 if bad else 3.5)
    ax, note = (
        fig.subplots(2, 1, height_ratios=(3, 1 + 0.2 * min(len(bad), 12)))
        if bad
        else (fig.subplots(), None)
    )
    x = np.arange(len(rows))
    nuclei = [r["n_nuclei"] for r in rows]
    colours = ["firebrick" if r["flagged"] else "steelblue" for r in rows]
    if len(rows) <= 200:
        ax.bar(x, nuclei, color=colours)
    else:  # thousands of bars draw slowly and unreadably: one dot per site
        ax.scatter(x, nuclei, c=colours, s=4)
    if len(rows) <= 48:
        ax.set_xticks(x, [f"{r['well']}-{r['site']}" for r in rows], rotation=90, fontsize=7)
    ax.set_xlabel("well-site")
    ax.set_ylabel("nuclei")
    ax.set_title(f"{plate}: nuclei per site (red: implausible)")
    if bad:
        lines = [f"{r['well']} site {r['site']}: {r['reason']}" for r in bad[:12]]
        if len(bad) > 12:
            lines.append(f"... and {len(bad) - 12} more (see the parquet)")
        say(note, "\n".join(lines), colour="firebrick")
    finding = (
        f"{len(bad)} site(s) with implausible counts of {len(rows)}"
        if bad
        else f"no site with implausible counts ({len(rows)} sites)"
    )
    return Figure("implausible_counts", title, finding, table, fig, bool(bad))


# --------------------------------------------------------------------------- barcoding


def barcoding_figures(
    ws: str, layout: PlateLayout, missing: list[str]
) -> tuple[list[Figure], str | None]:
    """The barcoding gate's figures and, for a plate without SBS, ``not_applicable``."""
    plate = layout.plate
    if not layout.sbs_wells:
        message = (
            f"plate {plate} has no SBS images in the index: no barcoding to review "
            "(a Cell Painting-only plate, or its SBS folders were not found)"
        )
        data = pa.table({"plate": [plate], "problem": [message]})
        return [message_figure("sbs_missing", "SBS images", message, data)], "not_applicable"
    alignment = {}
    for well in layout.sbs_wells:
        uri = workspace.alignment_table_path(ws, plate, well)
        alignment[well] = read_parquet(uri)
        if alignment[well] is None:
            missing.append(uri)
    reads = _read_summaries(ws, layout, missing)
    expected, library, problem = _expected_frequencies(ws, layout, missing)
    groups = [(c, k) for k in layout.cycles for c in layout.sbs_channels]
    return [
        _illum_figure(
            ws,
            plate,
            "sbs_illumination",
            "SBS illumination functions per cycle and channel",
            groups,
            missing,
        ),
        _alignment_map(ws, plate, layout, alignment),
        _alignment_cycles(plate, alignment),
        _alignment_distributions(plate, alignment),
        _nucleotide_frequency(plate, layout, reads, expected, problem),
        _match_and_bad_cycle(plate, reads),
        _read_quality(plate, reads),
        _mapping_rate(plate, reads),
        _top_barcodes(plate, reads, library),
        _barcodes_per_cell(plate, reads),
    ], None


def _alignment_rows(alignment: dict[str, pa.Table | None]) -> list[dict[str, Any]]:
    rows = []
    for well, t in alignment.items():
        for r in [] if t is None else t.to_pylist():
            rows.append({**r, "well": well, "max_abs_shift": max(abs(r["dy"]), abs(r["dx"]))})
    return rows


def _alignment_map(
    ws: str, plate: str, layout: PlateLayout, alignment: dict[str, pa.Table | None]
) -> Figure:
    from matplotlib.colors import Normalize

    qc = AlignmentQC()
    title = "Alignment per site: largest shift and lowest correlation over cycles"
    wells = list(layout.sbs_wells)
    fig = new_figure(9, 3.8 * len(wells))
    axes = fig.subplots(len(wells), 2, squeeze=False)
    rows = _alignment_rows(alignment)
    top_shift = max([r["max_abs_shift"] for r in rows], default=0.0)
    shift_norm = Normalize(0, max(qc.max_shift, top_shift))
    finite = [r["correlation"] for r in rows if np.isfinite(r["correlation"])]
    corr_norm = Normalize(min(0.5, *finite, 1.0), 1.0)
    table: dict[str, list] = {}
    flagged_sites = 0
    for (ax_s, ax_c), well in zip(axes, wells, strict=True):
        m = site_map(ws, plate, well, layout.sbs_wells[well], "sbs")
        mine = [r for r in rows if r["well"] == well]
        shift: dict[int, float] = {}
        corr: dict[int, float] = {}
        flagged: set[int] = set()
        for r in mine:
            s = int(r["site"])
            shift[s] = max(shift.get(s, 0.0), r["max_abs_shift"])
            c = r["correlation"] if np.isfinite(r["correlation"]) else -1.0
            corr[s] = min(corr.get(s, 1.0), c)
            if r["status"] == "flag":
                flagged.add(s)
        flagged_sites += len(flagged)
        cols = _map_columns(well, m)
        cols["max_abs_shift_px"] = [shift.get(s) for s in cols["site"]]
        cols["min_correlation"] = [corr.get(s) for s in cols["site"]]
        cols["flagged"] = [s in flagged for s in cols["site"]]
        for k, v in cols.items():
            table.setdefault(k, []).extend(v)
        if alignment[well] is None:
            for ax in (ax_s, ax_c):
                say(
                    ax, f"well {well}: not aligned yet\n(run starrynight align)", colour="firebrick"
                )
            continue
        sm = _draw_site_map(
            ax_s, m, shift, cmap="magma", norm=shift_norm, outlined=flagged, fmt="{:.1f} px"
        )
        fig.colorbar(sm, ax=ax_s, shrink=0.8, label=f"px (limit {qc.max_shift:g})")
        ax_s.set_title(f"well {well}: largest shift", fontsize=9)
        _note_layout(ax_s, m)
        _note_layout(ax_c, m)
        cm = _draw_site_map(
            ax_c, m, corr, cmap="RdYlGn", norm=corr_norm, outlined=flagged, fmt="{:.3f}"
        )
        cb = fig.colorbar(cm, ax=ax_c, shrink=0.8, label="correlation")
        for level, style in ((qc.min_correlation, "-"), (qc.warn_correlation, "--")):
            if corr_norm.vmin <= level <= 1:
                cb.ax.axhline(level, color="black", linestyle=style, linewidth=1)
        ax_c.set_title(f"well {well}: lowest correlation after alignment", fontsize=9)
    fig.suptitle(f"{plate}: {title} (red outline: failed QC)")
    schema = pa.schema(
        [
            ("well", pa.string()),
            ("site", pa.int32()),
            ("map_x", pa.float64()),
            ("map_y", pa.float64()),
            ("map_width", pa.float64()),
            ("map_height", pa.float64()),
            ("map_source", pa.string()),
            ("max_abs_shift_px", pa.float64()),
            ("min_correlation", pa.float64()),
            ("flagged", pa.bool_()),
        ]
    )
    not_aligned = [w for w, t in alignment.items() if t is None]
    finding = f"{flagged_sites} site(s) failed alignment QC"
    if not_aligned:
        finding += f"; not aligned: {', '.join(not_aligned)}"
    return Figure(
        "alignment_map",
        title,
        finding,
        pa.table(table, schema=schema),
        fig,
        bool(flagged_sites or not_aligned),
    )


def _alignment_cycles(plate: str, alignment: dict[str, pa.Table | None]) -> Figure:
    from matplotlib.colors import Normalize

    qc = AlignmentQC()
    title = "Alignment per site and cycle"
    rows = _alignment_rows(alignment)
    schema = pa.schema(
        [
            ("well", pa.string()),
            ("site", pa.int32()),
            ("cycle", pa.int32()),
            ("dy", pa.float64()),
            ("dx", pa.float64()),
            ("max_abs_shift", pa.float64()),
            ("correlation", pa.float64()),
            ("status", pa.string()),
        ]
    )
    table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema)
    if not rows:
        return message_figure(
            "alignment_cycles", title, "no alignment table yet (run starrynight align)", table
        )
    units = sorted({(r["well"], r["site"]) for r in rows})
    cycles = sorted({r["cycle"] for r in rows})
    row_of = {u: i for i, u in enumerate(units)}
    col_of = {k: j for j, k in enumerate(cycles)}
    shift = np.full((len(units), len(cycles)), np.nan)
    corr = np.full_like(shift, np.nan)
    for r in rows:
        i, j = row_of[r["well"], r["site"]], col_of[r["cycle"]]
        shift[i, j], corr[i, j] = r["max_abs_shift"], r["correlation"]
    fig = new_figure(8, 1.5 + 0.22 * min(len(units), 150))
    ax_s, ax_c = fig.subplots(1, 2)
    for ax, values, cmap, norm, label in (
        (ax_s, shift, "magma", Normalize(0, max(qc.max_shift, np.nanmax(shift))), "shift px"),
        (ax_c, corr, "RdYlGn", Normalize(min(0.5, np.nanmin(corr)), 1.0), "correlation"),
    ):
        im = ax.imshow(values, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_xticks(range(len(cycles)), [str(k) for k in cycles])
        ax.set_xlabel("cycle")
        if len(units) <= 60:
            ax.set_yticks(range(len(units)), [f"{w}-{s}" for w, s in units], fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    ax_s.set_title("largest shift component")
    ax_c.set_title("correlation after alignment")
    fig.suptitle(f"{plate}: {title} (rows: well-site)")
    n_flag = sum(r["status"] == "flag" for r in rows)
    worst = max(rows, key=lambda r: r["max_abs_shift"])
    finding = (
        f"{n_flag} of {len(rows)} site-cycle(s) flagged; largest shift "
        f"{worst['max_abs_shift']:.1f} px ({worst['well']} site {worst['site']} cycle "
        f"{worst['cycle']})"
    )
    return Figure("alignment_cycles", title, finding, table, fig, bool(n_flag))


def _alignment_distributions(plate: str, alignment: dict[str, pa.Table | None]) -> Figure:
    qc = AlignmentQC()
    title = "Distributions of alignment shifts and correlations with the QC thresholds"
    rows = _alignment_rows(alignment)
    schema = pa.schema(
        [
            ("well", pa.string()),
            ("site", pa.int32()),
            ("cycle", pa.int32()),
            ("max_abs_shift", pa.float64()),
            ("correlation", pa.float64()),
            ("status", pa.string()),
        ]
    )
    table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema)
    if not rows:
        return message_figure(
            "alignment_distributions",
            title,
            "no alignment table yet (run starrynight align)",
            table,
        )
    # Cycle 1 is the reference (shift 0, correlation 1 by construction): left out.
    reference = min(r["cycle"] for r in rows)
    moved = [r for r in rows if r["cycle"] != reference] or rows
    shifts = np.array([r["max_abs_shift"] for r in moved])
    corrs = np.array([r["correlation"] for r in moved], float)
    fig = new_figure(10, 3.8)
    ax_s, ax_c = fig.subplots(1, 2)
    ax_s.hist(
        shifts,
        bins=np.linspace(0, max(qc.max_shift * 1.2, shifts.max() * 1.05), 40),
        color="steelblue",
    )
    ax_s.axvline(qc.max_shift, color="firebrick", label=f"limit {qc.max_shift:g} px")
    ax_s.set_xlabel("largest shift component (px)")
    ax_s.set_ylabel("site-cycles")
    ax_s.legend()
    finite = corrs[np.isfinite(corrs)]
    lo = min(0.5, float(finite.min()) if len(finite) else 0.5)
    ax_c.hist(finite, bins=np.linspace(lo, 1.0, 40), color="seagreen")
    ax_c.axvline(qc.min_correlation, color="firebrick", label=f"flag < {qc.min_correlation:g}")
    ax_c.axvline(
        qc.warn_correlation, color="orange", linestyle="--", label=f"warn < {qc.warn_correlation:g}"
    )
    ax_c.set_xlabel("correlation after alignment")
    ax_c.legend()
    fig.suptitle(f"{plate}: {title} (cycles after the reference cycle)")
    n_shift = int((shifts > qc.max_shift).sum())
    n_low = int((~np.isfinite(corrs) | (corrs < qc.min_correlation)).sum())
    n_warn = int(
        (np.isfinite(corrs) & (corrs >= qc.min_correlation) & (corrs < qc.warn_correlation)).sum()
    )
    finding = (
        f"{n_shift} site-cycle(s) shifted more than {qc.max_shift:g} px, {n_low} with "
        f"correlation below {qc.min_correlation:g}, {n_warn} below "
        f"{qc.warn_correlation:g} (of {len(moved)})"
    )
    return Figure("alignment_distributions", title, finding, table, fig, bool(n_shift or n_low))


# --------------------------------------------------------------------------- reads


@dataclass
class _WellReads:
    """Aggregates of one well's spots and cells (the tables are not kept)."""

    well: str
    called: bool
    n_reads: int = 0
    base_counts: np.ndarray | None = None  # (length, 4)
    shares: alg.MatchShares = field(default_factory=lambda: alg.MatchShares(0, math.nan, math.nan))
    n_one_mismatch: int = 0
    mismatch_at: np.ndarray | None = None
    quality_matched: np.ndarray = field(default_factory=lambda: np.zeros(QUALITY_BINS, np.int64))
    quality_other: np.ndarray = field(default_factory=lambda: np.zeros(QUALITY_BINS, np.int64))
    n_matched: int = 0
    n_cells: int = 0
    n_assigned: int = 0
    per_cell: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    assigned: list[tuple[str, str | None, str | None]] = field(default_factory=list)


QUALITY_EDGES = np.linspace(0.0, 1.0, QUALITY_BINS + 1)


def _read_summaries(ws: str, layout: PlateLayout, missing: list[str]) -> list[_WellReads]:
    """Per well: the statistics of its reads and cell calls, one well in memory at a time."""
    out = []
    for well in layout.sbs_wells:
        spots_uri = workspace.spots_path(ws, layout.plate, well)
        cells_uri = workspace.cell_barcodes_path(ws, layout.plate, well)
        spots = read_parquet(spots_uri, ["read", "quality", "barcode", "distance", "match"])
        cells = read_parquet(
            cells_uri, ["barcode", "sgRNA", "gene_symbol", "n_matched", "second_count", "status"]
        )
        if spots is None or cells is None:
            missing.extend(u for u, t in ((spots_uri, spots), (cells_uri, cells)) if t is None)
            out.append(_WellReads(well, called=False))
            continue
        w = _WellReads(well, called=True, n_reads=spots.num_rows, n_cells=cells.num_rows)
        reads = spots.column("read").to_pylist()
        length = len(layout.cycles) or (len(reads[0]) if reads else 0)
        codes_ok = [r for r in reads if r is not None and len(r) == length]
        w.base_counts = np.nan_to_num(alg.base_frequencies(codes_ok, length)) * len(codes_ok)
        matched = np.asarray(pc.equal(spots.column("match"), "matched").to_numpy(False), bool)
        distance = spots.column("distance").to_numpy(False).astype(np.int64)
        w.shares = alg.match_shares(matched, distance)
        w.n_matched = int(matched.sum())
        one = matched & (distance == 1)
        barcodes = spots.column("barcode").to_pylist()
        pairs = [(reads[i], barcodes[i]) for i in np.flatnonzero(one)]
        w.n_one_mismatch = len(pairs)
        w.mismatch_at = alg.mismatch_positions([p[0] for p in pairs], [p[1] for p in pairs])
        if len(w.mismatch_at) != length:
            w.mismatch_at = np.zeros(length, np.int64)
        quality = spots.column("quality").to_numpy(False).astype(np.float64)
        w.quality_matched = np.histogram(np.clip(quality[matched], 0, 1), QUALITY_EDGES)[0]
        w.quality_other = np.histogram(np.clip(quality[~matched], 0, 1), QUALITY_EDGES)[0]
        cols = cells.to_pydict()
        w.per_cell = np.bincount(
            alg.barcodes_per_cell(np.asarray(cols["n_matched"]), np.asarray(cols["second_count"])),
            minlength=3,
        )[:3]
        w.assigned = [
            (b, s, g)
            for b, s, g, st in zip(
                cols["barcode"], cols["sgRNA"], cols["gene_symbol"], cols["status"], strict=True
            )
            if st == "assigned"
        ]
        w.n_assigned = len(w.assigned)
        out.append(w)
    return out


def _expected_frequencies(
    ws: str, layout: PlateLayout, missing: list[str]
) -> tuple[np.ndarray | None, Any, str]:
    """Base shares per cycle of Barcodes.csv (read length: the plate's cycles)."""
    from starrynight.modules.barcodes import default_barcodes_uri, load_barcodes

    try:
        uri = default_barcodes_uri(ws)
        library = load_barcodes(uri, len(layout.cycles))
    except UserError as exc:
        missing.append(str(exc).split(":", 1)[0])
        return None, None, str(exc)
    return alg.base_frequencies(library.barcodes, len(layout.cycles)), library, ""


def _no_reads(reads: list[_WellReads]) -> str:
    if not reads or all(not w.called for w in reads):
        return "barcodes not called yet (run starrynight barcodes call)"
    if all(w.n_reads == 0 for w in reads):
        return "no reads in any well: no SBS spot was detected"
    return ""


def _well_note(w: _WellReads) -> str:
    return "" if w.called and w.n_reads else ("no reads" if w.called else "not called")


def _nucleotide_frequency(
    plate: str,
    layout: PlateLayout,
    reads: list[_WellReads],
    expected: np.ndarray | None,
    problem: str,
) -> Figure:
    title = "Nucleotide frequency per cycle: expected from Barcodes.csv vs read"
    length = len(layout.cycles)
    counts = [w.base_counts for w in reads if w.base_counts is not None and len(w.base_counts)]
    total = np.sum(counts, axis=0) if counts else np.zeros((length, 4))
    n = total.sum(axis=1, keepdims=True)
    observed = np.divide(total, n, out=np.full_like(total, np.nan), where=n > 0)
    records = {"cycle": [], "base": [], "expected": [], "observed": []}
    for k in range(length):
        for j, b in enumerate(alg.BASES):
            records["cycle"].append(layout.cycles[k])
            records["base"].append(b)
            records["expected"].append(None if expected is None else float(expected[k, j]))
            records["observed"].append(float(observed[k, j]) if length else None)
    schema = pa.schema(
        [
            ("cycle", pa.int32()),
            ("base", pa.string()),
            ("expected", pa.float64()),
            ("observed", pa.float64()),
        ]
    )
    table = pa.table(records, schema=schema)
    empty = _no_reads(reads)
    if empty and expected is None:
        return message_figure("nucleotide_frequency", title, f"{empty}; {problem}", table)
    fig = new_figure(max(6, 1.2 * length + 2), 4)
    ax = fig.subplots()
    colours = {"A": "tab:green", "C": "tab:blue", "G": "black", "T": "tab:red"}
    x = np.arange(length)
    for j, b in enumerate(alg.BASES):
        if expected is not None:
            ax.bar(
                x + (j - 1.5) * 0.2,
                expected[:, j],
                0.2,
                color=colours[b],
                alpha=0.35,
                edgecolor=colours[b],
                label=f"{b} expected",
            )
        if not empty:
            ax.plot(x + (j - 1.5) * 0.2, observed[:, j], "o", color=colours[b], label=f"{b} read")
    ax.set_xticks(x, [str(k) for k in layout.cycles])
    ax.set_xlabel("cycle")
    ax.set_ylabel("share of bases")
    ax.set_ylim(0, 1)
    ax.legend(ncol=4, fontsize=7, loc="upper right")
    notes = [m for m in (empty, problem) if m]
    ax.set_title(
        f"{plate}: bars expected, dots read" + ("\n" + "; ".join(notes) if notes else ""),
        fontsize=9,
        color="firebrick" if notes else "black",
    )
    dev = None if expected is None or empty else np.abs(observed - expected)
    if dev is not None and np.isnan(dev).all():
        finding, attention = f"no read is {length} bases long (one per cycle)", True
    elif dev is not None:
        k, j = np.unravel_index(np.nanargmax(dev), dev.shape)
        finding = (
            f"largest deviation: cycle {layout.cycles[k]} {alg.BASES[j]} read "
            f"{pct(observed[k, j])} vs expected {pct(expected[k, j])}"
        )
        attention = bool(dev[k, j] > 0.15)
    else:
        finding, attention = "; ".join(notes), True
    return Figure("nucleotide_frequency", title, finding, table, fig, attention)


def _match_and_bad_cycle(plate: str, reads: list[_WellReads]) -> Figure:
    title = "Reads matching a barcode, and the mismatch position per cycle"
    schema = pa.schema(
        [
            ("well", pa.string()),
            ("cycle", pa.int32()),
            ("n_reads", pa.int64()),
            ("exact", pa.float64()),
            ("within_one", pa.float64()),
            ("one_mismatch_reads", pa.int64()),
            ("mismatches_at_cycle", pa.int64()),
        ]
    )
    rows = []
    for w in reads:
        at = w.mismatch_at if w.mismatch_at is not None else np.zeros(0, np.int64)
        for k, c in enumerate(at.tolist() or [None]):
            rows.append(
                {
                    "well": w.well,
                    "cycle": None if c is None else k + 1,
                    "n_reads": w.n_reads,
                    "exact": w.shares.exact,
                    "within_one": w.shares.within_one,
                    "one_mismatch_reads": w.n_one_mismatch,
                    "mismatches_at_cycle": c,
                }
            )
    table = pa.Table.from_pylist(rows, schema)
    empty = _no_reads(reads)
    if empty:
        return message_figure("match_and_bad_cycle", title, empty, table)
    fig = new_figure(11, 4)
    ax_m, ax_c = fig.subplots(1, 2)
    x = np.arange(len(reads))
    exact = [w.shares.exact if w.n_reads else 0 for w in reads]
    within = [w.shares.within_one if w.n_reads else 0 for w in reads]
    ax_m.bar(x - 0.2, exact, 0.4, label="exact", color="seagreen")
    ax_m.bar(x + 0.2, within, 0.4, label="within 1 mismatch", color="steelblue")
    ax_m.set_xticks(x, [f"{w.well}\n{_well_note(w)}" for w in reads], fontsize=8)
    ax_m.set_ylim(0, 1)
    ax_m.set_ylabel("share of reads")
    mark_empty(ax_m, [_well_note(w) for w in reads])
    ax_m.legend(fontsize=8)
    ax_m.set_title("reads matching a barcode")
    at = np.sum([w.mismatch_at for w in reads if w.mismatch_at is not None and w.n_reads], axis=0)
    n_one = sum(w.n_one_mismatch for w in reads)
    finding_cycle = ""
    if n_one and np.ndim(at) and len(at):
        share = at / n_one
        worst = int(np.argmax(share))
        ax_c.bar(
            np.arange(1, len(at) + 1),
            share,
            color=["firebrick" if i == worst else "grey" for i in range(len(at))],
        )
        ax_c.axhline(
            1 / len(at), color="black", linestyle="--", linewidth=1, label="even over cycles"
        )
        ax_c.set_xticks(np.arange(1, len(at) + 1))
        ax_c.legend(fontsize=8)
        finding_cycle = f"; mismatches most often at cycle {worst + 1} ({pct(share[worst])})"
    else:
        say(ax_c, "no read with exactly one mismatch")
    ax_c.set_xlabel("cycle")
    ax_c.set_ylabel("share of 1-mismatch reads")
    ax_c.set_title(f"mismatch position (bad cycle), {n_one} reads")
    fig.suptitle(f"{plate}: {title}")
    n = sum(w.n_reads for w in reads)
    ex = sum(w.shares.exact * w.n_reads for w in reads if w.n_reads) / n
    wi = sum(w.shares.within_one * w.n_reads for w in reads if w.n_reads) / n
    finding = f"{pct(ex)} of {n} reads match exactly, {pct(wi)} within one mismatch"
    finding += finding_cycle
    return Figure("match_and_bad_cycle", title, finding, table, fig, bool(wi < 0.5))


def _read_quality(plate: str, reads: list[_WellReads]) -> Figure:
    title = "Read quality distribution"
    records: dict[str, list] = {
        "well": [],
        "bin_low": [],
        "bin_high": [],
        "matched": [],
        "unmatched": [],
    }
    for w in reads:
        for i in range(QUALITY_BINS):
            records["well"].append(w.well)
            records["bin_low"].append(float(QUALITY_EDGES[i]))
            records["bin_high"].append(float(QUALITY_EDGES[i + 1]))
            records["matched"].append(int(w.quality_matched[i]))
            records["unmatched"].append(int(w.quality_other[i]))
    schema = pa.schema(
        [
            ("well", pa.string()),
            ("bin_low", pa.float64()),
            ("bin_high", pa.float64()),
            ("matched", pa.int64()),
            ("unmatched", pa.int64()),
        ]
    )
    table = pa.table(records, schema=schema)
    empty = _no_reads(reads)
    if empty:
        return message_figure("read_quality", title, empty, table)
    matched = np.sum([w.quality_matched for w in reads], axis=0)
    other = np.sum([w.quality_other for w in reads], axis=0)
    fig = new_figure(7, 4)
    ax = fig.subplots()
    centres = (QUALITY_EDGES[:-1] + QUALITY_EDGES[1:]) / 2
    width = QUALITY_EDGES[1] - QUALITY_EDGES[0]
    ax.bar(centres, matched, width, color="seagreen", alpha=0.7, label="matched a barcode")
    ax.bar(centres, other, width, bottom=matched, color="grey", alpha=0.7, label="no match")
    ax.set_xlabel("read quality (lowest over cycles; 1 = one clear base per cycle)")
    ax.set_ylabel("reads")
    ax.legend(fontsize=8)
    ax.set_title(f"{plate}: {title}")
    both = matched + other
    median = float(centres[np.searchsorted(np.cumsum(both), both.sum() / 2)])
    finding = f"median read quality {median:.2f}"
    if matched.sum() and other.sum():
        med_m = float(centres[np.searchsorted(np.cumsum(matched), matched.sum() / 2)])
        med_o = float(centres[np.searchsorted(np.cumsum(other), other.sum() / 2)])
        finding += f" (matched {med_m:.2f}, unmatched {med_o:.2f})"
    return Figure("read_quality", title, finding, table, fig, False)


def _mapping_rate(plate: str, reads: list[_WellReads]) -> Figure:
    title = "Mapping rate per well"
    rows = [
        {
            "well": w.well,
            "called": w.called,
            "n_reads": w.n_reads,
            "n_matched_reads": w.n_matched,
            "read_mapping_rate": (w.n_matched / w.n_reads) if w.n_reads else None,
            "n_cells": w.n_cells,
            "n_assigned_cells": w.n_assigned,
            "cell_assignment_rate": (w.n_assigned / w.n_cells) if w.n_cells else None,
        }
        for w in reads
    ]
    schema = pa.schema(
        [
            ("well", pa.string()),
            ("called", pa.bool_()),
            ("n_reads", pa.int64()),
            ("n_matched_reads", pa.int64()),
            ("read_mapping_rate", pa.float64()),
            ("n_cells", pa.int64()),
            ("n_assigned_cells", pa.int64()),
            ("cell_assignment_rate", pa.float64()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema)
    empty = _no_reads(reads)
    if empty:
        return message_figure("mapping_rate", title, empty, table)
    fig = new_figure(max(6, 1.0 * len(rows) + 3), 4)
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(
        x - 0.2,
        [r["read_mapping_rate"] or 0 for r in rows],
        0.4,
        color="steelblue",
        label="reads matching a barcode",
    )
    ax.bar(
        x + 0.2,
        [r["cell_assignment_rate"] or 0 for r in rows],
        0.4,
        color="darkorange",
        label="cells with a barcode",
    )
    ax.set_xticks(x, [f"{w.well}\n{_well_note(w)}" for w in reads], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share")
    mark_empty(ax, [_well_note(w) for w in reads])
    ax.legend(fontsize=8)
    ax.set_title(f"{plate}: {title}")
    rated = [r for r in rows if r["read_mapping_rate"] is not None]
    low = min(rated, key=lambda r: r["read_mapping_rate"])
    finding = f"lowest read mapping rate: {low['well']} {pct(low['read_mapping_rate'])}"
    blank = [w.well for w in reads if _well_note(w)]
    if blank:
        finding += f"; no reads or not called: {', '.join(blank)}"
    return Figure("mapping_rate", title, finding, table, fig, bool(blank))


def _top_barcodes(plate: str, reads: list[_WellReads], library: Any) -> Figure:
    title = f"Top {TOP_BARCODES} barcodes by cells"
    assigned = [a for w in reads for a in w.assigned]
    labels = {b: (s, g) for b, s, g in assigned}
    top = alg.top_values([b for b, _, _ in assigned], TOP_BARCODES)
    n_library = len(library.barcodes) if library is not None else None
    seen = len(labels)
    rows = [
        {
            "rank": i + 1,
            "barcode": b,
            "sgRNA": labels[b][0],
            "gene_symbol": labels[b][1],
            "cells": c,
        }
        for i, (b, c) in enumerate(top)
    ]
    schema = pa.schema(
        [
            ("rank", pa.int32()),
            ("barcode", pa.string()),
            ("sgRNA", pa.string()),
            ("gene_symbol", pa.string()),
            ("cells", pa.int64()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema)
    if not rows:
        message = _no_reads(reads) or "no cell was assigned a barcode"
        return message_figure("top_barcodes", title, message, table)
    fig = new_figure(7, 1.5 + 0.3 * len(rows))
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.barh(y, [r["cells"] for r in rows], color="steelblue")
    ax.set_yticks(y, [f"{r['barcode']} ({r['gene_symbol']})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("cells")
    of = f" of {n_library} in Barcodes.csv" if n_library else ""
    ax.set_title(f"{plate}: {title} ({seen} distinct barcodes seen{of})", fontsize=10)
    total = len(assigned)
    finding = (
        f"{seen} distinct barcode(s){of} in {total} cells; top {rows[0]['barcode']} "
        f"({rows[0]['gene_symbol']}) in {pct(rows[0]['cells'] / total)} of cells"
    )
    return Figure("top_barcodes", title, finding, table, fig, False)


def _barcodes_per_cell(plate: str, reads: list[_WellReads]) -> Figure:
    title = "Cells with 0, 1 and 2+ barcodes"
    rows = [
        {"well": w.well, "barcodes": label, "cells": int(w.per_cell[i])}
        for w in reads
        for i, label in enumerate(("0", "1", "2+"))
    ]
    schema = pa.schema([("well", pa.string()), ("barcodes", pa.string()), ("cells", pa.int64())])
    table = pa.Table.from_pylist(rows, schema)
    if all(w.n_cells == 0 for w in reads):
        message = _no_reads(reads) or "no SBS cell in any well"
        if all(w.called for w in reads):
            message = "no SBS cell in any well (no nuclei found in cycle 1)"
        return message_figure("barcodes_per_cell", title, message, table)
    fig = new_figure(max(6, 1.0 * len(reads) + 3), 4)
    ax = fig.subplots()
    x = np.arange(len(reads))
    bottom = np.zeros(len(reads))
    for i, (label, colour) in enumerate((("0", "grey"), ("1", "seagreen"), ("2+", "darkorange"))):
        share = np.array([w.per_cell[i] / w.n_cells if w.n_cells else 0 for w in reads])
        ax.bar(x, share, 0.6, bottom=bottom, color=colour, label=f"{label} barcode(s)")
        bottom += share
    notes = ["no cells" if w.called and not w.n_cells else _well_note(w) for w in reads]
    ax.set_xticks(x, [f"{w.well}\n{n}" for w, n in zip(reads, notes, strict=True)], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of SBS cells")
    mark_empty(ax, notes)
    ax.legend(fontsize=8)
    ax.set_title(f"{plate}: {title}")
    total = np.sum([w.per_cell for w in reads], axis=0)
    n = int(total.sum())
    finding = (
        f"of {n} cells: {pct(total[0] / n)} with no barcode, {pct(total[1] / n)} one, "
        f"{pct(total[2] / n)} two or more"
    )
    blank = [f"{w.well} ({note})" for w, note in zip(reads, notes, strict=True) if note]
    if blank:
        finding += f"; {', '.join(blank)}"
    attention = bool(blank) or bool(total[0] / n > 0.5)
    return Figure("barcodes_per_cell", title, finding, table, fig, attention)


#: The figures each report writes, for documentation and tests.
FIGURES: dict[str, tuple[str, ...]] = {
    "painting": ("illumination", "segmentation_overlays", "cells_per_site", "implausible_counts"),
    "barcoding": (
        "sbs_illumination",
        "alignment_map",
        "alignment_cycles",
        "alignment_distributions",
        "nucleotide_frequency",
        "match_and_bad_cycle",
        "read_quality",
        "mapping_rate",
        "top_barcodes",
        "barcodes_per_cell",
    ),
    "merge": (
        "match_rate",
        "match_distance",
        "registration_residual",
        "residual_distribution",
    ),
}
