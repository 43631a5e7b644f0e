"""Per-cell features against regionprops, and the CP/SBS cross-arm join."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure
from skimage.draw import ellipse

from starrynight.algorithms import features, matching


def _labels() -> np.ndarray:
    lab = np.zeros((120, 160), np.int32)
    lab[ellipse(40, 40, 25, 12, rotation=0.4)] = 3
    lab[ellipse(80, 110, 18, 30, rotation=-1.1)] = 5
    return lab


def test_shape_and_intensity_match_regionprops() -> None:
    lab = _labels()
    img = np.random.default_rng(0).integers(0, 60000, lab.shape).astype(np.uint16)
    out = features.measure_cells(lab, lab, {"DNA": img})
    ref = measure.regionprops_table(
        lab, img / 65535.0,
        properties=("label", "area", "eccentricity", "axis_major_length", "axis_minor_length",
                    "orientation", "extent", "intensity_mean", "intensity_max"),
    )  # fmt: skip
    assert out["label"].tolist() == [3, 5]
    pairs = {
        "Cells_AreaShape_Area": "area",
        "Cells_AreaShape_Eccentricity": "eccentricity",
        "Cells_AreaShape_MajorAxisLength": "axis_major_length",
        "Cells_AreaShape_MinorAxisLength": "axis_minor_length",
        "Cells_AreaShape_Orientation": "orientation",
        "Cells_AreaShape_Extent": "extent",
        "Cells_Intensity_MeanIntensity_DNA": "intensity_mean",
        "Cells_Intensity_MaxIntensity_DNA": "intensity_max",
    }
    for ours, theirs in pairs.items():
        assert out[ours] == pytest.approx(ref[theirs], rel=1e-6), ours
    for i, k in enumerate((3, 5)):
        vals = img[lab == k] / 65535.0
        assert out["Cells_Intensity_IntegratedIntensity_DNA"][i] == pytest.approx(vals.sum())
        assert out["Cells_Intensity_MedianIntensity_DNA"][i] == pytest.approx(
            np.quantile(vals, 0.5, method="lower")
        )
    # Perimeter estimate within 5% of regionprops' for smooth shapes.
    assert out["Cells_AreaShape_Perimeter"] == pytest.approx(
        measure.regionprops_table(lab, properties=("perimeter",))["perimeter"], rel=0.05
    )


def test_texture_is_zero_on_flat_objects_and_positive_on_noise() -> None:
    lab = _labels()
    flat = np.full(lab.shape, 1000, np.uint16)
    noisy = np.random.default_rng(1).integers(0, 60000, lab.shape).astype(np.uint16)
    f = features.texture_features(lab, flat, np.array([3, 5]), "Cells", "X")
    n = features.texture_features(lab, noisy, np.array([3, 5]), "Cells", "X")
    assert np.all(f["Cells_Texture_Contrast_X_1"] == 0)
    assert np.all(n["Cells_Texture_Contrast_X_1"] > 0.05)


def test_no_cells_gives_every_column_empty() -> None:
    # Same columns as a site with cells, so an empty site's table has the well's schema.
    empty = np.zeros((10, 10), np.int32)
    out = features.measure_cells(empty, empty, {"A": np.zeros((10, 10), np.uint16)})
    assert list(out) == ["label", *features.feature_names(["A"])]
    assert all(len(v) == 0 for v in out.values())
    assert all(v.dtype == np.float64 for k, v in out.items() if k != "label")


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_register_and_match_recovers_offset_one_to_one(scale: float) -> None:
    rng = np.random.default_rng(3)
    cp = rng.uniform(0, 1000, (300, 2))
    sbs = cp * scale + np.array([7.5, -11.0]) + rng.normal(0, 0.5, cp.shape)
    keep = rng.random(300) > 0.1  # some cells only seen in one arm
    sbs = np.vstack([sbs[keep], rng.uniform(0, 1000 * scale, (20, 2))])
    m = matching.register_and_match(cp, sbs, scales=(1.0, 0.5), max_distance=3)
    assert m.scale == scale
    assert m.offset == pytest.approx((7.5, -11.0), abs=0.3)
    assert len(set(m.cp_index)) == len(m.cp_index) and len(set(m.sbs_index)) == len(m.sbs_index)
    truth = np.flatnonzero(keep)
    correct = (m.sbs_index < keep.sum()) & (
        truth[np.minimum(m.sbs_index, keep.sum() - 1)] == m.cp_index
    )
    assert correct.mean() > 0.97 and len(m.cp_index) >= 0.95 * keep.sum()


def test_match_with_no_points() -> None:
    m = matching.register_and_match(np.zeros((0, 2)), np.ones((5, 2)))
    assert len(m.cp_index) == 0 and m.support == 0
