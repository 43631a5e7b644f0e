"""``algorithms.merge`` on synthetic wells with a known answer (points, no images)."""

from __future__ import annotations

import numpy as np
import pytest

from starrynight.algorithms import merge as mg


def _grid(rows, cols, field_px, pixel, overlap, rng, origin=(0.0, 0.0)):
    step = field_px * pixel * (1 - overlap)
    corners = np.array(
        [(origin[0] + r * step, origin[1] + c * step) for r in range(rows) for c in range(cols)]
    )
    true = corners + rng.normal(0, 1.0, corners.shape)  # stage error
    known = true + rng.normal(0, 0.2, corners.shape)  # refined positions
    m = len(corners)
    return mg.Fields(np.arange(m), known, np.full((m, 2), pixel), np.full((m, 2), field_px)), true


def _observe(world, fields, true, to_frame, noise, rng, drop=0.0):
    pts = to_frame(world)
    site, cen, ids = [], [], []
    for k in range(len(fields.site)):
        c = (pts - true[k]) / fields.pixel_um[k, 0] - 0.5
        ok = np.all((c >= 0) & (c <= fields.shape_px[k, 0] - 1), axis=1)
        ok &= rng.random(len(c)) >= drop
        idx = np.flatnonzero(ok)
        site.append(np.full(len(idx), k))
        cen.append(c[idx] + rng.normal(0, noise, (len(idx), 2)))
        ids.append(idx)
    return np.concatenate(site), np.concatenate(cen), np.concatenate(ids)


def _well(side=1200.0, sbs_grid=(2, 2), rot=0.6, shift=(25.0, -35.0), seed=0, sbs_scale=1.0):
    rng = np.random.default_rng(seed)
    n = int(side / 20)
    g = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2) + 0.5
    cells = g * 20 + rng.uniform(-4, 4, g.shape)
    cells = cells[rng.random(len(cells)) > 0.2]
    cp_f, cp_t = _grid(6, 6, 360, 0.65, 0.1, rng)
    sbs_f, sbs_t = _grid(*sbs_grid, 360, 1.29, 0.1, rng)
    truth = mg.similarity(sbs_scale, rot, shift, centre=(side / 2, side / 2))
    cp = _observe(cells, cp_f, cp_t, lambda p: p, 0.15, rng)
    sbs = _observe(cells, sbs_f, sbs_t, truth.inverse().apply, 0.3, rng, drop=0.05)
    return cells, (cp_f, *cp), (sbs_f, *sbs), truth


def _arm(f, site, cen, _ids):
    return mg.ArmNuclei(f, site, cen)


def test_whole_well_registers_and_matches_every_cell_once():
    cells, cp, sbs, truth = _well()
    r = mg.merge_well(_arm(*cp), _arm(*sbs))
    reg = r.registration
    assert reg.registered and not reg.flags, reg
    assert reg.transform.scale == pytest.approx(1.0, abs=2e-3 * 0.5)
    assert reg.transform.rotation_deg == pytest.approx(0.6, abs=0.02)
    assert reg.residual_rms_um < 1.0
    keep = r.cp.duplicates.keep
    cp_ids, sbs_ids = cp[3], sbs[3]
    assert len(np.unique(cp_ids[keep])) == keep.sum() == len(np.unique(cp_ids))
    m = r.code[keep] == mg.MATCHED
    partner = r.partner[keep][m]
    right = (sbs_ids[partner] == cp_ids[keep][m]).sum()
    with_sbs = np.isin(cp_ids[keep], sbs_ids).sum()
    assert right / with_sbs >= 0.97 and m.sum() - right == 0
    # Points the transform maps agree with the truth everywhere in the well.
    err = np.linalg.norm(reg.transform.apply(truth.inverse().apply(cells)) - cells, axis=1)
    assert err.max() < 1.0


def test_partial_overlap_says_outside_for_cells_beyond_the_sbs_area():
    _, cp, sbs, _ = _well(sbs_grid=(1, 1))
    r = mg.merge_well(_arm(*cp), _arm(*sbs))
    assert r.registration.registered
    keep = r.cp.duplicates.keep
    codes = r.code[keep]
    cp_ids, sbs_ids = cp[3][keep], sbs[3]
    seen = np.isin(cp_ids, sbs_ids)
    assert (codes[~seen] != mg.MATCHED).all()
    assert (codes == mg.OUTSIDE).sum() > 0.5 * len(codes)
    m = codes == mg.MATCHED
    assert (sbs_ids[r.partner[keep][m]] == cp_ids[m]).all()
    assert m.sum() >= 0.95 * seen.sum()


def test_affine_model_fits_too():
    _, cp, sbs, _ = _well(seed=3)
    params = mg.MergeParams(register=mg.RegisterParams(model="affine"))
    r = mg.merge_well(_arm(*cp), _arm(*sbs), params)
    assert r.registration.registered
    assert r.registration.transform.model == "affine"
    assert r.registration.transform.rotation_deg == pytest.approx(0.6, abs=0.03)


def test_too_few_nuclei_is_not_registered_and_nobody_matched():
    _, cp, sbs, _ = _well()
    f, site, cen, _ids = sbs
    few = np.arange(10)
    r = mg.merge_well(_arm(*cp), mg.ArmNuclei(f, site[few], cen[few]))
    assert not r.registration.registered
    assert "too few nuclei" in r.registration.reason
    assert (r.code == mg.NOT_REGISTERED).all() and (r.partner < 0).all()


def test_a_scale_far_from_the_expected_one_is_not_registered():
    _, cp, sbs, _ = _well(sbs_scale=1.03)
    r = mg.merge_well(_arm(*cp), _arm(*sbs))
    assert not r.registration.registered
    assert (r.partner < 0).all()
    assert "scale" in r.registration.reason or "agree" in r.registration.reason


def test_no_sbs_keeps_every_cell_with_its_status():
    _, cp, _, _ = _well()
    r = mg.merge_well(_arm(*cp), None)
    assert (r.code == mg.NO_SBS).all() and r.registration is None


def test_duplicates_keep_the_copy_farthest_from_the_edge():
    # Two abutting 100 px fields overlapping by 20 px; one cell in the overlap.
    f = mg.Fields(
        np.array([0, 1]), np.array([[0.0, 0.0], [0.0, 80.0]]), np.ones((2, 2)),
        np.full((2, 2), 100.0),
    )  # fmt: skip
    site = np.array([0, 1, 0, 1])
    cen = np.array([[50.0, 95.0], [50.3, 14.8], [20.0, 20.0], [60.0, 60.0]])
    rows = f.rows(site)
    pts, edge = mg.place(f, rows, cen)
    d = mg.deduplicate(pts, rows, edge, f, radius_um=3.0)
    assert d.keep.tolist() == [False, True, True, True]
    assert d.kept_as[0] == 1


def test_a_sliver_cut_by_the_edge_is_its_cells_copy():
    # The whole nucleus sits in site 0 at x = 92; site 1 (from x = 80) cuts it at its left
    # edge to a sliver whose centroid is 0.5 px in: 11.5 px from the whole nucleus'.
    f = mg.Fields(
        np.array([0, 1]), np.array([[0.0, 0.0], [0.0, 80.0]]), np.ones((2, 2)),
        np.full((2, 2), 100.0),
    )  # fmt: skip
    site = np.array([0, 1, 1])
    cen = np.array([[50.0, 92.0], [50.0, 0.5], [50.0, 30.0]])
    rows = f.rows(site)
    pts, edge = mg.place(f, rows, cen)
    d = mg.deduplicate(pts, rows, edge, f, radius_um=8.0)
    assert d.keep.tolist() == [True, False, True] and d.kept_as[1] == 0
    # The same distance between two nuclei well inside their fields: two cells.
    cen = np.array([[50.0, 86.0], [50.0, 17.5], [50.0, 30.0]])
    pts, edge = mg.place(f, rows, cen)
    assert mg.deduplicate(pts, rows, edge, f, radius_um=8.0).keep.all()


def test_a_site_never_merges_two_of_its_own_cells():
    f = mg.Fields(
        np.array([0, 1]), np.array([[0.0, 0.0], [0.0, 80.0]]), np.ones((2, 2)),
        np.full((2, 2), 100.0),
    )  # fmt: skip
    # Site 0 sees two close cells; site 1 sees one of them.
    site = np.array([0, 0, 1])
    cen = np.array([[50.0, 90.0], [50.0, 93.0], [50.0, 11.5]])
    rows = f.rows(site)
    pts, edge = mg.place(f, rows, cen)
    d = mg.deduplicate(pts, rows, edge, f, radius_um=4.0)
    assert d.keep.sum() == 2 and d.kept_as[0] != d.kept_as[1]
    # Areas say the same: two nuclei of one site, each as large as the other site's.
    d = mg.deduplicate(pts, rows, edge, f, radius_um=4.0, area_um2=np.array([20.0, 20, 20]))
    assert d.keep.sum() == 2 and d.kept_as[0] != d.kept_as[1]


def test_a_nucleus_cut_in_two_in_one_site_is_one_cell():
    # Site 0 ends at x=100; its segmentation split a nucleus there into a sliver at
    # the edge and the rest; site 1 (from x=70) saw it whole, farther from its edge.
    f = mg.Fields(
        np.array([0, 1]), np.array([[0.0, 0.0], [0.0, 70.0]]), np.ones((2, 2)),
        np.full((2, 2), 100.0),
    )  # fmt: skip
    site = np.array([0, 0, 1])
    cen = np.array([[50.0, 99.0], [50.0, 95.5], [50.0, 26.0]])
    rows = f.rows(site)
    pts, edge = mg.place(f, rows, cen)
    area = np.array([8.0, 20.0, 34.0])
    d = mg.deduplicate(pts, rows, edge, f, radius_um=5.0, area_um2=area)
    assert d.keep.tolist() == [False, False, True] and d.kept_as.tolist() == [2, 2, 2]
    # Without areas the pieces cannot be told from two cells: both stay.
    assert mg.deduplicate(pts, rows, edge, f, radius_um=5.0).keep.sum() == 2


def test_match_cells_statuses():
    cp = np.array([[0.0, 0.0], [0.0, 10.0], [0.0, 14.0], [50.0, 50.0], [90.0, 90.0]])
    sbs = np.array([[0.3, 0.0], [0.0, 12.0], [57.0, 50.0]])
    inside = np.array([True, True, True, True, False])
    m = mg.match_cells(cp, sbs, inside, reach_um=5.0, ambiguity_um=2.0)
    assert m.code.tolist() == [mg.MATCHED, mg.AMBIGUOUS, mg.AMBIGUOUS, mg.NO_REACH, mg.OUTSIDE]
    assert m.partner.tolist() == [0, -1, -1, -1, -1]


def test_unknown_site_is_a_key_error():
    f = mg.Fields(np.array([3, 5]), np.zeros((2, 2)), np.ones((2, 2)), np.full((2, 2), 10.0))
    assert f.rows(np.array([5, 3])).tolist() == [1, 0]
    with pytest.raises(KeyError):
        f.rows(np.array([4]))
