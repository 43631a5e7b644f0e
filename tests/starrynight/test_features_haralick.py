"""Our all-objects Haralick texture against cp_measure's (CellProfiler's mahotas call)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.segmentation import expand_labels

from starrynight.algorithms.haralick import HARALICK, haralick_features


def _scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    nuclei = np.zeros((96, 96), np.int32)
    for k, (y, x) in enumerate([(y, x) for y in range(12, 90, 24) for x in range(12, 90, 24)]):
        rr, cc = disk((y, x), rng.uniform(2, 8), shape=nuclei.shape)
        nuclei[rr, cc] = k + 1
    labels = expand_labels(nuclei, 4)
    img = ndi.gaussian_filter(rng.random(labels.shape), 1.2)
    img = 0.8 * (img - img.min()) / (img.max() - img.min())
    img[labels == 3] = 0.5  # uniform object: zero contrast, ASM 1
    img[labels == 5] = 0.001  # quantises to level 0: no valid pair, NaN
    return labels, img


@pytest.mark.parametrize("scale", [3, 5, 10])
def test_haralick_equals_cp_measure(scale: int) -> None:
    from cp_measure.bulk import get_core_measurements

    labels, img = _scene()
    ref = get_core_measurements()["texture"](labels, img, scale=scale)
    ours = haralick_features(labels, img, scale=scale)
    assert list(ours) == list(ref)
    assert len(ref) == 4 * len(HARALICK)
    for key, theirs in ref.items():
        theirs = np.asarray(theirs, np.float64)
        np.testing.assert_array_equal(np.isnan(ours[key]), np.isnan(theirs), err_msg=key)
        np.testing.assert_allclose(ours[key], theirs, rtol=1e-8, atol=1e-12, err_msg=key)
    if scale == 3:  # object 3 is too small for pairs at larger distances
        assert ours["Contrast_3_00_256"][2] == 0 and ours["AngularSecondMoment_3_00_256"][2] == 1
    assert np.isnan(ours[f"Contrast_{scale}_00_256"][4])


def test_haralick_rejects_bad_arguments() -> None:
    labels, img = _scene()
    with pytest.raises(ValueError, match="scale"):
        haralick_features(labels, img, scale=0)
    with pytest.raises(ValueError, match="256"):
        haralick_features(labels, img, gray_levels=8)
