"""Cross-magnification merge: every Cell Painting cell once, with its SBS partner.

Cell Painting (CP, e.g. 20X) and SBS (e.g. 10X) image one well on different site grids,
and the plate leaves the stage between the arms. Given each arm's site positions in its
own well frame (micrometres, from ``starrynight geometry``) and the nucleus centroids
of every site, this module

1. places every nucleus in its arm's well frame (:func:`place`);
2. removes the second copy of cells seen in two overlapping sites, keeping the copy
   farthest from its field's edge, the one least likely to be cut (:func:`deduplicate`);
3. measures the similarity (or affine) transform taking the SBS cycle-1 frame onto the
   CP frame from the nuclei of both arms (:func:`register_arms`): both frames are stage
   micrometres, so the search starts at the identity; a coarse cross-correlation of
   band-passed nucleus-density maps over a small set of rotations (and scales) finds
   rotation and shift on a window where both arms have cells, then matched centroids
   are fitted with :func:`skimage.measure.ransac`, the window growing until the whole
   overlap is used;
4. matches CP and SBS cells one to one as mutual nearest neighbours within a reach and
   says, for every CP cell without a partner, why (:func:`match_cells`).

Everything is a pure function of arrays; points are ``(n, 2)`` arrays of ``(y, x)`` in
micrometres. Transforms are 3x3 matrices acting on ``(x, y, 1)`` as in scikit-image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import ransac
from skimage.transform import AffineTransform, SimilarityTransform

Model = Literal["similarity", "affine"]

# Per-CP-cell match codes (see :func:`match_cells`); the module spells them as words.
MATCHED = 0
OUTSIDE = 1
NO_REACH = 2
AMBIGUOUS = 3
NOT_REGISTERED = 4
NO_SBS = 5


@dataclass(frozen=True)
class Fields:
    """The sites (fields of view) of one arm of a well.

    Attributes
    ----------
    site : numpy.ndarray
        ``(m,)`` site numbers.
    corner_um : numpy.ndarray
        ``(m, 2)`` top-left corner of each field (outer corner of pixel (0, 0)), y x, um.
    pixel_um : numpy.ndarray
        ``(m, 2)`` pixel size y x, um.
    shape_px : numpy.ndarray
        ``(m, 2)`` field height and width in pixels.
    """

    site: np.ndarray
    corner_um: np.ndarray
    pixel_um: np.ndarray
    shape_px: np.ndarray

    @property
    def size_um(self) -> np.ndarray:
        """``(m, 2)`` field height and width in micrometres."""
        return self.shape_px * self.pixel_um

    def rows(self, sites: np.ndarray) -> np.ndarray:
        """Row of each of ``sites`` in these fields.

        Raises
        ------
        KeyError
            Naming the first site that has no position.
        """
        order = np.argsort(self.site, kind="stable")
        sorted_sites = self.site[order]
        pos = np.searchsorted(sorted_sites, sites)
        pos = np.clip(pos, 0, max(len(sorted_sites) - 1, 0))
        ok = sorted_sites[pos] == sites if len(sorted_sites) else np.zeros(len(sites), bool)
        if not np.all(ok):
            raise KeyError(int(np.asarray(sites)[~ok][0]))
        return order[pos]


def place(
    fields: Fields, rows: np.ndarray, centroid_px: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Well-frame positions of per-site centroids and their distance to the field's edge.

    Parameters
    ----------
    fields : Fields
        The arm's sites.
    rows : numpy.ndarray
        ``(n,)`` row into ``fields`` of each centroid's site (:meth:`Fields.rows`).
    centroid_px : numpy.ndarray
        ``(n, 2)`` centroids (y, x) in pixel indices of their site (pixel centres at
        integers, as ``skimage.measure.regionprops`` gives them).

    Returns
    -------
    tuple of numpy.ndarray
        ``(points_um, edge_um)``: ``(n, 2)`` well-frame positions and ``(n,)`` distance
        from each centroid to the nearest edge of its field (um).
    """
    c = np.asarray(centroid_px, np.float64).reshape(-1, 2)
    px = fields.pixel_um[rows]
    points = fields.corner_um[rows] + (c + 0.5) * px
    inner = (c + 0.5) * px
    outer = (fields.shape_px[rows] - 0.5 - c) * px
    edge = np.minimum(inner.min(axis=1), outer.min(axis=1))
    return points, edge


def inside_fields(points: np.ndarray, fields: Fields, margin_um: float = 0.0) -> np.ndarray:
    """Which points lie inside at least one field (shrunk by ``margin_um`` on each side).

    The candidate fields of a point are the 6 whose centres are nearest: in a layout
    of equal overlapping fields (grids, round-well rows) the field whose centre is
    nearest already contains every covered point.
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    inside = np.zeros(len(points), bool)
    if not len(points) or not len(fields.site):
        return inside
    half = fields.size_um / 2
    centre = fields.corner_um + half
    k = min(6, len(centre))
    _, idx = cKDTree(centre).query(points, k=k)
    idx = idx.reshape(len(points), k)
    d = np.abs(points[:, None, :] - centre[idx])
    return np.any(np.all(d <= half[idx] - margin_um, axis=2), axis=1)


@dataclass(frozen=True)
class Duplicates:
    """Result of :func:`deduplicate`.

    ``keep[i]`` is True for the one kept copy of each physical cell; ``kept_as[i]`` is
    the index of the kept copy of point ``i``'s cell (``i`` itself when kept).
    """

    keep: np.ndarray
    kept_as: np.ndarray
    radius_um: float

    @property
    def dropped(self) -> int:
        """Number of copies removed."""
        return int((~self.keep).sum())


def typical_spacing(points: np.ndarray, rows: np.ndarray) -> float:
    """Median distance from a nucleus to its nearest neighbour in the same site (um).

    Neighbours in other sites are skipped: in an overlap they are the cell's own copy.
    Returns ``nan`` when no site has two nuclei.
    """
    n = len(points)
    if n < 2:
        return float("nan")
    k = min(7, n)
    # A median needs no more than a few thousand samples (evenly spread).
    probe = np.arange(0, n, max(1, n // 5000))
    d, idx = cKDTree(points).query(points[probe], k=k)
    n = len(probe)
    same = rows[idx[:, 1:]] == rows[probe][:, None]
    first = np.argmax(same, axis=1)
    found = same[np.arange(n), first]
    if not found.any():
        return float("nan")
    return float(np.median(d[:, 1:][np.arange(n), first][found]))


def deduplicate(
    points: np.ndarray,
    rows: np.ndarray,
    edge_um: np.ndarray,
    fields: Fields,
    radius_um: float | None = None,
    area_um2: np.ndarray | None = None,
) -> Duplicates:
    """Keep one copy of every cell seen in two (or more) overlapping sites.

    Two nuclei are copies of one cell when they come from different sites, lie within
    ``radius_um`` of each other and each lies in (or within ``radius_um`` of) the other's
    field; where one of them is cut by its field's edge (its centroid within
    ``radius_um / 2`` of it: a sliver, whose centroid is shifted by up to its radius),
    within twice that. Pairs are joined nearest first, and never so that one group holds two nuclei
    of the same site (a site sees a cell once), so a tight cluster of cells in an
    overlap is not merged into one; the exception is a nucleus that segmentation cut in
    two in one site only (both pieces next to the whole copy a neighbouring site saw
    more centrally), whose pieces all join that copy. Of each group, the copy farthest
    from its field's edge is kept: a nucleus cut by the edge has a shifted centroid and,
    in SBS, may lack cycles.

    Parameters
    ----------
    points : numpy.ndarray
        ``(n, 2)`` well-frame positions (um).
    rows : numpy.ndarray
        ``(n,)`` row into ``fields`` of each point's site.
    edge_um : numpy.ndarray
        ``(n,)`` distance to the field's edge (:func:`place`).
    fields : Fields
    radius_um : float, optional
        Largest distance between two copies; default half the typical nucleus spacing
        within a site (:func:`typical_spacing`), which stays below the distance to a
        neighbouring cell and above the shift of a cut nucleus's centroid.
    area_um2 : numpy.ndarray, optional
        ``(n,)`` nucleus areas; without them no group takes two pieces of one site.

    Returns
    -------
    Duplicates
    """
    n = len(points)
    kept_as = np.arange(n)
    if radius_um is None:
        spacing = typical_spacing(points, rows)
        radius_um = 0.5 * spacing if math.isfinite(spacing) else 0.0
    if n < 2 or radius_um <= 0 or len(np.unique(rows)) < 2:
        return Duplicates(np.ones(n, bool), kept_as, float(radius_um))
    # A nucleus the field's edge cuts to a sliver has its centroid shifted by up to its
    # radius: it may pair with its copy at twice the reach.
    reach = 2.0 * radius_um
    tree = cKDTree(points)
    pairs = tree.query_pairs(reach, output_type="ndarray")
    pairs = pairs[rows[pairs[:, 0]] != rows[pairs[:, 1]]]
    if len(pairs):
        a, b = pairs[:, 0], pairs[:, 1]
        cut = np.minimum(edge_um[a], edge_um[b]) < 0.5 * radius_um
        near = np.linalg.norm(points[a] - points[b], axis=1) <= radius_um
        pairs, cut = pairs[near | cut], cut[near | cut]
        a, b = pairs[:, 0], pairs[:, 1]
        lo, size = fields.corner_um, fields.size_um
        margin = np.where(cut, reach, radius_um)[:, None]

        def within(p: np.ndarray, r: np.ndarray) -> np.ndarray:
            return np.all(
                (points[p] >= lo[r] - margin) & (points[p] <= lo[r] + size[r] + margin), axis=1
            )

        pairs = pairs[within(a, rows[b]) & within(b, rows[a])]
    if len(pairs):
        dist = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
        pairs = pairs[np.argsort(dist, kind="stable")]
    parent = np.arange(n)
    sites: dict[int, set[int]] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    refused: list[tuple[int, int]] = []
    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra == rb:
            continue
        sa = sites.get(ra, {int(rows[ra])})
        sb = sites.get(rb, {int(rows[rb])})
        if sa & sb:
            refused.append((a, b))  # the groups share a site: two different cells...
            continue
        parent[rb] = ra
        sites[ra] = sa | sb
        sites.pop(rb, None)
    # ...unless segmentation cut one nucleus in two in one site only (a sliver at
    # the field's edge split off, a lobe seeded twice): see _split_fragments.
    if area_um2 is not None:
        pieces = _split_fragments(
            refused, tree, points, rows, edge_um, area_um2, radius_um, root, sites
        )
        for i, g in pieces:
            parent[i] = g
    keep = np.ones(n, bool)
    if sites:
        touched = np.unique(pairs)
        roots = np.arange(n)
        roots[touched] = [root(i) for i in touched.tolist()]
        grouped = touched[np.isin(roots[touched], list(sites))]
        # Best copy per group: largest edge distance (ties: lowest index).
        order = grouped[np.lexsort((grouped, -edge_um[grouped], roots[grouped]))]
        first = np.r_[True, roots[order][1:] != roots[order][:-1]]
        best_of_root = dict(zip(roots[order][first].tolist(), order[first].tolist(), strict=True))
        best = np.array([best_of_root[r] for r in roots[grouped].tolist()])
        kept_as[grouped] = best
        keep[grouped] = best == grouped
    return Duplicates(keep, kept_as, float(radius_um))


#: Largest area of the pieces of one nucleus in one site, as a multiple of the whole
#: copy another site saw (segmentation noise on the outline; two cells are ~2x).
PIECES_AREA_RATIO = 1.3


def _split_fragments(
    refused: list[tuple[int, int]],
    tree: cKDTree,
    points: np.ndarray,
    rows: np.ndarray,
    edge_um: np.ndarray,
    area_um2: np.ndarray,
    radius_um: float,
    root: Callable[[int], int],
    sites: dict[int, set[int]],
) -> list[tuple[int, int]]:
    """Lone nuclei that are a second fragment of a grouped cell: ``(nucleus, group)``.

    A nucleus ``i`` left alone because the group of its nearest copy already holds a
    nucleus ``s`` of its own site is that group's cell when ``s`` and ``i`` are two
    pieces of one nucleus: both within ``radius_um`` of the group's copy ``w`` in
    another site, which lies farther from its field's edge than ``i`` (that site saw
    the nucleus whole), and the pieces together no larger than
    :data:`PIECES_AREA_RATIO` times ``w``. Two real cells beside each other are
    about twice ``w``'s area, so they stay apart.
    """
    out: list[tuple[int, int]] = []
    taken: set[int] = set()
    for a, b in refused:
        for i, j in ((a, b), (b, a)):
            if i in taken or root(i) != i or i in sites:
                continue  # not alone
            g = root(j)
            if g not in sites:
                continue
            near = np.asarray(tree.query_ball_point(points[i], radius_um), np.int64)
            group = near[[root(int(m)) == g for m in near.tolist()]]
            sibling = group[rows[group] == rows[i]]
            elsewhere = group[rows[group] != rows[i]]
            if not len(sibling) or not len(elsewhere):
                continue
            whole = elsewhere[np.argmax(edge_um[elsewhere])]
            if edge_um[whole] <= edge_um[i]:
                continue  # the other site sees it no more whole than this one
            if area_um2[sibling].sum() + area_um2[i] > PIECES_AREA_RATIO * area_um2[whole]:
                continue  # two cells, not two pieces of one
            out.append((i, g))
            taken.add(i)
    return out


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class Transform:
    """A 2-D transform of well-frame points, ``matrix`` acting on ``(x, y, 1)``."""

    matrix: np.ndarray
    model: str = "similarity"

    @property
    def scale(self) -> float:
        """Mean linear scale (square root of the determinant)."""
        return float(math.sqrt(abs(np.linalg.det(self.matrix[:2, :2]))))

    @property
    def rotation_deg(self) -> float:
        """Rotation in degrees (x towards y; with y down, clockwise on screen)."""
        m = self.matrix[:2, :2]
        # Rotation of the polar decomposition: the nearest rotation to the linear part.
        return float(math.degrees(math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))

    @property
    def translation_um(self) -> tuple[float, float]:
        """``(y, x)`` image of the origin."""
        return float(self.matrix[1, 2]), float(self.matrix[0, 2])

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map ``(n, 2)`` (y, x) points."""
        p = np.asarray(points, np.float64).reshape(-1, 2)
        m = self.matrix
        x = m[0, 0] * p[:, 1] + m[0, 1] * p[:, 0] + m[0, 2]
        y = m[1, 0] * p[:, 1] + m[1, 1] * p[:, 0] + m[1, 2]
        return np.column_stack([y, x])

    def inverse(self) -> Transform:
        """The inverse transform."""
        return Transform(np.linalg.inv(self.matrix), self.model)


def similarity(
    scale: float,
    rotation_deg: float,
    translation_um: tuple[float, float],
    centre: tuple[float, float] = (0.0, 0.0),
) -> Transform:
    """``p -> scale * R(rotation) (p - centre) + centre + translation`` (points y x)."""
    a = math.radians(rotation_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    lin = np.array([[c, -s], [s, c]])
    cx = np.array([centre[1], centre[0]])
    t = cx - lin @ cx + np.array([translation_um[1], translation_um[0]])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = t
    return Transform(m)


@dataclass(frozen=True)
class RegisterParams:
    """Settings of :func:`register_arms` (distances in um).

    Attributes
    ----------
    max_shift_um : float
        Largest translation between the arms searched (beyond the positions' identity).
    max_rotation_deg, rotation_step_deg : float
        Rotations searched by the coarse correlation: ``-max..max`` by ``step``.
    scales : tuple of float
        Scales searched by the coarse correlation, as factors of ``expected_scale``.
    bin_um : float
        Pixel of the coarse density maps.
    window_um : float
        Side of the window (where both arms have cells) that the coarse search uses.
    inlier_um : float
        RANSAC residual threshold: a matched pair farther apart after the fit is an
        outlier.
    model : {"similarity", "affine"}
        Transform fitted to the matched centroids.
    min_nuclei : int
        Fewer nuclei in either arm (after de-duplication): the well is not registered.
    min_inliers : int
        Fewer consistent pairs: the well is not registered.
    expected_scale, max_scale_error : float
        A fitted scale off ``expected_scale`` by more than this fraction means wrong
        pixel sizes or wrong images: the well is not registered.
    max_residual_um : float
        RMS residual above this flags the well (``residual_high``).
    min_inlier_share : float
        Share of the nuclei of the common area explained by the fit below this flags
        the well (``inlier_share_low``).
    seed : int
        Seed of RANSAC's sampling (results are reproducible).
    """

    max_shift_um: float = 200.0
    max_rotation_deg: float = 2.0
    rotation_step_deg: float = 0.25
    scales: tuple[float, ...] = (1.0,)
    bin_um: float = 4.0
    window_um: float = 800.0
    inlier_um: float = 2.5
    model: Model = "similarity"
    min_nuclei: int = 20
    min_inliers: int = 20
    expected_scale: float = 1.0
    max_scale_error: float = 0.01
    max_residual_um: float = 1.5
    min_inlier_share: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class Registration:
    """Result of :func:`register_arms`: ``transform`` maps SBS points into the CP frame.

    ``registered`` is False (and ``transform`` None) when the arms could not be
    registered; ``reason`` says why. ``flags`` name every bound the result is outside
    of (blocking ones leave the well unregistered). ``residuals_um`` holds the
    distance of every inlier pair after the fit.
    """

    registered: bool
    transform: Transform | None
    reason: str
    flags: tuple[str, ...]
    n_cp: int
    n_sbs: int
    n_pairs: int = 0
    n_inliers: int = 0
    n_common: int = 0
    inlier_share: float = float("nan")
    residual_rms_um: float = float("nan")
    residuals_um: np.ndarray = field(default_factory=lambda: np.zeros(0))
    coarse: dict = field(default_factory=dict)
    iterations: int = 0


def _not_registered(reason: str, flag: str, n_cp: int, n_sbs: int, **kw: Any) -> Registration:
    return Registration(False, None, reason, (flag,), n_cp, n_sbs, **kw)


def _window_centre(cp: np.ndarray, sbs: np.ndarray, params: RegisterParams) -> np.ndarray | None:
    """Centre (y x) of a ``window_um`` box with the most CP cells where SBS cells may be."""
    cell = params.window_um / 4
    lo = np.minimum(cp.min(axis=0), sbs.min(axis=0))
    hi = np.maximum(cp.max(axis=0), sbs.max(axis=0))
    shape = tuple(np.maximum(1, np.ceil((hi - lo) / cell).astype(int) + 1))
    ic = np.minimum(((cp - lo) // cell).astype(int), np.array(shape) - 1)
    isb = np.minimum(((sbs - lo) // cell).astype(int), np.array(shape) - 1)
    occ_cp = np.zeros(shape)
    np.add.at(occ_cp, (ic[:, 0], ic[:, 1]), 1)
    occ_sbs = np.zeros(shape, bool)
    occ_sbs[isb[:, 0], isb[:, 1]] = True
    reach = math.ceil(params.max_shift_um / cell)
    occ_sbs = ndimage.binary_dilation(occ_sbs, np.ones((2 * reach + 1,) * 2, bool))
    both = ndimage.uniform_filter(occ_cp * occ_sbs, size=4, mode="constant")
    if both.max() <= 0:
        return None
    # Of the nearly best windows, the one nearest the middle of the common area: the
    # fit grows from it, and errors of rotation and scale grow with the distance.
    good = np.argwhere(both >= 0.9 * both.max())
    middle = np.average(np.argwhere(both > 0), axis=0, weights=both[both > 0])
    iy, ix = good[int(np.argmin(np.linalg.norm(good - middle, axis=1)))]
    # uniform_filter of even size 4 centres its box at (i - 2 .. i + 1): box centre at i.
    return lo + np.array([iy, ix], float) * cell


def _density(
    points: np.ndarray, lo: np.ndarray, shape: tuple[int, int], bin_um: float
) -> np.ndarray:
    """Band-passed nucleus-density map: cell-sized blobs kept, smooth density removed."""
    idx = np.floor((points - lo) / bin_um).astype(int)
    ok = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
    img = np.zeros(shape, np.float32)
    np.add.at(img, (idx[ok, 0], idx[ok, 1]), 1.0)
    fine = ndimage.gaussian_filter(img, 1.0, mode="constant")
    broad = ndimage.gaussian_filter(img, 4.0, mode="constant")
    return fine - broad


def _peak(corr: np.ndarray, limit: int) -> tuple[np.ndarray, float, float]:
    """Sub-bin peak ``(dy, dx)`` of a circular correlation within ``|shift| <= limit``,
    its value, and the best value farther than 3 bins from it."""
    h, w = corr.shape
    dy = np.fft.fftfreq(h, 1 / h)
    dx = np.fft.fftfreq(w, 1 / w)
    allowed = (np.abs(dy)[:, None] <= limit) & (np.abs(dx)[None, :] <= limit)
    masked = np.where(allowed, corr, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(masked)), corr.shape)
    best = float(corr[iy, ix])

    def parabola(m1: float, c0: float, p1: float) -> float:
        den = m1 - 2 * c0 + p1
        return 0.0 if den >= 0 else float(np.clip(0.5 * (m1 - p1) / den, -0.5, 0.5))

    sub_y = parabola(corr[(iy - 1) % h, ix], best, corr[(iy + 1) % h, ix])
    sub_x = parabola(corr[iy, (ix - 1) % w], best, corr[iy, (ix + 1) % w])
    near = (np.abs(((dy - dy[iy] + h / 2) % h) - h / 2)[:, None] <= 3) & (
        np.abs(((dx - dx[ix] + w / 2) % w) - w / 2)[None, :] <= 3
    )
    rest = np.where(near, -np.inf, masked)
    second = float(rest.max()) if np.isfinite(rest).any() else 0.0
    return np.array([dy[iy] + sub_y, dx[ix] + sub_x]), best, second


def coarse_register(cp: np.ndarray, sbs: np.ndarray, params: RegisterParams) -> dict | None:
    """Rotation, scale and shift of SBS onto CP from density maps of a shared window.

    Every candidate rotation and scale of the SBS points (about the window's centre) is
    cross-correlated with the CP map by FFT; the best peak wins, refined to sub-bin
    and (between neighbouring rotations) sub-step by parabolas.

    Returns
    -------
    dict or None
        ``centre`` (y x), ``rotation_deg``, ``scale``, ``shift_um`` (y x), ``peak``
        (normalised correlation), ``peak_ratio`` (over the best peak elsewhere), the
        numbers of CP and SBS nuclei used; None when the arms share no area.
    """
    centre = _window_centre(cp, sbs, params)
    if centre is None:
        return None
    b = params.bin_um
    half = params.window_um / 2
    margin = params.max_shift_um + 4 * b
    lo = centre - half - margin
    side = math.ceil((2 * half + 2 * margin) / b)
    limit = math.ceil(params.max_shift_um / b)
    shape = (sfft.next_fast_len(side + limit), sfft.next_fast_len(side + limit))
    in_window = np.all(np.abs(cp - centre) <= half, axis=1)
    a_map = np.zeros(shape, np.float32)
    a_map[:side, :side] = _density(cp[in_window], lo, (side, side), b)
    fa = sfft.rfft2(a_map)
    norm_a = float(np.linalg.norm(a_map))
    n_step = round(params.max_rotation_deg / params.rotation_step_deg)
    rotations = np.arange(-n_step, n_step + 1) * params.rotation_step_deg
    near = np.all(np.abs(sbs - centre) <= half + margin + 2 * b, axis=1)
    pts = sbs[near] - centre
    results = []
    for factor in params.scales:
        scale = factor * params.expected_scale
        for rot in rotations:
            moved = similarity(scale, float(rot), (0.0, 0.0)).apply(pts) + centre
            b_map = np.zeros(shape, np.float32)
            b_map[:side, :side] = _density(moved, lo, (side, side), b)
            corr = sfft.irfft2(fa * np.conj(sfft.rfft2(b_map)), s=shape)
            shift, best, second = _peak(corr, limit)
            norm = norm_a * float(np.linalg.norm(b_map)) or 1.0
            results.append((best / norm, second / norm, scale, float(rot), shift * b))
    scores = np.array([r[0] for r in results])
    i = int(np.argmax(scores))
    score, second, scale, rot, shift = results[i]
    n_rot = len(rotations)
    j = i % n_rot
    if 0 < j < n_rot - 1:
        m1, p1 = scores[i - 1], scores[i + 1]
        den = m1 - 2 * score + p1
        if den < 0:
            rot += float(np.clip(0.5 * (m1 - p1) / den, -0.5, 0.5)) * params.rotation_step_deg
    ratio = score / second if second > 0 else float("inf")
    return {
        "centre": centre, "rotation_deg": rot, "scale": scale, "shift_um": shift,
        "peak": float(score), "peak_ratio": float(ratio),
        "n_cp": int(in_window.sum()), "n_sbs": int(near.sum()),
    }  # fmt: skip


def mutual_nearest(
    a: np.ndarray, b: np.ndarray, reach: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` where ``a[i]`` and ``b[j]`` are each other's nearest neighbour,
    at most ``reach`` apart; returns ``(index_a, index_b, distance)``."""
    if not len(a) or not len(b):
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    da, ia = cKDTree(b).query(a, distance_upper_bound=reach)
    _, ib = cKDTree(a).query(b, distance_upper_bound=reach)
    ok = np.flatnonzero(np.isfinite(da))
    ok = ok[ib[ia[ok]] == ok]
    return ok, ia[ok].astype(np.int64), da[ok]


def _fit(
    src: np.ndarray, dst: np.ndarray, params: RegisterParams, rng: np.random.Generator
) -> tuple[Transform | None, np.ndarray]:
    """RANSAC fit ``dst ~ T(src)`` (points y x); returns ``(Transform, inlier mask)``."""
    cls = AffineTransform if params.model == "affine" else SimilarityTransform
    model, inliers = ransac(
        (src[:, ::-1], dst[:, ::-1]), cls, min_samples=3, residual_threshold=params.inlier_um,
        max_trials=200, stop_probability=0.999, rng=rng,
    )  # fmt: skip
    if model is None or inliers is None:
        return None, np.zeros(len(src), bool)
    return Transform(np.asarray(model.params, np.float64), params.model), inliers


def _displacement(a: Transform, b: Transform, centre: np.ndarray, span: float) -> float:
    """Largest distance between where ``a`` and ``b`` put the corners of a box."""
    box = centre + span * np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], float)
    return float(np.max(np.linalg.norm(a.apply(box) - b.apply(box), axis=1)))


def register_arms(
    cp: np.ndarray,
    sbs: np.ndarray,
    cp_fields: Fields,
    sbs_fields: Fields,
    params: RegisterParams | None = None,
) -> Registration:
    """Transform taking SBS (cycle-1 well frame) points onto CP well-frame points.

    Parameters
    ----------
    cp, sbs : numpy.ndarray
        ``(n, 2)``, ``(m, 2)`` de-duplicated nucleus positions (y x, um) of each arm in
        its own well frame. The frames are taken to agree up to ``max_shift_um`` and
        ``max_rotation_deg`` (both are stage micrometres).
    cp_fields, sbs_fields : Fields
        The arms' sites: the common area is where a mapped point falls in both.
    params : RegisterParams, optional

    Returns
    -------
    Registration
        Not registered (with the reason) when either arm has fewer than
        ``min_nuclei`` nuclei, the arms share no area, fewer than ``min_inliers``
        pairs agree on one transform, or the fitted scale is off ``expected_scale`` by
        more than ``max_scale_error``.
    """
    params = params or RegisterParams()
    cp = np.asarray(cp, np.float64).reshape(-1, 2)
    sbs = np.asarray(sbs, np.float64).reshape(-1, 2)
    n_cp, n_sbs = len(cp), len(sbs)
    if min(n_cp, n_sbs) < params.min_nuclei:
        return _not_registered(
            f"too few nuclei to register ({n_cp} CP, {n_sbs} SBS; at least "
            f"{params.min_nuclei} each needed)", "too_few_nuclei", n_cp, n_sbs,
        )  # fmt: skip
    coarse = coarse_register(cp, sbs, params)
    if coarse is None:
        return _not_registered(
            f"the arms share no area within {params.max_shift_um:g} um of their positions",
            "no_common_area", n_cp, n_sbs,
        )  # fmt: skip
    centre = coarse["centre"]
    transform = similarity(
        coarse["scale"], coarse["rotation_deg"], tuple(coarse["shift_um"]), centre
    )
    rng = np.random.default_rng(params.seed)
    half = params.window_um / 2
    span = float(np.max(np.abs(np.concatenate([cp, transform.apply(sbs)]) - centre)))
    reach = max(2.0 * params.bin_um, 3.0 * params.inlier_um)
    inliers = np.zeros(0, bool)
    ia = ib = np.zeros(0, np.int64)
    iterations = 0
    while True:
        iterations += 1
        moved = transform.apply(sbs)
        a_sel = np.flatnonzero(np.all(np.abs(cp - centre) <= half, axis=1))
        b_sel = np.flatnonzero(np.all(np.abs(moved - centre) <= half + reach, axis=1))
        pa, pb, _ = mutual_nearest(cp[a_sel], moved[b_sel], reach)
        ia, ib = a_sel[pa], b_sel[pb]
        if len(ia) < max(params.min_inliers, 3):
            inliers = np.zeros(len(ia), bool)
            break
        fitted, inliers = _fit(sbs[ib], cp[ia], params, rng)
        if fitted is None:
            inliers = np.zeros(len(ia), bool)
            break
        step = _displacement(transform, fitted, centre, span)
        transform = fitted
        if half >= span and (step < 0.01 * params.inlier_um or iterations >= 12):
            break
        half = min(half * 2.0, span)
    n_pairs = len(ia)
    n_inliers = int(inliers.sum())
    coarse_out = {
        "window_centre_um": [float(v) for v in centre], "rotation_deg": coarse["rotation_deg"],
        "scale": coarse["scale"], "shift_um": [float(v) for v in coarse["shift_um"]],
        "peak": coarse["peak"], "peak_ratio": coarse["peak_ratio"],
        "window_nuclei": [coarse["n_cp"], coarse["n_sbs"]],
    }  # fmt: skip
    if n_inliers < params.min_inliers:
        return _not_registered(
            f"only {n_inliers} nucleus pairs agree on one transform (at least "
            f"{params.min_inliers} needed; coarse peak ratio {coarse['peak_ratio']:.2f})",
            "too_few_inliers", n_cp, n_sbs, n_pairs=n_pairs, n_inliers=n_inliers,
            coarse=coarse_out, iterations=iterations,
        )  # fmt: skip
    res = np.linalg.norm(transform.apply(sbs[ib[inliers]]) - cp[ia[inliers]], axis=1)
    rms = float(np.sqrt(np.mean(res**2)))
    common_sbs = inside_fields(transform.apply(sbs), cp_fields)
    common_cp = inside_fields(transform.inverse().apply(cp), sbs_fields)
    n_common = int(min(common_sbs.sum(), common_cp.sum()))
    share = n_inliers / n_common if n_common else float("nan")
    flags = []
    scale_error = transform.scale / params.expected_scale - 1
    kw = dict(
        n_pairs=n_pairs, n_inliers=n_inliers, n_common=n_common, inlier_share=share,
        residual_rms_um=rms, residuals_um=res, coarse=coarse_out, iterations=iterations,
    )  # fmt: skip
    if abs(scale_error) > params.max_scale_error:
        return Registration(
            False, transform,
            f"fitted scale {transform.scale:.4f} is {100 * scale_error:+.2f} % off the expected "
            f"{params.expected_scale:.4f} (at most {100 * params.max_scale_error:g} %): check "
            "the pixel sizes of the two arms",
            ("scale_out_of_bounds",), n_cp, n_sbs, **kw,
        )  # fmt: skip
    if rms > params.max_residual_um:
        flags.append("residual_high")
    if not share >= params.min_inlier_share:
        flags.append("inlier_share_low")
    if abs(transform.rotation_deg) > params.max_rotation_deg + params.rotation_step_deg:
        flags.append("rotation_beyond_search")
    return Registration(True, transform, "", tuple(flags), n_cp, n_sbs, **kw)


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class CellMatch:
    """Result of :func:`match_cells`, one entry per CP cell.

    ``code`` is one of :data:`MATCHED`, :data:`OUTSIDE`, :data:`NO_REACH`,
    :data:`AMBIGUOUS`; ``partner`` the matched SBS index (-1 if none); ``distance`` the
    distance to it (um), or to the nearest SBS cell for unmatched cells (inf if none).
    """

    code: np.ndarray
    partner: np.ndarray
    distance: np.ndarray


def match_cells(
    cp: np.ndarray,
    sbs: np.ndarray,
    cp_inside: np.ndarray,
    reach_um: float = 5.0,
    ambiguity_um: float = 2.0,
) -> CellMatch:
    """One-to-one CP <-> SBS matches, and why every other CP cell has none.

    A CP cell outside the SBS area is ``OUTSIDE``. Inside, let ``s`` be its nearest SBS
    cell at ``d1``: farther than ``reach_um`` is ``NO_REACH``. When the cell and ``s``
    are each other's nearest neighbour it is ``MATCHED`` unless a runner-up is within
    ``ambiguity_um`` of ``d1`` — the cell's second nearest SBS cell, or ``s``'s second
    nearest CP cell — which makes it ``AMBIGUOUS`` (e.g. two touching nuclei seen as one
    at the lower magnification: which of the two owns the barcode cannot be told).
    When ``s`` is nearer another CP cell, this cell is ``AMBIGUOUS`` if it is within
    ``ambiguity_um`` of that distance, otherwise ``NO_REACH`` (its own SBS nucleus is
    missing).

    Parameters
    ----------
    cp : numpy.ndarray
        ``(n, 2)`` CP cells (y x, um, CP frame).
    sbs : numpy.ndarray
        ``(m, 2)`` SBS cells mapped into the CP frame.
    cp_inside : numpy.ndarray
        ``(n,)`` whether each CP cell lies in the SBS area.
    reach_um, ambiguity_um : float

    Returns
    -------
    CellMatch
    """
    n, m = len(cp), len(sbs)
    code = np.where(np.asarray(cp_inside, bool), NO_REACH, OUTSIDE).astype(np.int8)
    partner = np.full(n, -1, np.int64)
    distance = np.full(n, np.inf)
    if n == 0 or m == 0:
        return CellMatch(code, partner, distance)
    k = min(2, m)
    d, i = cKDTree(sbs).query(cp, k=k)
    d, i = d.reshape(n, k), i.reshape(n, k)
    e, j = cKDTree(cp).query(sbs, k=min(2, n))
    e, j = e.reshape(m, -1), j.reshape(m, -1)
    d1, s = d[:, 0], i[:, 0]
    d2 = d[:, 1] if k == 2 else np.full(n, np.inf)
    e2 = e[s, 1] if e.shape[1] == 2 else np.full(n, np.inf)
    distance[:] = d1
    inside = code == NO_REACH
    near = inside & (d1 <= reach_um)
    mutual = j[s, 0] == np.arange(n)
    close_call = (d2 - d1 < ambiguity_um) | (e2 - d1 < ambiguity_um)
    matched = near & mutual & ~close_call
    code[near & mutual & close_call] = AMBIGUOUS
    code[near & ~mutual & (d1 - e[s, 0] < ambiguity_um)] = AMBIGUOUS
    code[matched] = MATCHED
    partner[matched] = s[matched]
    return CellMatch(code, partner, distance)


# --------------------------------------------------------------------------- the well


@dataclass(frozen=True)
class ArmNuclei:
    """Nuclei of one arm of a well: per-site centroids and the arm's fields.

    ``label`` is each nucleus's object number in its site (carried for the caller);
    ``area_px`` lets :func:`deduplicate` join the pieces of a nucleus that
    segmentation cut in two in one site.
    """

    fields: Fields
    site: np.ndarray  # (n,)
    centroid_px: np.ndarray  # (n, 2) y x, site pixels
    label: np.ndarray | None = None
    area_px: np.ndarray | None = None  # (n,) nucleus areas, pixels


@dataclass(frozen=True)
class MergeParams:
    """Settings of :func:`merge_well` (distances in um)."""

    register: RegisterParams = field(default_factory=RegisterParams)
    reach_um: float = 5.0
    ambiguity_um: float = 2.0
    duplicate_um: float | None = None


@dataclass(frozen=True)
class ArmPlaced:
    """One arm placed in its well frame and de-duplicated."""

    points: np.ndarray
    edge_um: np.ndarray
    rows: np.ndarray
    duplicates: Duplicates


@dataclass(frozen=True)
class WellMerge:
    """Result of :func:`merge_well`.

    ``code``, ``partner`` and ``distance`` have one entry per CP nucleus (duplicates
    included: a dropped copy carries the result of its kept copy); ``partner`` indexes
    the SBS nuclei. ``sbs_in_cp`` is every SBS nucleus mapped into the CP frame (None
    when not registered).
    """

    cp: ArmPlaced
    sbs: ArmPlaced | None
    registration: Registration | None
    cp_inside: np.ndarray
    code: np.ndarray
    partner: np.ndarray
    distance: np.ndarray
    sbs_in_cp: np.ndarray | None


def place_arm(arm: ArmNuclei, duplicate_um: float | None) -> ArmPlaced:
    """:func:`place` and :func:`deduplicate` one arm (raises KeyError for a site
    without a position)."""
    rows = arm.fields.rows(np.asarray(arm.site))
    points, edge = place(arm.fields, rows, arm.centroid_px)
    area = None
    if arm.area_px is not None:
        area = np.asarray(arm.area_px, np.float64) * np.prod(arm.fields.pixel_um[rows], axis=1)
    dup = deduplicate(points, rows, edge, arm.fields, duplicate_um, area)
    return ArmPlaced(points, edge, rows, dup)


def merge_well(
    cp: ArmNuclei, sbs: ArmNuclei | None, params: MergeParams | None = None
) -> WellMerge:
    """Place, de-duplicate, register and match the two arms of a well.

    Parameters
    ----------
    cp : ArmNuclei
        Cell Painting nuclei and sites.
    sbs : ArmNuclei, optional
        SBS cycle-1 nuclei and sites; None for a well without SBS images (every CP cell
        gets :data:`NO_SBS`).
    params : MergeParams, optional

    Returns
    -------
    WellMerge
    """
    params = params or MergeParams()
    cp_arm = place_arm(cp, params.duplicate_um)
    n = len(cp_arm.points)
    partner = np.full(n, -1, np.int64)
    distance = np.full(n, np.inf)
    if sbs is None:
        code = np.full(n, NO_SBS, np.int8)
        return WellMerge(cp_arm, None, None, np.zeros(n, bool), code, partner, distance, None)
    sbs_arm = place_arm(sbs, params.duplicate_um)
    keep_cp = np.flatnonzero(cp_arm.duplicates.keep)
    keep_sbs = np.flatnonzero(sbs_arm.duplicates.keep)
    reg = register_arms(
        cp_arm.points[keep_cp], sbs_arm.points[keep_sbs], cp.fields, sbs.fields, params.register
    )
    if not reg.registered:
        code = np.full(n, NOT_REGISTERED, np.int8)
        return WellMerge(cp_arm, sbs_arm, reg, np.zeros(n, bool), code, partner, distance, None)
    assert reg.transform is not None
    sbs_in_cp = reg.transform.apply(sbs_arm.points)
    inside = inside_fields(reg.transform.inverse().apply(cp_arm.points), sbs.fields)
    match = match_cells(
        cp_arm.points[keep_cp], sbs_in_cp[keep_sbs], inside[keep_cp],
        params.reach_um, params.ambiguity_um,
    )  # fmt: skip
    # Every copy carries its kept copy's result, so a table can report it either way.
    of_kept = np.full(n, -1, np.int64)
    of_kept[keep_cp] = np.arange(len(keep_cp))
    src = of_kept[cp_arm.duplicates.kept_as]
    code = match.code[src]
    partner = np.where(match.partner[src] >= 0, keep_sbs[np.maximum(match.partner[src], 0)], -1)
    distance = match.distance[src]
    return WellMerge(cp_arm, sbs_arm, reg, inside, code, partner, distance, sbs_in_cp)
