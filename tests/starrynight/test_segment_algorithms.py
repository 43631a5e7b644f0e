"""Segmentation algorithms on a real annotated image and small arrays with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.transform import resize

from starrynight.algorithms import segmentation as seg

DATA = Path(__file__).parents[1] / "data" / "stardist"


def test_real_nuclei_f1_at_iou_half() -> None:
    # img2d/mask2d from the StarDist wheel (BSD-3, see LICENSE.md there); 125 nuclei.
    image = tifffile.imread(DATA / "img2d.tif")
    truth = tifffile.imread(DATA / "mask2d.tif")
    score = seg.match_labels(seg.segment_nuclei(image), truth, 0.5)
    assert score.tp + score.fn == 125
    assert score.f1 >= 0.85, score  # issue 22's target is 0.80; 0.79 before per-nucleus edges


def _degraded(image: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same nuclei at twice the pixel count, vignetted (corners at 30%), noisy."""
    n = 2 * image.shape[0]
    big = resize(image.astype(np.float64), (n, n), order=1, preserve_range=True)
    big_truth = resize(truth, (n, n), order=0, preserve_range=True, anti_aliasing=False)
    yy, xx = np.mgrid[0:n, 0:n] / (n - 1) - 0.5
    signal = big * np.exp(-2.4 * (yy**2 + xx**2)) * 20
    rng = np.random.default_rng(0)
    noisy = 100 + rng.poisson(signal) + rng.normal(0, 5, signal.shape)
    return np.clip(noisy, 0, 65535).astype(np.uint16), big_truth.astype(np.int32)


def test_scale_is_estimated_and_adapts_to_upscaled_vignetted_noisy_images() -> None:
    image = tifffile.imread(DATA / "img2d.tif")
    truth = tifffile.imread(DATA / "mask2d.tif")
    worse, worse_truth = _degraded(image, truth)
    areas = np.bincount(truth.ravel())[1:]
    true_d = float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))
    d1, d2 = seg.estimate_diameter([image]), seg.estimate_diameter([worse])
    assert d1 == pytest.approx(true_d, rel=0.1)
    assert d2 == pytest.approx(2 * true_d, rel=0.15)
    score = seg.match_labels(seg.segment_nuclei(worse), worse_truth, 0.5)
    assert score.f1 >= 0.8, score  # target 0.75
    # The fixed 20 px scale (and one global threshold) of before fall well short.
    fixed = seg.NucleiParams(diameter=20.0, local_threshold=False, edge_fraction=None)
    assert seg.match_labels(seg.segment_nuclei(worse, fixed), worse_truth, 0.5).f1 < 0.7


@pytest.mark.parametrize("radius", [5, 12])
def test_estimate_diameter_measures_isolated_discs_and_ignores_clumps(radius: int) -> None:
    img = np.full((256, 256), 10.0)
    rng = np.random.default_rng(radius)
    for y in range(3 * radius, 256 - 3 * radius, 4 * radius):
        for x in range(3 * radius, 256 - 3 * radius, 4 * radius):
            img[disk((y, x), radius)] = 500
    img[disk((2 * radius, 2 * radius), 3 * radius)] = 500  # one big clump-like blob
    img += rng.normal(0, 5, img.shape)
    assert seg.estimate_diameter([img]) == pytest.approx(2 * radius, rel=0.12)
    assert seg.estimate_diameter([np.zeros((64, 64))]) is None
    resolved = seg.resolve_diameter(seg.NucleiParams(), np.zeros((64, 64)))
    assert resolved.diameter == seg.FALLBACK_DIAMETER
    assert seg.resolve_diameter(seg.NucleiParams(diameter=7), img).diameter == 7


def test_outlines_follow_each_nucleus_not_one_threshold() -> None:
    # A bright and a dim nucleus of the same size, blurred: one shared threshold draws the
    # bright one too large and the dim one too small; their own half-maximum edges do not.
    truth = np.zeros((80, 140), np.int32)
    truth[disk((40, 35), 12)] = 1
    truth[disk((40, 105), 12)] = 2
    image = ndi.gaussian_filter(np.choose(truth, [50.0, 2000.0, 800.0]), 2.5)
    area = np.pi * 12**2
    shared = seg.segment_nuclei(image, seg.NucleiParams(diameter=24, edge_fraction=None))
    own = seg.segment_nuclei(image, seg.NucleiParams(diameter=24))
    sizes = lambda lab: [float((lab == lab[40, x]).sum()) / area for x in (35, 105)]  # noqa: E731
    big, small = sizes(shared)
    assert big > 1.15 and small < 0.8
    assert sizes(own) == [pytest.approx(1.0, abs=0.1)] * 2
    # Refinement only removes pixels, keeps ids, and an object with nothing above its
    # level keeps its region.
    regions = np.zeros((10, 10), np.int32)
    regions[2:8, 2:8] = 3
    flat = np.full((10, 10), 5.0)
    assert (seg.refine_outlines(regions, flat, np.zeros_like(flat), 0.5) == regions).all()
    with pytest.raises(ValueError, match="edge fraction"):
        seg.refine_outlines(regions, flat, flat, 1.0)


def _two_touching_discs() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((80, 120), np.int32)
    truth[disk((40, 42), 16)] = 1
    truth[disk((40, 72), 16)] = 2  # overlaps: the pair forms one blob
    image = np.where(truth > 0, 1000.0, 100.0)
    image += np.random.default_rng(0).normal(0, 20, image.shape)
    return image, truth


def test_touching_nuclei_are_split() -> None:
    image, truth = _two_touching_discs()
    labels = seg.segment_nuclei(image, seg.NucleiParams(diameter=32, smoothing_sigma=0))
    assert labels.max() == 2
    assert seg.match_labels(labels, truth).f1 == 1.0


@pytest.mark.parametrize("value", [0, 500])
def test_flat_image_has_no_nuclei(value: int) -> None:
    labels = seg.segment_nuclei(np.full((64, 64), value, np.uint16))
    assert labels.shape == (64, 64) and labels.max() == 0
    cells = seg.segment_cells(np.zeros((64, 64)), labels)
    assert cells.max() == 0


def test_size_limits_drop_small_and_large() -> None:
    img = np.random.default_rng(0).normal(10, 2, (100, 100))
    img[disk((20, 20), 2)] = 1000  # ~13 px: below min_area
    img[disk((60, 60), 10)] = 1000
    labels = seg.segment_nuclei(
        img, seg.NucleiParams(diameter=20, smoothing_sigma=0, min_area=50, max_area=1000)
    )
    assert labels.max() == 1 and labels[60, 60] == 1 and labels[20, 20] == 0


def test_cells_grow_from_their_nuclei_within_the_stain() -> None:
    nuclei = np.zeros((60, 100), np.int32)
    nuclei[disk((30, 25), 6)] = 1
    nuclei[disk((30, 75), 6)] = 2
    stain = np.full(nuclei.shape, 5.0)
    stain[disk((30, 25), 18)] = 100
    stain[disk((30, 75), 12)] = 100
    cells = seg.segment_cells(stain, nuclei, smoothing_sigma=0.5)
    assert set(np.unique(cells)) == {0, 1, 2}
    assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])
    assert (cells == 1).sum() > (cells == 2).sum() > (nuclei == 2).sum()
    assert cells[2, 2] == 0  # background stays background


def test_object_table_and_match_scores() -> None:
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 3:9] = 4
    t = seg.object_table(labels)
    assert t["label"].tolist() == [4] and t["area"].tolist() == [24]
    assert (t["bbox_y0"][0], t["bbox_x0"][0], t["bbox_y1"][0], t["bbox_x1"][0]) == (2, 3, 6, 9)
    assert t["centroid_y"][0] == pytest.approx(3.5)
    other = np.zeros_like(labels)
    other[2:6, 3:8] = 1  # IoU 20/24
    other[15:18, 15:18] = 2
    s = seg.match_labels(labels, other)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1) and s.f1 == pytest.approx(2 / 3)


def test_flag_counts() -> None:
    flags = seg.flag_counts({0: 100, 1: 110, 2: 0, 3: 95, 4: 900})
    assert set(flags) == {2, 4}
    assert "fewer than 1" in flags[2] and "median" in flags[4]
