"""Registration of SBS cycles: phase correlation with sub-pixel refinement.

Every cycle of a site is registered to cycle 1 on its nuclear stain; the same shift is
then applied to that cycle's base channels. :func:`register_translation` follows
``skimage.registration.phase_cross_correlation`` (normalised cross-power spectrum,
integer peak, then a matrix-multiply DFT upsampled around the peak) with the costs cut:
real FFTs in float32, the reference's spectrum computed once per site and reused for
every cycle (:func:`reference_spectrum`), and an apodising window so that the image
borders (which do not move with the content) do not pull the peak towards zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

Interpolation = Literal["integer", "linear", "cubic"]


@dataclass(frozen=True)
class Spectrum:
    """A prepared image for registration: its windowed real FFT."""

    shape: tuple[int, int]
    rfft: np.ndarray


def tukey_window(shape: tuple[int, int], alpha: float = 0.25) -> np.ndarray:
    """Separable 2-D Tukey window (float32): flat centre, cosine taper on ``alpha``/2 each side.

    ``alpha=0`` is a rectangle (no window), ``alpha=1`` a Hann window.
    """
    rows = _tukey(shape[0], alpha)
    cols = _tukey(shape[1], alpha)
    return np.outer(rows, cols).astype(np.float32)


def _tukey(n: int, alpha: float) -> np.ndarray:
    if alpha <= 0 or n < 3:
        return np.ones(n)
    x = np.arange(n) / (n - 1)
    w = np.ones(n)
    edge = alpha / 2
    lo = x < edge
    hi = x > 1 - edge
    w[lo] = 0.5 * (1 + np.cos(np.pi * (x[lo] / edge - 1)))
    w[hi] = 0.5 * (1 + np.cos(np.pi * ((x[hi] - 1) / edge + 1)))
    return w


def reference_spectrum(image: np.ndarray, window: np.ndarray | None = None) -> Spectrum:
    """Prepare a 2-D image for :func:`register_translation`.

    The image's mean is removed and ``window`` (see :func:`tukey_window`) applied
    before the real FFT.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    data = np.asarray(image, np.float32)
    data = data - np.float32(data.mean())
    if window is not None:
        data *= window
    return Spectrum(data.shape, sfft.rfft2(data))


def register_translation(
    reference: Spectrum | np.ndarray,
    moving: Spectrum | np.ndarray,
    upsample: int = 20,
    window: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Shift that registers ``moving`` onto ``reference``, to 1/``upsample`` pixel.

    Same convention as ``skimage.registration.phase_cross_correlation``: applying the
    returned ``(dy, dx)`` to ``moving`` (``scipy.ndimage.shift(moving, shift)``) aligns
    it with ``reference``; if the content of ``moving`` is displaced by ``(+a, +b)``
    relative to ``reference``, the result is about ``(-a, -b)``.

    Parameters
    ----------
    reference, moving : Spectrum or numpy.ndarray
        2-D images of equal shape, or their :func:`reference_spectrum`.
    upsample : int
        Sub-pixel precision is ``1 / upsample`` pixel.
    window : numpy.ndarray, optional
        Window applied to arrays given as images (ignored for spectra).

    Returns
    -------
    shift : numpy.ndarray
        ``(dy, dx)``, float64; each component in ``[-size/2, size/2)``.
    peak : float
        Height of the normalised phase-correlation peak (1 for identical images,
        near 0 when nothing matches).
    """
    ref = reference if isinstance(reference, Spectrum) else reference_spectrum(reference, window)
    mov = moving if isinstance(moving, Spectrum) else reference_spectrum(moving, window)
    if ref.shape != mov.shape:
        raise ValueError(f"image shapes differ: {ref.shape} and {mov.shape}")
    h, w = ref.shape
    cross = ref.rfft * np.conj(mov.rfft)
    magnitude = np.abs(cross)
    cross /= np.maximum(magnitude, np.finfo(np.float32).tiny * 1e3)
    corr = sfft.irfft2(cross, s=(h, w))
    flat = int(np.argmax(corr))
    peak_y, peak_x = divmod(flat, w)
    coarse = np.array([peak_y, peak_x], np.float64)
    size = np.array([h, w], np.float64)
    coarse[coarse > size // 2] -= size[coarse > size // 2]
    if upsample <= 1:
        return coarse, float(corr.flat[flat])
    shift, height = _refine(cross, (h, w), coarse, upsample)
    return shift, height


def _refine(
    cross: np.ndarray, shape: tuple[int, int], coarse: np.ndarray, upsample: int
) -> tuple[np.ndarray, float]:
    """Upsampled DFT of the half spectrum on a 1.5-pixel box around ``coarse``."""
    h, w = shape
    region = int(np.ceil(upsample * 1.5))
    offsets = (np.arange(region) - region // 2) / upsample
    ys = coarse[0] + offsets
    xs = coarse[1] + offsets
    ky = sfft.fftfreq(h) * h
    kx = np.arange(cross.shape[1], dtype=np.float64)
    # A real signal's spectrum is Hermitian: the half spectrum counts twice, except the
    # zero and (for even widths) Nyquist columns.
    weight = np.full(cross.shape[1], 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    ey = np.exp(2j * np.pi * np.outer(ys, ky) / h)  # (region, h)
    ex = np.exp(2j * np.pi * np.outer(kx, xs) / w) * weight[:, None]  # (w/2+1, region)
    values = (ey.astype(np.complex64) @ cross @ ex.astype(np.complex64)).real / (h * w)
    iy, ix = np.unravel_index(int(np.argmax(values)), values.shape)
    dy, dx = _parabola(values, 0), _parabola(values, 1)
    return np.array([ys[iy] + dy / upsample, xs[ix] + dx / upsample]), float(values[iy, ix])


def _parabola(values: np.ndarray, axis: int) -> float:
    """Vertex offset (in grid steps, within +-0.5) of a parabola through the peak."""
    iy, ix = np.unravel_index(int(np.argmax(values)), values.shape)
    i = iy if axis == 0 else ix
    n = values.shape[axis]
    if i == 0 or i == n - 1:
        return 0.0
    if axis == 0:
        a, b, c = values[i - 1, ix], values[i, ix], values[i + 1, ix]
    else:
        a, b, c = values[iy, i - 1], values[iy, i], values[iy, i + 1]
    denom = a - 2 * b + c
    if denom >= 0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5))


def shift_image(
    image: np.ndarray, shift: np.ndarray, interpolation: Interpolation = "cubic"
) -> np.ndarray:
    """Move a 2-D image by ``shift`` (as returned by :func:`register_translation`).

    Pixels that come from outside the image are 0 (as CellProfiler's Align pads).
    ``integer`` rounds the shift and copies pixels (no resampling); ``linear`` and
    ``cubic`` interpolate (cubic: spline, overshoot clipped to the input's range). The
    result has the input's dtype (rounded for integer types).
    """
    dy, dx = float(shift[0]), float(shift[1])
    if interpolation == "integer":
        return _integer_shift(image, round(dy), round(dx))
    order = {"linear": 1, "cubic": 3}.get(interpolation)
    if order is None:
        raise ValueError(f"interpolation must be integer, linear or cubic, got {interpolation!r}")
    if dy == round(dy) and dx == round(dx):
        return _integer_shift(image, round(dy), round(dx))
    moved = ndimage.shift(
        np.asarray(image, np.float32), (dy, dx), order=order, mode="constant", cval=0.0
    )
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        np.rint(moved, out=moved)
        np.clip(moved, info.min, info.max, out=moved)
    return moved.astype(image.dtype)


def _integer_shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(image)
    h, w = image.shape
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y = slice(max(0, -dy), h - max(0, dy))
    dst_y = slice(max(0, dy), h - max(0, -dy))
    src_x = slice(max(0, -dx), w - max(0, dx))
    dst_x = slice(max(0, dx), w - max(0, -dx))
    out[dst_y, dst_x] = image[src_y, src_x]
    return out


def overlap_correlation(reference: np.ndarray, moving: np.ndarray, shift: np.ndarray) -> float:
    """Pearson correlation of ``reference`` and ``moving`` shifted by ``shift``, on their overlap.

    Only the region both images cover after the shift (rounded outwards) counts, so the
    zero padding of :func:`shift_image` does not inflate or deflate the figure.

    Returns
    -------
    float
        Correlation in ``[-1, 1]``; ``nan`` when the overlap is empty or flat.
    """
    h, w = reference.shape
    dy, dx = int(np.ceil(abs(shift[0]))), int(np.ceil(abs(shift[1])))
    if dy >= h or dx >= w:
        return float("nan")
    moved = shift_image(moving, shift, "linear" if np.any(shift % 1) else "integer")
    y0 = dy if shift[0] > 0 else 0
    x0 = dx if shift[1] > 0 else 0
    a = np.asarray(reference[y0 : y0 + h - dy, x0 : x0 + w - dx], np.float64).ravel()
    b = np.asarray(moved[y0 : y0 + h - dy, x0 : x0 + w - dx], np.float64).ravel()
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@dataclass(frozen=True)
class AlignmentQC:
    """Thresholds of the Broad pipelines' alignment QC."""

    max_shift: float = 50.0
    min_correlation: float = 0.8
    warn_correlation: float = 0.9


def qc_status(shift: np.ndarray, correlation: float, qc: AlignmentQC = AlignmentQC()) -> str:
    """``"ok"``, ``"warn"`` (correlation below ``warn_correlation``) or ``"flag"``.

    A site is flagged when the shift's largest component exceeds ``max_shift`` pixels
    or the post-alignment correlation is below ``min_correlation`` (or not a number).
    """
    if float(np.max(np.abs(shift))) > qc.max_shift:
        return "flag"
    if not np.isfinite(correlation) or correlation < qc.min_correlation:
        return "flag"
    if correlation < qc.warn_correlation:
        return "warn"
    return "ok"
