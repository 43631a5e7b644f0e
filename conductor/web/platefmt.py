"""Multi-well plate formats and the grid of a plate map."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import lru_cache

# rows x columns of the standard formats, smallest first
FORMATS: dict[int, tuple[int, int]] = {6: (2, 3), 24: (4, 6), 96: (8, 12), 384: (16, 24)}
_WELL = re.compile(r"^([A-Pa-p])0*([1-9][0-9]?)$")
STATUS_LETTER = {
    "done": "D",
    "running": "R",
    "failed": "F",
    "stale": "S",
    "missing": "M",
    "n/a": "N",  # the well lacks the images the asset needs (e.g. SBS of a CP-only well)
}


@lru_cache(maxsize=4096)  # a 20-plate map asks for the same 384 names 20 times
def well_position(well: str) -> tuple[int, int] | None:
    """Zero-based (row, column) of ``A1``/``A01``/``p24``; None for other names."""
    m = _WELL.match(well)
    if m is None:
        return None
    return ord(m.group(1).upper()) - ord("A"), int(m.group(2)) - 1


def plate_format(wells: list[str], requested: int | None = None) -> int:
    """The smallest standard format holding every well (or ``requested`` if it fits).

    Wells whose names are not letter+number are ignored here (listed apart by the page).
    """
    positions = [p for p in (well_position(w) for w in wells) if p is not None]
    rows = max((r for r, _ in positions), default=0) + 1
    cols = max((c for _, c in positions), default=0) + 1
    fitting = [n for n, (r, c) in FORMATS.items() if r >= rows and c >= cols]
    if requested in FORMATS and requested in fitting:
        return requested
    return fitting[0] if fitting else 384


@dataclass(frozen=True)
class Cell:
    """One well position of the grid."""

    label: str
    well: str | None
    status: str | None

    @property
    def letter(self) -> str:
        """Status letter shown in the cell (the colour is never the only cue)."""
        if self.status is None:
            return "·"
        return STATUS_LETTER.get(self.status, "?")


def grid(
    wells: list[str], status: dict[str, str], fmt: int
) -> tuple[list[str], list[tuple[str, list[Cell]]], list[str]]:
    """Column headers, rows of cells, and wells that do not fit a grid position.

    Parameters
    ----------
    wells : list of str
        The plate's wells that hold images, as named in the index.
    status : dict
        Well name -> status; wells without an entry show as having no data.
    fmt : int
        6, 24, 96 or 384.
    """
    n_rows, n_cols = FORMATS[fmt]
    at: dict[tuple[int, int], str] = {}
    outside: list[str] = []
    for w in wells:
        pos = well_position(w)
        if pos is None or pos[0] >= n_rows or pos[1] >= n_cols:
            outside.append(w)
        else:
            at[pos] = w
    rows = []
    for r in range(n_rows):
        letter = string.ascii_uppercase[r]
        cells = []
        for c in range(n_cols):
            well = at.get((r, c))
            cells.append(Cell(f"{letter}{c + 1}", well, status.get(well) if well else None))
        rows.append((letter, cells))
    return [str(c + 1) for c in range(n_cols)], rows, outside
