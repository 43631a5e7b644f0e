"""The after-merge QC report of a plate: match rate, match distances and residuals per well.

:func:`merge_figures` draws, from each well's ``merge/<plate>-<well>/report.json`` and
``cells.parquet`` (:mod:`starrynight.modules.merge`):

- ``match_rate``: CP cells inside the SBS area that got a match, per well, with the
  warning and error thresholds of the merge's asset checks drawn;
- ``match_distance``: distribution of the matched cells' CP-SBS distance (um) per well,
  with the matching reach drawn;
- ``registration_residual``: per well, the RMS, median and 95th percentile of the
  registration residuals and the share of inliers, with the bounds that flag a well;
- ``residual_distribution``: the residual histogram of every registered well.

It is written by :func:`starrynight.modules.qc.write_report` (report ``merge``), in the
report model of the gates' reports, but it gates nothing: it comes after the merge, which
the barcoding gate already let through. A well that was not merged, has no SBS (or no
CP) images, or could not be registered is named, with why, where its value would be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from starrynight import storage, workspace
from starrynight.algorithms import qc as alg
from starrynight.errors import UserError
from starrynight.modules.qcfigures import (
    Figure,
    PlateLayout,
    mark_empty,
    message_figure,
    new_figure,
    pct,
    read_parquet,
)

#: The merge's asset checks: warn below this match rate...
WARN_MATCH_RATE = 0.8
#: ...and block the well's per-cell table below this one.
MIN_MATCH_RATE = 0.5
#: Bins of the match-distance histograms over ``[0, reach]``.
DISTANCE_BINS = 40
LEVEL_COLOURS = {"ok": "seagreen", "warn": "darkorange", "error": "firebrick"}


@dataclass
class _WellMerge:
    """What the merge wrote for one well, and what to say when it has no numbers."""

    well: str
    state: str  # the report's status, or "not merged", "no SBS images", "no CP images"
    note: str = ""  # shown where the well's value would be ("" when it has one)
    report: dict[str, Any] | None = None
    distances: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: Not registered, but both arms share one site grid: the per-cell table pairs sites
    #: by number and the merge checks do not apply (not a failure to look at).
    shared_grid: bool = False

    @property
    def match(self) -> dict[str, Any]:
        return (self.report or {}).get("match") or {}

    @property
    def rate(self) -> float | None:
        rate = self.match.get("match_rate") if self.state == "registered" else None
        return None if rate is None else float(rate)

    @property
    def registration(self) -> dict[str, Any]:
        return (self.report or {}).get("registration") or {}

    @property
    def register_params(self) -> dict[str, Any]:
        return ((self.report or {}).get("params") or {}).get("register") or {}

    @property
    def needs_look(self) -> bool:
        """Not merged, or not registered where it should have been."""
        return self.state == "not merged" or (
            self.state == "not registered" and not self.shared_grid
        )


def check_rates(warn: float, minimum: float) -> None:
    """A :class:`UserError` unless ``0 <= minimum <= warn <= 1``."""
    if not (0.0 <= minimum <= warn <= 1.0):
        raise UserError(
            f"--min-match-rate {minimum:g} / --warn-match-rate {warn:g}: expected "
            "0 <= minimum <= warning <= 1"
        )


def merge_figures(
    ws: str,
    layout: PlateLayout,
    missing: list[str],
    warn_rate: float = WARN_MATCH_RATE,
    min_rate: float = MIN_MATCH_RATE,
) -> tuple[list[Figure], str | None]:
    """The after-merge figures of a plate and, without both arms, ``not_applicable``.

    Parameters
    ----------
    ws : str
        Workspace.
    layout : PlateLayout
        What the index holds for the plate.
    missing : list of str
        Extended with the merge reports and tables not written yet.
    warn_rate, min_rate : float
        Match-rate thresholds drawn (those of the merge's asset checks).
    """
    check_rates(warn_rate, min_rate)
    plate = layout.plate
    lacking = [
        a for a, w in (("Cell Painting", layout.cp_wells), ("SBS", layout.sbs_wells)) if not w
    ]
    if lacking:
        message = (
            f"plate {plate} has no {' and no '.join(lacking)} images in the index: "
            "no merge to review (the merge pairs Cell Painting cells with SBS cells)"
        )
        data = pa.table({"plate": [plate], "problem": [message]})
        return [message_figure("merge_not_applicable", "Merge", message, data)], "not_applicable"
    wells = [
        _read_well(ws, layout, w, missing) for w in sorted({*layout.cp_wells, *layout.sbs_wells})
    ]
    return [
        _match_rate(plate, wells, warn_rate, min_rate),
        _match_distance(plate, wells),
        _registration_residual(plate, wells),
        _residual_distribution(plate, wells),
    ], None


def _read_json(uri: str) -> dict[str, Any]:
    try:
        doc = json.loads(storage.read_bytes(uri))
    except ValueError as exc:
        raise UserError(f"{uri}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("match"), dict):
        raise UserError(f"{uri}: not a merge report (no 'match' section)")
    return doc


def _read_well(ws: str, layout: PlateLayout, well: str, missing: list[str]) -> _WellMerge:
    plate = layout.plate
    report_uri = workspace.merge_report_path(ws, plate, well)
    if not storage.exists(report_uri):
        if well not in layout.sbs_wells:
            return _WellMerge(well, "no SBS images", "no SBS images")
        if well not in layout.cp_wells:
            return _WellMerge(well, "no CP images", "SBS only: no CP cells")
        missing.append(report_uri)
        return _WellMerge(well, "not merged", "not merged yet")
    doc = _read_json(report_uri)
    w = _WellMerge(well, str(doc.get("status", "")), report=doc)
    if w.state == "no SBS images":
        w.note = "no SBS images"
    elif w.state == "not registered":
        from starrynight.modules.analysis import grids_differ

        w.shared_grid = grids_differ(ws, plate, well) is None
        w.note = "one site grid:\npaired by site" if w.shared_grid else "not registered"
    elif w.state == "registered":
        cells_uri = workspace.merge_cells_path(ws, plate, well)
        cells = read_parquet(cells_uri, ["status", "sbs_distance_um"])
        if cells is None:
            missing.append(cells_uri)
        else:
            matched = pc.equal(cells["status"], "matched")
            d = cells.filter(matched)["sbs_distance_um"].to_numpy(zero_copy_only=False)
            w.distances = np.asarray(d, np.float64)
        if not (w.report or {}).get("cp", {}).get("cells"):
            w.note = "no cells"
        elif not w.match.get("inside_sbs_area"):
            w.note = "no CP cell in\nthe SBS area"
    else:
        raise UserError(f"{report_uri}: unknown merge status {w.state!r}")
    return w


def _flat(note: str) -> str:
    """A figure note on one line (notes drawn in a bar's place are broken in two)."""
    return note.replace("\n", " ")


def _ticks(ax: Any, wells: list[_WellMerge]) -> None:
    labels = [w.well for w in wells]
    ax.set_xticks(np.arange(len(wells)), labels, fontsize=8, rotation=90 if len(wells) > 24 else 0)
    ax.set_xlim(-0.6, len(wells) - 0.4)


def _match_rate(plate: str, wells: list[_WellMerge], warn: float, minimum: float) -> Figure:
    title = "Match rate per well: CP cells inside the SBS area that got an SBS match"
    rows = []
    for w in wells:
        box = alg.box_stats(w.distances, w.well)
        statuses = w.match.get("statuses") or {}
        rows.append(
            {
                "well": w.well,
                "merge_status": w.state,
                "reason": (w.report or {}).get("reason") or _flat(w.note),
                "shared_grid": w.shared_grid,
                "cells": (w.report or {}).get("cp", {}).get("cells"),
                "inside_sbs_area": w.match.get("inside_sbs_area"),
                "matched": w.match.get("matched"),
                "match_rate": w.rate,
                "level": alg.rate_level(w.rate, warn, minimum),
                "outside_sbs_area": statuses.get("outside the SBS area"),
                "no_sbs_within_reach": statuses.get("no SBS cell within reach"),
                "ambiguous": statuses.get("ambiguous"),
                "with_barcode": w.match.get("with_barcode"),
                "median_distance_um": box["med"] if box else None,
                "p95_distance_um": box["whishi"] if box else None,
                "warn_rate": warn,
                "min_rate": minimum,
            }
        )
    schema = pa.schema(
        [
            ("well", pa.string()), ("merge_status", pa.string()), ("reason", pa.string()),
            ("shared_grid", pa.bool_()), ("cells", pa.int64()), ("inside_sbs_area", pa.int64()),
            ("matched", pa.int64()), ("match_rate", pa.float64()), ("level", pa.string()),
            ("outside_sbs_area", pa.int64()), ("no_sbs_within_reach", pa.int64()),
            ("ambiguous", pa.int64()), ("with_barcode", pa.int64()),
            ("median_distance_um", pa.float64()), ("p95_distance_um", pa.float64()),
            ("warn_rate", pa.float64()), ("min_rate", pa.float64()),
        ]
    )  # fmt: skip
    table = pa.Table.from_pylist(rows, schema)
    fig = new_figure(max(6, 0.5 * len(wells) + 3), 4.2)
    ax = fig.subplots()
    x = np.arange(len(wells))
    rates = [r["match_rate"] for r in rows]
    colours = [LEVEL_COLOURS.get(r["level"], "grey") for r in rows]
    ax.bar(x, [0 if r is None else r for r in rates], 0.6, color=colours)
    if len(wells) <= 24:
        for i, r in enumerate(rows):
            if r["match_rate"] is not None:
                ax.text(i, r["match_rate"] + 0.02, f"{r['matched']}/{r['inside_sbs_area']}",
                        ha="center", va="bottom", fontsize=7)  # fmt: skip
    ax.axhline(warn, color="darkorange", linestyle="--", linewidth=1.2,
               label=f"warning below {pct(warn)}")  # fmt: skip
    ax.axhline(minimum, color="firebrick", linewidth=1.2, label=f"error below {pct(minimum)}")
    mark_empty(ax, [w.note for w in wells])
    _ticks(ax, wells)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("matched / inside the SBS area")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{plate}: match rate per well\n(CP cells inside the SBS area with an SBS match)",
                 fontsize=10)  # fmt: skip
    rated = [r for r in rows if r["match_rate"] is not None]
    parts = []
    if rated:
        low = min(rated, key=lambda r: r["match_rate"])
        n_warn = sum(r["level"] == "warn" for r in rated)
        n_err = sum(r["level"] == "error" for r in rated)
        parts.append(
            f"lowest match rate: {low['well']} {pct(low['match_rate'])} "
            f"({low['matched']} of {low['inside_sbs_area']}); {n_warn} well(s) below "
            f"{pct(warn)}, {n_err} below {pct(minimum)}"
        )
    else:
        parts.append("no well has a match rate")
    unrated = [f"{w.well} ({_flat(w.note)})" for w in wells if w.note]
    if unrated:
        parts.append("; ".join(unrated))
    attention = any(r["level"] in ("warn", "error") for r in rated) or any(
        w.needs_look for w in wells
    )
    return Figure("match_rate", title, "; ".join(parts), table, fig, bool(attention))


def _match_distance(plate: str, wells: list[_WellMerge]) -> Figure:
    title = "Distance between matched CP and SBS nuclei (um) per well"
    reach = max([float(w.match["reach_um"]) for w in wells if w.match.get("reach_um")], default=5.0)
    edges = np.linspace(0.0, reach, DISTANCE_BINS + 1)
    records: dict[str, list] = {"well": [], "bin_low_um": [], "bin_high_um": [], "cells": []}
    for w in wells:
        counts = np.histogram(np.clip(w.distances, 0, reach), edges)[0]
        for i, c in enumerate(counts.tolist()):
            records["well"].append(w.well)
            records["bin_low_um"].append(float(edges[i]))
            records["bin_high_um"].append(float(edges[i + 1]))
            records["cells"].append(int(c))
    schema = pa.schema(
        [("well", pa.string()), ("bin_low_um", pa.float64()), ("bin_high_um", pa.float64()),
         ("cells", pa.int64())]
    )  # fmt: skip
    table = pa.table(records, schema=schema)
    boxes = [alg.box_stats(w.distances, w.well) for w in wells]
    if not any(boxes):
        why = "; ".join(f"{w.well}: {_flat(w.note) or 'no matched cell'}" for w in wells)
        return message_figure(
            "match_distance", title, f"no matched cell in any well ({why})", table
        )
    fig = new_figure(max(9, 0.5 * len(wells) + 6), 4.2)
    ax_b, ax_h = fig.subplots(1, 2, width_ratios=(max(2, len(wells)), 3))
    shown = [(i, b) for i, b in enumerate(boxes) if b]
    ax_b.bxp([b for _, b in shown], positions=[i for i, _ in shown], widths=0.6,
             showfliers=False, showmeans=True, patch_artist=True,
             boxprops={"facecolor": "lightsteelblue"})  # fmt: skip
    notes = ["" if b else (w.note or "no matched cell") for w, b in zip(wells, boxes, strict=True)]
    for i, note in enumerate(notes):
        if note:
            ax_b.text(i, reach / 2, note, rotation=90, ha="center", va="center",
                      color="firebrick", fontsize=9)  # fmt: skip
    ax_b.axhline(reach, color="firebrick", linestyle="--", linewidth=1, label=f"reach {reach:g} um")
    _ticks(ax_b, wells)
    ax_b.set_ylim(0, reach * 1.05)
    ax_b.set_ylabel("CP-SBS distance (um)")
    ax_b.set_title("per well: quartiles, 5-95 % whiskers, mean (triangle)", fontsize=9)
    ax_b.legend(fontsize=8, loc="upper right")
    pooled = np.concatenate([w.distances for w in wells])
    ax_h.hist(np.clip(pooled, 0, reach), edges, color="steelblue")
    ax_h.axvline(reach, color="firebrick", linestyle="--", linewidth=1)
    ax_h.set_xlabel("CP-SBS distance (um)")
    ax_h.set_ylabel("matched cells")
    ax_h.set_title(f"all wells: {len(pooled)} matched cells", fontsize=9)
    fig.suptitle(f"{plate}: {title}", fontsize=10)
    med = float(np.median(pooled))
    worst = max((b for b in boxes if b), key=lambda b: b["med"])
    finding = (
        f"median distance {med:.2f} um over {len(pooled)} matched cells "
        f"(95 % within {float(np.percentile(pooled, 95)):.2f} um); largest median: "
        f"{worst['label']} {worst['med']:.2f} um"
    )
    # Matches that sit far from their partners on average mean a poor registration.
    attention = worst["med"] > reach / 2
    if attention:
        finding += f" (over half the reach {reach:g} um: check the registration)"
    return Figure("match_distance", title, finding, table, fig, bool(attention))


def _registration_residual(plate: str, wells: list[_WellMerge]) -> Figure:
    title = "Registration of SBS onto CP per well: residuals and inlier share"
    rows = []
    for w in wells:
        reg, par = w.registration, w.register_params
        res = reg.get("residual_um") or {}
        t = (w.report or {}).get("transform") or {}
        rows.append(
            {
                "well": w.well,
                "merge_status": w.state,
                "flags": ", ".join((w.report or {}).get("flags") or []),
                "pairs": reg.get("pairs"),
                "inliers": reg.get("inliers"),
                "inlier_share": reg.get("inlier_share"),
                "rms_um": res.get("rms"),
                "median_um": res.get("median"),
                "p95_um": res.get("p95"),
                "max_um": res.get("max"),
                "max_residual_um": par.get("max_residual_um"),
                "min_inlier_share": par.get("min_inlier_share"),
                "scale_px": t.get("scale_px"),
                "rotation_deg": t.get("rotation_deg"),
            }
        )
    schema = pa.schema(
        [
            ("well", pa.string()), ("merge_status", pa.string()), ("flags", pa.string()),
            ("pairs", pa.int64()), ("inliers", pa.int64()), ("inlier_share", pa.float64()),
            ("rms_um", pa.float64()), ("median_um", pa.float64()), ("p95_um", pa.float64()),
            ("max_um", pa.float64()), ("max_residual_um", pa.float64()),
            ("min_inlier_share", pa.float64()), ("scale_px", pa.float64()),
            ("rotation_deg", pa.float64()),
        ]
    )  # fmt: skip
    table = pa.Table.from_pylist(rows, schema)
    registered = [r for r in rows if r["merge_status"] == "registered" and r["rms_um"] is not None]
    if not registered:
        why = "; ".join(f"{w.well}: {_flat(w.note)}" for w in wells)
        return message_figure("registration_residual", title, f"no registered well ({why})", table)
    fig = new_figure(max(9, 0.9 * len(wells) + 4), 4.2)
    ax_r, ax_i = fig.subplots(1, 2)
    x = np.arange(len(wells))
    rms = [r["rms_um"] or 0 for r in rows]
    ax_r.bar(x, rms, 0.6, color="steelblue", label="RMS")
    ax_r.plot(x, [np.nan if r["median_um"] is None else r["median_um"] for r in rows], "o",
              color="black", label="median")  # fmt: skip
    ax_r.plot(x, [np.nan if r["p95_um"] is None else r["p95_um"] for r in rows], "^",
              color="dimgrey", label="95th percentile")  # fmt: skip
    limits = [r["max_residual_um"] for r in rows]
    ax_r.hlines([np.nan if v is None else v for v in limits], x - 0.4, x + 0.4,
                color="firebrick", linewidth=1.5, label="flagged above")  # fmt: skip
    ax_r.set_ylabel("residual after the fit (um)")
    top = max([v for r in rows for v in (r["p95_um"], r["rms_um"], r["max_residual_um"]) if v],
              default=1.0)  # fmt: skip
    ax_r.set_ylim(0, top * 1.15)
    _ticks(ax_r, wells)
    ax_r.legend(fontsize=7, loc="upper right")
    ax_r.set_title("residual of the matched nuclei", fontsize=9)
    ax_i.bar(x, [r["inlier_share"] or 0 for r in rows], 0.6, color="seagreen")
    floors = [np.nan if r["min_inlier_share"] is None else r["min_inlier_share"] for r in rows]
    ax_i.hlines(floors, x - 0.4, x + 0.4, color="firebrick", linewidth=1.5, label="flagged below")
    ax_i.set_ylim(0, 1.05)
    ax_i.set_ylabel("inliers / nuclei of the common area")
    _ticks(ax_i, wells)
    ax_i.legend(fontsize=7, loc="lower right")
    ax_i.set_title("share of inliers", fontsize=9)
    notes = [
        "" if r in registered else (w.note or w.state) for w, r in zip(wells, rows, strict=True)
    ]
    for ax, height in ((ax_r, top * 1.15), (ax_i, 1.05)):
        for i, note in enumerate(notes):
            if note:
                ax.text(i, height / 2, note, rotation=90, ha="center", va="center",
                        color="firebrick", fontsize=9)  # fmt: skip
    fig.suptitle(f"{plate}: {title}", fontsize=10)
    worst = max(registered, key=lambda r: r["rms_um"])
    finding = f"largest RMS residual: {worst['well']} {worst['rms_um']:.2f} um"
    if worst["max_residual_um"] is not None:
        finding += f" (flagged above {worst['max_residual_um']:g} um)"
    shares = [r for r in registered if r["inlier_share"] is not None]
    if shares:
        low = min(shares, key=lambda r: r["inlier_share"])
        finding += f"; lowest inlier share: {low['well']} {pct(low['inlier_share'])}"
    flagged = [f"{r['well']} ({r['flags']})" for r in rows if r["flags"]]
    if flagged:
        finding += f"; flagged: {', '.join(flagged)}"
    attention = bool(flagged) or any(w.needs_look for w in wells)
    return Figure("registration_residual", title, finding, table, fig, attention)


def _residual_distribution(plate: str, wells: list[_WellMerge]) -> Figure:
    title = "Distribution of the registration residuals per well"
    records: dict[str, list] = {"well": [], "bin_low_um": [], "bin_high_um": [], "pairs": []}
    curves = []
    for w in wells:
        hist = (w.registration.get("residual_um") or {}).get("histogram") or {}
        edges, counts = hist.get("edges") or [], hist.get("counts") or []
        if w.state != "registered" or len(edges) != len(counts) + 1:
            continue
        for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
            records["well"].append(w.well)
            records["bin_low_um"].append(float(lo))
            records["bin_high_um"].append(float(hi))
            records["pairs"].append(int(c))
        curves.append((w, np.asarray(edges, float), np.asarray(counts, float)))
    schema = pa.schema(
        [("well", pa.string()), ("bin_low_um", pa.float64()), ("bin_high_um", pa.float64()),
         ("pairs", pa.int64())]
    )  # fmt: skip
    table = pa.table(records, schema=schema)
    if not curves:
        why = "; ".join(f"{w.well}: {_flat(w.note)}" for w in wells)
        return message_figure("residual_distribution", title, f"no registered well ({why})", table)
    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    for w, edges, counts in curves:
        share = counts / counts.sum() if counts.sum() else counts
        ax.stairs(share, edges, label=w.well, linewidth=1.5)
    limits = {w.register_params.get("max_residual_um") for w, _, _ in curves} - {None}
    for v in sorted(limits):
        if v <= curves[0][1][-1]:
            ax.axvline(v, color="firebrick", linestyle="--", linewidth=1,
                       label=f"RMS flagged above {v:g} um")  # fmt: skip
    ax.set_xlabel("residual after the fit (um; up to the inlier threshold)")
    ax.set_ylabel("share of inlier pairs")
    if len(curves) <= 12:
        ax.legend(fontsize=7, ncol=2)
    absent = [w.well for w in wells if w.state != "registered"]
    ax.set_title(
        f"{plate}: {title}" + (f"\nnot drawn: {', '.join(absent)}" if absent else ""),
        fontsize=9,
        color="firebrick" if absent else "black",
    )
    pairs = int(sum(c.sum() for _, _, c in curves))
    finding = f"{pairs} inlier pairs in {len(curves)} registered well(s)"
    if absent:
        finding += f"; not registered or not merged: {', '.join(absent)}"
    return Figure("residual_distribution", title, finding, table, fig, False)
