"""What the pages show about a project's data: index summary, plates and wells.

Reading an index of a large screen takes a while, so summaries are cached per index
file version (modification time and size): a page pays for it once per ``configure``.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from starrynight import index, storage, workspace

_CACHE: dict[tuple, Any] = {}
_LOCK = threading.Lock()
_CACHE_SIZE = 64
MISSING_SHOWN = 20


@dataclass(frozen=True)
class ArmSummary:
    """One arm (``cp`` or ``sbs``) of the index."""

    images: int
    cycles: list[int]
    channels: list[str]


@dataclass(frozen=True)
class IndexSummary:
    """What ``configure`` found in the dataset."""

    plates: list[str]
    wells: dict[str, list[str]]
    sites: int
    images: int
    arms: dict[str, ArmSummary]
    rejects: list[tuple[str, int]]
    missing: int
    missing_examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def well_count(self) -> int:
        """Plate-well combinations holding images."""
        return sum(len(w) for w in self.wells.values())


def _stamp(uri: str) -> tuple[int, int] | None:
    fs, path = storage.filesystem(uri)
    info = fs.get_file_info(path)
    if info.type.name != "File":
        return None
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    return (mtime, info.size or 0)


def _cached(key: tuple, build):
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
    stamp = _stamp(uri)
    if stamp is None:
        return None
    return _cached(("pw", uri, stamp), lambda: _read_plates_wells(uri))


def _read_plates_wells(uri: str) -> tuple[list[str], dict[str, list[str]]]:
    fs, path = storage.filesystem(uri)
    table = pq.read_table(path, filesystem=fs, columns=["plate", "well"])
    pairs = table.group_by(["plate", "well"]).aggregate([]).to_pylist()
    wells: dict[str, list[str]] = {}
    for row in pairs:
        wells.setdefault(str(row["plate"]), []).append(str(row["well"]))
    return sorted(wells), {p: sorted(w, key=well_order) for p, w in sorted(wells.items())}


def index_summary(ws: str) -> IndexSummary | None:
    """Plates, wells, sites, cycles and channels per arm, rejects, missing images."""
    uri = workspace.index_path(ws)
    stamp = _stamp(uri)
    if stamp is None:
        return None
    exp_stamp = _stamp(workspace.experiment_path(ws))
    return _cached(("summary", uri, stamp, exp_stamp), lambda: _build_summary(ws))


def _channels(table: pa.Table) -> list[str]:
    joined = pc.binary_join(table.column("channels"), ",")
    out: list[str] = []
    for text in pc.unique(joined).to_pylist():
        out += [c for c in text.split(",") if c not in out]
    return out


def _build_summary(ws: str) -> IndexSummary:
    table = index.load_index(ws)
    plates, wells = _read_plates_wells(workspace.index_path(ws))
    arms: dict[str, ArmSummary] = {}
    for arm in sorted(pc.unique(table.column("arm")).to_pylist()):
        part = table.filter(pc.equal(table.column("arm"), arm))
        cycles = sorted(int(c) for c in pc.unique(part.column("cycle")).to_pylist())
        arms[arm] = ArmSummary(part.num_rows, cycles, _channels(part))
    per_well = table.group_by(["plate", "well", "arm", "cycle"]).aggregate([("site", "count")])
    sites = max(per_well.column("site_count").to_pylist(), default=0)
    reasons = Counter(index.load_rejects(ws).column("reason").to_pylist())
    missing = index.check(ws)
    examples = missing.slice(0, MISSING_SHOWN).to_pylist()
    return IndexSummary(
        plates=plates,
        wells=wells,
        sites=int(sites),
        images=table.num_rows,
        arms=arms,
        rejects=reasons.most_common(),
        missing=missing.num_rows,
        missing_examples=examples,
    )
