"""Sequencing-by-synthesis base calling and barcode assignment.

The SBS arm images each amplicon once per cycle in four base channels. Reading a
barcode means: find the amplicons (spots), measure each base channel at each spot and
cycle, undo the spectral crosstalk between dyes, call the brightest channel, and look
the read up in the barcode library allowing a few mismatches. A cell's barcode is the
read most of its spots agree on.

Arrays of SBS images are ``(cycles, 4, H, W)`` with the base channels in the order of
:data:`BASES`. All functions are pure.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi
from skimage import feature

BASES = "ACGT"
_CODE = {b: i for i, b in enumerate(BASES)}
MAX_READ_LENGTH = 32  # two bits per base in one int64


# --------------------------------------------------------------------------- library


@dataclass(frozen=True)
class Library:
    """Barcodes as read by SBS: the first ``length`` bases of each sgRNA.

    Attributes
    ----------
    barcodes : tuple of str
        Prefix read by the SBS cycles, one per sgRNA, unique.
    sgrnas, genes : tuple of str
        Full sgRNA and gene symbol, aligned with ``barcodes``.
    codes : numpy.ndarray
        ``int64`` packed codes of ``barcodes`` (see :func:`encode`).
    """

    barcodes: tuple[str, ...]
    sgrnas: tuple[str, ...]
    genes: tuple[str, ...]
    codes: np.ndarray

    @property
    def length(self) -> int:
        return len(self.barcodes[0])

    def min_distance(self) -> int:
        """Smallest Hamming distance between two barcodes (length+1 for one barcode)."""
        if len(self.codes) < 2:
            return self.length + 1
        d = hamming_matrix(self.codes, self.codes)
        np.fill_diagonal(d, self.length + 1)
        return int(d.min())


def build_library(sgrnas: list[str], genes: list[str], n_cycles: int) -> Library:
    """Validate a barcode table and cut each sgRNA to the bases SBS reads.

    The SBS reads the first ``n_cycles`` bases of each sgRNA. Those prefixes must be
    unique: when two sgRNAs share a prefix, a cell carrying either cannot be told
    apart, so more cycles are needed. Cycles beyond the sgRNA length are an error.

    Parameters
    ----------
    sgrnas, genes : list of str
        Columns ``sgRNA`` and ``gene_symbol`` of Barcodes.csv.
    n_cycles : int
        Number of SBS cycles imaged.

    Returns
    -------
    Library

    Raises
    ------
    ValueError
        With a one-line reason naming the offending value.
    """
    if not sgrnas:
        raise ValueError("no barcodes (the table has no rows)")
    if len(sgrnas) != len(genes):
        raise ValueError("sgRNA and gene_symbol columns differ in length")
    if n_cycles < 1:
        raise ValueError(f"need at least one SBS cycle, got {n_cycles}")
    if n_cycles > MAX_READ_LENGTH:
        raise ValueError(f"{n_cycles} cycles: at most {MAX_READ_LENGTH} are supported")
    clean = []
    for row, s in enumerate(sgrnas, start=2):  # row 1 is the header
        s = (s or "").strip().upper()
        if not s or set(s) - set(BASES):
            raise ValueError(f"row {row}: sgRNA {s!r} is not a sequence of A, C, G, T")
        clean.append(s)
    lengths = sorted({len(s) for s in clean})
    if len(lengths) > 1:
        raise ValueError(f"sgRNA lengths are mixed ({', '.join(map(str, lengths))}); expected one")
    seen: dict[str, int] = {}
    for row, s in enumerate(clean, start=2):
        if s in seen:
            raise ValueError(f"row {row}: sgRNA {s} duplicates row {seen[s]}")
        seen[s] = row
    if n_cycles > lengths[0]:
        raise ValueError(
            f"{n_cycles} SBS cycles but the sgRNAs are {lengths[0]} bases long; "
            "expected at most as many cycles as bases"
        )
    prefixes = [s[:n_cycles] for s in clean]
    first: dict[str, int] = {}
    for row, p in enumerate(prefixes, start=2):
        if p in first:
            raise ValueError(
                f"rows {first[p]} and {row} share the first {n_cycles} bases {p}: "
                f"{n_cycles} SBS cycles cannot tell these sgRNAs apart (more cycles needed)"
            )
        first[p] = row
    genes_clean = tuple((g or "").strip() for g in genes)
    return Library(tuple(prefixes), tuple(clean), genes_clean, encode(prefixes))


def encode(reads: list[str] | np.ndarray) -> np.ndarray:
    """Pack reads into ``int64`` codes, two bits per base (A=0, C=1, G=2, T=3).

    Accepts strings or an integer array ``(n, length)`` of base indices.
    """
    if isinstance(reads, np.ndarray):
        idx = reads.astype(np.int64)
    else:
        idx = np.array([[_CODE[b] for b in r] for r in reads], np.int64).reshape(len(reads), -1)
    if idx.shape[1] > MAX_READ_LENGTH:
        raise ValueError(f"reads longer than {MAX_READ_LENGTH} bases cannot be packed")
    shifts = 2 * np.arange(idx.shape[1], dtype=np.int64)
    return (idx << shifts).sum(axis=1).astype(np.int64)


def decode(indices: np.ndarray) -> list[str]:
    """Base-index array ``(n, length)`` to strings."""
    lut = np.array(list(BASES))
    return ["".join(row) for row in lut[indices]]


_LOW_BITS = np.int64(0x5555555555555555)


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances (in bases) between packed codes ``a`` (n,) and ``b`` (m,)."""
    x = a[:, None] ^ b[None, :]
    # A base differs when either of its two bits differs.
    return np.bitwise_count((x | (x >> 1)) & _LOW_BITS).astype(np.int16)


def match_reads(
    reads: np.ndarray,
    library: Library,
    max_distance: int = 1,
    chunk: int = 4096,
    quality: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest library barcode of each read within ``max_distance`` mismatches.

    Parameters
    ----------
    reads : numpy.ndarray
        ``int`` base indices ``(n, length)``, ``length == library.length``.
    library : Library
    max_distance : int
        Largest Hamming distance accepted.
    quality : numpy.ndarray, optional
        Per-base quality ``(n, length)`` in [0, 1] (see :func:`call_bases`). When
        several barcodes are equally close, the one whose mismatches fall on the
        least certain bases wins: a mismatch costs the quality of the base it
        contradicts. Without it (or when those costs are equal too) the read is
        ambiguous.

    Returns
    -------
    index : numpy.ndarray
        ``int64`` index into the library; -1 when no barcode is close enough, -2 when
        two or more are equally close (ambiguous).
    distance : numpy.ndarray
        ``int16`` Hamming distance to the nearest barcode.
    """
    if reads.ndim != 2 or reads.shape[1] != library.length:
        raise ValueError(f"reads of shape {reads.shape}; expected (n, {library.length})")
    codes = encode(reads)
    index = np.full(len(codes), -1, np.int64)
    distance = np.zeros(len(codes), np.int16)
    for start in range(0, len(codes), chunk):
        d = hamming_matrix(codes[start : start + chunk], library.codes)
        best = d.argmin(axis=1)
        dmin = d[np.arange(len(d)), best]
        ties = (d == dmin[:, None]).sum(axis=1) > 1
        idx = np.where(dmin <= max_distance, best, -1)
        idx[(dmin <= max_distance) & ties] = -2
        if quality is not None:
            for i in np.flatnonzero(idx == -2):
                idx[i] = _resolve_tie(
                    reads[start + i], quality[start + i], library, np.flatnonzero(d[i] == dmin[i])
                )
        index[start : start + chunk] = idx
        distance[start : start + chunk] = dmin
    return index, distance


#: Mismatch costs closer than this are equal: the evidence does not decide.
TIE_TOLERANCE = 1e-3


def _resolve_tie(
    read: np.ndarray, quality: np.ndarray, library: Library, candidates: np.ndarray
) -> int:
    """Of equally close barcodes, the one whose mismatches sit on the weakest bases.

    Returns its library index, or -2 when the two cheapest cost the same.
    """
    lut = np.array([_CODE[b] for b in BASES])
    seqs = np.array([[_CODE[b] for b in library.barcodes[c]] for c in candidates])
    cost = ((seqs != lut[read][None]) * quality[None]).sum(axis=1)
    order = np.argsort(cost)
    if cost[order[1]] - cost[order[0]] <= TIE_TOLERANCE:
        return -2
    return int(candidates[order[0]])


# --------------------------------------------------------------------------- spots


def spot_filter(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Negative Laplacian of Gaussian of each image: bright blobs become positive peaks.

    Parameters
    ----------
    images : numpy.ndarray
        ``(..., H, W)`` stack.

    Returns
    -------
    numpy.ndarray
        ``float32`` filtered stack, background-free (LoG of a flat region is 0).
    """
    flat = images.reshape(-1, *images.shape[-2:]).astype(np.float32)
    out = np.empty_like(flat)
    for i, img in enumerate(flat):
        out[i] = -ndi.gaussian_laplace(img, sigma) * sigma**2
    return out.reshape(images.shape)


#: Gaussian scales (pixels) :func:`estimate_spot_sigma` tries: 0.35 to 5.6 pixels.
SPOT_SIGMAS = tuple(float(0.35 * 2 ** (i / 3)) for i in range(13))
#: Spots an estimate measures (the brightest); fewer than :data:`MIN_SPOTS_FOR_SCALE`
#: and it gives up.
SCALE_SPOTS = 400
MIN_SPOTS_FOR_SCALE = 20
#: Largest side (pixels) of the central crop measured: hundreds of spots at any
#: magnification, at a fixed cost per site.
SCALE_CROP = 512


def estimate_spot_sigma(
    images: np.ndarray, sigmas: tuple[float, ...] = SPOT_SIGMAS
) -> float | None:
    """Gaussian sigma (pixels) of the amplicon spots of an SBS site.

    Spots are a few pixels wide at 10X and twice as many at 20X; a detector tuned in
    pixels for one magnification misses or merges them at the other. Scale selection
    (Lindeberg): the scale-normalised response ``-sigma**2 * LoG`` of a Gaussian blob of
    width ``s`` peaks at ``sigma = s``. Each of the :data:`SCALE_SPOTS` strongest local
    maxima (over space and scale) of the brightest base channel (a central crop of at
    most :data:`SCALE_CROP` pixels) votes for the scale of its peak (refined by a
    parabola in log sigma); the median vote is the estimate.

    Parameters
    ----------
    images : numpy.ndarray
        ``(..., 4, H, W)`` base-channel images (e.g. every cycle of a site) or one
        ``(H, W)`` image; the brightest channel of the first cycle is measured.
    sigmas : tuple of float
        Scales tried, increasing and geometric.

    Returns
    -------
    float or None
        The sigma, or None when fewer than :data:`MIN_SPOTS_FOR_SCALE` spots peak
        inside the range (a blank or spot-free image: nothing to measure).
    """
    img = np.asarray(images, np.float32)
    while img.ndim > 3:
        img = img[0]
    score = img.max(axis=0) if img.ndim == 3 else img
    if score.ndim == 2:
        y0, x0 = (max(0, (n - SCALE_CROP) // 2) for n in score.shape)
        score = score[y0 : y0 + SCALE_CROP, x0 : x0 + SCALE_CROP]
    if score.ndim != 2 or float(score.max()) <= float(score.min()):
        return None
    # Differences of Gaussians of a fixed ratio approximate the scale-normalised LoG at
    # the geometric mean of their sigmas, and give exactly 0 on a flat background; the
    # blur is done in Fourier space because a sampled kernel of sub-pixel sigma is no
    # Gaussian (nor is a sampled LoG's sum zero).
    spectrum = np.fft.rfft2(score - float(np.median(score)))
    levels = [
        np.fft.irfft2(ndi.fourier_gaussian(spectrum, s, n=score.shape[1]), s=score.shape)
        for s in sigmas
    ]
    stack = np.stack([a - b for a, b in itertools.pairwise(levels)])
    stack = stack.astype(np.float32)
    centres = np.sqrt(np.asarray(sigmas[:-1]) * np.asarray(sigmas[1:]))
    # Spots are found on each level's own noise scale (a wide spot spreads the same
    # photons thinner, below the noise of the finest level), measured robustly on a
    # sparse grid of pixels (plenty for a median).
    flat = stack[:, ::4, ::4].reshape(len(stack), -1)
    med = np.median(flat, axis=1)
    mad = np.median(np.abs(flat - med[:, None]), axis=1) * 1.4826
    if not (mad > 0).all():
        return None
    z = ((stack - med[:, None, None]) / mad[:, None, None]).max(axis=0)
    peaks = feature.peak_local_max(
        z, min_distance=2, num_peaks=SCALE_SPOTS, threshold_abs=8.0, exclude_border=True
    )
    profile = stack[:, peaks[:, 0], peaks[:, 1]]  # (scales, spots)
    k = profile.argmax(axis=0)
    inner = (k > 0) & (k < len(centres) - 1)
    if int(inner.sum()) < MIN_SPOTS_FOR_SCALE:
        return None
    k, prof = k[inner], profile[:, inner]
    cols = np.arange(prof.shape[1])
    lo, mid, hi = prof[k - 1, cols], prof[k, cols], prof[k + 1, cols]
    curvature = lo - 2 * mid + hi
    offset = np.where(curvature < 0, 0.5 * (lo - hi) / np.where(curvature < 0, curvature, -1), 0)
    logs = np.log(centres)
    step = float(logs[1] - logs[0])
    return float(np.exp(np.median(logs[k] + np.clip(offset, -0.5, 0.5) * step)))


def detect_spots(
    filtered: np.ndarray,
    *,
    threshold: float | None = None,
    threshold_sd: float = 8.0,
    min_distance: int = 2,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Find amplicon spots on the LoG-filtered SBS stack.

    The score image is the brightest base channel at each pixel, averaged over
    cycles: a real amplicon lights one channel in every cycle.

    Parameters
    ----------
    filtered : numpy.ndarray
        ``(cycles, 4, H, W)`` output of :func:`spot_filter`.
    threshold : float, optional
        Absolute score threshold; by default ``threshold_sd`` robust standard
        deviations (median absolute deviation) above the median score.
    min_distance : int
        Minimum spacing of spots in pixels.
    mask : numpy.ndarray, optional
        Boolean image; spots outside it are dropped.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` integer (y, x) positions.
    """
    score = filtered.max(axis=1).mean(axis=0)
    if threshold is None:
        med = float(np.median(score))
        mad = float(np.median(np.abs(score - med))) * 1.4826
        if mad <= 0:
            # Noise-free background (synthetic or fully clipped): fall back to the
            # standard deviation, which the spots themselves make non-zero.
            mad = float(score.std()) / threshold_sd
        if mad <= 0:
            return np.zeros((0, 2), np.int64)
        threshold = med + threshold_sd * mad
    peaks = feature.peak_local_max(
        score, min_distance=min_distance, threshold_abs=threshold, exclude_border=False
    )
    if mask is not None and len(peaks):
        peaks = peaks[mask[peaks[:, 0], peaks[:, 1]]]
    return peaks.astype(np.int64)


def spot_intensities(filtered: np.ndarray, spots: np.ndarray, radius: int = 1) -> np.ndarray:
    """Brightest value within ``radius`` of each spot, per cycle and base channel.

    Taking the local maximum tolerates sub-pixel residual misalignment between cycles.

    Returns
    -------
    numpy.ndarray
        ``float32`` ``(n, cycles, 4)``.
    """
    c, b = filtered.shape[:2]
    if len(spots) == 0:
        return np.zeros((0, c, b), np.float32)
    size = 2 * radius + 1
    out = np.empty((len(spots), c, b), np.float32)
    ys, xs = spots[:, 0], spots[:, 1]
    for k in range(c):
        for j in range(b):
            local = ndi.maximum_filter(filtered[k, j], size=size) if radius else filtered[k, j]
            out[:, k, j] = local[ys, xs]
    return out


# --------------------------------------------------------------------------- calling


def estimate_crosstalk(
    values: np.ndarray, min_spots: int = 20, fallback: np.ndarray | None = None
) -> np.ndarray:
    """Estimate the 4x4 base-mixing matrix from spot intensities.

    Model: ``observed = M @ true`` with ``M[i, j]`` the fraction of base ``j``'s dye
    seen in channel ``i``, ``M[j, j] = 1``. For the spots whose brightest channel is
    ``j``, the median ratio of each channel to channel ``j`` estimates column ``j``.

    Parameters
    ----------
    values : numpy.ndarray
        ``(n, 4)`` intensities (any number of spots and cycles stacked).
    min_spots : int
        Columns with fewer dominant spots take ``fallback``'s column.
    fallback : numpy.ndarray, optional
        ``(4, 4)`` matrix for the columns that cannot be estimated (default identity).

    Returns
    -------
    numpy.ndarray
        ``float64`` ``(4, 4)`` matrix.
    """
    m = np.eye(4) if fallback is None else np.array(fallback, np.float64)
    v = np.clip(values.astype(np.float64), 0, None)
    if len(v) == 0:
        return m
    top = v.argmax(axis=1)
    for j in range(4):
        sel = (top == j) & (v[:, j] > 0)
        if sel.sum() < min_spots:
            continue
        ratios = v[sel] / v[sel, j : j + 1]
        col = np.median(ratios, axis=0)
        col[j] = 1.0
        # Leakage is a fraction: anything larger means the estimate is not crosstalk.
        m[:, j] = np.clip(col, 0.0, 0.9)
        m[j, j] = 1.0
    return m


def compensate(values: np.ndarray, crosstalk: np.ndarray) -> np.ndarray:
    """Undo crosstalk: ``true = inv(M) @ observed`` for every spot.

    Parameters
    ----------
    values : numpy.ndarray
        ``(..., 4)`` intensities.
    crosstalk : numpy.ndarray
        ``(4, 4)`` matrix from :func:`estimate_crosstalk`.
    """
    return values @ np.linalg.inv(crosstalk).T


def compensate_cycles(values: np.ndarray, min_spots: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Per-cycle crosstalk compensation and channel gain equalisation.

    Each cycle gets its own mixing matrix; a base with fewer than ``min_spots``
    dominant spots in a cycle (common on small images: a 4-cycle library may start few
    barcodes with G) takes its column from the matrix estimated on all cycles pooled,
    since dyes and filters do not change between cycles. Then every channel of every
    cycle is divided by the median of its called spots, so a bright dye does not win
    every close call; where a channel has too few called spots, its gain is
    predicted as cycle brightness x dye brightness (fitted on the others), so that all
    channels always share one scale. (A channel left unscaled next to scaled ones
    would be ~1000x brighter and win every spot.)

    Parameters
    ----------
    values : numpy.ndarray
        ``(n, cycles, 4)`` spot intensities.
    min_spots : int
        Spots a column or gain estimate needs.

    Returns
    -------
    compensated : numpy.ndarray
        ``(n, cycles, 4)``.
    matrices : numpy.ndarray
        ``(cycles, 4, 4)`` estimated mixing matrices.
    """
    n, c, _ = values.shape
    out = np.empty(values.shape, np.float64)
    mats = np.empty((c, 4, 4))
    pooled = estimate_crosstalk(values.reshape(-1, 4), min_spots)
    gains = np.full((c, 4), np.nan)
    for k in range(c):
        m = estimate_crosstalk(values[:, k], min_spots, fallback=pooled)
        comp = compensate(values[:, k].astype(np.float64), m)
        top = comp.argmax(axis=1) if n else np.zeros(0, int)
        for j in range(4):
            sel = top == j
            if sel.sum() >= min_spots:
                med = float(np.median(comp[sel, j]))
                if med > 0:
                    gains[k, j] = med
        out[:, k] = comp
        mats[k] = m
    out /= fill_gains(gains)[None]
    return out, mats


def fill_gains(gains: np.ndarray) -> np.ndarray:
    """Complete a ``(cycles, channels)`` table of gains with NaN holes.

    Fits ``log gain = cycle term + channel term`` on the known entries (alternating
    means) and predicts the holes from it. A table without any known entry becomes
    all ones (no scaling, the same for every channel).

    Examples
    --------
    >>> g = np.array([[1.0, 2.0], [3.0, np.nan]])
    >>> fill_gains(g).round(6).tolist()
    [[1.0, 2.0], [3.0, 6.0]]
    """
    known = np.isfinite(gains) & (gains > 0)
    if not known.any():
        return np.ones(gains.shape)
    logs = np.where(known, np.log(np.where(known, gains, 1.0)), 0.0)
    rows, cols = known.any(axis=1), known.any(axis=0)
    a = np.zeros(gains.shape[0])
    b = np.zeros(gains.shape[1])
    for _ in range(50):
        a[rows] = (np.where(known, logs - b[None], 0).sum(1) / np.maximum(known.sum(1), 1))[rows]
        b[cols] = (np.where(known, logs - a[:, None], 0).sum(0) / np.maximum(known.sum(0), 1))[cols]
    # Cycles (channels) with no known gain at all take the average cycle (channel).
    a[~rows] = a[rows].mean()
    b[~cols] = b[cols].mean()
    return np.where(known, gains, np.exp(a[:, None] + b[None]))


def call_bases(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Call each cycle's base as the brightest channel.

    Parameters
    ----------
    values : numpy.ndarray
        ``(n, cycles, 4)`` (compensated) intensities.

    Returns
    -------
    bases : numpy.ndarray
        ``int8`` ``(n, cycles)`` base indices into :data:`BASES`.
    quality : numpy.ndarray
        ``float32`` ``(n, cycles)`` in [0, 1]: ``(top - second) / top``; 0 when the
        brightest channel is not positive.
    """
    order = np.sort(values, axis=-1)
    top, second = order[..., -1], order[..., -2]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(top > 0, (top - np.maximum(second, 0)) / top, 0.0)
    return values.argmax(axis=-1).astype(np.int8), np.clip(q, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class CellCalls:
    """Barcode of each cell, aligned arrays sorted by cell label.

    ``barcode_index`` is -1 for unassigned cells; ``reason`` says why (``""`` when
    assigned). ``second_index`` is the runner-up barcode (-1 when the cell's reads
    name only one), as brieflow reports the top two. ``count``/``second_count`` are
    the reads of those two, ``score``/``second_score`` their summed read weights.
    """

    label: np.ndarray
    n_spots: np.ndarray
    n_matched: np.ndarray
    barcode_index: np.ndarray
    count: np.ndarray
    second_count: np.ndarray
    confidence: np.ndarray
    reason: list[str]
    second_index: np.ndarray
    score: np.ndarray
    second_score: np.ndarray


def base_accuracy(base_quality: np.ndarray) -> np.ndarray:
    """Probability that a base call is right, from its quality ``(top - second) / top``.

    A call whose two brightest channels are equal (quality 0) is a coin toss between
    them (0.5); a call with one channel lit alone (quality 1) is almost surely right
    (0.99, so that a single base never outweighs everything else).
    """
    return 0.5 + 0.49 * np.clip(np.asarray(base_quality, np.float64), 0.0, 1.0)


def barcode_log_likelihood(
    reads: np.ndarray, base_quality: np.ndarray, candidates: np.ndarray
) -> np.ndarray:
    """Log-likelihood of each candidate barcode given a cell's reads.

    Each read's base at each cycle is right with probability ``p`` =
    :func:`base_accuracy` of its quality, otherwise one of the three other bases.
    Only the cycles where candidates differ change their ranking, so equal read
    counts are decided by how clearly the reads were called at the bases that
    distinguish the barcodes, not by their overall quality.

    Parameters
    ----------
    reads : numpy.ndarray
        ``(n, cycles)`` base indices of the cell's reads.
    base_quality : numpy.ndarray
        ``(n, cycles)`` their per-base quality.
    candidates : numpy.ndarray
        ``(m, cycles)`` base indices of the candidate barcodes.

    Returns
    -------
    numpy.ndarray
        ``float64`` ``(m,)``.
    """
    p = base_accuracy(base_quality)
    agree = reads[None, :, :] == candidates[:, None, :]
    return np.where(agree, np.log(p), np.log((1.0 - p) / 3.0)).sum(axis=(1, 2))


def _posterior(
    reads: np.ndarray, base_quality: np.ndarray, matched: np.ndarray, library: Library,
    lut: np.ndarray,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """Posterior of a cell's matched barcodes, and the mass of its unmatched neighbours.

    Candidates are the matched barcodes plus every library barcode within one base
    more than each read's nearest (flat prior over them).
    """
    d = hamming_matrix(encode(reads), library.codes)
    near = np.flatnonzero((d <= d.min(axis=1, keepdims=True) + 1).any(axis=0))
    rivals = np.setdiff1d(near, matched)
    ll = barcode_log_likelihood(reads, base_quality, lut[np.r_[matched, rivals]])
    post = np.exp(ll - ll.max())
    post /= post.sum()
    return post[: len(matched)], float(post[len(matched) :].sum())


def assign_cells(
    labels: np.ndarray,
    spot_cell: np.ndarray,
    spot_barcode: np.ndarray,
    spot_weight: np.ndarray,
    *,
    min_count: int = 1,
    spot_quality: np.ndarray | None = None,
    min_quality: float = 0.0,
    min_odds: float = 2.0,
    reads: np.ndarray | None = None,
    base_quality: np.ndarray | None = None,
    library: Library | None = None,
) -> CellCalls:
    """Give each cell the barcode its matched reads support best.

    With ``reads``, ``base_quality`` and ``library`` the barcodes its reads matched
    are ranked by :func:`barcode_log_likelihood` over all the cell's used reads, so
    two barcodes seen equally often are decided by the evidence at the bases that
    tell them apart; ``score`` is then each barcode's posterior probability among
    those candidates. Without them the score is the summed ``spot_weight`` (all
    ones: read counts). The alternatives weighed against the winner include the
    library barcodes one base further from each read than its match, which no read
    matched: a lone read one mismatch from a barcode, with that base unsure, is as
    likely a read of a neighbour with one more error. A cell is left ambiguous ("tie
    between barcodes") only when the winner is less than ``min_odds`` times as likely
    (or as supported) as all the alternatives together.

    Parameters
    ----------
    labels : numpy.ndarray
        Cell labels to report (every cell, with or without spots).
    spot_cell : numpy.ndarray
        Cell label of each spot (0 = outside cells).
    spot_barcode : numpy.ndarray
        Library index of each spot's read (negative = no match / ambiguous).
    spot_weight : numpy.ndarray
        Weight of each read when no base-level evidence is given (all ones counts
        reads).
    min_count : int
        Reads of the winning barcode a call needs.
    spot_quality : numpy.ndarray, optional
        Per-read quality compared with ``min_quality`` (default: ``spot_weight``).
    min_quality : float
        Reads below it are not used (they still count in ``n_spots``).
    min_odds : float
        How many times better supported the winner must be than all alternatives.
    reads, base_quality : numpy.ndarray, optional
        ``(n_spots, cycles)`` base indices and per-base quality of every spot.
    library : Library, optional
        Needed with ``reads``.

    Returns
    -------
    CellCalls
        ``confidence`` is the called barcode's share of the cell's matched evidence
        (its posterior probability with base-level evidence).
    """
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    pos = {int(v): i for i, v in enumerate(labels)}
    n_spots = np.zeros(n, np.int32)
    n_matched = np.zeros(n, np.int32)
    best = np.full(n, -1, np.int64)
    second_bc = np.full(n, -1, np.int64)
    count = np.zeros(n, np.int32)
    second = np.zeros(n, np.int32)
    score = np.zeros(n, np.float32)
    second_score = np.zeros(n, np.float32)
    conf = np.zeros(n, np.float32)
    reason = ["no spots"] * n
    weight = np.asarray(spot_weight, np.float64)
    quality = weight if spot_quality is None else np.asarray(spot_quality, np.float64)
    evidence = reads is not None and base_quality is not None and library is not None
    if evidence:
        assert library is not None
        lut = np.array([[_CODE[b] for b in bcode] for bcode in library.barcodes])
    spot_ids = np.arange(len(spot_cell))
    inside = spot_cell > 0
    cells_s = spot_cell[inside].astype(np.int64)
    bc_s = spot_barcode[inside]
    w_s, q_s, id_s = weight[inside], quality[inside], spot_ids[inside]
    for lab, cnt in zip(*np.unique(cells_s, return_counts=True), strict=True):
        if int(lab) in pos:
            n_spots[pos[int(lab)]] = cnt
    low = np.zeros(n, bool)
    for lab in np.unique(cells_s[(bc_s >= 0) & (q_s < min_quality)]):
        if int(lab) in pos:
            low[pos[int(lab)]] = True
    ok = (bc_s >= 0) & (q_s >= min_quality)
    order = np.lexsort((bc_s[ok], cells_s[ok]))
    cs, bs, ws = cells_s[ok][order], bc_s[ok][order], w_s[ok][order]
    ids = id_s[ok][order]
    if len(cs):
        # Group by (cell, barcode): read counts and summed weights per group.
        key_change = np.r_[True, (cs[1:] != cs[:-1]) | (bs[1:] != bs[:-1])]
        starts = np.flatnonzero(key_change)
        g_cell, g_bc = cs[starts], bs[starts]
        g_cnt = np.diff(np.r_[starts, len(cs)])
        g_w = np.add.reduceat(ws, starts)
        cell_starts = np.flatnonzero(np.r_[True, g_cell[1:] != g_cell[:-1]])
        cell_ends = np.r_[cell_starts[1:], len(g_cell)]
        for s, e in zip(cell_starts, cell_ends, strict=True):
            i = pos.get(int(g_cell[s]))
            if i is None:
                continue
            cnts, wsum = g_cnt[s:e], g_w[s:e]
            others = 0.0
            if evidence:
                assert reads is not None and base_quality is not None and library is not None
                own = ids[starts[s] : (starts[e] if e < len(starts) else len(cs))]
                wsum, others = _posterior(reads[own], base_quality[own], g_bc[s:e], library, lut)
            rank = np.lexsort((-cnts, -wsum))
            top = rank[0]
            n_matched[i] = int(cnts.sum())
            count[i], score[i] = int(cnts[top]), float(wsum[top])
            if len(rank) > 1:
                second[i], second_score[i] = int(cnts[rank[1]]), float(wsum[rank[1]])
                second_bc[i] = int(g_bc[s + rank[1]])
            if count[i] < min_count:
                reason[i] = f"only {count[i]} matching spot(s), need {min_count}"
            elif wsum[top] < min_odds * (float(wsum.sum() - wsum[top]) + others):
                reason[i] = "tie between barcodes"
            else:
                best[i] = int(g_bc[s + top])
                total = float(wsum.sum())
                conf[i] = score[i] / total if total > 0 else count[i] / n_matched[i]
                reason[i] = ""
    for i in range(n):
        if n_spots[i] and not n_matched[i]:
            reason[i] = (
                f"every matching read below quality {min_quality:g}"
                if low[i]
                else "no spot read matched a barcode"
            )
    return CellCalls(
        labels, n_spots, n_matched, best, count, second, conf, reason, second_bc, score,
        second_score,
    )  # fmt: skip


# --------------------------------------------------------------------------- site


#: Spot sigma (pixels) used when none is given and a site has too few spots to measure.
FALLBACK_SPOT_SIGMA = 1.0


@dataclass(frozen=True)
class SpotParams:
    """Tuning of :func:`read_site`.

    Attributes
    ----------
    sigma : float or None
        LoG scale in pixels (about the spot's PSF sigma). ``None`` measures it on the
        site's images (:func:`estimate_spot_sigma`), so one setting serves 10X and 20X
        and any binning.
    threshold_sd : float
        Spot score threshold in robust standard deviations above the median.
    min_distance : int or None
        Minimum spot spacing in pixels; ``None``: 1.5 sigma (2 px at sigma 1).
    max_distance : int
        Mismatches allowed between a read and its barcode.
    compensate : bool
        Estimate and undo per-cycle crosstalk.
    min_count : int
        Spots that must agree on a cell's barcode.
    min_quality : float
        Reads whose weakest base call has a lower quality (0..1, see
        :func:`call_bases`) are not used for the cell's call.
    min_odds : float
        How many times more likely than all alternatives a cell's barcode must be
        (see :func:`assign_cells`); below, the cell is a tie.
    """

    sigma: float | None = None
    threshold_sd: float = 8.0
    min_distance: int | None = None
    max_distance: int = 1
    compensate: bool = True
    min_count: int = 1
    min_quality: float = 0.0
    min_odds: float = 2.0

    def resolve(self, sbs: np.ndarray) -> tuple[SpotParams, str]:
        """These parameters with a sigma and spacing, and where the sigma came from.

        Returns
        -------
        tuple of (SpotParams, str)
            ``"given"``, ``"estimated"`` (from ``sbs``) or ``"fallback"``
            (:data:`FALLBACK_SPOT_SIGMA`: too few spots to measure).
        """
        sigma, source = self.sigma, "given"
        if sigma is None:
            sigma = estimate_spot_sigma(sbs)
            source = "estimated"
            if sigma is None:
                sigma, source = FALLBACK_SPOT_SIGMA, "fallback"
        spacing = self.min_distance
        if spacing is None:
            spacing = max(1, int(np.floor(1.5 * sigma + 0.5)))
        return replace(self, sigma=float(sigma), min_distance=spacing), source


@dataclass(frozen=True)
class SiteReads:
    """Spots of one site and the barcode of each of its cells.

    ``spot_sigma`` is the LoG scale (pixels) the spots were found with and
    ``spot_sigma_source`` where it came from (see :meth:`SpotParams.resolve`).
    """

    spots: dict[str, np.ndarray | list[str]]
    cells: CellCalls
    crosstalk: np.ndarray
    spot_sigma: float = FALLBACK_SPOT_SIGMA
    spot_sigma_source: str = "given"


def imaged_in_all_cycles(sbs: np.ndarray, margin: int = 0) -> np.ndarray:
    """Pixels that every cycle imaged.

    Alignment shifts each cycle; pixels it could not fill are 0 in every channel. A
    spot there has no signal in that cycle and would read as garbage, so it is
    excluded along with a ``margin`` where the LoG filter sees the edge.

    Parameters
    ----------
    sbs : numpy.ndarray
        ``(cycles, channels, H, W)``.

    Returns
    -------
    numpy.ndarray
        Boolean ``(H, W)``.
    """
    covered = np.all(np.any(sbs != 0, axis=1), axis=0)
    if margin and not covered.all():
        covered = ndi.binary_erosion(covered, iterations=margin, border_value=1)
    return covered


def read_site(
    sbs: np.ndarray, cells: np.ndarray, library: Library, params: SpotParams | None = None
) -> SiteReads:
    """Detect spots, call bases, match reads and assign cells on one aligned site.

    Parameters
    ----------
    sbs : numpy.ndarray
        ``(cycles, 4, H, W)`` aligned base-channel images, channels in
        :data:`BASES` order, ``cycles == library.length``.
    cells : numpy.ndarray
        Cell labels in the same frame.
    library : Library
    params : SpotParams, optional

    Returns
    -------
    SiteReads
        ``spots`` columns: ``y, x, cell, read, quality, barcode_index, distance``.
    """
    p = params or SpotParams()
    if sbs.ndim != 4 or sbs.shape[1] != 4:
        raise ValueError(f"expected (cycles, 4, H, W), got {sbs.shape}")
    if sbs.shape[0] != library.length:
        raise ValueError(f"{sbs.shape[0]} cycles but barcodes of {library.length} bases")
    p, sigma_source = p.resolve(sbs)
    assert p.sigma is not None and p.min_distance is not None
    filtered = spot_filter(sbs, p.sigma)
    covered = imaged_in_all_cycles(sbs, margin=int(np.ceil(3 * p.sigma)) + 1)
    spots = detect_spots(
        filtered,
        threshold_sd=p.threshold_sd,
        min_distance=p.min_distance,
        mask=(cells > 0) & covered,
    )
    # The local maximum tolerates a residual misalignment of about a spot's width.
    values = spot_intensities(filtered, spots, radius=max(1, int(np.floor(0.75 * p.sigma + 0.5))))
    if p.compensate:
        values, mats = compensate_cycles(values)
    else:
        mats = np.broadcast_to(np.eye(4), (sbs.shape[0], 4, 4)).copy()
    bases, quality = call_bases(values)
    if len(spots):
        idx, dist = match_reads(bases, library, p.max_distance, quality=quality)
    else:
        idx, dist = np.zeros(0, np.int64), np.zeros(0, np.int16)
    spot_cell = cells[spots[:, 0], spots[:, 1]] if len(spots) else np.zeros(0, np.int64)
    spot_q = quality.min(axis=1) if len(spots) else np.zeros(0, np.float32)
    labels = np.unique(cells)
    labels = labels[labels > 0]
    calls = assign_cells(
        labels, spot_cell, idx, np.ones(len(spots)), min_count=p.min_count,
        spot_quality=spot_q, min_quality=p.min_quality, min_odds=p.min_odds,
        reads=bases, base_quality=quality, library=library,
    )  # fmt: skip
    if len(labels) and not covered.all():
        area = np.bincount(cells.ravel(), minlength=int(labels.max()) + 1)[labels]
        inside = np.bincount(cells[covered].ravel(), minlength=int(labels.max()) + 1)[labels]
        for i in np.flatnonzero((calls.n_spots == 0) & (inside < 0.5 * area)):
            calls.reason[i] = "outside the area imaged in every cycle"
    table: dict[str, np.ndarray | list[str]] = {
        "y": spots[:, 0].astype(np.int32),
        "x": spots[:, 1].astype(np.int32),
        "cell": spot_cell.astype(np.int32),
        "read": decode(bases) if len(spots) else [],
        "quality": spot_q.astype(np.float32),
        "barcode_index": idx,
        "distance": dist,
    }
    return SiteReads(table, calls, mats, p.sigma, sigma_source)
