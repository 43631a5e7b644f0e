"""One tile grid over both arms of a well: PCPIP's "stitch and crop", as pure functions.

PCPIP (the Broad's pooled-cell-painting image processing) runs its analysis pipeline
(9_Analysis) on tiles cut from the stitched well of each arm: the Cell Painting mosaic
and the SBS mosaic scaled by the magnification ratio are padded to one square canvas and
cut into ``tiles_per_side`` x ``tiles_per_side`` tiles, so tile ``N`` of either arm
shows the same part of the well. Here the canvas is the CP mosaic's pixel grid, anchored
at its top-left corner (PCPIP's ``Canvas Size... position=Top-Left zero``), and SBS is
resampled into it through a measured affine map (scale, rotation, translation) instead
of a bare scale factor.

Coordinates are pixel indices with pixel centres at integers, ``(y, x)`` order.
Tiles are numbered as PCPIP's Fiji script numbers them: column-major from 1,
``N = col * tiles_per_side + row + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class TileGrid:
    """A square grid of square tiles over a mosaic of ``extent`` pixels (top-left anchored).

    Attributes
    ----------
    tiles_per_side : int
        Tiles along each side.
    tile_size : int
        Side of a tile, pixels.
    extent : tuple of int
        ``(height, width)`` of the mosaic the grid covers.
    """

    tiles_per_side: int
    tile_size: int
    extent: tuple[int, int]

    @property
    def canvas(self) -> int:
        """Side of the padded canvas, pixels."""
        return self.tiles_per_side * self.tile_size

    @property
    def count(self) -> int:
        """Number of tiles."""
        return self.tiles_per_side**2

    def tiles(self) -> list[tuple[int, int, int, int, int]]:
        """``(site, row, col, y0, x0)`` of every tile, in site order.

        ``y0, x0`` is the tile's top-left pixel in the mosaic.
        """
        n, t = self.tiles_per_side, self.tile_size
        out = [
            (col * n + row + 1, row, col, row * t, col * t) for col in range(n) for row in range(n)
        ]
        return sorted(out)


def tile_site(row: int, col: int, tiles_per_side: int) -> int:
    """PCPIP's tile number of the tile at ``(row, col)``: column-major, from 1."""
    return col * tiles_per_side + row + 1


def tile_grid(
    extent: tuple[int, int],
    tiles_per_side: int | None = None,
    tile_size: int | None = None,
    field_px: int | None = None,
) -> TileGrid:
    """The tile grid covering a mosaic of ``extent`` pixels.

    Parameters
    ----------
    extent : tuple of int
        ``(height, width)`` of the mosaic (the CP mosaic of the well).
    tiles_per_side, tile_size : int, optional
        PCPIP's ``tileperside`` and ``final_tile_size``. Given one, the other is the
        smallest that covers the mosaic; given neither, tiles are about ``field_px``
        (one field of view) on a side; given both, they must cover the mosaic.
    field_px : int, optional
        Side of one field of view, for the default.

    Returns
    -------
    TileGrid

    Raises
    ------
    ValueError
        With a one-line reason: a tile larger than the canvas, a grid that leaves part
        of the mosaic out, or one whose last row of tiles would hold only padding.
    """
    h, w = int(extent[0]), int(extent[1])
    side = max(h, w)
    if side <= 0:
        raise ValueError(f"the mosaic is empty ({h} x {w} px)")
    if tile_size is not None and tile_size > side:
        raise ValueError(
            f"tile size {tile_size} px is larger than the well's canvas ({h} x {w} px); "
            f"expected at most {side}"
        )
    if tiles_per_side is None and tile_size is None:
        tiles_per_side = max(1, round(side / max(1, field_px or side)))
    if tiles_per_side is None:
        assert tile_size is not None
        tiles_per_side = math.ceil(side / tile_size)
    if tile_size is None:
        tile_size = math.ceil(side / tiles_per_side)
    if tiles_per_side < 1 or tile_size < 1:
        raise ValueError(
            f"expected at least 1 tile of at least 1 px, got {tiles_per_side} x {tile_size}"
        )
    if tiles_per_side * tile_size < side:
        raise ValueError(
            f"{tiles_per_side} tiles of {tile_size} px per side cover {tiles_per_side * tile_size} "
            f"px, less than the well's {h} x {w} px; expected a tile size of at least "
            f"{math.ceil(side / tiles_per_side)} px for {tiles_per_side} tiles per side"
        )
    if (tiles_per_side - 1) * tile_size >= side:
        raise ValueError(
            f"{tiles_per_side} tiles of {tile_size} px per side: the last row and column "
            f"would hold only padding (the well is {h} x {w} px); expected at most "
            f"{math.ceil(side / tile_size)} tiles per side"
        )
    return TileGrid(tiles_per_side, tile_size, (h, w))


def yx_matrix(matrix_xy: np.ndarray) -> np.ndarray:
    """A 3x3 affine acting on ``(x, y, 1)`` rewritten to act on ``(y, x, 1)``."""
    p = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return p @ np.asarray(matrix_xy, np.float64) @ p


def pixel_to_um(origin_px: tuple[float, float], pixel_um: tuple[float, float]) -> np.ndarray:
    """Affine ``(y, x, 1)`` from mosaic pixel indices to well-frame micrometres.

    ``origin_px`` is where the mosaic's pixel (0, 0) starts in the arm's pixel frame
    (the outer corner, as site positions are given); a pixel's centre is half a pixel in.
    """
    m = np.eye(3)
    m[0, 0], m[1, 1] = pixel_um
    m[0, 2] = (origin_px[0] + 0.5) * pixel_um[0]
    m[1, 2] = (origin_px[1] + 0.5) * pixel_um[1]
    return m


def cp_to_sbs_pixels(
    cp_origin_px: tuple[float, float],
    cp_pixel_um: tuple[float, float],
    sbs_origin_px: tuple[float, float],
    sbs_pixel_um: tuple[float, float],
    sbs_to_cp_um_xy: np.ndarray,
) -> np.ndarray:
    """Affine ``(y, x, 1)`` from CP mosaic pixel indices to SBS mosaic pixel indices.

    Parameters
    ----------
    cp_origin_px, sbs_origin_px : tuple of float
        Each mosaic's origin in its arm's pixel frame (see :func:`pixel_to_um`).
    cp_pixel_um, sbs_pixel_um : tuple of float
        Pixel sizes ``(y, x)``, micrometres.
    sbs_to_cp_um_xy : numpy.ndarray
        3x3 affine acting on ``(x, y, 1)`` taking SBS well-frame micrometres to CP
        well-frame micrometres (the merge's registered transform; identity when the
        stage positions of both arms are trusted as one frame).
    """
    cp = pixel_to_um(cp_origin_px, cp_pixel_um)
    sbs = pixel_to_um(sbs_origin_px, sbs_pixel_um)
    return np.linalg.inv(sbs) @ np.linalg.inv(yx_matrix(sbs_to_cp_um_xy)) @ cp


def source_box(
    affine: np.ndarray, y0: int, x0: int, size: int, shape: tuple[int, int], margin: int = 2
) -> tuple[int, int, int, int] | None:
    """The source pixels a tile needs: ``(ys, ye, xs, xe)`` clipped to ``shape``.

    ``affine`` maps tile-canvas pixel indices to source indices; ``(y0, x0)`` is the
    tile's top-left pixel, ``size`` its side. None when the tile maps outside the source.
    """
    corners = np.array(
        [
            [y0, x0, 1],
            [y0 + size - 1, x0, 1],
            [y0, x0 + size - 1, 1],
            [y0 + size - 1, x0 + size - 1, 1],
        ],
        np.float64,
    )
    src = corners @ np.asarray(affine, np.float64).T
    lo = np.floor(src[:, :2].min(axis=0)).astype(int) - margin
    hi = np.ceil(src[:, :2].max(axis=0)).astype(int) + margin + 1
    ys, xs = max(0, int(lo[0])), max(0, int(lo[1]))
    ye, xe = min(shape[0], int(hi[0])), min(shape[1], int(hi[1]))
    if ys >= ye or xs >= xe:
        return None
    return ys, ye, xs, xe


def warp_tile(
    region: np.ndarray, affine: np.ndarray, y0: int, x0: int, size: int, box_origin: tuple[int, int]
) -> np.ndarray:
    """Resample one tile from a source region (bilinear; zero outside the region).

    Parameters
    ----------
    region : numpy.ndarray
        2-D source pixels, the box of :func:`source_box`.
    affine : numpy.ndarray
        3x3 ``(y, x, 1)`` map from canvas pixel indices to source pixel indices.
    y0, x0, size : int
        The tile's top-left canvas pixel and side.
    box_origin : tuple of int
        Source index of ``region[0, 0]``.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` of ``region``'s dtype (rounded for integers).
    """
    a = np.asarray(affine, np.float64)
    lin = a[:2, :2]
    offset = lin @ np.array([y0, x0], np.float64) + a[:2, 2] - np.asarray(box_origin, np.float64)
    out = ndimage.affine_transform(
        region.astype(np.float32), lin, offset=offset, output_shape=(size, size), order=1,
        mode="constant", cval=0.0, prefilter=False,
    )  # fmt: skip
    if np.issubdtype(region.dtype, np.integer):
        info = np.iinfo(region.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(region.dtype)
    return out.astype(region.dtype)


def coverage(
    affine: np.ndarray, y0: int, x0: int, size: int, shape: tuple[int, int], step: int = 16
) -> float:
    """Share of a tile whose source points lie inside a source of ``shape``.

    Sampled every ``step`` pixels of the tile.
    """
    g = np.arange(step // 2, size, step, dtype=np.float64)
    yy, xx = np.meshgrid(g + y0, g + x0, indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel(), np.ones(yy.size)], axis=1) @ np.asarray(affine).T
    inside = (pts[:, 0] >= -0.5) & (pts[:, 0] <= shape[0] - 0.5)
    inside &= (pts[:, 1] >= -0.5) & (pts[:, 1] <= shape[1] - 0.5)
    return float(inside.mean()) if inside.size else 0.0


@dataclass(frozen=True)
class MosaicFields:
    """Where each field of view of a mosaic was pasted, and how far that is from where it is.

    A mosaic pastes every field at its position rounded to the nearest pixel and lets
    the field whose centre is nearest own each pixel (seams midway between centres). The
    content of a pixel owned by field ``f`` truly lies ``shift[f]`` (at most half a pixel
    per axis) from where the mosaic shows it; at 10X that is up to one CP pixel.

    Attributes
    ----------
    corner : numpy.ndarray
        ``(m, 2)`` rounded top-left pixel of each field in the mosaic.
    shift : numpy.ndarray
        ``(m, 2)`` exact minus rounded position, pixels.
    shape : tuple of int
        Field height and width, pixels.
    """

    corner: np.ndarray
    shift: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def from_positions(cls, exact: np.ndarray, shape: tuple[int, int]) -> MosaicFields:
        """Fields pasted at ``round(exact)`` (``(m, 2)`` top-left corners in mosaic pixels)."""
        exact = np.asarray(exact, np.float64).reshape(-1, 2)
        corner = np.rint(exact)
        return cls(corner.astype(np.int64), exact - corner, (int(shape[0]), int(shape[1])))

    def near(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Indices of the fields that overlap the box ``[lo, hi]`` (pixel indices)."""
        h, w = self.shape
        c = self.corner
        hit = (
            (c[:, 0] <= hi[0]) & (c[:, 0] + h > lo[0]) & (c[:, 1] <= hi[1]) & (c[:, 1] + w > lo[1])
        )
        return np.flatnonzero(hit)

    def shifts_at(self, points: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """``(n, 2)`` shift of the field that owns each point (zero where none does).

        The owner is the field containing the point whose centre is nearest, as the
        mosaic decided it (ties, on a seam, may go either way: both fields show the
        same content there to within their shifts).
        """
        p = np.asarray(points, np.float64).reshape(-1, 2)
        out = np.zeros_like(p)
        if not len(candidates) or not len(p):
            return out
        h, w = self.shape
        py, px = p[:, 0].astype(np.float32), p[:, 1].astype(np.float32)
        best = np.full(len(p), np.inf, np.float32)
        for k in candidates:
            cy, cx = (float(v) for v in self.corner[k])
            inside = (py >= cy - 0.5) & (py < cy + h - 0.5) & (px >= cx - 0.5) & (px < cx + w - 0.5)
            d2 = np.square(py - np.float32(cy + h / 2.0 - 0.5))
            d2 += np.square(px - np.float32(cx + w / 2.0 - 0.5))
            win = inside & (d2 < best)
            best[win] = d2[win]
            out[win] = self.shift[k]
        return out


def _grid_shifts(
    fields: MosaicFields, rows: np.ndarray, cols: np.ndarray, candidates: np.ndarray
) -> np.ndarray:
    """:meth:`MosaicFields.shifts_at` on the pixel grid ``rows x cols``: ``(2, R, C)``.

    On a grid, containment and distance to a centre separate by axis, so this costs a
    few row and column vectors per field instead of every pixel's.
    """
    out = np.zeros((2, len(rows), len(cols)), np.float32)
    best = np.full((len(rows), len(cols)), np.inf, np.float32)
    h, w = fields.shape
    for k in candidates:
        cy, cx = fields.corner[k]
        ry = (rows >= cy - 0.5) & (rows < cy + h - 0.5)
        rx = (cols >= cx - 0.5) & (cols < cx + w - 0.5)
        if not ry.any() or not rx.any():
            continue
        dy = ((rows + 0.5 - (cy + h / 2.0)) ** 2).astype(np.float32)
        dx = ((cols + 0.5 - (cx + w / 2.0)) ** 2).astype(np.float32)
        d2 = np.where(ry[:, None] & rx[None, :], dy[:, None] + dx[None, :], np.inf)
        win = d2 < best
        best[win] = d2[win]
        out[0][win] = fields.shift[k, 0]
        out[1][win] = fields.shift[k, 1]
    return out


def source_coordinates(
    affine: np.ndarray,
    y0: int,
    x0: int,
    size: int,
    cp: MosaicFields | None = None,
    sbs: MosaicFields | None = None,
    band: int = 128,
) -> np.ndarray:
    """Source mosaic indices of every pixel of a tile, corrected for both pastings.

    Tile pixel ``p`` of the CP mosaic truly lies at ``p + cp_shift(p)``; its SBS
    content truly lies at ``s = A (p + cp_shift(p))``, which the SBS mosaic shows at
    ``s - sbs_shift(s)``. Without ``cp``/``sbs`` this is the plain affine map.

    Returns
    -------
    numpy.ndarray
        ``(2, size, size)`` float32 ``(y, x)`` indices into the source mosaic.
    """
    a = np.asarray(affine, np.float64)
    lin, off = a[:2, :2], a[:2, 2]
    out = np.empty((2, size, size), np.float32)
    cols = np.arange(x0, x0 + size, dtype=np.float64)
    cp_near = sbs_near = np.zeros(0, np.int64)
    if cp is not None:
        cp_near = cp.near(np.array([y0, x0]), np.array([y0 + size, x0 + size]))
    if sbs is not None:
        box = source_box(a, y0, x0, size, (1 << 40, 1 << 40), margin=2)
        if box is not None:
            sbs_near = sbs.near(np.array([box[0], box[2]]), np.array([box[1], box[3]]))
    cols = cols.astype(np.float64)
    for r0 in range(0, size, band):
        r1 = min(size, r0 + band)
        rows = np.arange(y0 + r0, y0 + r1, dtype=np.float64)
        py = np.broadcast_to(rows[:, None], (r1 - r0, size)).astype(np.float64)
        px = np.broadcast_to(cols[None, :], (r1 - r0, size)).astype(np.float64)
        if cp is not None:
            shift = _grid_shifts(cp, rows, cols, cp_near)
            py, px = py + shift[0], px + shift[1]
        sy = lin[0, 0] * py + lin[0, 1] * px + off[0]
        sx = lin[1, 0] * py + lin[1, 1] * px + off[1]
        if sbs is not None:
            back = sbs.shifts_at(np.column_stack([sy.ravel(), sx.ravel()]), sbs_near)
            sy -= back[:, 0].reshape(sy.shape)
            sx -= back[:, 1].reshape(sx.shape)
        out[0, r0:r1] = sy
        out[1, r0:r1] = sx
    return out


@dataclass(frozen=True)
class Resampler:
    """Bilinear sampling of many images at one set of source indices (zero outside).

    The neighbours and weights are worked out once (:func:`resampler`) and reused for
    every channel of a tile: a channel then costs four gathers and a weighted sum.

    Attributes
    ----------
    box : tuple of int or None
        ``(ys, ye, xs, xe)``: the part of the source the samples need (None: nothing).
    base : numpy.ndarray
        Flat index of each sample's top-left neighbour in the padded box.
    fy, fx : numpy.ndarray
        Fractional offsets from it.
    shape : tuple of int
        Output shape.
    """

    box: tuple[int, int, int, int] | None
    base: np.ndarray
    fy: np.ndarray
    fx: np.ndarray
    shape: tuple[int, ...]

    def __call__(self, region: np.ndarray) -> np.ndarray:
        """Sample ``region`` (the source cut to :attr:`box`); same dtype, rounded."""
        if self.box is None:
            return np.zeros(self.shape, region.dtype)
        # One zero pixel before and two after each axis: every neighbour is in range and
        # samples beyond the box read zeros.
        flat = np.pad(region.astype(np.float32), ((1, 2), (1, 2))).ravel()
        stride = region.shape[1] + 3
        b = self.base
        top = flat[b] + self.fx * (flat[b + 1] - flat[b])
        bottom = flat[b + stride] + self.fx * (flat[b + stride + 1] - flat[b + stride])
        out = (top + self.fy * (bottom - top)).reshape(self.shape)
        if np.issubdtype(region.dtype, np.integer):
            info = np.iinfo(region.dtype)
            return np.clip(np.rint(out), info.min, info.max).astype(region.dtype)
        return out.astype(region.dtype)


def resampler(coords: np.ndarray, shape: tuple[int, int]) -> Resampler:
    """A :class:`Resampler` for ``(2, ...)`` source indices into a source of ``shape``."""
    c = np.asarray(coords, np.float32)
    out_shape = c.shape[1:]
    cy, cx = c[0].ravel(), c[1].ravel()
    ys, ye = max(0, int(np.floor(cy.min()))), min(shape[0], int(np.ceil(cy.max())) + 1)
    xs, xe = max(0, int(np.floor(cx.min()))), min(shape[1], int(np.ceil(cx.max())) + 1)
    if ys >= ye or xs >= xe:
        return Resampler(None, np.zeros(0, np.int64), np.zeros(0), np.zeros(0), out_shape)
    h, w = ye - ys, xe - xs
    # Indices in the padded box, clamped to its zero border.
    py = np.clip(cy - ys + 1, 0, h + 1)
    px = np.clip(cx - xs + 1, 0, w + 1)
    iy, ix = np.floor(py), np.floor(px)
    base = iy.astype(np.int64) * (w + 3) + ix.astype(np.int64)
    return Resampler((ys, ye, xs, xe), base, py - iy, px - ix, out_shape)
