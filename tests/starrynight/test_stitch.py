"""Pairwise registration and the joint solve, on tiles cut from a known scene."""

from __future__ import annotations

import numpy as np
import pytest

from starrynight.algorithms import stitch


def _blobs(rng: np.random.Generator, extent: float, n: int) -> np.ndarray:
    """Nucleus-like discs: centre y, x, radius, brightness."""
    return np.column_stack(
        [
            rng.uniform(0, extent, n),
            rng.uniform(0, extent, n),
            rng.uniform(4, 8, n),
            rng.uniform(0.5, 1.5, n),
        ]
    )


def _render(blobs: np.ndarray, origin: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The scene sampled on a tile whose pixel (0, 0) sits at ``origin`` (exact sub-pixel)."""
    h, w = shape
    ys = origin[0] + np.arange(h)[:, None]
    xs = origin[1] + np.arange(w)[None, :]
    out = np.zeros(shape)
    for by, bx, r, amp in blobs:
        if not (ys[0, 0] - 12 < by < ys[-1, 0] + 12 and xs[0, 0] - 12 < bx < xs[0, -1] + 12):
            continue
        d = np.sqrt((ys - by) ** 2 + (xs - bx) ** 2)
        out += amp / (1 + np.exp((d - r) / 0.7))  # a disc with a soft (blurred) edge
    return out


def _grid(rows: int, cols: int, tile: int, overlap: float) -> np.ndarray:
    step = tile * (1 - overlap)
    return np.array([(r * step, c * step) for r in range(rows) for c in range(cols)], float)


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(1)
    tile = 200
    nominal = _grid(3, 4, tile, 0.2)
    truth = nominal + rng.normal(0, 2.0, nominal.shape) + 20
    blobs = _blobs(rng, 800, 2500)
    tiles = [_render(blobs, p, (tile, tile)) + rng.normal(0, 0.02, (tile, tile)) for p in truth]
    recorded = truth + rng.normal(0, 2.3, truth.shape)  # ~1.5 um at 0.65 um/px
    return tiles, truth, recorded


def _refine(tiles, recorded, **kw):
    pairs = stitch.neighbour_pairs(recorded, tiles[0].shape)
    ms = [stitch.measure_pair(tiles[p.i], tiles[p.j], p) for p in pairs]
    status = stitch.screen_pairs(ms, **kw)
    return pairs, ms, stitch.solve_positions(recorded, ms, status)


def _relative_error(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    d = found - truth
    return np.linalg.norm(d - d.mean(axis=0), axis=1)


def test_grid_neighbours_exclude_thin_diagonals():
    pos = _grid(2, 2, 200, 0.1)
    pairs = stitch.neighbour_pairs(pos, (200, 200))
    assert [(p.i, p.j) for p in pairs] == [(0, 1), (0, 2), (1, 3), (2, 3)]
    assert pairs[0].offset == (0.0, 180.0)
    assert stitch.neighbour_pairs(pos, (200, 200), min_overlap_px=25) == []


def test_overlap_boxes_cut_the_same_region():
    (ri, ci), (rj, cj) = stitch.overlap_boxes((5.2, -80.0), (100, 100))
    assert (ri, ci) == (slice(5, 100), slice(0, 20))
    assert (rj, cj) == (slice(0, 95), slice(80, 100))


def test_refined_positions_match_the_truth_sub_pixel(scene):
    tiles, truth, recorded = scene
    before = _relative_error(recorded, truth)
    _, ms, sol = _refine(tiles, recorded)
    after = _relative_error(sol.positions, truth)
    assert np.sqrt(np.mean(before**2)) > 2.0
    assert np.sqrt(np.mean(after**2)) < 0.2
    assert after.max() < 0.5
    assert set(sol.status) == {stitch.SITE_REFINED}
    assert sol.residual_rms < 0.3
    assert min(m.correlation for m in ms) > 0.9
    # The gauge: the mean position is the mean recorded one.
    np.testing.assert_allclose(sol.positions.mean(axis=0), recorded.mean(axis=0), atol=1e-6)


def test_refinement_ignores_the_convention_of_the_recorded_point(scene):
    tiles, _, recorded = scene
    shifted = recorded + np.array([100.0, 100.0])  # "centre" instead of "corner"
    _, _, a = _refine(tiles, recorded)
    _, _, b = _refine(tiles, shifted)
    np.testing.assert_allclose(b.positions - 100.0, a.positions, atol=1e-6)


def test_a_blank_site_keeps_its_recorded_position(scene):
    tiles, truth, recorded = scene
    tiles = list(tiles)
    rng = np.random.default_rng(5)
    tiles[5] = rng.normal(0, 0.02, tiles[5].shape)  # nothing to register on
    _, ms, sol = _refine(tiles, recorded)
    assert sol.status[5] == stitch.SITE_RECORDED
    np.testing.assert_array_equal(sol.positions[5], recorded[5])
    others = [k for k in range(len(tiles)) if k != 5]
    err = _relative_error(sol.positions[others], truth[others])
    assert err.max() < 0.5
    dropped = [s for m, s in zip(ms, sol.pair_status, strict=True) if 5 in (m.i, m.j)]
    assert dropped and all(s == stitch.PAIR_LOW_CORRELATION for s in dropped)


def test_an_outlier_pair_is_dropped_by_its_residual(scene):
    tiles, truth, recorded = scene
    pairs = stitch.neighbour_pairs(recorded, tiles[0].shape)
    ms = [stitch.measure_pair(tiles[p.i], tiles[p.j], p) for p in pairs]
    bad = ms[3]
    ms[3] = stitch.PairMeasurement(
        bad.i, bad.j, (bad.offset[0] + 6, bad.offset[1] - 5), bad.correction, 0.95
    )
    sol = stitch.solve_positions(recorded, ms, stitch.screen_pairs(ms))
    assert sol.pair_status[3] == stitch.PAIR_RESIDUAL
    assert sol.pair_status.count(stitch.PAIR_RESIDUAL) == 1
    assert _relative_error(sol.positions, truth).max() < 0.5


def test_a_correction_beyond_the_bound_is_rejected():
    m = stitch.PairMeasurement(0, 1, (0.0, 130.0), (0.0, 40.0), 0.97)
    assert stitch.screen_pairs([m], max_correction_px=20) == [stitch.PAIR_SHIFT_BOUND]


def test_no_pairs_keeps_everything_recorded():
    rec = np.array([[0.0, 0.0], [0.0, 500.0]])
    sol = stitch.solve_positions(rec, [])
    np.testing.assert_array_equal(sol.positions, rec)
    assert sol.status == [stitch.SITE_RECORDED] * 2
    assert sol.components == 2
    assert np.isnan(sol.residual_rms)


@pytest.fixture(scope="module")
def texture():
    """A smooth random scene: the sub-pixel shifts below are exact (spline-shifted)."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    return ndimage.gaussian_filter(rng.normal(0, 1, (160, 900)), 2.0) * 1000 + 3000


@pytest.mark.parametrize("shift", [(0.0, 0.0), (5.3, -11.7), (-9.45, 2.2)])
def test_wide_overlaps_register_coarse_to_fine(texture, shift):
    from scipy import ndimage

    # A 110 x 760 overlap with a 16 px search: binned twice, then refined on a stretch.
    crop_i = texture[20:130, 60:820]
    moved = ndimage.shift(texture, shift, order=3, mode="nearest")
    crop_j = moved[20:130, 60:820]
    measured, ncc, edge = stitch.register_overlap(crop_i, crop_j, (0.0, 700.0), margin=16)
    # Content at u in tile i is at u + shift in the shifted copy: p_j - p_i = -shift.
    np.testing.assert_allclose(measured - (0.0, 700.0), -np.array(shift), atol=0.1)
    assert ncc > 0.95 and edge == 0.0


def test_the_fine_stretch_is_found_on_a_mostly_flat_overlap(texture):
    from scipy import ndimage

    flat = np.full_like(texture, 3000.0)
    flat[:, 600:760] = texture[:, 600:760]  # texture only in one stretch
    moved = ndimage.shift(flat, (3.4, -6.6), order=3, mode="nearest")
    measured, _, _ = stitch.register_overlap(
        flat[20:130, 60:820], moved[20:130, 60:820], (0.0, 0.0), margin=16
    )
    np.testing.assert_allclose(measured, (-3.4, 6.6), atol=0.1)
