"""What the pages show about a project's data: index summary, plates and wells.

Reading an index of a large screen takes a while, so summaries are cached per index
file version (see :mod:`conductor.indexcache`): a page pays for it once per ``configure``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from conductor.indexcache import cached, file_stamp, plates_and_wells, plates_wells_of
from starrynight import index, workspace
from starrynight.experiment import load_experiment_or_none

__all__ = ["IndexSummary", "index_summary", "plates_and_wells"]

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


def index_summary(ws: str) -> IndexSummary | None:
    """Plates, wells, sites, cycles and channels per arm, rejects, missing images."""
    uri = workspace.index_path(ws)
    stamp = file_stamp(uri)
    if stamp is None:
        return None
    exp_stamp = file_stamp(workspace.experiment_path(ws))
    return cached(("summary", uri, stamp, exp_stamp), lambda: _build_summary(ws))


def _channels(table: pa.Table) -> list[str]:
    joined = pc.binary_join(table.column("channels"), ",")
    out: list[str] = []
    for text in pc.unique(joined).to_pylist():
        out += [c for c in text.split(",") if c not in out]
    return out


def _build_summary(ws: str) -> IndexSummary:
    table = index.load_index(ws)
    plates, wells = plates_wells_of(table)  # not a second read of the file
    arms: dict[str, ArmSummary] = {}
    for arm in sorted(pc.unique(table.column("arm")).to_pylist()):
        part = table.filter(pc.equal(table.column("arm"), arm))
        cycles = sorted(int(c) for c in pc.unique(part.column("cycle")).to_pylist())
        arms[arm] = ArmSummary(part.num_rows, cycles, _channels(part))
    per_well = table.group_by(["plate", "well", "arm", "cycle"]).aggregate([("site", "count")])
    sites = max(per_well.column("site_count").to_pylist(), default=0)
    reasons = Counter(index.load_rejects(ws).column("reason").to_pylist())
    missing = index.check(ws, load_experiment_or_none(ws))
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
