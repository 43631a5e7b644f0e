"""The compiled correlation kernels against plain NumPy written the obvious way."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from starrynight.algorithms import ncc, stitch


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def brute_map(t: np.ndarray, img: np.ndarray, y0: int, x0: int, ny: int, nx: int) -> np.ndarray:
    th, tw = t.shape
    return np.array(
        [
            [pearson(t, img[y0 + i : y0 + i + th, x0 + j : x0 + j + tw]) for j in range(nx)]
            for i in range(ny)
        ]
    )


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    rng = np.random.default_rng(3)
    return (ndimage.gaussian_filter(rng.normal(0, 1, (90, 140)), 1.5) * 800 + 2500).astype(
        np.float32
    )


@pytest.mark.parametrize(
    ("shape", "y0", "x0", "ny", "nx"),
    [((20, 60), 0, 0, 9, 9), ((20, 60), 3, 5, 4, 7), ((60, 20), 2, 1, 7, 5), ((1, 5), 0, 0, 3, 3)],
)
def test_map_is_pearson_at_every_offset(scene, shape, y0, x0, ny, nx):
    # Wide and tall templates (a tall one is matched transposed), offset windows.
    t = scene[10 : 10 + shape[0], 20 : 20 + shape[1]]
    out = ncc.ncc_map(t, scene, y0, x0, ny, nx)
    assert out.shape == (ny, nx) and out.dtype == np.float64
    np.testing.assert_allclose(out, brute_map(t, scene, y0, x0, ny, nx), atol=2e-5)


def test_map_peaks_where_the_template_was_cut(scene):
    t = scene[30:50, 40:100]
    out = ncc.ncc_map(t, scene, 25, 35, 11, 11)
    assert np.unravel_index(np.nanargmax(out), out.shape) == (5, 5)
    assert out[5, 5] == pytest.approx(1.0, abs=1e-6)


def test_flat_windows_and_templates_score_nan(scene):
    img = scene.copy()
    img[:30, :40] = 1000.0
    out = ncc.ncc_map(scene[50:60, 50:70], img, 0, 0, 3, 3)
    assert np.isnan(out).all()
    flat = np.full((10, 20), 7.0, np.float32)
    assert np.isnan(ncc.ncc_map(flat, scene, 0, 0, 3, 3)).all()


def test_map_offsets_outside_the_image_are_refused(scene):
    with pytest.raises(ValueError, match="leave the"):
        ncc.ncc_map(scene[:20, :20], scene, 80, 0, 2, 2)
    with pytest.raises(ValueError, match="leave the"):
        ncc.ncc_map(scene[:20, :20], scene, -1, 0, 2, 2)


def bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    img = img.astype(np.float64)
    return (
        (1 - fy) * (1 - fx) * img[y0, x0]
        + (1 - fy) * fx * img[y0, x0 + 1]
        + fy * (1 - fx) * img[y0 + 1, x0]
        + fy * fx * img[y0 + 1, x0 + 1]
    )


@pytest.mark.parametrize("step", [1, 3])
def test_placed_is_pearson_with_the_bilinear_image(scene, step):
    t = scene[20:50, 30:100]
    qy, qx, fy, fx = 17, 26, 0.3, 0.75
    yy, xx = np.mgrid[0 : t.shape[0] : step, 0 : t.shape[1] : step]
    want = pearson(t[::step, ::step], bilinear(scene, qy + fy + yy, qx + fx + xx))
    got = ncc.placed_ncc(t, scene, qy, qx, fy, fx, step, None, None, 0.0)
    # One pass of float64 sums over uncentred values: good to about 1e-9.
    assert got == pytest.approx(want, abs=1e-7)


def test_placed_corrects_both_sides_with_their_gains(scene):
    rng = np.random.default_rng(5)
    t = scene[20:50, 30:100]
    g_t = rng.uniform(0.8, 1.2, t.shape).astype(np.float32)
    g_i = rng.uniform(0.8, 1.2, scene.shape).astype(np.float32)
    qy, qx, fy, fx, dark = 10, 12, 0.5, 0.25, 100.0
    yy, xx = np.mgrid[0 : t.shape[0], 0 : t.shape[1]]
    moved = (bilinear(scene, qy + fy + yy, qx + fx + xx) - dark) * g_i[qy + yy, qx + xx]
    want = pearson((t - dark) * g_t, moved)
    got = ncc.placed_ncc(t, scene, qy, qx, fy, fx, 1, g_t, g_i, dark)
    assert got == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="both gains"):
        ncc.placed_ncc(t, scene, qy, qx, fy, fx, 1, g_t, None, dark)


def test_placed_leaving_the_image_is_nan(scene):
    t = scene[:30, :30]
    assert np.isnan(ncc.placed_ncc(t, scene, 70, 0, 0.5, 0.5, 1, None, None, 0.0))
    assert np.isnan(ncc.placed_ncc(t, scene, -1, 0, 0.5, 0.5, 1, None, None, 0.0))


def test_stored_and_other_dtypes_agree(scene):
    # uint16 is read as it is, int32 converted to float32 first: the same numbers.
    u16 = np.rint(scene).astype(np.uint16)
    t = u16[20:50, 30:100]
    args = (17, 26, 0.3, 0.75, 2, None, None, 0.0)
    a = ncc.placed_ncc(t, u16, *args)
    b = ncc.placed_ncc(t.astype(np.int32), u16.astype(np.int32), *args)
    c = ncc.placed_ncc(t.astype(np.float32), u16.astype(np.float32), *args)
    assert a == pytest.approx(b, abs=1e-9) and a == pytest.approx(c, abs=1e-9)
    # Big-endian files are mapped as stored ('>u2'): the kernels take native order only.
    be = u16.astype(">u2")
    assert ncc.placed_ncc(be[20:50, 30:100], be, *args) == pytest.approx(a, abs=1e-9)


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    rng = np.random.default_rng(11)
    return ndimage.gaussian_filter(rng.normal(0, 1, (160, 700)), 2.0) * 1000 + 3000


def test_fft_and_direct_coarse_maps_give_the_same_registration(texture, monkeypatch):
    crop_i = texture[20:130, 40:660]
    crop_j = ndimage.shift(texture, (4.2, -7.6), order=3, mode="nearest")[20:130, 40:660]
    direct = stitch.register_overlap(crop_i, crop_j, (0.0, 0.0), margin=16)
    monkeypatch.setattr(stitch, "DIRECT_MAX_WORK", 0)
    by_fft = stitch.register_overlap(crop_i, crop_j, (0.0, 0.0), margin=16)
    np.testing.assert_allclose(by_fft[0], direct[0], atol=1e-6)
    np.testing.assert_allclose(direct[0], (-4.2, 7.6), atol=0.1)
    assert by_fft[1] == pytest.approx(direct[1], abs=1e-9)


def test_gains_register_as_the_corrected_crops_do(texture):
    # A strong vignette on each side: registering the raw crops with their gains
    # equals registering crops corrected beforehand.
    crop_i = texture[20:130, 40:660]
    crop_j = ndimage.shift(texture, (-3.3, 5.1), order=3, mode="nearest")[20:130, 40:660]
    xx = np.mgrid[0 : crop_i.shape[0], 0 : crop_i.shape[1]][1]
    shade_i = 1.0 - 0.4 * (xx / xx.max())
    shade_j = 0.6 + 0.4 * (xx / xx.max())
    dark = 50.0
    raw_i, raw_j = crop_i * shade_i + dark, crop_j * shade_j + dark
    gains = ((1 / shade_i).astype(np.float32), (1 / shade_j).astype(np.float32))
    with_gains = stitch.register_overlap(raw_i, raw_j, (0.0, 0.0), 16, gains, dark)
    corrected = stitch.register_overlap(
        ((raw_i - dark) * gains[0]).astype(np.float32),
        ((raw_j - dark) * gains[1]).astype(np.float32),
        (0.0, 0.0),
        16,
    )
    np.testing.assert_allclose(with_gains[0], corrected[0], atol=0.02)
    np.testing.assert_allclose(with_gains[0], (3.3, -5.1), atol=0.1)
    assert with_gains[1] > 0.95
