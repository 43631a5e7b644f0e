"""Haralick texture of every object at once, as CellProfiler's MeasureTexture computes it.

CellProfiler (and ``cp_measure``, which reproduces it) quantises the image to 256 grey
levels, crops each object, and calls ``mahotas.features.haralick`` per object: a dense
256 x 256 co-occurrence matrix per object and direction, about 12 ms per object per
channel and scale. Here the co-occurrence matrices of all objects are built sparsely
in one sort (only the grey-level pairs that occur), and the 13 features are sums over
those entries, so the cost grows with the number of pixels, not objects x 256^2.
``tests/starrynight/test_features_haralick.py`` checks the values against
``cp_measure`` (mahotas) to float precision; ``bench/bench_features.py`` times both.

Conventions kept from mahotas / CellProfiler 4: symmetric co-occurrence; pairs that
involve grey level 0 (background, or a foreground pixel that quantises to 0) are
ignored; an object with no valid pair in any direction gets NaN for every feature;
``Correlation`` is 1 when a marginal has no spread; ``DifferenceVariance`` is the
variance of the vector P(|i-j|) over the object's levels 0..max; logarithms base 2.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.util import img_as_ubyte

#: The 13 Haralick features in CellProfiler's order.
HARALICK = (
    "AngularSecondMoment", "Contrast", "Correlation", "Variance", "InverseDifferenceMoment",
    "SumAverage", "SumVariance", "SumEntropy", "Entropy", "DifferenceVariance",
    "DifferenceEntropy", "InfoMeas1", "InfoMeas2",
)  # fmt: skip
#: Directions (dy, dx) in CellProfiler's order: 0, 135, 90 and 45 degrees.
DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1))


def quantise(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """256 grey levels as CellProfiler: ``img_as_ubyte`` of the [0, 1] image, 0 outside."""
    q = img_as_ubyte(image)
    return np.where(labels > 0, q, 0).astype(np.int64)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Base-2 entropy of each row of a dense probability matrix (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)


def haralick_direction(
    labels: np.ndarray, levels: np.ndarray, maxv: np.ndarray, offset: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The 13 features of every label ``0..n-1`` for one displacement.

    Parameters
    ----------
    labels : numpy.ndarray
        Label image (int64).
    levels : numpy.ndarray
        Grey levels 0..255 (int64), 0 outside objects (see :func:`quantise`).
    maxv : numpy.ndarray
        Per label, one more than its highest grey level (mahotas' matrix size).
    offset : tuple of int
        ``(dy, dx)`` already multiplied by the scale.

    Returns
    -------
    tuple of numpy.ndarray
        ``(13, n)`` feature values and the ``(n,)`` number of valid pairs.
    """
    n = len(maxv)
    dy, dx = offset
    h, w = labels.shape
    ys, ye = max(0, -dy), min(h, h - dy)
    xs, xe = max(0, -dx), min(w, w - dx)
    la = labels[ys:ye, xs:xe]
    lb = labels[ys + dy : ye + dy, xs + dx : xe + dx]
    qa = levels[ys:ye, xs:xe]
    qb = levels[ys + dy : ye + dy, xs + dx : xe + dx]
    ok = (la == lb) & (la > 0) & (qa > 0) & (qb > 0)
    # 32-bit keys sort about twice as fast as 64-bit ones and hold labels below 2^15.
    dtype = np.int32 if n < 2**15 else np.int64
    lab, a, b = la[ok].astype(dtype), qa[ok].astype(dtype), qb[ok].astype(dtype)
    # Symmetric co-occurrence: each pair counts as (a, b) and (b, a). One sort of the
    # packed keys gives every object's sparse matrix.
    keys = np.sort(np.concatenate([(lab << 16) | (a << 8) | b, (lab << 16) | (b << 8) | a]))
    starts = np.flatnonzero(np.diff(keys, prepend=-1))
    key = keys[starts]
    count = np.diff(np.append(starts, keys.size)).astype(np.float64)
    lab, i, j = key >> 16, (key >> 8) & 255, key & 255
    total = np.bincount(lab, count, minlength=n)
    p = count / total[lab]
    fi, fj = i.astype(np.float64), j.astype(np.float64)
    asm = np.bincount(lab, p * p, minlength=n)
    d = fi - fj
    contrast = np.bincount(lab, p * d * d, minlength=n)
    ux = np.bincount(lab, p * fi, minlength=n)
    vx = np.bincount(lab, p * fi * fi, minlength=n) - ux**2
    exy = np.bincount(lab, p * fi * fj, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(vx > 0, (exy - ux * ux) / vx, 1.0)
    idm = np.bincount(lab, p / (1 + d * d), minlength=n)
    s = fi + fj
    sum_avg = np.bincount(lab, p * s, minlength=n)
    sum_var = np.bincount(lab, p * s * s, minlength=n) - sum_avg**2
    with np.errstate(divide="ignore"):
        entropy = -np.bincount(lab, p * np.log2(p), minlength=n)
    # Dense per-object distributions of i + j, |i - j| and i (the marginal).
    lab64 = lab.astype(np.int64)
    p_sum = np.bincount(lab64 * 511 + (i + j), p, minlength=n * 511).reshape(n, 511)
    p_diff = np.bincount(lab64 * 256 + np.abs(i - j), p, minlength=n * 256).reshape(n, 256)
    px = np.bincount(lab64 * 256 + i, p, minlength=n * 256).reshape(n, 256)
    sum_ent = _entropy(p_sum)
    diff_ent = _entropy(p_diff)
    # mahotas: the variance of the vector P(|i-j|) over its maxv entries (sum 1).
    diff_var = (p_diff**2).sum(axis=1) / maxv - 1 / maxv**2
    hx = _entropy(px)
    with np.errstate(divide="ignore"):
        hxy1 = -np.bincount(lab, p * np.log2(px[lab, i] * px[lab, j]), minlength=n)
    hxy2 = 2 * hx  # -sum px(i) py(j) log2(px(i) py(j)) with px = py
    with np.errstate(divide="ignore", invalid="ignore"):
        info1 = np.where(hx > 0, (entropy - hxy1) / hx, entropy - hxy1)
    info2 = np.sqrt(np.clip(1 - np.exp(-2 * (hxy2 - entropy)), 0, None))
    values = np.stack([asm, contrast, corr, vx, idm, sum_avg, sum_var, sum_ent, entropy,
                       diff_var, diff_ent, info1, info2])  # fmt: skip
    return values, total


def haralick_features(
    labels: np.ndarray, image: np.ndarray, scale: int = 3, gray_levels: int = 256
) -> dict[str, np.ndarray]:
    """CellProfiler's Haralick features of every object, for the 4 directions.

    Parameters
    ----------
    labels : numpy.ndarray
        Label image (0 background).
    image : numpy.ndarray
        Intensities in [0, 1] (float) or an integer image (scaled by its dtype's range).
    scale : int
        Distance in pixels between the pixels of a pair.
    gray_levels : int
        Only 256 (CellProfiler 3/4's default) is implemented.

    Returns
    -------
    dict of str to numpy.ndarray
        ``<Feature>_<scale>_<direction:02d>_256`` (as ``cp_measure``), one value per
        label ``1..labels.max()``.
    """
    if gray_levels != 256:
        raise ValueError(f"gray_levels {gray_levels}: only 256 is implemented")
    if scale < 1:
        raise ValueError(f"scale must be at least 1 pixel, got {scale}")
    labels = np.asarray(labels, np.int64)
    n = int(labels.max(initial=0)) + 1
    levels = quantise(image, labels)
    maxv = ndi.maximum(levels, labels, np.arange(n)).astype(np.float64) + 1 if n > 1 else np.ones(1)
    per_dir, valid = [], np.ones(n, bool)
    for dy, dx in DIRECTIONS:
        values, pairs = haralick_direction(labels, levels, maxv, (dy * scale, dx * scale))
        per_dir.append(values)
        valid &= pairs > 0
    out: dict[str, np.ndarray] = {}
    for d, values in enumerate(per_dir):
        for f, name in enumerate(HARALICK):
            out[f"{name}_{scale}_{d:02d}_{gray_levels}"] = np.where(valid, values[f], np.nan)[1:]
    return out
