"""The compiled (numba) kernels behind :mod:`starrynight.algorithms.ncc`.

Imported only by :func:`starrynight.algorithms.ncc.load`, so that importing the
algorithms does not start numba (about half a second). Every function here is compiled
on first use by another kernel, or through :func:`entry` for the fixed signatures the
wrappers call; ``cache=True`` keeps the machine code on disk between processes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numba as nb
import numpy as np

#: Reassociation lets the row products vectorise; NaN and infinity keep their meaning.
_FAST = {"reassoc", "contract", "nsz", "arcp"}


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _centred(template: np.ndarray) -> tuple[np.ndarray, float]:
    """``template`` minus its mean (float32) and its sum of squares."""
    th, tw = template.shape
    total = 0.0
    for y in range(th):
        for x in range(tw):
            total += template[y, x]
    mean = np.float32(total / (th * tw))
    out = np.empty((th, tw), np.float32)
    squares = 0.0
    for y in range(th):
        row = 0.0
        for x in range(tw):
            v = template[y, x] - mean
            out[y, x] = v
            row += v * v
        squares += row
    return out, squares


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _window_moments(
    img: np.ndarray, th: int, tw: int, ny: int, nx: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``img`` and of its square over the ``th x tw`` windows at ``(i, j)``.

    Column sums of the first row band, moved down one row per ``i`` (the row entering
    minus the row leaving), then a running sum along the band: float64 throughout.
    """
    rw = img.shape[1]
    c1 = np.zeros(rw)
    c2 = np.zeros(rw)
    for y in range(th):
        for x in range(rw):
            v = np.float64(img[y, x])
            c1[x] += v
            c2[x] += v * v
    s1 = np.empty((ny, nx))
    s2 = np.empty((ny, nx))
    p1 = np.zeros(rw + 1)
    p2 = np.zeros(rw + 1)
    for i in range(ny):
        if i > 0:
            for x in range(rw):
                v = np.float64(img[i + th - 1, x])
                u = np.float64(img[i - 1, x])
                c1[x] += v - u
                c2[x] += v * v - u * u
        for x in range(nx - 1 + tw):
            p1[x + 1] = p1[x] + c1[x]
            p2[x + 1] = p2[x] + c2[x]
        for j in range(nx):
            s1[i, j] = p1[j + tw] - p1[j]
            s2[i, j] = p2[j + tw] - p2[j]
    return s1, s2


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _products(t0: np.ndarray, img: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """``sum(t0 * img[i:i+th, j:j+tw])`` for every offset: rows in float32, then float64.

    Four neighbouring shifts share each pass over a template row (four accumulators):
    the template is loaded a quarter as often, which is what bounds this loop.
    """
    th, tw = t0.shape
    num = np.zeros((ny, nx))
    for i in range(ny):
        for y in range(th):
            trow = t0[y]
            irow = img[i + y]
            j = 0
            while j + 4 <= nx:
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                for x in range(tw):
                    t = trow[x]
                    a0 += t * irow[j + x]
                    a1 += t * irow[j + x + 1]
                    a2 += t * irow[j + x + 2]
                    a3 += t * irow[j + x + 3]
                num[i, j] += a0
                num[i, j + 1] += a1
                num[i, j + 2] += a2
                num[i, j + 3] += a3
                j += 4
            while j < nx:
                acc = np.float32(0.0)
                for x in range(tw):
                    acc += trow[x] * irow[j + x]
                num[i, j] += acc
                j += 1
    return num


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _ncc_map(
    template: np.ndarray, image: np.ndarray, y0: int, x0: int, ny: int, nx: int
) -> np.ndarray:
    th, tw = template.shape
    window = image[y0 : y0 + ny - 1 + th, x0 : x0 + nx - 1 + tw]
    if th <= tw:
        # Centred: window variances are differences of large sums otherwise.
        t0, tt = _centred(template)
        img, _ = _centred(window)
        return _pearson(t0, tt, img, ny, nx)
    # The products run along rows, and short rows do not vectorise: a tall template
    # is matched transposed (measured 2-4x faster on a 362 x 29 one).
    t0, tt = _centred(template.T)
    img, _ = _centred(window.T)
    return np.ascontiguousarray(_pearson(t0, tt, img, nx, ny).T)


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _pearson(t0: np.ndarray, tt: float, img: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """The map of a centred template ``t0`` (sum of squares ``tt``) over centred ``img``."""
    th, tw = t0.shape
    s1, s2 = _window_moments(img, th, tw, ny, nx)
    num = _products(t0, img, ny, nx)
    n = th * tw
    out = np.empty((ny, nx))
    for i in range(ny):
        for j in range(nx):
            var = s2[i, j] - s1[i, j] * s1[i, j] / n
            if var > 0.0 and tt > 0.0:
                out[i, j] = num[i, j] / np.sqrt(var * tt)
            else:
                out[i, j] = np.nan
    return out


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _placed(
    a: np.ndarray,
    image: np.ndarray,
    m: int,
    qy: int,
    qx: int,
    fy: float,
    fx: float,
    step: int,
    gain_t: np.ndarray | None,
    gain_i: np.ndarray | None,
    dark: float,
) -> float:
    """:func:`placed_ncc` of the template ``a[m:-m, m:-m]`` (its gain likewise)."""
    th, tw = a.shape[0] - 2 * m, a.shape[1] - 2 * m
    if qy < 0 or qx < 0 or qy + th + 1 > image.shape[0] or qx + tw + 1 > image.shape[1]:
        return np.nan
    w00 = (1.0 - fy) * (1.0 - fx)
    w01 = (1.0 - fy) * fx
    w10 = fy * (1.0 - fx)
    w11 = fy * fx
    n = 0
    st = 0.0
    stt = 0.0
    sv = 0.0
    svv = 0.0
    stv = 0.0
    for y in range(0, th, step):
        yi = qy + y
        for x in range(0, tw, step):
            xi = qx + x
            t = float(a[m + y, m + x])
            v = (
                w00 * image[yi, xi]
                + w01 * image[yi, xi + 1]
                + w10 * image[yi + 1, xi]
                + w11 * image[yi + 1, xi + 1]
            )
            if gain_t is not None:
                t = (t - dark) * gain_t[m + y, m + x]
            if gain_i is not None:
                v = (v - dark) * gain_i[yi, xi]
            n += 1
            st += t
            stt += t * t
            sv += v
            svv += v * v
            stv += t * v
    vt = stt - st * st / n
    vv = svv - sv * sv / n
    if vt <= 0.0 or vv <= 0.0:
        return np.nan
    return (stv - st * sv / n) / np.sqrt(vt * vv)


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _sample(
    src: np.ndarray, gain: np.ndarray | None, dark: float, y0: int, x0: int, h: int, w: int, f: int
) -> np.ndarray:
    """``src[y0::f, x0::f]`` (``h x w`` of it) as float32, corrected when ``gain`` is given."""
    out = np.empty((h, w), np.float32)
    d = np.float32(dark)
    for y in range(h):
        sy = y0 + f * y
        for x in range(w):
            sx = x0 + f * x
            v = np.float32(src[sy, sx])
            if gain is not None:
                v = (v - d) * gain[sy, sx]
            out[y, x] = v
    return out


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _argmax(values: np.ndarray, y0: int, x0: int) -> tuple[int, int]:
    """First largest finite element, as ``(y0 + row, x0 + column)``; ``(-1, -1)`` if none."""
    best = -np.inf
    by, bx = -1, -1
    for y in range(values.shape[0]):
        for x in range(values.shape[1]):
            v = values[y, x]
            if not np.isnan(v) and v > best:
                best, by, bx = v, y, x
    if by < 0:
        return -1, -1
    return y0 + by, x0 + bx


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _vertex(before: float, at: float, after: float) -> float:
    """Offset (within +-0.5) of the vertex of a parabola through three equally spaced values.

    0 unless the three are finite and ``at`` is a strict local maximum of the fit.
    """
    denom = before - 2.0 * at + after
    if not np.isfinite(denom) or denom >= 0.0:
        return 0.0
    return min(0.5, max(-0.5, 0.5 * (before - after) / denom))


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _peak_vertex(values: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """Sub-pixel offsets of the peak at ``(y, x)`` of a map, per axis (0 at its border)."""
    ny, nx = values.shape
    vy = 0.0
    if 0 < y < ny - 1:
        vy = _vertex(values[y - 1, x], values[y, x], values[y + 1, x])
    vx = 0.0
    if 0 < x < nx - 1:
        vx = _vertex(values[y, x - 1], values[y, x], values[y, x + 1])
    return vy, vx


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _textured_start(template: np.ndarray, axis: int, span: int) -> int:
    """Start (template pixels along ``axis``) of the ``span`` whose deviations vary most."""
    h, w = template.shape
    total = 0.0
    for y in range(h):
        for x in range(w):
            total += template[y, x]
    mean = total / (h * w)
    n = h if axis == 0 else w
    energy = np.zeros(n)
    for y in range(h):
        for x in range(w):
            d = template[y, x] - mean
            energy[y if axis == 0 else x] += d * d
    if n <= span:
        return 0
    run = 0.0
    for k in range(span):
        run += energy[k]
    best, start = run, 0
    for k in range(1, n - span + 1):
        run += energy[k + span - 1] - energy[k - 1]
        if run > best:
            best, start = run, k
    return start


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _climb(
    template: np.ndarray, image: np.ndarray, m: int, qy: int, qx: int, reach: int
) -> tuple[np.ndarray, int, int, int, int]:
    """Map the shifts within ``reach`` of ``(qy, qx)`` (of ``[0, 2m]^2``), re-centred on its
    peak while that lies on the window's border inside the range.

    Returns the map, the shift of its first element and the peak (``-1`` if none).
    """
    side = 2 * m + 1
    n = min(side, 2 * reach + 1)
    fine, ly, lx, py, px = np.empty((0, 0)), 0, 0, -1, -1
    for _ in range(side):
        ly = min(side - n, max(0, qy - reach))
        lx = min(side - n, max(0, qx - reach))
        fine = _ncc_map(template, image, ly, lx, n, n)
        py, px = _argmax(fine, ly, lx)
        if py < 0:
            return fine, ly, lx, -1, -1
        inside_y = (py > ly or ly == 0) and (py < ly + n - 1 or ly + n == side)
        inside_x = (px > lx or lx == 0) and (px < lx + n - 1 or lx + n == side)
        if inside_y and inside_x:
            return fine, ly, lx, py, px
        qy, qx = py, px
    return fine, ly, lx, py, px


@nb.njit(cache=True, nogil=True, fastmath=_FAST)
def _register(
    a: np.ndarray,
    b: np.ndarray,
    ga: np.ndarray | None,
    gb: np.ndarray | None,
    dark: float,
    m: int,
    f: int,
    cm: int,
    coarse: np.ndarray,
    fine_max: int,
    placed_step: int,
) -> tuple[float, float, float, float]:
    """The search of :func:`starrynight.algorithms.stitch.register_overlap`, compiled.

    ``coarse`` is the coarse map if the caller computed it (by FFT), else empty.
    Returns the correction ``m - (q + sub)`` per axis, the placed correlation (the map's
    peak where that is undefined) and 1.0 when the peak lies on the searched border;
    nan corrections when nothing correlates.
    """
    h, w = a.shape
    hc, wc = (h + f - 1) // f, (w + f - 1) // f
    ca = _sample(a, ga, dark, 0, 0, hc, wc, f)
    if coarse.shape[0] == 0:
        cb = _sample(b, gb, dark, 0, 0, hc, wc, f)
        coarse = _ncc_map(ca[cm : hc - cm, cm : wc - cm], cb, 0, 0, 2 * cm + 1, 2 * cm + 1)
    qy, qx = _argmax(coarse, 0, 0)
    if qy < 0:
        return np.nan, np.nan, np.nan, 0.0
    fine, ly, lx = coarse, 0, 0
    if f > 1:
        # From the coarse peak (sub-pixel; a coarse shift c is f c pixels), the full
        # resolution shifts around it, on the overlap's most textured stretch.
        vy, vx = _peak_vertex(coarse, qy, qx)
        axis = 0 if h > w else 1
        long, short = (h - 2 * m, w - 2 * m) if axis == 0 else (w - 2 * m, h - 2 * m)
        length = (max(fine_max // max(short, 1), 4 * f) // f) * f
        r0, r1, c0, c1 = 0, h, 0, w
        if long > length:
            ct = ca[cm : hc - cm, cm : wc - cm]
            start = _textured_start(ct, axis, length // f) * f
            if axis == 0:
                r0, r1 = start, min(h, start + length + 2 * m)
            else:
                c0, c1 = start, min(w, start + length + 2 * m)
        fa = _sample(a, ga, dark, r0, c0, r1 - r0, c1 - c0, 1)
        fb = _sample(b, gb, dark, r0, c0, r1 - r0, c1 - c0, 1)
        template = fa[m : fa.shape[0] - m, m : fa.shape[1] - m]
        qy = min(2 * m, max(0, int(np.rint(m - f * (cm - (qy + vy))))))
        qx = min(2 * m, max(0, int(np.rint(m - f * (cm - (qx + vx))))))
        fine, ly, lx, qy, qx = _climb(template, fb, m, qy, qx, max(2, f - 1))
        if qy < 0:
            return np.nan, np.nan, np.nan, 0.0
    peak = fine[qy - ly, qx - lx]
    sy, sx = _peak_vertex(fine, qy - ly, qx - lx)
    # The overlap as placed: the whole template at full resolution (bilinear at the
    # sub-pixel shift), every placed_step-th pixel when the search was subsampled.
    ay, ax = qy + sy, qx + sx
    by, bx = int(np.floor(ay)), int(np.floor(ax))
    step = placed_step if f > 1 else 1
    placed = _placed(a, b, m, by, bx, ay - by, ax - bx, step, ga, gb, dark)
    if np.isfinite(placed):
        peak = placed
    edge = 1.0 if m > 0 and (min(qy, qx) == 0 or max(qy, qx) == 2 * m) else 0.0
    return m - ay, m - ax, peak, edge


def _view(dtype: type) -> nb.types.Array:
    # Read-only, any layout: memory-mapped and strided views convert to it, and so do
    # ordinary arrays, so one compiled version serves them all.
    return nb.types.Array(nb.from_dtype(np.dtype(dtype)), 2, "A", readonly=True)


def entry(name: str) -> Callable[..., Any]:
    """The kernel ``name`` (``ncc_map``, ``placed`` or ``register``) compiled, or loaded
    from the disk cache, for every signature the wrappers call it with."""
    jit = functools.partial(nb.njit, cache=True, nogil=True, fastmath=_FAST)
    f32, i, f64 = _view(np.float32), nb.intp, nb.float64
    combos = [(px, g) for px in (_view(np.uint16), f32) for g in (f32, nb.types.none)]
    if name == "ncc_map":
        return jit([nb.float64[:, ::1](f32, f32, i, i, i, i)])(_ncc_map.py_func)
    if name == "placed":
        sigs = [f64(px, px, i, i, i, f64, f64, i, g, g, f64) for px, g in combos]
        return jit(sigs)(_placed.py_func)
    if name == "register":
        result = nb.types.UniTuple(f64, 4)
        sigs = [result(px, px, g, g, f64, i, i, i, nb.float64[:, ::1], i, i) for px, g in combos]
        return jit(sigs)(_register.py_func)
    raise ValueError(f"no kernel {name!r}")
