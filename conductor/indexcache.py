"""A project's plates and wells from its index, cached per index file version.

Reading the index of a 20-plate screen takes longer than computing every partition
status, so what is read from it is kept per (path, modification time, size): the API and
the pages pay for it once per ``configure``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from starrynight import storage, workspace

_CACHE: dict[tuple, Any] = {}
_LOCK = threading.Lock()
_CACHE_SIZE = 64


def file_stamp(uri: str) -> tuple[int, int] | None:
    """``(modification time ns, size)`` of a file, or None when there is no such file."""
    fs, path = storage.filesystem(uri)
    info = fs.get_file_info(path)
    if info.type.name != "File":
        return None
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    return (mtime, info.size or 0)


def cached(key: tuple, build: Callable[[], Any]) -> Any:
    """``build()``'s value, kept under ``key`` (the oldest of 64 entries is dropped).

    Two threads missing the same key may both build it; the values are equal.
    """
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    value = build()
    with _LOCK:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = value
    return value


def well_order(well: str) -> tuple[str, int, str]:
    """Sort key: ``A2`` before ``A10``."""
    letters = well.rstrip("0123456789")
    digits = well[len(letters) :]
    return (letters, int(digits) if digits else 0, well)


def plates_and_wells(ws: str) -> tuple[list[str], dict[str, list[str]]] | None:
    """Plates and the wells of each from the index (None before ``configure``)."""
    uri = workspace.index_path(ws)
    stamp = file_stamp(uri)
    if stamp is None:
        return None
    # Derived from the arms per well: one read of the index serves both.
    return cached(("pw", uri, stamp), lambda: _sorted_plates_wells(well_arms(ws)))


def plates_wells_of(table: pa.Table) -> tuple[list[str], dict[str, list[str]]]:
    """Sorted plates and each plate's wells in plate order (``A2`` before ``A10``)."""
    pairs = table.group_by(["plate", "well"]).aggregate([]).to_pylist()
    return _sorted_plates_wells((str(r["plate"]), str(r["well"])) for r in pairs)


def _sorted_plates_wells(
    pairs: Iterable[tuple[str, str]],
) -> tuple[list[str], dict[str, list[str]]]:
    wells: dict[str, list[str]] = {}
    for plate, well in pairs:
        wells.setdefault(plate, []).append(well)
    return sorted(wells), {p: sorted(w, key=well_order) for p, w in sorted(wells.items())}


def well_arms(ws: str) -> dict[tuple[str, str], frozenset[str]]:
    """``(plate, well)`` -> arms (``cp``, ``sbs``) with images there (empty before configure)."""
    uri = workspace.index_path(ws)
    stamp = file_stamp(uri)
    if stamp is None:
        return {}
    return cached(("arms", uri, stamp), lambda: _read_well_arms(uri))


def _read_well_arms(uri: str) -> dict[tuple[str, str], frozenset[str]]:
    fs, path = storage.filesystem(uri)
    table = pq.read_table(path, filesystem=fs, columns=["plate", "well", "arm"])
    found: dict[tuple[str, str], set[str]] = {}
    for row in table.group_by(["plate", "well", "arm"]).aggregate([]).to_pylist():
        found.setdefault((str(row["plate"]), str(row["well"])), set()).add(str(row["arm"]))
    return {k: frozenset(v) for k, v in found.items()}
