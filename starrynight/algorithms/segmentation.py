"""Nuclei and cell segmentation, object tables and segmentation scoring.

Classical pipeline in the spirit of CellProfiler's IdentifyPrimaryObjects /
IdentifySecondaryObjects: Gaussian smoothing, an Otsu threshold with a correction
factor made local (so a dim corner of a vignetted field keeps its nuclei), declumping
by a marker-controlled watershed on smoothed intensity times distance (markers are its
maxima, so touching nuclei with a dim seam between them split even when their union is
convex), each outline redrawn at the nucleus's own half-maximum edge (one shared threshold
draws bright nuclei too large and dim ones too small), then size limits. Cells grow from
the nuclei by a watershed on the cell-stain image inside its foreground.

Every length scale follows the nucleus diameter. When none is given it is estimated
from the image (:func:`estimate_diameter`): the median equivalent diameter of the
isolated, convex objects of the thresholded nuclear stain — as cellpose estimates
object size before segmenting, for the same reason: a fixed scale fails when the
magnification or binning changes.

All functions are pure: arrays in, arrays or plain values out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, filters, measure, segmentation

#: Diameter used when none is given and the image holds no object to measure.
FALLBACK_DIAMETER = 20.0
#: Objects an estimate needs; fewer and :func:`estimate_diameter` gives up.
MIN_OBJECTS_FOR_ESTIMATE = 3
#: Smallest object (pixels) measured by the estimate: specks of noise are not nuclei.
MIN_ESTIMATE_AREA = 16
#: Solidity above which a thresholded object is taken as one nucleus, not a clump.
SINGLE_SOLIDITY = 0.9


@dataclass(frozen=True)
class NucleiParams:
    """Tuning of :func:`segment_nuclei`.

    Attributes
    ----------
    diameter : float or None
        Typical nucleus diameter in pixels; sets the declumping scale. ``None``
        estimates it from the image (:func:`estimate_diameter`).
    smoothing_sigma : float
        Gaussian sigma (pixels) applied before thresholding.
    threshold_factor : float
        Multiplies the Otsu threshold (CellProfiler's "threshold correction factor");
        below 1 keeps the dim rims of nuclei.
    min_area, max_area : float or None
        Size limits in pixels; ``None`` derives them from ``diameter`` (10% and 10x
        the area of a disc of that diameter).
    local_threshold : bool
        Follow slow changes of brightness across the field: the threshold keeps its
        place between the local background and the local nuclear intensity
        (see :func:`nuclear_foreground`) instead of one value for the whole image.
    local_scale : float
        Size of "local", in nucleus diameters (Gaussian sigma of the local means).
    edge_fraction : float or None
        Redraw each nucleus's outline where the smoothed stain crosses this fraction
        of the way from the local background to the nucleus's own brightness (see
        :func:`refine_outlines`); 0.5 is the half-maximum edge. ``None`` (or 0) keeps
        the outline of the shared threshold.
    """

    diameter: float | None = None
    smoothing_sigma: float = 1.0
    threshold_factor: float = 0.85
    min_area: float | None = None
    max_area: float | None = None
    local_threshold: bool = True
    local_scale: float = 4.0
    edge_fraction: float | None = 0.5

    def area_limits(self) -> tuple[float, float]:
        """Return ``(min_area, max_area)`` in pixels.

        Raises
        ------
        ValueError
            When a limit must be derived from a diameter that is not known yet.
        """
        if self.diameter is None and (self.min_area is None or self.max_area is None):
            raise ValueError("area limits need a diameter: resolve it first (estimate_diameter)")
        disc = np.pi * (self.diameter / 2) ** 2 if self.diameter is not None else 0.0
        lo = self.min_area if self.min_area is not None else 0.1 * disc
        hi = self.max_area if self.max_area is not None else 10.0 * disc
        return float(lo), float(hi)


def _otsu(values: np.ndarray) -> float | None:
    """Otsu threshold, or None when the image is flat (nothing to separate)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or float(finite.max()) <= float(finite.min()):
        return None
    return float(filters.threshold_otsu(finite))


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    img = image.astype(np.float32, copy=False)
    return filters.gaussian(img, sigma, preserve_range=True) if sigma else img


def object_diameters(
    image: np.ndarray, smoothing_sigma: float = 1.0, threshold_factor: float = 0.85
) -> np.ndarray:
    """Equivalent diameters of the isolated nuclei of one nuclear-stain image.

    Thresholds the smoothed image at ``threshold_factor`` x Otsu and keeps the
    connected objects that look like one nucleus: convex (solidity above
    :data:`SINGLE_SOLIDITY`; clumps of touching nuclei are not), at least
    :data:`MIN_ESTIMATE_AREA` pixels, not cut by the image border.

    Returns
    -------
    numpy.ndarray
        ``float64`` diameters ``2 * sqrt(area / pi)`` in pixels, one per kept object
        (empty for a flat image).
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    smooth = _smooth(image, smoothing_sigma)
    t = _otsu(smooth)
    if t is None:
        return np.zeros(0, np.float64)
    objects = measure.label(ndi.binary_fill_holes(smooth > t * threshold_factor))
    objects = segmentation.clear_border(objects)
    props = measure.regionprops_table(objects, properties=("area", "solidity"))
    area, solidity = props["area"], props["solidity"]
    keep = (area >= MIN_ESTIMATE_AREA) & (solidity > SINGLE_SOLIDITY)
    return 2.0 * np.sqrt(area[keep] / np.pi)


def estimate_diameter(
    images: Iterable[np.ndarray], smoothing_sigma: float = 1.0, threshold_factor: float = 0.85
) -> float | None:
    """Typical nucleus diameter (pixels) of a set of nuclear-stain images.

    The median of :func:`object_diameters` pooled over ``images`` (e.g. a few sites
    of a well): isolated nuclei measure the scale directly, and the median ignores
    the odd clump that still passes the convexity test and the odd fragment.

    Parameters
    ----------
    images : iterable of numpy.ndarray
        2-D nuclear-stain images of one magnification (streamed: one at a time).
    smoothing_sigma, threshold_factor : float
        As in :class:`NucleiParams`.

    Returns
    -------
    float or None
        The diameter, or None when fewer than :data:`MIN_OBJECTS_FOR_ESTIMATE`
        isolated nuclei were found (nothing to measure the scale on).
    """
    found = [object_diameters(im, smoothing_sigma, threshold_factor) for im in images]
    pooled = np.concatenate(found) if found else np.zeros(0)
    if pooled.size < MIN_OBJECTS_FOR_ESTIMATE:
        return None
    return float(np.median(pooled))


def resolve_diameter(params: NucleiParams, image: np.ndarray) -> NucleiParams:
    """``params`` with a diameter: the given one, else estimated from ``image``.

    Falls back to :data:`FALLBACK_DIAMETER` when the image has too few isolated
    nuclei to measure (a site with a handful of nuclei segments the same either way).
    """
    if params.diameter is not None:
        return params
    d = estimate_diameter([image], params.smoothing_sigma, params.threshold_factor)
    return replace(params, diameter=d if d is not None else FALLBACK_DIAMETER)


def _local_mean(
    values: np.ndarray, mask: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted mean of ``values`` over ``mask`` and the weight of the mask.

    Computed on a grid ``step = sigma / 8`` pixels coarser and enlarged back
    (bilinear): the result is smooth at that scale anyway, and a full-size Gaussian
    of sigma ~100 px costs seconds per image.
    """
    step = max(1, int(sigma / 8))
    h, w = values.shape
    ph, pw = -h % step, -w % step
    v = np.pad(np.where(mask, values, 0.0).astype(np.float32), ((0, ph), (0, pw)), "edge")
    m = np.pad(mask.astype(np.float32), ((0, ph), (0, pw)), "edge")
    shape = (v.shape[0] // step, step, v.shape[1] // step, step)
    num = ndi.gaussian_filter(v.reshape(shape).mean(axis=(1, 3)), sigma / step)
    den = ndi.gaussian_filter(m.reshape(shape).mean(axis=(1, 3)), sigma / step)
    mean = num / np.maximum(den, 1e-6)
    if step > 1:
        zoom = (v.shape[0] / mean.shape[0], v.shape[1] / mean.shape[1])
        mean = ndi.zoom(mean, zoom, order=1, mode="nearest", grid_mode=True)[:h, :w]
        den = ndi.zoom(den, zoom, order=1, mode="nearest", grid_mode=True)[:h, :w]
    return mean, den


def nuclear_foreground(
    smooth: np.ndarray, threshold: float, diameter: float, local_scale: float | None
) -> np.ndarray:
    """Foreground of a smoothed nuclear stain, holes filled.

    With ``local_scale`` the global ``threshold`` is made local: it sits at the same
    fraction of the way from the background mean to the nuclear mean as it does
    globally, with both means taken locally (Gaussian of sigma ``local_scale *
    diameter``; where one class is absent nearby its global mean is used). Under a
    multiplicative illumination falloff both means scale together, so a dim corner
    is thresholded as the bright centre is; two passes let the classes settle.

    Parameters
    ----------
    smooth : numpy.ndarray
        Smoothed 2-D image.
    threshold : float
        Global threshold (Otsu times the correction factor).
    diameter : float
        Nucleus diameter in pixels.
    local_scale : float or None
        ``None`` for the plain global threshold.

    Returns
    -------
    numpy.ndarray
        Boolean mask.
    """
    fg = smooth > threshold
    if local_scale is not None and fg.any() and not fg.all():
        g_fg, g_bg = float(smooth[fg].mean()), float(smooth[~fg].mean())
        if g_fg > g_bg:
            level = (threshold - g_bg) / (g_fg - g_bg)
            sigma = local_scale * diameter
            for _ in range(2):
                m_fg, w_fg = _local_mean(smooth, fg, sigma)
                m_bg, w_bg = _local_mean(smooth, ~fg, sigma)
                # A few percent of weight is a handful of pixels: too few for a mean.
                m_fg = np.where(w_fg > 0.02, m_fg, g_fg)
                m_bg = np.where(w_bg > 0.02, m_bg, g_bg)
                fg = smooth > m_bg + level * (m_fg - m_bg)
    return ndi.binary_fill_holes(fg)


def segment_nuclei(image: np.ndarray, params: NucleiParams | None = None) -> np.ndarray:
    """Label the nuclei of a nuclear-stain image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D nuclear stain (any numeric dtype), ideally illumination-corrected.
    params : NucleiParams, optional
        Tuning; by default the diameter is estimated from ``image`` (give one, e.g.
        estimated once per well, for the same scale on every site).

    Returns
    -------
    numpy.ndarray
        ``int32`` labels, 0 for background, 1..N consecutive. A flat image (all zero
        or constant) gives no nuclei rather than an error.
    """
    p = params or NucleiParams()
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    p = resolve_diameter(p, image)
    assert p.diameter is not None
    img = image.astype(np.float32, copy=False)
    smooth = _smooth(img, p.smoothing_sigma)
    t = _otsu(smooth)
    if t is None:
        return np.zeros(img.shape, np.int32)
    local = p.local_scale if p.local_threshold else None
    foreground = nuclear_foreground(smooth, t * p.threshold_factor, p.diameter, local)
    min_area, max_area = p.area_limits()
    foreground = _drop_small(foreground, min_area)
    if not foreground.any():
        return np.zeros(img.shape, np.int32)
    distance = ndi.distance_transform_edt(foreground)
    # Intensity times distance: peaks at the bright, deep centre of each nucleus; the
    # blur scale and peak spacing follow the expected nucleus size.
    blurred = filters.gaussian(img, max(p.diameter / 10.0, 0.5), preserve_range=True)
    surface = (blurred / (blurred[foreground].max() + 1e-9)) * (distance / distance.max())
    regions = measure.label(foreground)
    # One global search (per-region search is ~3x slower); regions that lose their
    # only peak to a neighbour's suppression get a seed below.
    peaks = feature.peak_local_max(
        surface,
        min_distance=max(round(p.diameter / 4.0), 1),
        threshold_abs=1e-12,
        exclude_border=False,
    )
    markers = np.zeros(img.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # A region without a peak (flat plateau) still needs a seed.
    unseeded = np.setdiff1d(np.unique(regions[foreground]), np.unique(regions[markers > 0]))
    if unseeded.size:
        centres = ndi.maximum_position(distance, regions, unseeded)
        for i, (y, x) in enumerate(centres):
            markers[y, x] = len(peaks) + 1 + i
    # Flooding the same surface the markers came from puts the dividing line in the
    # dim seam between two nuclei (flooding -distance cut by shape alone).
    labels = segmentation.watershed(-surface, markers, mask=foreground)
    if p.edge_fraction:
        sigma = (p.local_scale if p.local_threshold else 8.0) * p.diameter
        background, weight = _local_mean(smooth, ~foreground, sigma)
        if (~foreground).any():
            background = np.where(weight > 0.02, background, float(smooth[~foreground].mean()))
            # Room to grow first: a dim nucleus's half-maximum edge lies outside the
            # shared threshold's outline (refinement only removes pixels).
            grown = segmentation.expand_labels(labels, distance=p.diameter / 4.0)
            refined = refine_outlines(grown, smooth, background, p.edge_fraction)
            # The outline is redrawn, the decision "nucleus or not" stays with the
            # size limits of the first outline: a sliver cut by the image border
            # would otherwise shrink below them and vanish.
            shrunk = np.bincount(refined.ravel(), minlength=labels.max() + 1) < min_area
            back = shrunk[labels] & (labels > 0)
            refined[back] = labels[back]
            labels = refined
    return filter_by_area(labels, min_area, max_area)


#: Percentile of a nucleus's smoothed stain taken as its brightness: its bright
#: interior, not the one hottest pixel.
BRIGHTNESS_PERCENTILE = 95.0


def refine_outlines(
    labels: np.ndarray, smooth: np.ndarray, background: np.ndarray, fraction: float
) -> np.ndarray:
    """Redraw each object's outline at its own edge, whatever its brightness.

    One shared threshold draws a bright nucleus too large (its blurred rim is above
    it) and a dim one too small; annotators and the eye put the edge where the stain
    falls off, which for a blurred object is near half its height. Each object keeps
    the pixels of its region where ``smooth`` exceeds ``background + fraction *
    (brightness - background)``, with ``brightness`` the
    :data:`BRIGHTNESS_PERCENTILE` of its pixels: the per-object threshold of
    CellProfiler's adaptive methods taken to one object. Holes are filled and, where
    the cut leaves pieces, the largest is kept. Pixels can only be removed, so
    neighbours never overlap: give room to grow first (e.g.
    :func:`skimage.segmentation.expand_labels`).

    Parameters
    ----------
    labels : numpy.ndarray
        Objects to refine (e.g. watershed regions of a generous foreground).
    smooth : numpy.ndarray
        Smoothed stain, same shape.
    background : numpy.ndarray
        Local background level, same shape.
    fraction : float
        Edge height between background (0) and the object's brightness (1).

    Returns
    -------
    numpy.ndarray
        ``int32`` labels with the ids of ``labels``; an object with no pixel above
        its level keeps its region unchanged.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"edge fraction must be in [0, 1), got {fraction}")
    out = np.zeros(labels.shape, np.int32)
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        region = labels[box] == i
        values = smooth[box]
        bright = float(np.percentile(values[region], BRIGHTNESS_PERCENTILE))
        bg = background[box]
        keep = region & (values > bg + fraction * (bright - bg))
        keep = ndi.binary_fill_holes(keep) & region
        pieces, n = ndi.label(keep)
        if n > 1:
            keep = pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
        elif n == 0:
            keep = region
        out[box][keep] = i
    return out


def segment_cells(
    image: np.ndarray,
    nuclei: np.ndarray,
    *,
    smoothing_sigma: float = 2.0,
    threshold_factor: float = 0.7,
    max_distance: float = 40.0,
) -> np.ndarray:
    """Grow cells from nuclei over the foreground of a cell-stain image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D cytoplasm or membrane stain.
    nuclei : numpy.ndarray
        Nuclei labels (seeds); each cell keeps the label of its nucleus.
    smoothing_sigma : float
        Gaussian sigma before thresholding the cell stain.
    threshold_factor : float
        Multiplies the Otsu threshold of the smoothed cell stain.
    max_distance : float
        A cell extends at most this many pixels beyond its nucleus.

    Returns
    -------
    numpy.ndarray
        ``int32`` cell labels with the same ids as ``nuclei``; every nucleus lies
        inside its cell.
    """
    if image.shape != nuclei.shape:
        raise ValueError(f"image {image.shape} and nuclei {nuclei.shape} differ in shape")
    nuclei = nuclei.astype(np.int32, copy=False)
    if not nuclei.any():
        return np.zeros(nuclei.shape, np.int32)
    smooth = filters.gaussian(image.astype(np.float32), smoothing_sigma, preserve_range=True)
    t = _otsu(smooth)
    near = ndi.distance_transform_edt(nuclei == 0) <= max_distance
    foreground = near if t is None else (smooth > t * threshold_factor) & near
    foreground |= nuclei > 0
    cells = segmentation.watershed(-smooth, nuclei, mask=foreground)
    # Watershed can leave a nucleus pixel to a brighter neighbour; the nucleus wins.
    cells[nuclei > 0] = nuclei[nuclei > 0]
    return cells.astype(np.int32)


def expand_nuclei(nuclei: np.ndarray, distance: float) -> np.ndarray:
    """Cells as nuclei grown by ``distance`` pixels (Voronoi-limited).

    Used where no cell stain exists (SBS arm).
    """
    return segmentation.expand_labels(nuclei.astype(np.int32), distance=distance)


def _drop_small(mask: np.ndarray, min_area: float) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    areas = np.bincount(lab.ravel())
    keep = areas >= min_area
    keep[0] = False
    return keep[lab]


def filter_by_area(labels: np.ndarray, min_area: float, max_area: float) -> np.ndarray:
    """Drop objects outside ``[min_area, max_area]`` and relabel 1..N.

    Returns
    -------
    numpy.ndarray
        ``int32`` labels.
    """
    areas = np.bincount(labels.ravel())
    keep = (areas >= min_area) & (areas <= max_area)
    keep[0] = False
    lut = np.zeros(areas.size, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def object_table(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-object area, centroid and bounding box.

    Returns
    -------
    dict of str to numpy.ndarray
        Columns ``label, area, centroid_y, centroid_x, bbox_y0, bbox_x0, bbox_y1,
        bbox_x1`` (bbox end exclusive), one entry per object, sorted by label.
    """
    props = measure.regionprops_table(labels, properties=("label", "area", "centroid", "bbox"))
    return {
        "label": props["label"].astype(np.int32),
        "area": props["area"].astype(np.int64),
        "centroid_y": props["centroid-0"].astype(np.float64),
        "centroid_x": props["centroid-1"].astype(np.float64),
        "bbox_y0": props["bbox-0"].astype(np.int32),
        "bbox_x0": props["bbox-1"].astype(np.int32),
        "bbox_y1": props["bbox-2"].astype(np.int32),
        "bbox_x1": props["bbox-3"].astype(np.int32),
    }


def flag_counts(
    counts: dict[int, int], *, min_count: int = 1, max_ratio: float = 3.0
) -> dict[int, str]:
    """Flag sites whose object count is implausible.

    A site is flagged when it has fewer than ``min_count`` objects, or a count more
    than ``max_ratio`` times above or below the median of the sites given.

    Parameters
    ----------
    counts : dict of int to int
        Site to object count.

    Returns
    -------
    dict of int to str
        Site to reason, only for flagged sites.
    """
    if not counts:
        return {}
    median = float(np.median(list(counts.values())))
    flags: dict[int, str] = {}
    for site, n in counts.items():
        if n < min_count:
            flags[site] = f"{n} objects (fewer than {min_count})"
        elif median > 0 and (n > max_ratio * median or n * max_ratio < median):
            flags[site] = f"{n} objects, far from the median {median:g} of the sites checked"
    return flags


@dataclass(frozen=True)
class MatchScore:
    """Instance-segmentation agreement at one IoU threshold."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        total = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / total if total else 1.0


def overlap_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of overlapping objects and their intersection areas.

    Returns
    -------
    tuple of numpy.ndarray
        ``(label_a, label_b, intersection)`` for every pair of foreground labels
        sharing at least one pixel.
    """
    if a.shape != b.shape:
        raise ValueError(f"label images differ in shape: {a.shape} vs {b.shape}")
    both = (a > 0) & (b > 0)
    la = a[both].astype(np.int64)
    lb = b[both].astype(np.int64)
    if la.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    code = la * (int(lb.max()) + 1) + lb
    uniq, inter = np.unique(code, return_counts=True)
    return uniq // (int(lb.max()) + 1), uniq % (int(lb.max()) + 1), inter


def match_labels(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> MatchScore:
    """Score a segmentation against ground truth by IoU matching.

    With ``iou_threshold >= 0.5`` each object can match at most one other, so
    counting pairs above the threshold is an exact one-to-one matching.

    Returns
    -------
    MatchScore
    """
    if iou_threshold < 0.5:
        raise ValueError("iou_threshold below 0.5 needs an assignment solver; use >= 0.5")
    pa_, pb_, inter = overlap_pairs(pred, truth)
    area_p = np.bincount(pred.ravel())
    area_t = np.bincount(truth.ravel())
    iou = inter / (area_p[pa_] + area_t[pb_] - inter) if inter.size else inter
    tp = int((iou > iou_threshold).sum())
    n_pred = int(np.count_nonzero(area_p[1:]))
    n_true = int(np.count_nonzero(area_t[1:]))
    return MatchScore(tp=tp, fp=n_pred - tp, fn=n_true - tp)
