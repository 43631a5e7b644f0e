"""Synthetic SBS sites with dye crosstalk, for barcode-calling tests and the bench.

Channels are named by dye in the cpg0032 order ``DAPI,Cy3,A594,Cy5,Cy7`` with Cy3=G,
A594=T, Cy5=A, Cy7=C; the algorithms see them reordered to ``ACGT`` as the module's
channel roles do.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from starrynight.algorithms import barcodes as bc

# cpg0032 order DAPI,Cy3,A594,Cy5,Cy7 with Cy3=G, A594=T, Cy5=A, Cy7=C: the pairs that
# leak into each other are Cy3/A594 (G/T) and Cy5/Cy7 (A/C).
DYE_OF_BASE = {"G": "Cy3", "T": "A594", "A": "Cy5", "C": "Cy7"}
LEAK = {("G", "T"): 0.3, ("T", "G"): 0.25, ("A", "C"): 0.3, ("C", "A"): 0.25}
DYE_GAIN = {"G": 1.0, "T": 0.6, "A": 1.3, "C": 0.5}


def random_library(
    rng: np.random.Generator, n: int, cycles: int, min_distance: int = 2
) -> bc.Library:
    """A library of ``n`` random barcodes at least ``min_distance`` apart."""
    chosen = []
    while len(chosen) < n:
        s = "".join(rng.choice(list("ACGT"), cycles))
        if all(sum(a != b for a, b in zip(s, o, strict=True)) >= min_distance for o in chosen):
            chosen.append(s)
    return bc.build_library(chosen, [f"g{i}" for i in range(n)], cycles)


def synthetic_site(
    rng: np.random.Generator,
    library: bc.Library,
    size: int = 384,
    n_cells: int = 120,
    uncovered: int = 24,
    noise: float = 6.0,
    photons: float = 60.0,
    jitter: float = 0.8,
    phasing: float = 0.15,
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """One aligned SBS site ``(cycles, 4, H, W)`` in :data:`bc.BASES` order.

    Cells (Voronoi-like, grown from random nuclei) carry 1-6 amplicons of one random
    library barcode. Per cycle each amplicon's dye is seen through its channel gain
    (:data:`DYE_GAIN`) and leaks into its spectral neighbour (:data:`LEAK`); its
    amplitude varies by a log-normal ``jitter`` per cycle and ``phasing`` of it lags
    one cycle. Shot and read noise on a camera offset of 100; the last cycle leaves
    an ``uncovered`` band of zeros (alignment). Returns ``(sbs, cells, truth)`` with
    ``truth`` the library index of each cell label.
    """
    cycles = library.length
    centres = rng.uniform(10, size - 10, (n_cells, 2)).astype(int)
    nuclei = np.zeros((size, size), np.int32)
    for i, (y, x) in enumerate(centres, start=1):
        nuclei[max(0, y - 4) : y + 5, max(0, x - 4) : x + 5] = i
    cells = expand_labels(nuclei, 14)
    labels = np.unique(cells)[1:]
    truth = {int(lab): int(rng.integers(len(library.barcodes))) for lab in labels}
    impulses = np.zeros((cycles, 4, size, size), np.float32)
    for lab in labels:
        ys, xs = np.nonzero(cells == lab)
        k = min(len(ys), int(rng.integers(1, 7)))
        pick = rng.choice(len(ys), k, replace=False)
        amp = rng.lognormal(0, 0.5, k)
        seq = library.barcodes[truth[int(lab)]]
        for c in range(len(seq)):
            # Each cycle, each amplicon's signal varies (incomplete extension), and a
            # fraction lags one cycle behind (phasing).
            a_c = amp * rng.lognormal(0, jitter, k) * 0.95**c
            for lag, frac in ((0, 1.0 - phasing), (1, phasing)):
                if c - lag < 0:
                    continue
                b = seq[c - lag]
                for j, ch in enumerate(bc.BASES):
                    w = DYE_GAIN[b] * (1.0 if ch == b else LEAK.get((b, ch), 0.0)) * frac
                    if w:
                        np.add.at(impulses[c, j], (ys[pick], xs[pick]), a_c * w)
    sbs = np.empty_like(impulses)
    for c in range(cycles):
        for j in range(4):
            blurred = ndi.gaussian_filter(impulses[c, j], 1.3) * 2 * np.pi * 1.3**2
            expected = photons * (blurred + 0.05 + 0.03 * (cells > 0))
            sbs[c, j] = (
                100 + expected + rng.normal(0, 1, expected.shape) * np.sqrt(expected + noise**2)
            )
    # The last cycle was shifted by alignment: a band it did not image is 0.
    sbs[-1, :, :, :uncovered] = 0
    return np.clip(sbs, 0, 65535).astype(np.float32), cells, truth


def score_calls(
    calls: bc.CellCalls, truth: dict[int, int], cells: np.ndarray, uncovered: int
) -> tuple[float, float, float, int]:
    """Fractions right, wrong and unassigned over cells inside the area every cycle
    imaged (plus a margin for the spot filter), and their number."""
    covered = np.ones(cells.shape, bool)
    covered[:, : uncovered + 8] = False
    right = wrong = other = 0
    for i, lab in enumerate(calls.label):
        lab = int(lab)
        if not covered[cells == lab].all():
            continue
        idx = int(calls.barcode_index[i])
        if idx < 0:
            other += 1
        elif idx == truth[lab]:
            right += 1
        else:
            wrong += 1
    n = right + wrong + other
    return right / n, wrong / n, other / n, n
