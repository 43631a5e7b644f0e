"""The illumination algorithms against straightforward references written here."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import median as sk_median
from skimage.morphology import disk
from skimage.transform import resize

from starrynight.algorithms import illum as alg

# skimage warns about rank filters over more than 10 bits; CellProfiler does the same.
pytestmark = pytest.mark.filterwarnings("ignore:Bad rank filter performance")


def _reference_median(image: np.ndarray, radius: int) -> np.ndarray:
    """Per pixel: the sorted values under the disk inside the image, element n // 2."""
    h, w = image.shape
    out = np.zeros_like(image)
    for y in range(h):
        for x in range(w):
            values = [
                image[yy, xx]
                for yy in range(max(0, y - radius), min(h, y + radius + 1))
                for xx in range(max(0, x - radius), min(w, x + radius + 1))
                if (yy - y) ** 2 + (xx - x) ** 2 <= radius * radius
            ]
            out[y, x] = sorted(values)[len(values) // 2]
    return out


def _reference_robust_minimum(image: np.ndarray) -> np.ndarray:
    values = sorted(v for v in image.ravel().tolist() if v > 0)
    robust = values[int(len(values) * 0.02)]
    return np.array([[max(v, robust) / robust for v in row] for row in image.tolist()])


def test_median_radius_and_automatic_size_follow_cellprofiler():
    assert alg.median_radius(10) == 4  # int(10 / 2.35 + 0.5)
    assert alg.median_radius(20) == 9
    assert alg.median_radius(1) == 1  # never below 1
    assert alg.automatic_size((1480, 1480)) == 30.0
    assert alg.automatic_size((400, 200)) == 10.0


def test_robust_minimum_matches_reference_and_is_at_least_one():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 5, (40, 30))
    image[:3] = 0  # zeros are not "positive pixels"
    got = alg.rescale(image, "robust_minimum")
    np.testing.assert_allclose(got, _reference_robust_minimum(image), rtol=1e-12)
    assert got.min() >= 1.0
    assert alg.rescale(np.zeros((3, 3)), "robust_minimum").max() == 0  # nothing positive
    med = alg.rescale(image, "median")
    assert np.median(med[image > 0]) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("size", [3.0, 10.0])
def test_truncating_median_matches_per_pixel_reference_and_skimage(size):
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 0.05, (23, 19)).astype(np.float32)  # CellProfiler's [0, 1] units
    radius = alg.median_radius(size)
    got = alg.median_smooth(image, size, truncate=True)
    as_uint16 = (image.astype(np.float64) * 65535).astype(np.uint16)
    np.testing.assert_array_equal(got, _reference_median(as_uint16, radius))
    skimage_way = sk_median(as_uint16, disk(radius), behavior="rank")
    np.testing.assert_array_equal(got, skimage_way)


def test_untruncated_median_is_precise_to_the_quantisation():
    rng = np.random.default_rng(3)
    image = rng.uniform(100, 900, (21, 17))
    got = alg.median_smooth(image, 5.0, truncate=False)
    # Reference on the exact values (rank median order statistic n // 2).
    ref = np.zeros_like(image)
    r = alg.median_radius(5.0)
    for y in range(21):
        for x in range(17):
            vals = [
                image[yy, xx]
                for yy in range(max(0, y - r), min(21, y + r + 1))
                for xx in range(max(0, x - r), min(17, x + r + 1))
                if (yy - y) ** 2 + (xx - x) ** 2 <= r * r
            ]
            ref[y, x] = sorted(vals)[len(vals) // 2]
    assert np.abs(got - ref).max() <= (image.max() - image.min()) / alg.MEDIAN_LEVELS


def test_cellprofiler_preset_equals_step_by_step_reference():
    """Per image: /65535 float32, 0.25 anti-aliased resize; mean; truncate; median;
    robust minimum; x4 bilinear. Averaging first (as we do) must give the same."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:96, 0:96] / 95 - 0.5
    field = np.exp(-2 * (yy**2 + xx**2))
    images = [
        np.clip(100 + rng.poisson(field * rng.uniform(500, 3000, (96, 96))), 0, 65535).astype(
            np.uint16
        )
        for _ in range(6)
    ]
    small = [
        resize((im / 65535).astype(np.float32), (24, 24), order=1, mode="symmetric",
               anti_aliasing=True)
        for im in images
    ]  # fmt: skip
    mean_small = np.mean(np.stack(small).astype(np.float64), axis=0)
    truncated = (mean_small * 65535).astype(np.uint16)
    smoothed = _reference_median(truncated, alg.median_radius(10)).astype(np.float64)
    rescaled = _reference_robust_minimum(smoothed)
    expected = resize(rescaled, (96, 96), order=1, mode="symmetric", anti_aliasing=False)

    mean = np.mean(np.stack(images).astype(np.float64), axis=0)
    got = alg.illumination_function(mean, alg.preset_settings("cellprofiler", "cp"))
    assert got.dtype == np.float32 and got.shape == (96, 96)
    assert got.min() >= 1.0
    # Float rounding may move a truncated value by one count, nothing more.
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.9999
    np.testing.assert_allclose(got, expected, rtol=2e-3)


def test_shrink_antialiases_like_cellprofiler_resize():
    image = np.random.default_rng(5).random((40, 40))
    got = alg.shrink(image, 0.25)
    assert got.shape == (10, 10)
    np.testing.assert_allclose(
        got, resize(image, (10, 10), order=1, mode="symmetric", anti_aliasing=True)
    )
    # Anti-aliasing means a Gaussian of sigma (1/0.25 - 1) / 2 = 1.5 before sampling.
    plain = resize(image, (10, 10), order=1, mode="symmetric", anti_aliasing=False)
    assert not np.allclose(got, plain)
    assert alg.enlarge(got, (40, 40)).shape == (40, 40)


def test_gaussian_smoothing_keeps_constant_images_constant_at_borders():
    flat = np.full((30, 20), 7.0)
    np.testing.assert_allclose(alg.gaussian_smooth(flat, 10.0), 7.0, rtol=1e-9)


def test_mean_accumulator_merge_equals_single_pass():
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 65535, (2, 8, 8), dtype=np.uint16) for _ in range(5)]
    single, a, b = alg.MeanAccumulator(), alg.MeanAccumulator(), alg.MeanAccumulator()
    for i, im in enumerate(images):
        single.add(im)
        (a if i % 2 else b).add(im)
    a.merge(b)
    np.testing.assert_allclose(a.mean(), np.mean(np.stack(images), axis=0).astype(np.float64))
    np.testing.assert_allclose(single.mean(), a.mean())
    assert a.count == 5
    np.testing.assert_array_equal(a.minimum, np.stack(images).min(axis=(0, 2, 3)))
    with pytest.raises(ValueError):
        a.add(np.zeros((2, 4, 4), np.uint16))


def test_default_preset_recovers_field_despite_camera_offset():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:128, 0:128] / 127 - 0.5
    field = np.exp(-2.5 * (yy**2 + xx**2))
    field /= field.mean()
    acc = alg.MeanAccumulator()
    for _ in range(12):
        # Sparse bright objects on a faint background, as cells on a slide.
        scene = 20 + 2000 * (rng.random((128, 128)) < 0.1)
        acc.add((100 + rng.poisson(field * scene)).astype(np.uint16)[None])
    mean = acc.mean()[0]
    dark = alg.estimate_dark_level(mean, float(acc.minimum[0]))
    assert 95 <= dark <= 110
    default = alg.illumination_function(mean, alg.preset_settings("default", "cp"), dark)
    cp = alg.illumination_function(mean, alg.preset_settings("cellprofiler", "cp"))
    corrected_default = field / default
    corrected_cp = field / cp
    cv = lambda a: a.std() / a.mean()  # noqa: E731
    assert cv(corrected_default) < 0.7 * cv(corrected_cp)  # the offset flattens cp function
    assert np.corrcoef(default.ravel(), field.ravel())[0, 1] > 0.97


def test_apply_divides_illuminated_part_rounds_and_clips():
    image = np.array([[100, 300], [65535, 0]], np.uint16)
    function = np.array([[1.0, 2.0], [0.5, 1.0]], np.float32)
    got = alg.apply_illumination(image, function)
    np.testing.assert_array_equal(got, [[100, 150], [65535, 0]])
    with_dark = alg.apply_illumination(image, function, dark_level=100)
    # 100 + (300 - 100) / 2 = 200; the offset itself is left as it is.
    np.testing.assert_array_equal(with_dark, [[100, 200], [65535, 0]])
    sub = alg.apply_illumination(image, np.full((2, 2), 150, np.float32), "subtract")
    np.testing.assert_array_equal(sub, [[0, 150], [65385, 0]])
    with pytest.raises(ValueError):
        alg.apply_illumination(image, function[:1])


def test_presets_and_bad_names():
    cp = alg.preset_settings("cellprofiler", "cp")
    sbs = alg.preset_settings("cellprofiler", "sbs")
    assert (cp.size, sbs.size, cp.downsample, cp.dark_level) == (10.0, 20.0, 0.25, 0.0)
    assert alg.preset_settings("default", "sbs").dark_level is None
    with pytest.raises(ValueError):
        alg.preset_settings("fancy", "cp")
    with pytest.raises(ValueError):
        alg.preset_settings("default", "xx")


def test_fit_surface_recovers_a_log_quadratic_field_through_cell_clutter():
    rng = np.random.default_rng(8)
    yy, xx = np.mgrid[0:64, 0:80] / 63 - 0.5
    field = np.exp(-1.5 * ((yy - 0.1) ** 2 + (xx + 0.05) ** 2)) * (1 + 0.1 * yy)
    cluttered = field * (1 + 0.2 * rng.standard_normal(field.shape) ** 2)
    fit = alg.fit_surface(cluttered, 2)
    ratio = fit / field
    assert ratio.std() / ratio.mean() < 0.01  # the shape, up to a constant
    assert np.corrcoef(fit.ravel(), field.ravel())[0, 1] > 0.999
    tiny = np.zeros((2, 2))
    np.testing.assert_array_equal(alg.fit_surface(tiny, 2), tiny)  # nothing to fit


def test_default_preset_fits_a_surface_and_cellprofiler_preset_does_not():
    assert alg.preset_settings("default", "cp").surface_degree == alg.SURFACE_DEGREE
    assert alg.preset_settings("cellprofiler", "cp").surface_degree is None
    assert alg.preset_settings("cellprofiler", "sbs").surface_degree is None
