"""Phase-correlation registration and shifting on images with known shifts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from starrynight.algorithms import align as alg


def _scene(rng: np.random.Generator, n: int = 200) -> np.ndarray:
    canvas = np.zeros((n, n))
    ys, xs = rng.integers(5, n - 5, (2, 400))
    canvas[ys, xs] = rng.uniform(500, 2000, 400)
    return ndimage.gaussian_filter(canvas, 1.5) * 20 + 100


def _pair(shift: tuple[float, float], seed: int = 0, n: int = 128, noise: float = 5.0):
    """Crops of one scene; the second's content is displaced by ``shift``."""
    rng = np.random.default_rng(seed)
    scene = _scene(rng)
    moved = ndimage.shift(scene, shift, order=3, mode="nearest")
    a = scene[36 : 36 + n, 36 : 36 + n] + rng.normal(0, noise, (n, n))
    b = moved[36 : 36 + n, 36 : 36 + n] + rng.normal(0, noise, (n, n))
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize(
    "shift", [(0.0, 0.0), (3.3, -7.6), (-20.45, 12.2), (29.9, -29.7), (0.5, 0.25)]
)
def test_recovers_known_subpixel_shift_with_skimage_sign_convention(shift):
    a, b = _pair(shift, seed=int(abs(shift[0]) * 10))
    window = alg.tukey_window(a.shape)
    got, peak = alg.register_translation(a, b, upsample=20, window=window)
    np.testing.assert_allclose(got, [-shift[0], -shift[1]], atol=0.1)
    assert 0 < peak <= 1.0 + 1e-6
    ref, _, _ = phase_cross_correlation(a, b, upsample_factor=20)
    # Same sign convention as skimage (which, without a window, is less precise).
    np.testing.assert_allclose(got, ref, atol=1.0)


def test_reference_spectrum_is_reusable_for_every_cycle():
    a, b = _pair((4.0, -2.5), seed=3)
    _, c = _pair((-6.2, 1.1), seed=3)
    window = alg.tukey_window(a.shape)
    ref = alg.reference_spectrum(a, window)
    got_b, _ = alg.register_translation(ref, alg.reference_spectrum(b, window))
    got_c, _ = alg.register_translation(ref, c, window=window)
    np.testing.assert_allclose(got_b, [-4.0, 2.5], atol=0.1)
    np.testing.assert_allclose(got_c, [6.2, -1.1], atol=0.1)
    with pytest.raises(ValueError):
        alg.register_translation(ref, a[:64])


def test_unrelated_images_give_a_low_peak():
    rng = np.random.default_rng(9)
    a, _ = _pair((0, 0), seed=1)
    _, peak_same = alg.register_translation(a, a)
    _, peak_noise = alg.register_translation(a, rng.normal(0, 1, a.shape))
    assert peak_same > 0.9 > 0.2 > peak_noise


def test_tukey_window_shape_and_limits():
    w = alg.tukey_window((10, 20), 0.5)
    assert w.shape == (10, 20) and w.dtype == np.float32
    assert w.max() == pytest.approx(1.0) and w[0, 0] == pytest.approx(0.0)
    assert np.all(alg.tukey_window((5, 5), 0.0) == 1)


def test_shift_image_integer_and_interpolated():
    image = np.arange(36, dtype=np.uint16).reshape(6, 6)
    moved = alg.shift_image(image, np.array([1.2, -2.4]), "integer")
    assert moved.dtype == np.uint16
    np.testing.assert_array_equal(moved[1:, :4], image[:5, 2:])
    assert np.all(moved[0] == 0) and np.all(moved[:, 4:] == 0)
    smooth = np.tile(np.linspace(100, 200, 32), (32, 1)).astype(np.uint16)
    half = alg.shift_image(smooth, np.array([0.0, 0.5]), "linear")
    np.testing.assert_allclose(half[:, 5:-5], smooth[:, 5:-5].astype(float) - 1.6, atol=1.0)
    cubic = alg.shift_image(smooth, np.array([0.0, 0.5]), "cubic")
    assert cubic.dtype == np.uint16 and cubic.max() <= 65535
    with pytest.raises(ValueError):
        alg.shift_image(smooth, np.array([0.0, 0.5]), "sinc")  # type: ignore[arg-type]


def test_overlap_correlation_is_high_only_after_the_right_shift():
    a, b = _pair((6.0, -4.0), seed=4)
    right = alg.overlap_correlation(a, b, np.array([-6.0, 4.0]))
    wrong = alg.overlap_correlation(a, b, np.array([0.0, 0.0]))
    assert right > 0.95 and wrong < 0.6
    assert np.isnan(alg.overlap_correlation(a, b, np.array([500.0, 0.0])))


def test_qc_status_thresholds():
    qc = alg.AlignmentQC(max_shift=50, min_correlation=0.8, warn_correlation=0.9)
    assert alg.qc_status(np.array([3.0, 4.0]), 0.95, qc) == "ok"
    assert alg.qc_status(np.array([3.0, 4.0]), 0.85, qc) == "warn"
    assert alg.qc_status(np.array([3.0, 4.0]), 0.7, qc) == "flag"
    assert alg.qc_status(np.array([-51.0, 0.0]), 0.99, qc) == "flag"
    assert alg.qc_status(np.array([0.0, 0.0]), float("nan"), qc) == "flag"
