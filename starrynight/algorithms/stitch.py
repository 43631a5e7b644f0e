"""Stitching a well: register overlapping sites pairwise, then place them all at once.

Every site of one arm (and cycle) is a tile of the same shape with a recorded (or
declared) position in the well frame, in pixels. Recorded positions are a start: the
stage misses its targets by a micron or two, so neighbours are registered on their
overlap and all positions are solved together, as Fiji's Grid/Collection stitching and
ASHLAR do.

1. :func:`neighbour_pairs` lists the pairs whose recorded fields overlap enough.
2. :func:`overlap_boxes` cuts the overlap out of both tiles at the recorded offset;
   :func:`register_overlap` matches them by normalised cross-correlation, coarse to
   fine (sub-pixel), and measures the Pearson correlation of the overlap after the
   shift.
3. :func:`solve_positions` solves ``p_j - p_i = t_ij`` for all accepted pairs by
   weighted least squares, dropping the pair with the largest residual while it exceeds
   a bound, and leaves every site without an accepted pair at its recorded position.

Positions name the same point of every tile (its top-left corner, say); because all
tiles share one shape, only differences of positions enter, so the refinement does not
depend on which point of the field a recorded position names. Positions are found up
to one translation per connected set of sites, fixed so that the set's mean refined
position equals its mean recorded position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import sparse
from scipy.sparse import csgraph
from scipy.sparse.linalg import spsolve

from starrynight.algorithms import ncc

#: Pair statuses (``used`` enters the solve; the others say why a pair did not).
PAIR_USED = "used"
PAIR_LOW_CORRELATION = "low_correlation"
PAIR_SHIFT_BOUND = "shift_beyond_bound"
PAIR_RESIDUAL = "residual_too_large"
PAIR_UNREADABLE = "not_registered"

#: Site statuses.
SITE_REFINED = "refined"
SITE_RECORDED = "kept_recorded"


@dataclass(frozen=True)
class Pair:
    """Two sites whose recorded fields overlap; ``offset`` is ``p_j - p_i`` recorded (y, x) px."""

    i: int
    j: int
    offset: tuple[float, float]


@dataclass(frozen=True)
class PairMeasurement:
    """What registering one pair found.

    Attributes
    ----------
    i, j : int
        Site indices (into the positions array).
    offset : tuple of float
        Measured ``p_j - p_i`` (y, x) in pixels.
    correction : tuple of float
        Measured minus recorded offset (y, x) in pixels.
    correlation : float
        Pearson correlation of the two overlaps at the measured shift (nan when the
        overlap is flat).
    at_bound : bool
        The best match lay on the border of the searched shifts: the true correction
        may be larger than the search reached.
    """

    i: int
    j: int
    offset: tuple[float, float]
    correction: tuple[float, float]
    correlation: float
    at_bound: bool = False


@dataclass(frozen=True)
class Solution:
    """Positions of all sites after the joint solve.

    Attributes
    ----------
    positions : numpy.ndarray
        ``(n, 2)`` (y, x) pixels: refined, or recorded where ``status`` says so.
    status : list of str
        Per site :data:`SITE_REFINED` or :data:`SITE_RECORDED`.
    pair_status : list of str
        Per measurement given, :data:`PAIR_USED` or the reason it was dropped.
    pair_residual : numpy.ndarray
        Per measurement, ``|p_j - p_i - t_ij|`` in pixels after the solve.
    components : int
        Connected sets of sites linked by used pairs (isolated sites count as one each).
    """

    positions: np.ndarray
    status: list[str]
    pair_status: list[str]
    pair_residual: np.ndarray
    components: int

    @property
    def residual_rms(self) -> float:
        """RMS residual (px) of the used pairs; nan when none was used."""
        used = np.array([s == PAIR_USED for s in self.pair_status], bool)
        if not used.any():
            return float("nan")
        return float(np.sqrt(np.mean(self.pair_residual[used] ** 2)))


def neighbour_pairs(
    positions: np.ndarray,
    shape: tuple[int, int],
    min_overlap_px: int = 16,
    min_overlap_fraction: float = 0.05,
) -> list[Pair]:
    """Pairs of tiles whose recorded fields overlap.

    Parameters
    ----------
    positions : numpy.ndarray
        ``(n, 2)`` recorded (y, x) positions in pixels (the same point of every tile).
    shape : tuple of int
        Tile ``(height, width)``.
    min_overlap_px : int
        Both sides of the overlap must be at least this long (narrow slivers cannot be
        registered).
    min_overlap_fraction : float
        The overlap must cover at least this share of a tile (excludes the corner
        touches of diagonal neighbours on a grid with small overlap).

    Returns
    -------
    list of Pair
        With ``i < j``, sorted.
    """
    pos = np.asarray(positions, np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must be (n, 2), got {pos.shape}")
    h, w = shape
    pairs: list[Pair] = []
    # Sort by y so each tile is compared only with tiles less than one height below.
    order = np.argsort(pos[:, 0], kind="stable")
    ys = pos[order, 0]
    stops = np.searchsorted(ys, ys + h, side="left")
    for a, i in enumerate(order):
        later = order[a + 1 : stops[a]]
        d = np.abs(pos[later] - pos[i])
        oy, ox = h - d[:, 0], w - d[:, 1]
        keep = (oy >= min_overlap_px) & (ox >= min_overlap_px)
        keep &= oy * ox >= min_overlap_fraction * h * w
        for j in later[keep].tolist():
            lo, hi = (int(i), j) if i < j else (j, int(i))
            off = pos[hi] - pos[lo]
            pairs.append(Pair(lo, hi, (float(off[0]), float(off[1]))))
    return sorted(pairs, key=lambda p: (p.i, p.j))


def overlap_boxes(
    offset: Sequence[float], shape: tuple[int, int]
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """The overlap of tile ``i`` and tile ``j`` at ``offset = p_j - p_i`` (rounded).

    Returns
    -------
    box_i, box_j : tuple of slice
        ``(rows, cols)`` of the same region of the well in tile ``i`` and in tile ``j``.

    Raises
    ------
    ValueError
        When the tiles do not overlap.
    """
    h, w = shape
    dy, dx = round(float(offset[0])), round(float(offset[1]))
    if abs(dy) >= h or abs(dx) >= w:
        raise ValueError(f"tiles at offset ({dy}, {dx}) do not overlap")
    rows_i = slice(max(0, dy), min(h, h + dy))
    cols_i = slice(max(0, dx), min(w, w + dx))
    rows_j = slice(max(0, -dy), min(h, h - dy))
    cols_j = slice(max(0, -dx), min(w, w - dx))
    return (rows_i, cols_i), (rows_j, cols_j)


def register_overlap(
    crop_i: np.ndarray,
    crop_j: np.ndarray,
    offset: Sequence[float],
    margin: int = 12,
    gains: tuple[np.ndarray, np.ndarray] | None = None,
    dark: float = 0.0,
) -> tuple[np.ndarray, float, float]:
    """Measure ``p_j - p_i`` from the overlap crops cut by :func:`overlap_boxes`.

    The interior of ``crop_i`` (``margin`` pixels in from every side) is matched as a
    template inside ``crop_j`` by normalised cross-correlation (Pearson correlation of
    the template with the window it covers) over every shift of at most ``margin``
    pixels per axis. Unlike phase correlation of the two crops, nothing wraps around:
    each tested shift compares the whole template with real pixels, however thin the
    overlap.

    The search is coarse to fine: every shift is scored on crops subsampled 2x2 as many
    times as the overlap allows (:data:`MAX_BINNING`, keeping at least
    :data:`COARSE_MIN_SIDE` template pixels per side and two coarse pixels of search);
    around that peak every full-resolution shift within ``factor + 1`` pixels is scored
    on the overlap's most textured stretch only (the whole range when the peak lands on
    the border of that window). The full-resolution peak is refined to sub-pixel by a
    parabola through it on each axis. The sums are compiled kernels
    (:mod:`starrynight.algorithms.ncc`).

    Parameters
    ----------
    crop_i, crop_j : numpy.ndarray
        The same region of the well cut from tile ``i`` and tile ``j`` at the recorded
        ``offset`` (equal shapes; any real dtype, best the stored one: they are
        converted to float32 only once subsampled or cut to the fine stretch).
    offset : sequence of float
        Recorded ``p_j - p_i`` (y, x) that the crops were cut with (rounded inside).
    margin : int
        Largest correction searched per axis, in pixels; reduced so that the template
        keeps at least 8 pixels per side.
    gains : tuple of numpy.ndarray, optional
        Illumination gains of the two crops (their shape): registration then sees the
        corrected overlaps ``(crop - dark) * gain``, computed only at the sizes it uses
        (subsampled, or the fine stretch) instead of on the whole crops.
    dark : float
        Dark level subtracted before the gain.

    Returns
    -------
    measured : numpy.ndarray
        ``p_j - p_i`` (y, x) in pixels (the recorded offset when nothing correlates).
    ncc : float
        Pearson correlation of the template and the matched region at the sub-pixel
        shift (bilinear), i.e. of the overlap as placed; nan when either is flat.
    edge : float
        1.0 when the best shift lies on the border of the searched range (the true
        correction may be larger than ``margin``), else 0.0.
    """
    if crop_i.shape != crop_j.shape or crop_i.ndim != 2:
        raise ValueError(f"crops must be equal 2-D shapes, got {crop_i.shape} and {crop_j.shape}")
    if gains is not None and not (gains[0].shape == gains[1].shape == crop_i.shape):
        raise ValueError(f"gains must have the crops' shape {crop_i.shape}")
    h, w = crop_i.shape
    m = int(max(0, min(margin, (h - 8) // 2, (w - 8) // 2)))
    rounded = np.array([round(float(offset[0])), round(float(offset[1]))], np.float64)
    # Coarse level: every f-th pixel of each axis (f = 2, 4 while the rule allows),
    # corrected at that size only. A subsample reads a fraction of the overlap where a
    # binned copy would read all of it; the nuclei it must match are several pixels
    # wide, so the coarse peak is as good, and the fine level refines at full res.
    factor, cm = 1, m
    while factor < MAX_BINNING:
        nm = cm // 2
        if nm < 2 or min(h, w) // (2 * factor) - 2 * nm < COARSE_MIN_SIDE:
            break
        factor, cm = 2 * factor, nm
    coarse = None
    hc, wc = -(-h // factor), -(-w // factor)
    if (2 * cm + 1) ** 2 * (hc - 2 * cm) * (wc - 2 * cm) > DIRECT_MAX_WORK:
        # Many shifts of a large template: three FFTs cost less than the direct sums.
        step = (slice(None, None, factor), slice(None, None, factor))
        ga, gb = gains if gains is not None else (None, None)
        ca = _corrected(crop_i[step], None if ga is None else ga[step], dark)
        cb = _corrected(crop_j[step], None if gb is None else gb[step], dark)
        coarse = _fft_ncc_map(_interior(ca, cm), cb, cm)
    cy, cx, peak, edge = ncc.register(
        crop_i, crop_j, gains, dark, m, factor, cm, coarse, FINE_MAX_PIXELS, PLACED_STEP
    )
    if not np.isfinite(cy):
        return rounded, float("nan"), 0.0
    # Content at u in crop_i is at u - (t - d) in crop_j, so the template (crop_i from
    # m) matches crop_j at q = m - (t - d): the correction is m - q.
    return rounded + np.array([cy, cx]), float(peak), float(edge)


#: The coarsest search subsamples the overlaps by at most this factor (a power of 2).
MAX_BINNING = 4

#: A subsampled template keeps at least this many pixels on its short side.
COARSE_MIN_SIDE = 16


#: The correlation of the placed overlap samples every this many pixels of each axis
#: (a 100 x 1400 px overlap still gives about 9000 pairs of values).
PLACED_STEP = 4

#: Template pixels scored at the fine level (the most textured stretch of the overlap).
FINE_MAX_PIXELS = 6_000


def _corrected(x: np.ndarray, gain: np.ndarray | None, dark: float) -> np.ndarray:
    """``x`` as float32, illumination-corrected (``(x - dark) * gain``) when ``gain`` is given."""
    if gain is None:
        return np.asarray(x, np.float32)
    out = np.subtract(x, np.float32(dark), dtype=np.float32)
    out *= gain
    return out


def _interior(a: np.ndarray, m: int) -> np.ndarray:
    h, w = a.shape
    return a[m : h - m, m : w - m]


#: Up to this many multiply-adds (shifts x template pixels) the coarse map is summed
#: directly (compiled); above, its products are taken by FFT.
DIRECT_MAX_WORK = 4_000_000


def _fft_ncc_map(template: np.ndarray, image: np.ndarray, m: int) -> np.ndarray:
    """Pearson correlation of ``template`` (float32) with ``image`` at offsets ``[0, 2m]^2``,
    the products by FFT."""
    th, tw = template.shape
    side = 2 * m + 1
    ih, iw = image.shape
    # Centre the image: the window variances below are differences of large sums.
    img = np.asarray(image, np.float32)
    img = img - np.float32(img.mean())
    t0 = template - np.float32(template.mean())
    fh, fw = sfft.next_fast_len(ih, real=True), sfft.next_fast_len(iw, real=True)
    spec = sfft.rfft2(img, s=(fh, fw))
    spec *= np.conj(sfft.rfft2(t0, s=(fh, fw)))
    num = sfft.irfft2(spec, s=(fh, fw))[:side, :side].astype(np.float64)
    n = th * tw
    s1 = _window_sums(img, th, tw, m)
    s2 = _window_sums(img * img, th, tw, m)
    var_i = np.clip(s2 - s1**2 / n, 0, None)
    denom = np.sqrt(var_i * float(np.dot(t0.ravel(), t0.ravel())))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(denom > 0, num / denom, np.nan)
    return out


def _window_sums(a: np.ndarray, th: int, tw: int, m: int) -> np.ndarray:
    """Sums of ``a`` over the ``th x tw`` windows at offsets ``[0, 2m]^2``.

    The column sums of the ``2m + 1`` row windows are the first window's plus the
    running sum of the rows entering minus the rows leaving (one pass over ``a``);
    the column windows are then taken on that small array.
    """
    rows = np.empty((2 * m + 1, a.shape[1]), np.float64)
    rows[0] = a[:th].sum(axis=0, dtype=np.float64)
    if m > 0:
        np.cumsum(a[th : th + 2 * m] - a[: 2 * m], axis=0, dtype=np.float64, out=rows[1:])
        rows[1:] += rows[0]
    c = np.zeros((2 * m + 1, a.shape[1] + 1))
    np.cumsum(rows, axis=1, out=c[:, 1:])
    return c[:, tw : tw + 2 * m + 1] - c[:, : 2 * m + 1]


def measure_pair(
    tile_i: np.ndarray,
    tile_j: np.ndarray,
    pair: Pair,
    margin: int = 12,
) -> PairMeasurement:
    """Register two whole tiles on their overlap (see :func:`register_overlap`)."""
    box_i, box_j = overlap_boxes(pair.offset, tile_i.shape)
    return measure_crops(tile_i[box_i], tile_j[box_j], pair, margin)


def measure_crops(
    crop_i: np.ndarray,
    crop_j: np.ndarray,
    pair: Pair,
    margin: int = 12,
    gains: tuple[np.ndarray, np.ndarray] | None = None,
    dark: float = 0.0,
) -> PairMeasurement:
    """:func:`register_overlap` on crops cut by :func:`overlap_boxes`, as a measurement."""
    measured, ncc, edge = register_overlap(crop_i, crop_j, pair.offset, margin, gains, dark)
    correction = measured - np.asarray(pair.offset)
    return PairMeasurement(
        pair.i,
        pair.j,
        (float(measured[0]), float(measured[1])),
        (float(correction[0]), float(correction[1])),
        ncc,
        bool(edge),
    )


def screen_pairs(
    measurements: Sequence[PairMeasurement],
    min_correlation: float = 0.5,
    max_correction_px: float = 20.0,
) -> list[str]:
    """First verdict on each pair before the solve: used, or why not.

    A pair is dropped when its overlaps correlate below ``min_correlation`` after the
    shift (nothing in common: empty field, debris, wrong neighbour), or when the
    measured offset differs from the recorded one by more than ``max_correction_px``
    (a peak that the stage cannot explain), or when the best match lay on the border
    of the searched shifts.
    """
    status = []
    for m in measurements:
        if not np.isfinite(m.correlation) or m.correlation < min_correlation:
            status.append(PAIR_LOW_CORRELATION)
        elif m.at_bound or float(np.hypot(*m.correction)) > max_correction_px:
            status.append(PAIR_SHIFT_BOUND)
        else:
            status.append(PAIR_USED)
    return status


def solve_positions(
    recorded: np.ndarray,
    measurements: Sequence[PairMeasurement],
    status: Sequence[str] | None = None,
    max_residual_px: float = 1.5,
) -> Solution:
    """Place every site from the accepted pair offsets by weighted least squares.

    Minimises ``sum w_ij |p_j - p_i - t_ij|^2`` (``w_ij`` the pair's correlation) over
    the pairs whose ``status`` is :data:`PAIR_USED`; while the largest residual exceeds
    ``max_residual_px`` that pair is dropped (:data:`PAIR_RESIDUAL`) and the solve
    repeated. Each connected set of sites keeps its mean recorded position; a site
    linked by no used pair keeps its recorded position (:data:`SITE_RECORDED`).

    Parameters
    ----------
    recorded : numpy.ndarray
        ``(n, 2)`` recorded (y, x) positions in pixels.
    measurements : sequence of PairMeasurement
        Registered pairs.
    status : sequence of str, optional
        Verdicts of :func:`screen_pairs` (default: every pair used).
    max_residual_px : float
        Largest residual a used pair may keep.

    Returns
    -------
    Solution
    """
    rec = np.asarray(recorded, np.float64)
    n = rec.shape[0]
    pair_status = list(status) if status is not None else [PAIR_USED] * len(measurements)
    if len(pair_status) != len(measurements):
        raise ValueError("status must have one entry per measurement")
    ii = np.array([m.i for m in measurements], np.int64)
    jj = np.array([m.j for m in measurements], np.int64)
    t = np.array([m.offset for m in measurements], np.float64).reshape(-1, 2)
    w = np.array(
        [m.correlation if np.isfinite(m.correlation) else 0.0 for m in measurements], np.float64
    )
    w = np.clip(w, 1e-3, 1.0)
    positions = rec.copy()
    residual = np.full(len(measurements), np.nan)
    while True:
        used = np.array([s == PAIR_USED for s in pair_status], bool)
        positions, _labels, n_comp = _solve(rec, ii[used], jj[used], t[used], w[used])
        residual = np.linalg.norm(positions[jj] - positions[ii] - t, axis=1) if len(t) else residual
        if not used.any():
            break
        worst = int(np.flatnonzero(used)[np.argmax(residual[used])])
        if residual[worst] <= max_residual_px:
            break
        pair_status[worst] = PAIR_RESIDUAL
    used = np.array([s == PAIR_USED for s in pair_status], bool)
    linked = np.zeros(n, bool)
    linked[ii[used]] = True
    linked[jj[used]] = True
    site_status = [SITE_REFINED if linked[k] else SITE_RECORDED for k in range(n)]
    return Solution(positions, site_status, pair_status, residual, n_comp)


def _solve(
    rec: np.ndarray, ii: np.ndarray, jj: np.ndarray, t: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Weighted least squares per connected set, each anchored at its recorded mean."""
    n = rec.shape[0]
    graph = sparse.coo_matrix((np.ones(len(ii)), (ii, jj)), shape=(n, n)).tocsr()
    n_comp, labels = csgraph.connected_components(graph, directed=False)
    if len(ii) == 0:
        return rec.copy(), labels, n_comp
    # Normal equations of the pair terms: a weighted graph Laplacian L p = b. L is
    # singular (one free translation per component); a tiny ridge towards the recorded
    # positions makes it solvable, and the exact anchoring is done afterwards.
    data = np.concatenate([w, w, -w, -w])
    rows = np.concatenate([ii, jj, ii, jj])
    cols = np.concatenate([ii, jj, jj, ii])
    lap = sparse.coo_matrix((data, (rows, cols)), shape=(n, n)).tocsr()
    ridge = 1e-9 * max(1.0, float(w.sum()))
    system = (lap + ridge * sparse.identity(n, format="csr")).tocsc()
    b = np.zeros((n, 2))
    np.add.at(b, jj, w[:, None] * t)
    np.add.at(b, ii, -w[:, None] * t)
    b += ridge * rec
    solved = np.column_stack([spsolve(system, b[:, 0]), spsolve(system, b[:, 1])])
    for c in range(n_comp):
        members = labels == c
        solved[members] += rec[members].mean(axis=0) - solved[members].mean(axis=0)
    return solved, labels, n_comp
