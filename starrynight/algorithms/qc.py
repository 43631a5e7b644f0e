"""Statistics behind the QC reports: site maps, read and barcode summaries.

Pure functions on numpy arrays and plain values; :mod:`starrynight.modules.qc` reads
the workspace's tables, calls these and draws the figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BASES = "ACGT"


# --------------------------------------------------------------------------- site maps


@dataclass(frozen=True)
class SiteMap:
    """Where each site of a well lies, for drawing a per-site value as a heat-map.

    Attributes
    ----------
    sites : numpy.ndarray
        Site numbers, ``int64``.
    x, y : numpy.ndarray
        Top-left corner of each site's field (um for measured positions, grid cells
        for the fallback grid).
    width, height : numpy.ndarray
        Size of each field in the same unit.
    source : str
        ``"positions"`` (measured well-frame positions) or ``"grid"`` (square grid by
        site number: the positions are unknown).
    """

    sites: np.ndarray
    x: np.ndarray
    y: np.ndarray
    width: np.ndarray
    height: np.ndarray
    source: str


def square_grid(sites: Sequence[int]) -> SiteMap:
    """Lay sites out row by row on a square grid, in site-number order.

    The fallback when a well's positions are unknown: ``ceil(sqrt(n))`` columns, one
    unit per field. It shows which sites are bad, not where they are in the well.

    Parameters
    ----------
    sites : sequence of int
        Site numbers (any order, no duplicates).

    Returns
    -------
    SiteMap
        ``source`` is ``"grid"``.
    """
    ordered = np.array(sorted(int(s) for s in sites), np.int64)
    n = len(ordered)
    cols = max(1, math.ceil(math.sqrt(n)))
    i = np.arange(n)
    ones = np.ones(n, np.float64)
    return SiteMap(
        ordered,
        (i % cols).astype(np.float64),
        (i // cols).astype(np.float64),
        ones,
        ones.copy(),
        "grid",
    )


def positions_map(
    sites: Sequence[int],
    x_um: Sequence[float],
    y_um: Sequence[float],
    width_um: Sequence[float] | None = None,
    height_um: Sequence[float] | None = None,
) -> SiteMap:
    """A site map from measured top-left field positions in the well frame.

    Parameters
    ----------
    sites : sequence of int
    x_um, y_um : sequence of float
        Top-left corner of each field (um).
    width_um, height_um : sequence of float, optional
        Field size (um). When unknown, the smallest non-zero spacing between
        positions along each axis is taken (fields that tile without overlap); a
        single site gets a unit square.

    Raises
    ------
    ValueError
        When the arrays differ in length, a site repeats or a position is not finite.
    """
    s = np.asarray(sites, np.int64)
    x = np.asarray(x_um, np.float64)
    y = np.asarray(y_um, np.float64)
    if not (len(s) == len(x) == len(y)):
        raise ValueError("sites, x_um and y_um differ in length")
    if len(np.unique(s)) != len(s):
        raise ValueError("a site appears more than once in the positions")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("a site position is not a finite number")
    w = _size(x, width_um)
    h = _size(y, height_um)
    order = np.argsort(s, kind="stable")
    return SiteMap(s[order], x[order], y[order], w[order], h[order], "positions")


def _size(coord: np.ndarray, given: Sequence[float] | None) -> np.ndarray:
    if given is not None:
        size = np.asarray(given, np.float64)
        if len(size) == len(coord) and np.isfinite(size).all() and (size > 0).all():
            return size
    gaps = np.diff(np.unique(np.round(coord, 6)))
    gaps = gaps[gaps > 0]
    return np.full(len(coord), float(gaps.min()) if len(gaps) else 1.0)


# --------------------------------------------------------------------------- reads


def base_frequencies(reads: Sequence[str], length: int | None = None) -> np.ndarray:
    """Share of A, C, G and T at each position of a set of reads (or barcodes).

    Parameters
    ----------
    reads : sequence of str
        Reads of equal length over ``ACGT`` (other letters count in no column).
    length : int, optional
        Expected read length (default: the first read's).

    Returns
    -------
    numpy.ndarray
        ``(length, 4)`` float64; each row sums to 1 (NaN rows when there is no read).

    Raises
    ------
    ValueError
        When reads differ in length.
    """
    codes = _as_codes(reads, length)
    n_len = codes.shape[1] if codes.ndim == 2 else int(length or 0)
    out = np.full((n_len, 4), np.nan)
    if len(codes):
        for j, base in enumerate(BASES.encode()):
            out[:, j] = (codes == base).mean(axis=0)
    return out


def mismatch_positions(reads: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """How often each position of ``reads`` differs from its reference barcode.

    Parameters
    ----------
    reads, references : sequence of str
        Aligned pairs of equal-length strings (a read and the barcode it matched).

    Returns
    -------
    numpy.ndarray
        ``int64`` count of mismatches per position (cycle 1 first).

    Raises
    ------
    ValueError
        When the two sequences differ in length or their strings do in length.
    """
    if len(reads) != len(references):
        raise ValueError("reads and references differ in number")
    a = _as_codes(reads)
    b = _as_codes(references, a.shape[1] if a.ndim == 2 and len(a) else None)
    if not len(a):
        return np.zeros(b.shape[1] if b.ndim == 2 else 0, np.int64)
    if a.shape != b.shape:
        raise ValueError("reads and references differ in length")
    return (a != b).sum(axis=0).astype(np.int64)


def _as_codes(strings: Sequence[str], length: int | None = None) -> np.ndarray:
    """``(n, length)`` uint8 array of the strings' ASCII codes."""
    if not len(strings):
        return np.zeros((0, int(length or 0)), np.uint8)
    first = len(strings[0]) if length is None else int(length)
    joined = "".join(strings).encode("ascii", "replace")
    if len(joined) != first * len(strings) or any(len(r) != first for r in strings):
        raise ValueError(f"reads differ in length (expected {first} bases each)")
    return np.frombuffer(joined, np.uint8).reshape(len(strings), first)


@dataclass(frozen=True)
class MatchShares:
    """Share of reads that match a barcode, of a set of reads.

    Attributes
    ----------
    n_reads : int
    exact : float
        Share matching a barcode with no mismatch (NaN without reads).
    within_one : float
        Share matching a barcode with at most one mismatch.
    """

    n_reads: int
    exact: float
    within_one: float


def match_shares(matched: np.ndarray, distance: np.ndarray) -> MatchShares:
    """Shares of reads matched exactly and within one mismatch.

    Parameters
    ----------
    matched : numpy.ndarray
        ``bool`` per read: it was assigned a barcode (unique nearest).
    distance : numpy.ndarray
        Hamming distance of each read to its nearest barcode.
    """
    matched = np.asarray(matched, bool)
    distance = np.asarray(distance)
    n = len(matched)
    if n == 0:
        return MatchShares(0, math.nan, math.nan)
    return MatchShares(
        n, float((matched & (distance == 0)).mean()), float((matched & (distance <= 1)).mean())
    )


def barcodes_per_cell(n_matched: np.ndarray, second_count: np.ndarray) -> np.ndarray:
    """How many distinct barcodes each cell's matched spots carry: 0, 1 or 2 (= 2+).

    Parameters
    ----------
    n_matched : numpy.ndarray
        Spots of the cell whose read matched a barcode.
    second_count : numpy.ndarray
        Spots carrying the cell's second most frequent barcode (0 when there is none).

    Returns
    -------
    numpy.ndarray
        ``int8``: 0 (no matched spot), 1 (one barcode), 2 (two or more).
    """
    n_matched = np.asarray(n_matched)
    second = np.asarray(second_count)
    return np.where(n_matched == 0, 0, np.where(second > 0, 2, 1)).astype(np.int8)


def top_values(values: Sequence[str | None], n: int) -> list[tuple[str, int]]:
    """The ``n`` most frequent non-null values with their counts (ties: alphabetical)."""
    counts: dict[str, int] = {}
    for v in values:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


# --------------------------------------------------------------------------- images


def downsample(image: np.ndarray, max_side: int) -> tuple[np.ndarray, int]:
    """Block-mean ``image`` so that neither side exceeds ``max_side``.

    Returns
    -------
    (numpy.ndarray, int)
        The float64 image and the block size used (1: unchanged). Edge rows and
        columns that do not fill a block are dropped.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    step = max(1, math.ceil(max(image.shape) / max_side))
    if step == 1:
        return np.asarray(image, np.float64), 1
    h, w = (image.shape[0] // step) * step, (image.shape[1] // step) * step
    if h == 0 or w == 0:  # an image thinner than one block: keep every step-th pixel
        return np.asarray(image[::step, ::step], np.float64), step
    blocks = np.asarray(image[:h, :w], np.float64).reshape(h // step, step, w // step, step)
    return blocks.mean(axis=(1, 3)), step


def flatness(function: np.ndarray) -> float:
    """Max over min of a positive illumination function (1 = flat); NaN if not positive."""
    lo, hi = float(np.min(function)), float(np.max(function))
    return hi / lo if lo > 0 and np.isfinite(hi) else math.nan


def sample_evenly(items: Sequence, n: int) -> list:
    """Up to ``n`` items spread evenly over ``items`` (first and last included)."""
    if n <= 0 or not len(items):
        return []
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[0]]
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, n)).astype(int))
    return [items[i] for i in idx]


# --------------------------------------------------------------------------- merge


def rate_level(rate: float | None, warn: float, minimum: float) -> str:
    """Where a match rate stands against its two thresholds.

    Parameters
    ----------
    rate : float or None
        Share in ``[0, 1]``; None or NaN when the well has no rate.
    warn, minimum : float
        Below ``warn`` warns, below ``minimum`` is an error (``minimum <= warn``).

    Returns
    -------
    str
        ``"ok"``, ``"warn"``, ``"error"`` or ``"none"`` (no rate).
    """
    if rate is None or not math.isfinite(rate):
        return "none"
    if rate < minimum:
        return "error"
    return "warn" if rate < warn else "ok"


def box_stats(values: np.ndarray, label: str) -> dict | None:
    """Box-plot statistics of ``values`` for matplotlib's ``Axes.bxp``.

    Box: quartiles and median; whiskers: the 5th and 95th percentiles (no fliers).

    Parameters
    ----------
    values : numpy.ndarray
        Finite values are used; NaN and inf are left out.
    label : str
        The box's label.

    Returns
    -------
    dict or None
        ``med, q1, q3, whislo, whishi, mean, n, label``; None without a finite value.
    """
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    p5, q1, med, q3, p95 = np.percentile(v, [5, 25, 50, 75, 95])
    return {
        "med": float(med), "q1": float(q1), "q3": float(q3), "whislo": float(p5),
        "whishi": float(p95), "mean": float(v.mean()), "n": len(v), "label": label,
        "fliers": [],
    }  # fmt: skip
