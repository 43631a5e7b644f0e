"""Segmentation algorithms on a real annotated image and small arrays with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.draw import disk

from starrynight.algorithms import segmentation as seg

DATA = Path(__file__).parents[1] / "data" / "stardist"


def test_real_nuclei_f1_at_iou_half() -> None:
    # img2d/mask2d from the StarDist wheel (BSD-3, see LICENSE.md there); 125 nuclei.
    image = tifffile.imread(DATA / "img2d.tif")
    truth = tifffile.imread(DATA / "mask2d.tif")
    score = seg.match_labels(seg.segment_nuclei(image), truth, 0.5)
    assert score.tp + score.fn == 125
    assert score.f1 >= 0.75, score


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
