"""Per-cell phenotype measurements with CellProfiler-style column names.

Shape (moments, perimeter), intensity statistics, quantiles and texture are computed
for all objects at once with ``bincount`` and one sort, rather than with
``skimage.measure.regionprops_table``'s per-object loop, which costs about a second
per thousand objects; a test checks the values against ``regionprops``.

Column names follow CellProfiler: ``<Object>_AreaShape_<Feature>``,
``<Object>_Intensity_<Feature>_<Channel>``, ``<Object>_Texture_<Feature>_<Channel>``.
Intensities are scaled to [0, 1] by the dtype's range, as CellProfiler does.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage as ndi

QUANTILES = {"LowerQuartileIntensity": 0.25, "MedianIntensity": 0.5, "UpperQuartileIntensity": 0.75}


def _scale(image: np.ndarray) -> np.ndarray:
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float64) / np.iinfo(image.dtype).max
    return image.astype(np.float64)


def shape_features(labels: np.ndarray, ids: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """Size and shape of the objects ``ids`` (rows in that order; absent ids give NaN).

    Moments come from ``bincount`` over all objects at once (the per-object loop of
    ``regionprops`` costs ~1 s per thousand objects). ``Perimeter`` counts exposed
    pixel edges times π/4 (the Crofton correction that makes it unbiased for
    isotropic shapes); ``FormFactor`` is 4πA/P²; ``Extent`` is area over bounding-box
    area; axes, ``Eccentricity`` and ``Orientation`` (radians, from the row axis)
    are those of the ellipse with the same second moments, as in ``regionprops``.

    Returns
    -------
    dict of str to numpy.ndarray
        ``<prefix>_AreaShape_*`` columns.
    """
    n = max(int(labels.max(initial=0)), int(ids.max(initial=0))) + 1
    lab = labels.ravel()
    yy, xx = np.indices(labels.shape)
    yy, xx = yy.ravel().astype(np.float64), xx.ravel().astype(np.float64)
    area = np.bincount(lab, minlength=n).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cy = np.bincount(lab, yy, minlength=n) / area
        cx = np.bincount(lab, xx, minlength=n) / area
        dy, dx = yy - cy[lab], xx - cx[lab]
        # Central moments over area, as regionprops (no Bessel correction).
        myy = np.bincount(lab, dy * dy, minlength=n) / area
        mxx = np.bincount(lab, dx * dx, minlength=n) / area
        mxy = np.bincount(lab, dy * dx, minlength=n) / area
        common = np.sqrt(((myy - mxx) / 2) ** 2 + mxy**2)
        l1 = (myy + mxx) / 2 + common
        l2 = np.clip((myy + mxx) / 2 - common, 0, None)
        major, minor = 4 * np.sqrt(l1), 4 * np.sqrt(l2)
        ecc = np.sqrt(np.clip(1 - l2 / l1, 0, 1))
        orient = 0.5 * np.arctan2(2 * mxy, myy - mxx)
    padded = np.pad(labels, 1)
    edges = np.zeros(n)
    for a, b in ((padded[1:, :], padded[:-1, :]), (padded[:, 1:], padded[:, :-1])):
        diff = a != b
        edges += np.bincount(a[diff], minlength=n)[:n] + np.bincount(b[diff], minlength=n)[:n]
    perim = edges * np.pi / 4
    boxes = ndi.find_objects(labels, max_label=n - 1)
    box_area = np.full(n, np.nan)
    for i, sl in enumerate(boxes, start=1):
        if sl is not None:
            box_area[i] = (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start)
    present = area[ids] > 0

    def col(values: np.ndarray) -> np.ndarray:
        return np.where(present, values[ids], np.nan)

    c = f"{prefix}_AreaShape"
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            f"{c}_Area": col(area),
            f"{c}_Perimeter": col(perim),
            f"{c}_FormFactor": col(np.where(perim > 0, 4 * np.pi * area / perim**2, np.nan)),
            f"{c}_Extent": col(area / box_area),
            f"{c}_MajorAxisLength": col(major),
            f"{c}_MinorAxisLength": col(minor),
            f"{c}_Eccentricity": col(ecc),
            f"{c}_Orientation": col(orient),
            f"{c}_Center_Y": col(cy),
            f"{c}_Center_X": col(cx),
        }


def intensity_features(
    labels: np.ndarray, image: np.ndarray, ids: np.ndarray, prefix: str, channel: str
) -> dict[str, np.ndarray]:
    """Intensity statistics of one channel over the objects ``ids``.

    Returns
    -------
    dict of str to numpy.ndarray
        Mean, integrated, standard deviation, min, max, quartiles and median of
        ``image`` (scaled to [0, 1]) inside each object; NaN for absent objects.
    """
    img = _scale(image).ravel()
    lab = labels.ravel()
    n = max(int(lab.max(initial=0)), int(ids.max(initial=0))) + 1
    inside = lab > 0
    lab_in, img_in = lab[inside], img[inside]
    count = np.bincount(lab_in, minlength=n).astype(np.float64)
    total = np.bincount(lab_in, img_in, minlength=n)
    sq = np.bincount(lab_in, img_in**2, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / count
        var = np.clip(sq / count - mean**2, 0, None)
    # One float sort on label + rank-preserving fraction is ~4x faster than lexsort.
    lo, hi = (float(img_in.min()), float(img_in.max())) if img_in.size else (0.0, 1.0)
    key = lab_in + 0.5 * (img_in - lo) / ((hi - lo) or 1.0)
    sorted_vals = img_in[np.argsort(key)]
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    present = count[ids] > 0
    c = f"{prefix}_Intensity"
    out = {
        f"{c}_MeanIntensity_{channel}": np.where(present, mean[ids], np.nan),
        f"{c}_IntegratedIntensity_{channel}": np.where(present, total[ids], np.nan),
        f"{c}_StdIntensity_{channel}": np.where(present, np.sqrt(var[ids]), np.nan),
    }
    first = start[ids]
    last = first + count[ids].astype(np.int64) - 1
    safe_first = np.where(present, first, 0)
    safe_last = np.where(present, last, 0)
    out[f"{c}_MinIntensity_{channel}"] = np.where(present, sorted_vals[safe_first], np.nan)
    out[f"{c}_MaxIntensity_{channel}"] = np.where(present, sorted_vals[safe_last], np.nan)
    for name, q in QUANTILES.items():
        pos = np.where(present, first + np.floor(q * (count[ids] - 1)).astype(np.int64), 0)
        out[f"{c}_{name}_{channel}"] = np.where(present, sorted_vals[pos], np.nan)
    return out


def texture_features(
    labels: np.ndarray, image: np.ndarray, ids: np.ndarray, prefix: str, channel: str
) -> dict[str, np.ndarray]:
    """Texture of one channel at a one-pixel scale inside each object.

    ``Contrast``: mean squared difference between horizontally and vertically
    adjacent pixel pairs of the object (GLCM contrast at distance 1, without grey-level
    binning). ``Gradient``: mean absolute difference of those pairs. ``CoV``: standard
    deviation over mean.

    Returns
    -------
    dict of str to numpy.ndarray
    """
    img = _scale(image)
    n = max(int(labels.max(initial=0)), int(ids.max(initial=0))) + 1
    sq = np.zeros(n)
    ab = np.zeros(n)
    pairs = np.zeros(n)
    for a_lab, b_lab, a_img, b_img in (
        (labels[:, :-1], labels[:, 1:], img[:, :-1], img[:, 1:]),
        (labels[:-1, :], labels[1:, :], img[:-1, :], img[1:, :]),
    ):
        same = (a_lab == b_lab) & (a_lab > 0)
        lab = a_lab[same]
        d = a_img[same] - b_img[same]
        sq += np.bincount(lab, d**2, minlength=n)
        ab += np.bincount(lab, np.abs(d), minlength=n)
        pairs += np.bincount(lab, minlength=n)
    flat_lab = labels.ravel()
    count = np.bincount(flat_lab, minlength=n).astype(np.float64)
    total = np.bincount(flat_lab, img.ravel(), minlength=n)
    total2 = np.bincount(flat_lab, img.ravel() ** 2, minlength=n)
    c = f"{prefix}_Texture"
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / count
        sd = np.sqrt(np.clip(total2 / count - mean**2, 0, None))
        return {
            f"{c}_Contrast_{channel}_1": np.where(pairs[ids] > 0, sq[ids] / pairs[ids], np.nan),
            f"{c}_Gradient_{channel}_1": np.where(pairs[ids] > 0, ab[ids] / pairs[ids], np.nan),
            f"{c}_CoV_{channel}": np.where(mean[ids] > 0, sd[ids] / mean[ids], np.nan),
        }


def measure_cells(
    nuclei: np.ndarray, cells: np.ndarray, channels: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """All features of every cell: shape of nucleus and cell, intensity and texture.

    Parameters
    ----------
    nuclei, cells : numpy.ndarray
        Label images sharing ids (cell ``i`` contains nucleus ``i``).
    channels : mapping of str to numpy.ndarray
        Normalised channel name to image (same shape as the labels).

    Returns
    -------
    dict of str to numpy.ndarray
        ``label`` plus one column per feature, one row per cell label, sorted.
    """
    ids = np.unique(cells)
    ids = ids[ids > 0].astype(np.int64)
    # No early return without cells: every column is there (empty), so tables of
    # empty sites have the same columns as the others.
    out: dict[str, np.ndarray] = {"label": ids.astype(np.int32)}
    out |= shape_features(nuclei, ids, "Nuclei")
    out |= shape_features(cells, ids, "Cells")
    for name, image in channels.items():
        if image.shape != cells.shape:
            raise ValueError(f"channel {name}: shape {image.shape} differs from {cells.shape}")
        out |= intensity_features(nuclei, image, ids, "Nuclei", name)
        out |= intensity_features(cells, image, ids, "Cells", name)
        out |= texture_features(cells, image, ids, "Cells", name)
    return out


def feature_names(channels: list[str] | tuple[str, ...]) -> list[str]:
    """Names of the feature columns :func:`measure_cells` gives for ``channels``, in order.

    Examples
    --------
    >>> names = feature_names(["DAPI"])
    >>> names[0], "Cells_Intensity_MeanIntensity_DAPI" in names
    ('Nuclei_AreaShape_Area', True)
    """
    empty = np.zeros((1, 1), np.int32)
    measured = measure_cells(empty, empty, {c: np.zeros((1, 1), np.uint16) for c in channels})
    return [name for name in measured if name != "label"]
