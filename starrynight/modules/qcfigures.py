"""The QC reports' model and drawing helpers, shared by every report.

A report is a list of :class:`Figure` (a matplotlib figure, the table it plots and a
one-line finding) that :func:`starrynight.modules.qc.write_report` writes as PNG, parquet
and ``index.json``. The helpers draw without pyplot (no global state, no GUI backend) and
read a workspace's small tables, giving None for a file not written yet: a report shows
what is missing instead of failing.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from starrynight import storage
from starrynight.errors import UserError

#: Colour of a panel or site without a value.
NO_DATA_GREY = "#d9d9d9"


@dataclass
class Figure:
    """One figure of a report: a drawn matplotlib figure and the table it shows.

    Attributes
    ----------
    name : str
        File stem (``<name>.png``, ``<name>.parquet``).
    title : str
        What the figure shows.
    finding : str
        One line a reviewer reads first (``"3 sites with implausible counts"``).
    data : pyarrow.Table
        The values plotted, one row per point/bar/pixel, to re-plot in pandas.
    figure : matplotlib.figure.Figure
        The drawing.
    attention : bool
        The finding needs a reviewer's look (a threshold failed or an input is missing).
    """

    name: str
    title: str
    finding: str
    data: pa.Table
    figure: Any
    attention: bool = False


@dataclass(frozen=True)
class PlateLayout:
    """What the index says a plate holds (channels normalised)."""

    plate: str
    cp_wells: dict[str, list[int]]
    sbs_wells: dict[str, list[int]]
    cp_channels: list[str]
    sbs_channels: list[str]
    cycles: list[int]


def plate_layout(ws: str, plate: str) -> PlateLayout:
    """Wells, sites, channels and cycles of ``plate`` per arm, from the index.

    Raises
    ------
    UserError
        When the workspace has no index or the plate is not in it.
    """
    from starrynight.index import load_index, normalise_channel, rows_of_plate

    table = load_index(ws).select(["plate", "arm", "cycle", "well", "site", "channels"])
    rows = rows_of_plate(ws, table, plate, "--plate")
    wells: dict[str, dict[str, set[int]]] = {"cp": {}, "sbs": {}}
    channels: dict[str, dict[str, None]] = {"cp": {}, "sbs": {}}
    cycles: set[int] = set()
    for r in rows.to_pylist():
        arm = r["arm"]
        wells[arm].setdefault(r["well"], set()).add(int(r["site"]))
        for ch in r["channels"]:
            channels[arm].setdefault(normalise_channel(ch), None)
        if arm == "sbs":
            cycles.add(int(r["cycle"]))
    return PlateLayout(
        plate,
        {w: sorted(s) for w, s in sorted(wells["cp"].items())},
        {w: sorted(s) for w, s in sorted(wells["sbs"].items())},
        list(channels["cp"]),
        list(channels["sbs"]),
        sorted(cycles),
    )


# --------------------------------------------------------------------------- drawing


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure of ``width`` x ``height`` inches (capped), constrained layout."""
    from matplotlib.figure import Figure as MplFigure

    # A Figure without pyplot: no global state, no GUI backend, safe in threads.
    return MplFigure(figsize=(min(width, 24.0), min(height, 40.0)), layout="constrained")


def panels(fig: Any, n: int, cols: int) -> list[Any]:
    """``n`` axes on a grid of at most ``cols`` columns; spare cells are hidden."""
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_axis_off()
    return axes[:n]


def say(ax: Any, message: str, *, colour: str = "black") -> None:
    """Write a message in the middle of an empty panel."""
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        message,
        ha="center",
        va="center",
        wrap=True,
        fontsize=11,
        color=colour,
        transform=ax.transAxes,
    )


def message_figure(name: str, title: str, message: str, data: pa.Table) -> Figure:
    """A figure that only says ``message`` (an input missing): it needs attention."""
    fig = new_figure(7, 2.5)
    ax = fig.subplots()
    ax.set_title(title)
    say(ax, message, colour="firebrick")
    return Figure(name, title, message, data, fig, attention=True)


def read_parquet(uri: str, columns: Sequence[str] | None = None) -> pa.Table | None:
    """A parquet table, or None when the file does not exist."""
    if not storage.exists(uri):
        return None
    try:
        return pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=columns)
    except (pa.ArrowInvalid, KeyError) as exc:
        raise UserError(f"{uri}: not a readable table with columns {columns} ({exc})") from exc


def load_npy(uri: str) -> np.ndarray | None:
    """A ``.npy`` array, or None when the file does not exist."""
    if not storage.exists(uri):
        return None
    try:
        return np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"{uri}: not a readable .npy array ({exc})") from exc


def pct(x: float) -> str:
    """A share as a whole percentage (``"n/a"`` when not finite)."""
    return "n/a" if not np.isfinite(x) else f"{100 * x:.0f}%"


def mark_empty(ax: Any, notes: Sequence[str]) -> None:
    """Write a well's note (``no reads``...) where its bars would stand (share axes)."""
    for i, note in enumerate(notes):
        if note:
            ax.text(i, 0.5, note, rotation=90, ha="center", va="center", color="firebrick",
                    fontsize=10)  # fmt: skip
