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


def _entropy(p: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return np.bincount(group, terms, minlength=n)


def _sparse_sum(key: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys and the sum of ``weight`` per key."""
    uniq, inverse = np.unique(key, return_inverse=True)
    return uniq, np.bincount(inverse, weight, minlength=len(uniq))


def haralick_direction(
    labels: np.ndarray, levels: np.ndarray, n: int, offset: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The 13 features of every label ``1..n-1`` for one displacement.

    Parameters
    ----------
    labels : numpy.ndarray
        Label image (int).
    levels : numpy.ndarray
        Grey levels 0..255 (int64), 0 outside objects (see :func:`quantise`).
    n : int
        One more than the largest label.
    offset : tuple of int
        ``(dy, dx)`` already multiplied by the scale.

    Returns
    -------
    tuple of numpy.ndarray
        ``(13, n)`` feature values and the ``(n,)`` number of valid pairs.
    """
    dy, dx = offset
    h, w = labels.shape
    ys, ye = max(0, -dy), min(h, h - dy)
    xs, xe = max(0, -dx), min(w, w - dx)
    la = labels[ys:ye, xs:xe]
    lb = labels[ys + dy : ye + dy, xs + dx : xe + dx]
    qa = levels[ys:ye, xs:xe]
    qb = levels[ys + dy : ye + dy, xs + dx : xe + dx]
    ok = (la == lb) & (la > 0) & (qa > 0) & (qb > 0)
    lab, a, b = la[ok].astype(np.int64), qa[ok], qb[ok]
    # Symmetric co-occurrence: each pair counts as (a, b) and (b, a).
    lab = np.concatenate([lab, lab])
    i = np.concatenate([a, b])
    j = np.concatenate([b, a])
    key, count = _sparse_sum((lab << 16) | (i << 8) | j, np.ones(len(lab)))
    lab, i, j = key >> 16, (key >> 8) & 255, key & 255
    total = np.bincount(lab, count, minlength=n)
    p = count / total[lab]
    fi, fj = i.astype(np.float64), j.astype(np.float64)
    out = np.full((13, n), np.nan)
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
    entropy = _entropy(p, lab, n)
    # Marginal, sum and difference distributions per object.
    k, pk = _sparse_sum((lab << 9) | (i + j), p)
    sum_ent = _entropy(pk, k >> 9, n)
    k, pk = _sparse_sum((lab << 8) | np.abs(i - j), p)
    diff_lab = k >> 8
    diff_ent = _entropy(pk, diff_lab, n)
    maxv = np.zeros(n)
    np.maximum.at(maxv, labels.ravel(), levels.ravel().astype(np.float64))
    maxv += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        diff_var = np.bincount(diff_lab, pk * pk, minlength=n) / maxv - 1 / maxv**2
    k, px = _sparse_sum((lab << 8) | i, p)
    px_lab = k >> 8
    hx = _entropy(px, px_lab, n)
    px_full = np.zeros((n, 256))
    px_full[px_lab, k & 255] = px
    with np.errstate(divide="ignore"):
        cross = px_full[lab, i] * px_full[lab, j]
        hxy1 = -np.bincount(lab, p * np.log2(cross), minlength=n)
    hxy2 = 2 * hx
    with np.errstate(divide="ignore", invalid="ignore"):
        info1 = np.where(hx > 0, (entropy - hxy1) / hx, entropy - hxy1)
    info2 = np.sqrt(np.clip(1 - np.exp(-2 * (hxy2 - entropy)), 0, None))
    values = (asm, contrast, corr, vx, idm, sum_avg, sum_var, sum_ent, entropy, diff_var,
              diff_ent, info1, info2)  # fmt: skip
    for f, v in enumerate(values):
        out[f] = v
    return out, total


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
    per_dir, valid = [], np.ones(n, bool)
    for dy, dx in DIRECTIONS:
        values, pairs = haralick_direction(labels, levels, n, (dy * scale, dx * scale))
        per_dir.append(values)
        valid &= pairs > 0
    out: dict[str, np.ndarray] = {}
    for d, values in enumerate(per_dir):
        for f, name in enumerate(HARALICK):
            out[f"{name}_{scale}_{d:02d}_{gray_levels}"] = np.where(valid, values[f], np.nan)[1:]
    return out
