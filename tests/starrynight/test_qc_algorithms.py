"""The statistics behind the QC reports, on small inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from starrynight.algorithms import qc


def test_square_grid_lays_sites_out_row_by_row_in_site_order() -> None:
    m = qc.square_grid([4, 0, 2, 1, 3])
    assert m.source == "grid"
    assert m.sites.tolist() == [0, 1, 2, 3, 4]
    # 5 sites: 3 columns, 2 rows
    assert m.x.tolist() == [0, 1, 2, 0, 1]
    assert m.y.tolist() == [0, 0, 0, 1, 1]
    assert (m.width == 1).all() and (m.height == 1).all()
    assert len(qc.square_grid([]).sites) == 0


def test_positions_map_sorts_by_site_and_takes_the_field_size() -> None:
    m = qc.positions_map([2, 0, 1], [200.0, 0.0, 100.0], [0.0, 0.0, 0.0], [90, 90, 90], None)
    assert m.source == "positions"
    assert m.sites.tolist() == [0, 1, 2]
    assert m.x.tolist() == [0.0, 100.0, 200.0]
    assert m.width.tolist() == [90.0, 90.0, 90.0]
    # Height unknown: smallest spacing along y, none here (one row) -> 1.
    assert m.height.tolist() == [1.0, 1.0, 1.0]
    # Width unknown: the smallest spacing between columns.
    assert qc.positions_map([0, 1, 2], [0, 50, 150], [0, 0, 0]).width.tolist() == [50.0] * 3


@pytest.mark.parametrize(
    ("sites", "x", "y", "message"),
    [
        ([0, 0], [0, 1], [0, 1], "more than once"),
        ([0, 1], [0, math.nan], [0, 1], "finite"),
        ([0, 1], [0], [0, 1], "length"),
    ],
)
def test_positions_map_refuses_bad_tables(sites, x, y, message) -> None:
    with pytest.raises(ValueError, match=message):
        qc.positions_map(sites, x, y)


def test_base_frequencies_per_position() -> None:
    f = qc.base_frequencies(["ACG", "AGG", "TCG", "ACT"])
    np.testing.assert_allclose(f[0], [0.75, 0, 0, 0.25])
    np.testing.assert_allclose(f[1], [0, 0.75, 0.25, 0])
    np.testing.assert_allclose(f[2], [0, 0, 0.75, 0.25])
    np.testing.assert_allclose(f.sum(axis=1), 1)
    empty = qc.base_frequencies([], 3)
    assert empty.shape == (3, 4) and np.isnan(empty).all()
    with pytest.raises(ValueError, match="differ in length"):
        qc.base_frequencies(["ACG", "AC"])


def test_mismatch_positions_counts_where_reads_differ_from_their_barcode() -> None:
    reads = ["ACGT", "ACGA", "TCGT", "ACCT"]
    refs = ["ACGT", "ACGT", "ACGT", "ACGT"]
    assert qc.mismatch_positions(reads, refs).tolist() == [1, 0, 1, 1]
    assert qc.mismatch_positions([], []).tolist() == []
    with pytest.raises(ValueError):
        qc.mismatch_positions(["ACG"], ["ACGT"])
    with pytest.raises(ValueError):
        qc.mismatch_positions(["ACG"], [])


def test_match_shares() -> None:
    matched = np.array([True, True, True, False, False])
    distance = np.array([0, 1, 0, 1, 3])  # the fourth is an ambiguous 1-mismatch read
    s = qc.match_shares(matched, distance)
    assert s.n_reads == 5
    assert s.exact == pytest.approx(0.4)
    assert s.within_one == pytest.approx(0.6)
    none = qc.match_shares(np.zeros(0, bool), np.zeros(0, int))
    assert none.n_reads == 0 and math.isnan(none.exact)


def test_barcodes_per_cell() -> None:
    got = qc.barcodes_per_cell(np.array([0, 3, 4, 0]), np.array([0, 0, 1, 0]))
    assert got.tolist() == [0, 1, 2, 0]


def test_top_values_ranks_by_count_then_name() -> None:
    assert qc.top_values(["b", "a", None, "b", "c", "a"], 2) == [("a", 2), ("b", 2)]
    assert qc.top_values([None], 3) == []


def test_downsample_block_means() -> None:
    image = np.arange(16, dtype=float).reshape(4, 4)
    small, block = qc.downsample(image, 2)
    assert block == 2
    np.testing.assert_allclose(small, [[2.5, 4.5], [10.5, 12.5]])
    same, one = qc.downsample(image, 8)
    assert one == 1 and same.shape == (4, 4)
    with pytest.raises(ValueError):
        qc.downsample(image, 0)


def test_flatness_and_sample_evenly() -> None:
    assert qc.flatness(np.array([[0.5, 1.0], [1.0, 2.0]])) == pytest.approx(4.0)
    assert math.isnan(qc.flatness(np.array([[0.0, 1.0]])))
    assert qc.sample_evenly(list(range(10)), 3) == [0, 4, 9]
    assert qc.sample_evenly([1, 2], 5) == [1, 2]
    assert qc.sample_evenly([1, 2], 0) == []
