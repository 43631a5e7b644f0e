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


def _cells_and_nuclei() -> tuple[np.ndarray, np.ndarray]:
    cells = _labels()
    nuclei = np.zeros_like(cells)
    nuclei[ellipse(40, 40, 8, 5, rotation=0.4)] = 3  # cell 5 has no nucleus
    cells[0:10, 150:160] = 7  # a cell cut by the border
    return nuclei, cells


def test_measure_cells_values_and_cellprofiler_names() -> None:
    nuclei, cells = _cells_and_nuclei()
    img = np.random.default_rng(0).integers(0, 60000, cells.shape).astype(np.uint16)
    out = features.measure_cells(nuclei, cells, {"DNA": img, "Mito": img[::-1].copy()})
    assert out["label"].tolist() == [3, 5, 7]
    assert list(out) == ["label", *features.feature_names(["DNA", "Mito"])]
    for i, k in enumerate((3, 5, 7)):
        assert out["Cells_AreaShape_Area"][i] == (cells == k).sum()
        vals = img[cells == k] / 65535.0
        assert out["Cells_Intensity_MeanIntensity_DNA"][i] == pytest.approx(vals.mean())
        assert out["Cells_Intensity_IntegratedIntensity_DNA"][i] == pytest.approx(vals.sum())
    cyto = (cells == 3) & (nuclei == 0)
    assert out["Cytoplasm_AreaShape_Area"][0] == cyto.sum()
    assert out["Nuclei_AreaShape_Area"][0] == (nuclei == 3).sum()
    assert np.isnan(out["Nuclei_AreaShape_Area"][1])  # no nucleus: NaN, not 0
    ref = measure.regionprops_table(cells, properties=("label", "eccentricity", "solidity"))
    assert out["Cells_AreaShape_Eccentricity"] == pytest.approx(ref["eccentricity"], rel=1e-6)
    assert out["Cells_AreaShape_Solidity"] == pytest.approx(ref["solidity"], rel=1e-6)
    for name in (
        "Cells_Texture_Contrast_DNA_3_00_256", "Nuclei_Texture_InfoMeas2_Mito_10_03_256",
        "Cells_AreaShape_Zernike_2_2", "Cells_AreaShape_MaxFeretDiameter",
        "Cytoplasm_Granularity_1_DNA", "Cells_RadialDistribution_FracAtD_DNA_1of4",
        "Cells_Correlation_Correlation_DNA_Mito", "Cells_Correlation_Manders_Mito_DNA",
        "Cells_Neighbors_NumberOfNeighbors_Expanded", "Nuclei_Location_CenterMassIntensity_X_DNA",
    ):  # fmt: skip
        assert name in out, name
    assert out["Cells_Correlation_Correlation_DNA_Mito"][0] == pytest.approx(
        np.corrcoef(img[cells == 3], img[::-1][cells == 3])[0, 1], abs=1e-9
    )
    assert features.touches_border(cells, out["label"]).tolist() == [False, False, True]


def test_families_subset_and_unknown_family() -> None:
    nuclei, cells = _cells_and_nuclei()
    img = np.full(cells.shape, 1000, np.uint16)
    out = features.measure_cells(nuclei, cells, {"A": img}, families=("intensity",))
    assert all("_Intensity_" in k or "_Location_" in k for k in out if k != "label")
    with pytest.raises(ValueError, match="unknown feature families"):
        features.measure_cells(nuclei, cells, {"A": img}, families=("colour",))


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
