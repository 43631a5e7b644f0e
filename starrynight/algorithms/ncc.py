"""Normalised cross-correlation (Pearson) for registering overlaps, compiled.

Stitching a well scores a few hundred shifts of a template on each of hundreds of
overlaps. Written as NumPy expressions that costs tens of small array calls per pair,
and their fixed cost, not the arithmetic, dominated (about 2 ms of CPU per pair against
0.3 ms of multiply-adds). The kernels behind these functions
(:mod:`starrynight.algorithms._ncc_kernels`, numba) do the same sums in one compiled
pass each, read the stored dtype and memory-mapped (read-only, strided) views as they
are, and release the interpreter lock.

The sums follow the NumPy code they replace: products of a row accumulate in float32,
rows in float64; window sums and variances in float64 on mean-centred values.

Each entry point is compiled for a fixed set of signatures (read-only arrays of any
layout; uint16 or float32 pixels; gains or none) on first use, or by :func:`load`, and
cached on disk (``NUMBA_CACHE_DIR``, else the package's ``__pycache__`` or the user's
cache): only the first run on a machine compiles (about 20 s). Every process still
pays about a second once, to import numba and start its compiler; a forked worker
inherits the kernels from a parent that loaded them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable


def ncc_map(
    template: np.ndarray, image: np.ndarray, y0: int, x0: int, ny: int, nx: int
) -> np.ndarray:
    """Pearson correlation of ``template`` with the windows of ``image`` at offsets
    ``(y0 + i, x0 + j)``, ``0 <= i < ny``, ``0 <= j < nx``.

    Parameters
    ----------
    template, image : numpy.ndarray
        2-D float32 (any strides). ``image`` must hold every window:
        ``y0 + ny - 1 + th <= image height`` and likewise for the width.
    y0, x0, ny, nx : int
        First offset and number of offsets per axis.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` float64; nan where the window or the template is flat.
    """
    th, tw = template.shape
    if y0 < 0 or x0 < 0 or y0 + ny - 1 + th > image.shape[0] or x0 + nx - 1 + tw > image.shape[1]:
        raise ValueError(
            f"offsets ({y0}+{ny}, {x0}+{nx}) of a {template.shape} template "
            f"leave the {image.shape} image"
        )
    return _entry("ncc_map")(_float32(template), _float32(image), y0, x0, ny, nx)


def placed_ncc(
    template: np.ndarray,
    image: np.ndarray,
    qy: int,
    qx: int,
    fy: float,
    fx: float,
    step: int,
    gain_t: np.ndarray | None,
    gain_i: np.ndarray | None,
    dark: float,
) -> float:
    """Pearson correlation of ``template`` with ``image`` sampled at ``(q + f + u)``.

    ``image`` is interpolated bilinearly at the template's pixels ``u`` moved by the
    integer offset ``(qy, qx)`` plus the fraction ``(fy, fx)`` (each in ``[0, 1)``),
    on every ``step``-th pixel of each axis of the template. With gains (of the
    template, its shape; of the image, its shape) both are corrected first,
    ``(x - dark) * gain``; the image's gain at the nearest lower pixel stands for the
    bilinear mix (a gain is smooth).

    Returns
    -------
    float
        nan when either side is flat or the moved template leaves the image.
    """
    if (gain_t is None) != (gain_i is None):
        raise ValueError("give both gains or neither")
    template, image = _pixels(template, image)
    g_t = None if gain_t is None else _float32(gain_t)
    g_i = None if gain_i is None else _float32(gain_i)
    return _entry("placed")(
        template, image, 0, qy, qx, float(fy), float(fx), step, g_t, g_i, float(dark)
    )


def register(
    a: np.ndarray,
    b: np.ndarray,
    gains: tuple[np.ndarray, np.ndarray] | None,
    dark: float,
    m: int,
    factor: int,
    coarse_margin: int,
    coarse: np.ndarray | None,
    fine_max: int,
    placed_step: int,
) -> tuple[float, float, float, float]:
    """Run the compiled search of one overlap (see ``stitch.register_overlap``).

    ``a`` and ``b`` are the crops (uint16 and float32 are taken as they are, others
    converted to float32), ``gains`` theirs or None, ``coarse`` the coarse map when the
    caller computed it. Returns ``(correction_y, correction_x, correlation, edge)``.
    """
    a, b = _pixels(a, b)
    ga, gb = (None, None) if gains is None else (_float32(gains[0]), _float32(gains[1]))
    pre = _NO_MAP if coarse is None else np.ascontiguousarray(coarse, np.float64)
    return load()(a, b, ga, gb, float(dark), m, factor, coarse_margin, pre, fine_max, placed_step)


_NO_MAP = np.empty((0, 0))

#: Pixel types the kernels take as they are; others are converted to float32 first.
_PIXELS = (np.dtype(np.uint16), np.dtype(np.float32))


def _pixels(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both in one dtype the kernels take (float32 unless both are uint16 or float32)."""
    if a.dtype != b.dtype or a.dtype not in _PIXELS:
        return _float32(a), _float32(b)
    return a, b


def _float32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else np.asarray(a, np.float32)


@functools.cache
def _entry(name: str) -> Callable[..., Any]:
    from starrynight.algorithms import _ncc_kernels

    return _ncc_kernels.entry(name)


def load() -> Callable[..., Any]:
    """Compile, or load from the disk cache, the registration kernel (see the module
    notes on its cost) and return it.

    Called on first use; call it before forking workers so that they inherit it
    instead of each loading it.
    """
    return _entry("register")
