"""Illumination correction functions, after CellProfiler's CorrectIlluminationCalculate.

The legacy Broad (PCPIP) pipelines compute one function per plate and channel (SBS: per
plate, cycle and channel) in CellProfiler's "Regular" mode: average every image of the
group, shrink the average to a quarter, median-filter it, divide by a robust minimum so
the function is >= 1, and enlarge it back. :func:`illumination_function` does the same
from the group's mean image; :class:`MeanAccumulator` builds that mean one image at a
time so memory does not depend on the number of images.

Two presets (:func:`preset_settings`):

``cellprofiler``
    Reproduces CellProfiler 4.2.8 step by step: images scaled to ``value / 65535`` in
    float32, the 0.25 ``Resize`` with skimage's anti-aliasing, the mean truncated to
    uint16 before the rank median, robust minimum rescale, bilinear x4 enlargement.
``default``
    The same method, except that the camera's dark level (its offset, which is not
    illuminated) is removed from the mean before smoothing, so the function models the
    illumination alone rather than illumination plus a constant; the median (size 10,
    both arms) runs on the un-truncated mean and only removes outliers: the function
    is the smooth surface fitted to it (a quadratic in log, :func:`fit_surface`).
    On the sample's known fields this leaves 0.2-0.4x the vignetting of the
    ``cellprofiler`` preset on every channel (``bench/bench_illum.py``); BaSiC
    (``bench/bench_illum_basic.py``) left ~0.9x at ~30 s per channel.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy import ndimage
from skimage.filters.rank import median as rank_median
from skimage.morphology import disk
from skimage.transform import resize

Smoothing = Literal["median", "gaussian", "none"]
Rescale = Literal["robust_minimum", "median", "none"]
Preset = Literal["default", "cellprofiler"]

ROBUST_FACTOR = 0.02
#: Degree of the default preset's smooth surface, in log: a Gaussian-like radial
#: falloff with an off-centre axis is quadratic in log, a tilt nearly linear. Degree 4
#: followed the cells of the mean more than the optics (sample: 0.65x vs 0.53x
#: CellProfiler's residual for the worst channel, before the median was reduced).
SURFACE_DEGREE = 2
UINT16_MAX = 65535.0
MEDIAN_LEVELS = 4095.0


@dataclass(frozen=True)
class IllumSettings:
    """How to turn a group's mean image into an illumination function.

    Attributes
    ----------
    downsample : float
        Shrink factor applied before smoothing (1.0 = none); the function is enlarged
        back to the image size afterwards.
    smoothing : {"median", "gaussian", "none"}
        Smoothing filter.
    size : float or None
        CellProfiler's "smoothing filter size" in pixels of the shrunk image; ``None``
        for CellProfiler's automatic size, ``min(30, max(H, W) / 40)``.
    rescale : {"robust_minimum", "median", "none"}
        Divide by the 2nd percentile of positive pixels (raising lower values to it),
        by the median, or not at all.
    cellprofiler_scaling : bool
        Work on ``value / 65535`` in float32 and truncate the mean to uint16 before the
        median filter, as CellProfiler does.
    dark_level : float or None
        Camera dark level (counts) subtracted from the mean before smoothing; ``None``
        estimates it from the mean image (see :func:`estimate_dark_level`), 0 disables.
    max_size_fraction : float or None
        Cap ``size`` at this fraction of the shrunk image's larger side (so a size
        meant for 1000-pixel images does not flatten a small image's function).
    surface_degree : int or None
        After smoothing, replace the function by the 2-D polynomial of this degree
        fitted to its logarithm (:func:`fit_surface`): vignetting is smooth, and the
        median of a few dozen images still follows where cells happened to lie.
    """

    downsample: float = 0.25
    smoothing: Smoothing = "median"
    size: float | None = 10.0
    rescale: Rescale = "robust_minimum"
    cellprofiler_scaling: bool = False
    dark_level: float | None = None
    max_size_fraction: float | None = None
    surface_degree: int | None = None


def preset_settings(preset: Preset, arm: str) -> IllumSettings:
    """The settings of a named preset for the Cell Painting (``cp``) or SBS arm.

    Both shrink by 0.25, median-filter the shrunk image and rescale by the robust
    minimum. ``cellprofiler`` uses the legacy pipelines' sizes, 10 (CP) and 20 (SBS);
    ``default`` removes the camera dark level first, uses size 10 for both arms and
    fits a smooth surface (:data:`SURFACE_DEGREE`) to the median-filtered image.

    Parameters
    ----------
    preset : {"default", "cellprofiler"}
        See the module docstring.
    arm : {"cp", "sbs"}
        Which arm the function is for.

    Returns
    -------
    IllumSettings
    """
    if arm not in ("cp", "sbs"):
        raise ValueError(f"arm must be 'cp' or 'sbs', got {arm!r}")
    base = IllumSettings(downsample=0.25, smoothing="median", rescale="robust_minimum")
    if preset == "cellprofiler":
        size = 10.0 if arm == "cp" else 20.0
        return replace(base, size=size, cellprofiler_scaling=True, dark_level=0.0)
    if preset == "default":
        # The median only removes outliers; the surface fit does the smoothing. (A
        # median alone follows the cells of a few dozen images, and a large median
        # disk is biased at the borders of the shrunk image, where vignetting is
        # strongest: size 30 before the fit left 0.53x CellProfiler's residual for a
        # membrane stain, size 10 0.38x.)
        return replace(
            base, size=10.0, cellprofiler_scaling=False, dark_level=None, max_size_fraction=0.25,
            surface_degree=SURFACE_DEGREE,
        )  # fmt: skip
    raise ValueError(f"preset must be 'default' or 'cellprofiler', got {preset!r}")


class MeanAccumulator:
    """Running sum of ``(channels, H, W)`` images, for a streamed mean.

    Images of 8- or 16-bit integers are summed exactly in uint32 (twice as fast as
    float64: half the memory traffic) and folded into the float64 total before the
    uint32 sum could overflow; other dtypes are summed in float64. The per-channel
    minimum (for the dark level) is tracked too. Partial accumulators (one per
    worker) are combined with :meth:`merge`.

    Examples
    --------
    >>> acc = MeanAccumulator()
    >>> acc.add(np.ones((2, 3, 3), np.uint16))
    >>> acc.add(np.full((2, 3, 3), 3, np.uint16))
    >>> float(acc.mean()[0, 0, 0])
    2.0
    """

    # 65536 images of at most 65535 fit in a uint32 sum.
    _FOLD_EVERY = 65536

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self._partial: np.ndarray | None = None
        self._partial_count = 0
        self.count = 0
        self.minimum: np.ndarray | None = None

    def add(self, image: np.ndarray) -> None:
        """Add one ``(channels, H, W)`` image (any numeric dtype)."""
        if image.ndim != 3:
            raise ValueError(f"expected a (channels, H, W) image, got shape {image.shape}")
        if self.total is None:
            self.total = np.zeros(image.shape, np.float64)
            self.minimum = np.full(image.shape[0], np.inf)
        elif image.shape != self.total.shape:
            raise ValueError(f"image shape {image.shape} differs from {self.total.shape}")
        if image.dtype.kind in "ub" and image.itemsize <= 2:
            if self._partial is None:
                self._partial = np.zeros(image.shape, np.uint32)
            np.add(self._partial, image, out=self._partial, casting="unsafe")
            self._partial_count += 1
            if self._partial_count >= self._FOLD_EVERY:
                self._fold()
        else:
            self.total += image
        lo = image.reshape(image.shape[0], -1).min(axis=1)
        assert self.minimum is not None  # set with the first image
        np.minimum(self.minimum, lo, out=self.minimum)
        self.count += 1

    def _fold(self) -> None:
        if self._partial is not None and self._partial_count:
            self.total += self._partial
            self._partial.fill(0)
            self._partial_count = 0

    @property
    def sum(self) -> np.ndarray | None:
        """The float64 sum of every image added so far."""
        self._fold()
        return self.total

    def merge(self, other: MeanAccumulator) -> None:
        """Fold another accumulator's images into this one."""
        other_sum = other.sum
        if other_sum is None:
            return
        assert other.minimum is not None  # an accumulator with a sum has a minimum
        if self.total is None:
            self.total, self.count = other_sum.copy(), other.count
            self.minimum = other.minimum.copy()
            return
        assert self.minimum is not None
        if other_sum.shape != self.total.shape:
            raise ValueError(f"image shape {other_sum.shape} differs from {self.total.shape}")
        self.total += other_sum
        self.count += other.count
        np.minimum(self.minimum, other.minimum, out=self.minimum)

    def mean(self) -> np.ndarray:
        """The float64 mean image, ``(channels, H, W)``."""
        total = self.sum
        if total is None or self.count == 0:
            raise ValueError("no images were added")
        return total / self.count


def median_radius(size: float) -> int:
    """Disk radius CellProfiler uses for a median of ``size``: ``int(size/2.35+0.5)``, >= 1."""
    return max(1, int(size / 2.35 + 0.5))


def automatic_size(shape: tuple[int, ...]) -> float:
    """CellProfiler's automatic smoothing size: ``min(30, max(H, W) / 40)``."""
    return min(30.0, float(max(shape[-2:])) / 40.0)


def shrink(image: np.ndarray, factor: float) -> np.ndarray:
    """Shrink a 2-D image as CellProfiler's Resize "by a factor", bilinear.

    The output shape is ``round(shape * factor)``; skimage's ``resize`` anti-aliases
    with a Gaussian of sigma ``(1/factor - 1) / 2`` and reflects at the borders
    (``mode="symmetric"``).
    """
    if factor == 1.0:
        return image
    shape = tuple(max(1, round(s * factor)) for s in image.shape)
    return resize(image, shape, order=1, mode="symmetric", anti_aliasing=True)


def enlarge(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Enlarge a 2-D image to ``shape``, bilinear, without anti-aliasing."""
    if image.shape == tuple(shape):
        return image
    return resize(image, shape, order=1, mode="symmetric", anti_aliasing=False)


def median_smooth(image: np.ndarray, size: float, truncate: bool) -> np.ndarray:
    """Median filter over a disk of radius :func:`median_radius` (``size``).

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image.
    size : float
        CellProfiler smoothing filter size.
    truncate : bool
        CellProfiler's way: ``image`` is in ``[0, 1]`` and is converted with
        ``(image * 65535).astype(uint16)`` (truncation), and the result stays in those
        units. Otherwise the image's range is mapped onto 4096 levels (rounded) and
        mapped back: precision relative to the range rather than to 1/65535, and a
        rank filter over 12 bits runs ~10x faster than over 16.

    Returns
    -------
    numpy.ndarray
        float64 image, same shape. Borders use only pixels inside the image, as the
        rank filter does.
    """
    footprint = disk(median_radius(size))
    if truncate:
        data = (np.asarray(image, np.float64) * UINT16_MAX).astype(np.uint16)
        return _rank_median(data, footprint)
    lo = float(image.min())
    span = float(image.max()) - lo
    if span <= 0:
        return np.asarray(image, np.float64).copy()
    scale = MEDIAN_LEVELS / span
    data = np.rint((image - lo) * scale).astype(np.uint16)
    return _rank_median(data, footprint) / scale + lo


def _rank_median(data: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # skimage warns about speed above 10 bits; CellProfiler's data are 16-bit.
        warnings.filterwarnings("ignore", message="Bad rank filter performance")
        return rank_median(data, footprint=footprint).astype(np.float64)


def gaussian_smooth(image: np.ndarray, size: float) -> np.ndarray:
    """Gaussian filter of sigma ``size / 2.35``, normalised at the borders.

    As CellProfiler's ``smooth_with_function_and_mask``: the image is padded with zeros
    and divided by the equally filtered all-ones mask, so borders are not darkened.
    """
    sigma = size / 2.35
    data = np.asarray(image, np.float64)
    smoothed = ndimage.gaussian_filter(data, sigma, mode="constant", cval=0.0)
    weight = ndimage.gaussian_filter(np.ones_like(data), sigma, mode="constant", cval=0.0)
    return smoothed / (weight + np.finfo(float).eps)


def rescale(image: np.ndarray, method: Rescale) -> np.ndarray:
    """Rescale an illumination function.

    ``robust_minimum``: sort the positive pixels, take the one at index
    ``int(0.02 * N)``, raise lower pixels to it and divide by it, so the result is >= 1.
    ``median``: divide by the median of the positive pixels. ``none``: unchanged.
    An image without positive pixels is returned unchanged.
    """
    if method == "none":
        return image
    positive = np.sort(image[image > 0], axis=None)
    if positive.size == 0:
        return image
    if method == "robust_minimum":
        reference = positive[int(positive.size * ROBUST_FACTOR)]
        return np.maximum(image, reference) / reference
    if method == "median":
        return image / positive[positive.size // 2]
    raise ValueError(f"rescale must be robust_minimum, median or none, got {method!r}")


def estimate_dark_level(mean_image: np.ndarray, minimum: float) -> float:
    """Estimate a camera's dark level (offset) from a group's darkest pixel.

    Every pixel is ``offset + illuminated signal + read noise``, so the smallest value
    seen in any image of a group is a conservative estimate of the offset: at most a
    few read-noise deviations below it, plus whatever faint light the darkest pixel
    got. It is the largest constant that can be removed without making any pixel
    negative, so subtracting it never over-corrects; a dead pixel at 0 merely turns the
    subtraction off.

    Parameters
    ----------
    mean_image : numpy.ndarray
        2-D mean of the group (the estimate never exceeds its minimum).
    minimum : float
        Smallest pixel value seen in any image of the group.

    Returns
    -------
    float
        Dark level in the images' units (>= 0).
    """
    return float(max(0.0, min(float(np.min(mean_image)), minimum)))


def illumination_function(
    mean_image: np.ndarray,
    settings: IllumSettings,
    dark_level: float = 0.0,
) -> np.ndarray:
    """The illumination function of one channel from its group's mean image.

    Parameters
    ----------
    mean_image : numpy.ndarray
        2-D mean of the group's raw images, in raw counts (uint16 scale).
    settings : IllumSettings
        How to smooth and rescale; ``settings.dark_level`` is ignored here (the caller
        resolves it and passes ``dark_level``).
    dark_level : float
        Counts subtracted from the mean before anything else (0 for CellProfiler).

    Returns
    -------
    numpy.ndarray
        float32 function of ``mean_image``'s shape. With a rescale, divide an image
        by it to correct it; with ``rescale="none"`` it is in raw counts.
    """
    if mean_image.ndim != 2:
        raise ValueError(f"expected a 2-D mean image, got shape {mean_image.shape}")
    shape = mean_image.shape
    if settings.cellprofiler_scaling:
        # CellProfiler loads uint16 as value / 65535 in float32 and resizes in float32.
        data: np.ndarray = (np.asarray(mean_image, np.float64) / UINT16_MAX).astype(np.float32)
        unit = UINT16_MAX
    else:
        data = np.asarray(mean_image, np.float64) - dark_level
        np.maximum(data, 0.0, out=data)
        unit = 1.0
    small = shrink(data, settings.downsample)
    size = settings.size if settings.size is not None else automatic_size(small.shape)
    if settings.max_size_fraction is not None:
        size = min(size, settings.max_size_fraction * max(small.shape))
    if settings.smoothing == "median":
        smooth = median_smooth(small, size, truncate=settings.cellprofiler_scaling)
    elif settings.smoothing == "gaussian":
        smooth = gaussian_smooth(small, size)
    elif settings.smoothing == "none":
        smooth = np.asarray(small, np.float64)
    else:
        raise ValueError(f"smoothing must be median, gaussian or none, got {settings.smoothing!r}")
    if settings.surface_degree is not None and not settings.cellprofiler_scaling:
        smooth = fit_surface(smooth, settings.surface_degree)
    if (
        settings.rescale == "none"
        and settings.cellprofiler_scaling
        and settings.smoothing != "median"
    ):
        smooth = smooth * unit  # back to raw counts; the truncating median already is
    function = rescale(smooth, settings.rescale)
    return enlarge(np.asarray(function, np.float64), shape).astype(np.float32)


def fit_surface(image: np.ndarray, degree: int) -> np.ndarray:
    """The 2-D polynomial of ``degree`` that best fits ``log(image)``, exponentiated.

    Fitting the logarithm makes the model multiplicative, as vignetting is, and keeps
    the result positive. Coordinates are scaled to [-1, 1] and the basis is Legendre
    (well conditioned). Non-positive pixels carry no weight.

    Parameters
    ----------
    image : numpy.ndarray
        2-D smoothed function (any positive scale).
    degree : int
        Total degree of the polynomial (terms ``x^i y^j`` with ``i + j <= degree``).

    Returns
    -------
    numpy.ndarray
        float64 surface of ``image``'s shape; ``image`` itself when it has fewer
        positive pixels than terms.
    """
    from numpy.polynomial import legendre

    h, w = image.shape
    y = np.linspace(-1.0, 1.0, h)
    x = np.linspace(-1.0, 1.0, w)
    vy = legendre.legvander(y, degree)
    vx = legendre.legvander(x, degree)
    terms = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]
    good = image > 0
    if good.sum() <= len(terms):
        return np.asarray(image, np.float64)
    basis = np.stack([np.outer(vy[:, i], vx[:, j]) for i, j in terms], axis=-1)
    coef, *_ = np.linalg.lstsq(basis[good], np.log(image[good]), rcond=None)
    return np.exp(basis @ coef)


def apply_illumination(
    image: np.ndarray,
    function: np.ndarray,
    method: Literal["divide", "subtract"] = "divide",
    dark_level: float = 0.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Correct one 2-D uint16 image with its illumination function.

    ``divide``: ``dark + (image - dark) / function``, so the camera offset is kept as
    it is and only the illuminated part is corrected (with ``dark_level=0`` this is
    CellProfiler's plain division). ``subtract``: ``image - function`` (for functions
    made without rescaling, in counts). The result is rounded and clipped to uint16.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (uint16 counts).
    function : numpy.ndarray
        Illumination function of the same shape.
    method : {"divide", "subtract"}
        How to apply the function.
    dark_level : float
        Dark level that the function was computed without (see :func:`illumination_function`).
    out : numpy.ndarray, optional
        uint16 array to write into.

    Returns
    -------
    numpy.ndarray
        uint16 corrected image.
    """
    if image.shape != function.shape:
        raise ValueError(f"image shape {image.shape} differs from function {function.shape}")
    if method == "divide":
        function = np.asarray(function, np.float32)
        clip = needs_clip(float(function.min()), dark_level)
        return apply_gain(image, correction_gain(function), dark_level, out=out, clip=clip)
    if method == "subtract":
        corrected = image.astype(np.float32) - np.asarray(function, np.float32) + np.float32(0.5)
        np.clip(corrected, 0.0, UINT16_MAX, out=corrected)
        if out is None:
            out = np.empty(image.shape, np.uint16)
        np.copyto(out, corrected, casting="unsafe")
        return out
    raise ValueError(f"method must be divide or subtract, got {method!r}")


#: Rows corrected at a time by :func:`apply_gain`: a float32 block of a 1-2k pixel wide
#: image (~0.5 MB) stays in cache through its three passes, where whole-image
#: temporaries would go to memory and back on every pass.
BLOCK_ROWS = 64


def correction_gain(function: np.ndarray) -> np.ndarray:
    """``1 / function`` as float32: computed once per function, used for every image.

    Multiplying by it is several times cheaper than dividing by the function.
    """
    return np.reciprocal(np.asarray(function, np.float32))


def needs_clip(function_min: float, dark_level: float) -> bool:
    """Whether ``dark + (image - dark) / function`` can leave ``[0, 65535]``.

    It cannot when the function is >= 1 everywhere (robust-minimum rescale) and the
    dark level is in the uint16 range: the result then lies between ``image`` and
    ``dark``. Knowing this per function saves a clipping pass per image.
    """
    return not (function_min >= 1.0 and 0.0 <= dark_level <= UINT16_MAX)


def apply_gain(
    image: np.ndarray,
    gain: np.ndarray,
    dark_level: float = 0.0,
    out: np.ndarray | None = None,
    clip: bool = True,
    buffer: np.ndarray | None = None,
) -> np.ndarray:
    """``dark + (image - dark) * gain``, rounded and clipped to uint16.

    The arithmetic is float32, in blocks of :data:`BLOCK_ROWS` rows, in place in
    ``buffer``: subtract the dark level, multiply by the gain, then add ``dark + 0.5``
    while casting to uint16 (truncating the +0.5 rounds). Equal to
    :func:`apply_illumination` (``divide``) with ``gain = correction_gain(function)``.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (uint16 counts).
    gain : numpy.ndarray
        float32 ``1 / function`` (:func:`correction_gain`), same shape.
    dark_level : float
        Dark level the function was computed without.
    out : numpy.ndarray, optional
        uint16 array to write into (may not be ``image``).
    clip : bool
        Clip to ``[0, 65535]`` first; pass False only when :func:`needs_clip` says so.
    buffer : numpy.ndarray, optional
        float32 scratch of at least ``(BLOCK_ROWS, W)``, to avoid an allocation per call.

    Returns
    -------
    numpy.ndarray
        ``out``.
    """
    if image.shape != gain.shape:
        raise ValueError(f"image shape {image.shape} differs from gain {gain.shape}")
    h, w = image.shape
    if out is None:
        out = np.empty(image.shape, np.uint16)
    rows = min(BLOCK_ROWS, h)
    if (
        buffer is None
        or buffer.dtype != np.float32
        or buffer.ndim != 2
        or buffer.shape[0] < 1
        or buffer.shape[1] != w
    ):
        buffer = np.empty((rows, w), np.float32)
    rows = min(rows, buffer.shape[0])
    dark = np.float32(dark_level)
    offset = np.float32(dark_level + 0.5)
    for y in range(0, h, rows):
        block = slice(y, y + rows)
        b = buffer[: min(rows, h - y)]
        np.subtract(image[block], dark, out=b, dtype=np.float32)
        np.multiply(b, gain[block], out=b)
        if clip:
            b += offset
            np.clip(b, 0.0, UINT16_MAX, out=b)
            np.copyto(out[block], b, casting="unsafe")
        else:
            np.add(b, offset, out=out[block], casting="unsafe")
    return out
