"""Base calling, crosstalk compensation, read matching and cell assignment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from starrynight.algorithms import barcodes as bc
from tests.starrynight import sbs_synthetic


def test_library_is_the_prefix_the_cycles_read() -> None:
    lib = bc.build_library(["ACGTAA", "CCGTAA", "ACGAAT"], ["G1", "G2", "G3"], 4)
    assert lib.barcodes == ("ACGT", "CCGT", "ACGA") and lib.length == 4
    assert lib.min_distance() == 1


@pytest.mark.parametrize(
    ("sgrnas", "cycles", "message"),
    [
        (["ACGT", "ACGTA"], 3, "mixed"),
        (["ACGT", "ACGT"], 3, "duplicates row 2"),
        (["ACGT", "ACGA"], 3, "share the first 3 bases"),
        (["ACGT", "TTTT"], 5, "4 bases long"),
        (["ACGN", "TTTT"], 3, "not a sequence"),
        ([], 3, "no barcodes"),
    ],
)
def test_library_rejects_bad_tables(sgrnas: list[str], cycles: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bc.build_library(sgrnas, ["g"] * len(sgrnas), cycles)


def test_hamming_and_match_reads() -> None:
    lib = bc.build_library(["AAAA", "CCCC", "AAGG"], ["a", "c", "g"], 4)
    d = bc.hamming_matrix(bc.encode(["AAAA", "TTTT"]), lib.codes)
    assert d.tolist() == [[0, 4, 2], [4, 4, 4]]
    reads = np.array(
        [[0, 0, 0, 0], [1, 1, 1, 3], [0, 0, 2, 0], [3, 3, 3, 3]]
    )  # AAAA CCCT AAGA TTTT
    idx, dist = bc.match_reads(reads, lib, max_distance=1)
    assert idx.tolist() == [0, 1, -2, -1]  # AAGA is 1 from both AAAA and AAGG
    assert dist.tolist() == [0, 1, 1, 4]


def test_crosstalk_is_estimated_and_undone() -> None:
    rng = np.random.default_rng(1)
    mixing = np.eye(4)
    mixing[1, 0], mixing[0, 1], mixing[3, 2], mixing[2, 3] = 0.3, 0.2, 0.25, 0.15
    true_base = rng.integers(0, 4, 400)
    true = np.zeros((400, 4))
    true[np.arange(400), true_base] = rng.uniform(50, 150, 400)
    observed = true @ mixing.T + rng.normal(0, 1, (400, 4))
    est = bc.estimate_crosstalk(observed)
    assert np.allclose(est, mixing, atol=0.03)
    recovered = bc.compensate(observed, est)
    assert np.abs(recovered - true).max() < 10


def test_compensation_keeps_channels_on_one_scale_when_a_base_is_rare() -> None:
    # Cycle 1 has only 6 G spots, fewer than min_spots=20 needs: its G column and gain
    # must come from the other cycles, not stay unscaled (which made every T spot of
    # that cycle read G, with high quality, on small images).
    rng = np.random.default_rng(4)
    mixing = np.eye(4)
    mixing[1, 0], mixing[0, 1], mixing[3, 2], mixing[2, 3] = 0.25, 0.2, 0.25, 0.2
    dye = np.array([1.0, 0.8, 0.6, 1.2])  # brightness per dye
    n, cycles = 240, 3
    bases = rng.integers(0, 4, (n, cycles))
    bases[:, 0] = np.where(bases[:, 0] == 2, 3, bases[:, 0])
    bases[:6, 0] = 2
    true = np.zeros((n, cycles, 4))
    for k in range(cycles):
        amp = rng.uniform(500, 1500, n) * 0.9**k
        true[np.arange(n), k, bases[:, k]] = amp * dye[bases[:, k]]
    observed = true @ mixing.T + rng.normal(0, 5, true.shape)
    values, mats = bc.compensate_cycles(observed, min_spots=20)
    called, _ = bc.call_bases(values)
    assert (called == bases).mean() == 1.0
    assert mats[0, 3, 2] == pytest.approx(0.25, abs=0.03)  # G column from the pooled cycles


def test_fill_gains_predicts_missing_entries_from_cycle_and_channel() -> None:
    gains = np.array([[100.0, 200, np.nan, 400], [50, 100, 150, np.nan], [np.nan] * 4])
    filled = bc.fill_gains(gains)
    assert filled[0, 2] == pytest.approx(300) and filled[1, 3] == pytest.approx(200)
    assert np.isfinite(filled).all() and np.all(filled[2] > 0)
    assert bc.fill_gains(np.full((2, 4), np.nan)).tolist() == [[1.0] * 4] * 2


def test_call_bases_quality() -> None:
    values = np.array([[[10.0, 1, 0, 0], [5, 5, 0, 0], [-1, -2, -3, -4]]])
    bases, q = bc.call_bases(values)
    assert bases.tolist() == [[0, 0, 0]]
    assert q[0].tolist() == pytest.approx([0.9, 0.0, 0.0])


def test_assign_cells_majority_ties_and_reasons() -> None:
    labels = np.array([1, 2, 3, 4, 5])
    spot_cell = np.array([1, 1, 1, 2, 2, 3, 4, 0])
    spot_bc = np.array([7, 7, 2, 3, 4, -1, 9, 5])
    q = np.ones(8, np.float32)
    calls = bc.assign_cells(labels, spot_cell, spot_bc, q)
    assert calls.barcode_index.tolist() == [7, -1, -1, 9, -1]
    assert calls.count.tolist()[0] == 2 and calls.confidence[0] == pytest.approx(2 / 3)
    assert calls.reason == ["", "tie between barcodes", "no spot read matched a barcode", "",
                            "no spots"]  # fmt: skip
    strict = bc.assign_cells(labels, spot_cell, spot_bc, q, min_count=2)
    assert strict.barcode_index.tolist() == [7, -1, -1, -1, -1]


def test_read_site_on_synthetic_spots() -> None:
    lib = bc.build_library(["ACGT", "TGCA", "GATC"], ["g1", "g2", "g3"], 4)
    h = w = 64
    cells = np.zeros((h, w), np.int32)
    cells[:32, :] = 1
    cells[32:, :] = 2
    sbs = np.full((4, 4, h, w), 10.0, np.float32)
    spots = {1: [(8, 8), (16, 40), (24, 20)], 2: [(40, 10), (50, 50)]}
    carried = {1: "ACGT", 2: "GATC"}
    for cell, positions in spots.items():
        for y, x in positions:
            for k, base in enumerate(carried[cell]):
                sbs[k, bc.BASES.index(base), y - 1 : y + 2, x - 1 : x + 2] += 200
    reads = bc.read_site(sbs, cells, lib, bc.SpotParams(compensate=False))
    assert len(reads.spots["y"]) == 5
    assert [lib.barcodes[i] for i in reads.cells.barcode_index] == ["ACGT", "GATC"]
    with pytest.raises(ValueError, match="cycles"):
        bc.read_site(sbs[:3], cells, lib)


def test_read_site_all_zero_images_give_no_calls() -> None:
    lib = bc.build_library(["ACGT"], ["g"], 4)
    cells = np.zeros((32, 32), np.int32)
    cells[4:20, 4:20] = 1
    reads = bc.read_site(np.zeros((4, 4, 32, 32), np.float32), cells, lib)
    assert len(reads.spots["y"]) == 0
    assert reads.cells.barcode_index.tolist() == [-1]
    assert reads.cells.reason[0]  # an explicit reason, not an empty call


def test_equal_counts_are_decided_by_the_bases_that_tell_barcodes_apart() -> None:
    lib = bc.build_library(["AAAA", "AAAC", "GGGG"], ["a", "c", "g"], 4)
    reads = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 1]])
    idx = np.array([0, 1, 0, 1])
    cells = np.array([1, 1, 2, 2])
    quality = np.full((4, 4), 0.9, np.float32)
    quality[0, 3] = 0.1  # cell 1: the AAAA read is unsure of its last base, AAAC sure
    calls = bc.assign_cells(
        np.array([1, 2]), cells, idx, np.ones(4), reads=reads, base_quality=quality, library=lib
    )
    assert calls.barcode_index.tolist() == [1, -1]
    assert calls.second_index[0] == 0
    assert calls.count.tolist() == [1, 1] and calls.second_count.tolist() == [1, 1]
    assert calls.reason == ["", "tie between barcodes"]  # cell 2: truly balanced
    assert calls.score[0] > 2 * calls.second_score[0]
    assert calls.confidence[0] == pytest.approx(calls.score[0])


def test_min_quality_drops_weak_reads() -> None:
    labels = np.array([1])
    calls = bc.assign_cells(labels, np.array([1, 1]), np.array([3, 3]), np.ones(2),
                            spot_quality=np.array([0.05, 0.1]), min_quality=0.2)  # fmt: skip
    assert calls.barcode_index.tolist() == [-1]
    assert calls.reason == ["every matching read below quality 0.2"]
    kept = bc.assign_cells(labels, np.array([1, 1]), np.array([3, 3]), np.ones(2),
                           spot_quality=np.array([0.05, 0.3]), min_quality=0.2)  # fmt: skip
    assert kept.barcode_index.tolist() == [3] and kept.n_matched.tolist() == [1]


def test_match_reads_uses_base_quality_to_break_distance_ties() -> None:
    lib = bc.build_library(["AAAA", "AAGG"], ["a", "g"], 4)
    read = np.array([[0, 0, 2, 0]])  # AAGA: one mismatch from each
    q = np.array([[0.9, 0.9, 0.9, 0.1]])  # the last base is the unsure one
    assert bc.match_reads(read, lib, 1, quality=q)[0].tolist() == [1]
    assert bc.match_reads(read, lib, 1, quality=np.full((1, 4), 0.5))[0].tolist() == [-2]


def test_dye_crosstalk_site_calls_right_without_ties() -> None:
    # Cy3/A594 (G/T) and Cy5/Cy7 (A/C) leak into each other; dim, jittery amplicons.
    rng = np.random.default_rng(0)
    lib = sbs_synthetic.random_library(rng, 400, 7, min_distance=1)
    totals = np.zeros(3)
    counted = 0
    for _ in range(3):
        sbs, cells, truth = sbs_synthetic.synthetic_site(rng, lib)
        calls = bc.read_site(sbs, cells, lib).cells
        *fractions, n = sbs_synthetic.score_calls(calls, truth, cells, 24)
        totals += np.array(fractions) * n
        counted += n
    right, wrong, _ = totals / counted
    assert right >= 0.95 and wrong <= 0.01, (right, wrong)


@pytest.mark.parametrize("width", [0.8, 1.3, 2.6])
def test_spot_sigma_is_measured_on_the_image(width: float) -> None:
    # Point amplicons deposited at sub-pixel positions (bilinear: variance + 1/6 px^2),
    # blurred by a Gaussian PSF of ``width`` pixels, on a noisy camera offset.
    rng = np.random.default_rng(1)
    img = np.zeros((256, 256))
    pts = rng.uniform(10, 246, (150, 2))
    for (y, x), a in zip(pts, rng.lognormal(0, 0.3, 150) * 1000, strict=True):
        y0, x0, fy, fx = int(y), int(x), y % 1, x % 1
        img[y0 : y0 + 2, x0 : x0 + 2] += a * np.outer([1 - fy, fy], [1 - fx, fx])
    img = ndi.gaussian_filter(img, width) + 100 + rng.normal(0, 3, img.shape)
    assert bc.estimate_spot_sigma(img) == pytest.approx(np.hypot(width, 6**-0.5), rel=0.08)
    assert bc.estimate_spot_sigma(np.zeros((64, 64))) is None
    assert bc.estimate_spot_sigma(rng.normal(0, 1, (64, 64))) is None
    p, source = bc.SpotParams().resolve(np.zeros((1, 4, 64, 64)))
    assert (p.sigma, p.min_distance, source) == (bc.FALLBACK_SPOT_SIGMA, 2, "fallback")
    assert bc.SpotParams(sigma=3.0).resolve(img)[0].min_distance == 5


def test_barcodes_are_read_at_any_magnification() -> None:
    # The same site imaged with pixels half as large (20X instead of 10X): spots and
    # cells twice as many pixels across. The measured spot scale follows; a fixed
    # 1-pixel detector tuned for 10X loses cells.
    rng = np.random.default_rng(0)
    lib = sbs_synthetic.random_library(rng, 400, 7, min_distance=1)
    sbs, cells, truth = sbs_synthetic.synthetic_site(rng, lib, size=256, n_cells=60)
    big = ndi.zoom(sbs, (1, 1, 2, 2), order=1)
    big_cells = np.repeat(np.repeat(cells, 2, axis=0), 2, axis=1)
    native = bc.read_site(sbs, cells, lib)
    scaled = bc.read_site(big, big_cells, lib)
    assert native.spot_sigma_source == scaled.spot_sigma_source == "estimated"
    assert scaled.spot_sigma / native.spot_sigma == pytest.approx(2.0, rel=0.1)
    right, wrong, _, n = sbs_synthetic.score_calls(scaled.cells, truth, big_cells, 48)
    assert n > 40 and right >= 0.95 and wrong <= 0.02, (right, wrong, n)
    fixed = bc.read_site(big, big_cells, lib, bc.SpotParams(sigma=1.0))
    assert sbs_synthetic.score_calls(fixed.cells, truth, big_cells, 48)[0] < right - 0.05
