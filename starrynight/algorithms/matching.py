"""Join the cells of the Cell Painting and SBS arms: register nuclei, match centroids.

Both arms image the same cells, but the SBS frame is displaced (and possibly scaled,
at another magnification) relative to the CP frame. The offset is found by voting:
every pair of (CP, SBS) nucleus centroids proposes one offset, and the true offset is
the one most pairs agree on. Cells are then matched one-to-one as mutual nearest
neighbours within a distance, so no cell is matched twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class PointMatch:
    """Result of :func:`register_and_match`.

    ``sbs ≈ scale * cp + offset``; ``cp_index[i]`` matches ``sbs_index[i]``.
    """

    scale: float
    offset: tuple[float, float]
    support: int
    cp_index: np.ndarray
    sbs_index: np.ndarray
    distance: np.ndarray


def estimate_offset(
    cp: np.ndarray,
    sbs: np.ndarray,
    scale: float = 1.0,
    *,
    max_offset: float | None = None,
    bin_size: float = 2.0,
    max_points: int = 2000,
) -> tuple[float, float, int]:
    """Offset ``t`` with ``sbs ≈ scale * cp + t`` by pairwise-difference voting.

    Parameters
    ----------
    cp, sbs : numpy.ndarray
        ``(n, 2)`` and ``(m, 2)`` (y, x) centroids.
    scale : float
        SBS pixels per CP pixel.
    max_offset : float, optional
        Ignore proposals longer than this (pixels, SBS frame).
    bin_size : float
        Voting bin width in pixels.
    max_points : int
        Larger point sets are subsampled (evenly) to bound the n*m work.

    Returns
    -------
    tuple of (float, float, int)
        ``(dy, dx, support)``; support is the number of pairs agreeing within
        ``bin_size`` of the winning offset (0 when there is nothing to match).
    """
    if len(cp) == 0 or len(sbs) == 0:
        return 0.0, 0.0, 0
    cp = cp[:: max(1, len(cp) // max_points)] * scale
    sbs = sbs[:: max(1, len(sbs) // max_points)]
    diff = (sbs[None, :, :] - cp[:, None, :]).reshape(-1, 2)
    if max_offset is not None:
        diff = diff[np.hypot(diff[:, 0], diff[:, 1]) <= max_offset]
        if len(diff) == 0:
            return 0.0, 0.0, 0
    lo = diff.min(axis=0)
    cells = np.floor((diff - lo) / bin_size).astype(np.int64)
    width = int(cells[:, 1].max()) + 1
    votes = np.bincount(cells[:, 0] * width + cells[:, 1])
    # Sum the 3x3 neighbourhood so an offset on a bin edge is not split in two.
    grid = votes if votes.size % width == 0 else np.r_[votes, np.zeros(width - votes.size % width)]
    grid = grid.reshape(-1, width)
    padded = np.pad(grid, 1)
    smooth = np.zeros(grid.shape, padded.dtype)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            smooth += padded[1 + dy : 1 + dy + grid.shape[0], 1 + dx : 1 + dx + grid.shape[1]]
    by, bx = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    centre = lo + (np.array([by, bx]) + 0.5) * bin_size
    near = np.all(np.abs(diff - centre) <= 1.5 * bin_size, axis=1)
    dy, dx = np.median(diff[near], axis=0)
    support = int(np.all(np.abs(diff - (dy, dx)) <= bin_size, axis=1).sum())
    return float(dy), float(dx), support


def mutual_nearest(
    a: np.ndarray, b: np.ndarray, max_distance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches: ``a[i]`` and ``b[j]`` are each other's nearest neighbour.

    Returns
    -------
    tuple of numpy.ndarray
        ``(index_a, index_b, distance)``.
    """
    if len(a) == 0 or len(b) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    da, ia = cKDTree(b).query(a)
    _, ib = cKDTree(a).query(b)
    idx_a = np.arange(len(a))
    ok = (ib[ia] == idx_a) & (da <= max_distance)
    return idx_a[ok], ia[ok].astype(np.int64), da[ok]


def register_and_match(
    cp: np.ndarray,
    sbs: np.ndarray,
    scales: Sequence[float] = (1.0,),
    *,
    max_offset: float | None = None,
    max_distance: float = 5.0,
) -> PointMatch:
    """Register SBS nuclei to CP nuclei and match them one-to-one.

    Each candidate scale is tried; the one whose offset most pairs agree on wins (the
    nominal magnification ratio is not always the pixel ratio, so callers pass both
    1 and the ratio when unsure).

    Parameters
    ----------
    cp, sbs : numpy.ndarray
        ``(n, 2)`` and ``(m, 2)`` (y, x) centroids in their own frames.
    scales : sequence of float
        Candidate SBS pixels per CP pixel.
    max_offset : float, optional
        Largest plausible offset between the frames.
    max_distance : float
        Largest residual distance (SBS pixels) for a match.

    Returns
    -------
    PointMatch
    """
    best: tuple[int, float, float, float] | None = None
    for s in scales:
        dy, dx, support = estimate_offset(cp, sbs, s, max_offset=max_offset)
        if best is None or support > best[0]:
            best = (support, s, dy, dx)
    assert best is not None
    support, s, dy, dx = best
    moved = cp * s + np.array([dy, dx]) if len(cp) else np.zeros((0, 2))
    ia, ib, dist = mutual_nearest(moved, sbs, max_distance)
    return PointMatch(s, (dy, dx), support, ia, ib, dist)
