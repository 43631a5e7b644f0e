"""Barcode calls on dye-named SBS channels with crosstalk: evidence-weighted vs counts.

Usage: python bench/bench_barcodes.py [--sites 6] [--seed 0]

Synthetic sites (``tests/starrynight/sbs_synthetic.py``: cpg0032 dye order, Cy3/A594
and Cy5/Cy7 crosstalk, dim jittery amplicons with phasing, 7 cycles, 400 barcodes at
Hamming distance >= 1, a band the last cycle did not image). Over cells inside the
area every cycle imaged, prints the fractions right, wrong and unassigned (and why)
for the calls by read counts (each read one vote, distance ties ambiguous: the
baseline, in the same run) and for the default calls (per-base evidence).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from starrynight.algorithms import barcodes as bc
from tests.starrynight import sbs_synthetic


def by_counts(sbs: np.ndarray, cells: np.ndarray, library: bc.Library) -> bc.CellCalls:
    """The calls before per-base evidence, on the same spots and reads.

    Reads matched without quality (distance ties ambiguous); each cell takes its most
    frequent barcode and is a "tie between barcodes" whenever the runner-up was seen
    as often (the previous rule of ``assign_cells``).
    """
    reads = bc.read_site(sbs, cells, library)
    s = reads.spots
    n_cycles = library.length
    bases = np.array([[bc.BASES.index(b) for b in r] for r in s["read"]]).reshape(-1, n_cycles)
    idx, _ = bc.match_reads(bases, library, 1)
    calls = bc.assign_cells(reads.cells.label, np.asarray(s["cell"]), idx, np.ones(len(idx)))
    tied = (calls.second_count == calls.count) & (calls.count > 0)
    index = np.where(tied, -1, calls.barcode_index)
    reason = ["tie between barcodes" if t else r for t, r in zip(tied, calls.reason, strict=True)]
    return dataclasses.replace(calls, barcode_index=index, reason=reason)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    library = sbs_synthetic.random_library(rng, 400, 7, min_distance=1)
    totals = {"counts": np.zeros(3), "evidence": np.zeros(3)}
    reasons = {"counts": collections.Counter(), "evidence": collections.Counter()}
    n_cells = 0
    for _ in range(args.sites):
        sbs, cells, truth = sbs_synthetic.synthetic_site(rng, library)
        for name, calls in (
            ("counts", by_counts(sbs, cells, library)),
            ("evidence", bc.read_site(sbs, cells, library).cells),
        ):
            *fractions, n = sbs_synthetic.score_calls(calls, truth, cells, 24)
            totals[name] += np.array(fractions) * n
            reasons[name].update(r for r in calls.reason if r)
        n_cells += n
    print(f"{args.sites} sites, {n_cells} cells inside the area every cycle imaged:")
    for name, label in (("counts", "read counts (baseline)"), ("evidence", "per-base evidence")):
        right, wrong, other = totals[name] / n_cells
        print(f"  {label:24s} right {right:6.1%}  wrong {wrong:5.1%}  unassigned {other:5.1%}"
              f"   {dict(reasons[name])}")  # fmt: skip


if __name__ == "__main__":
    main()
