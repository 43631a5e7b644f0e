"""Cross-magnification merge of one large well, against a plain KD-tree query.

Usage: python bench/bench_merge.py [--cp-cells 100000] [--sbs-cells 25000] [--seed 0]
                                   [--repeat 3] [--no-module]

Synthesises a well the way a screen images it: cells on a jittered lattice (20 um
apart, 20 % missing), CP at 0.65 um/px on a grid of 1480 px fields with 10 % overlap,
SBS at 1.29 um/px on a 2 x 2 grid covering about a quarter of the CP area, rotated 0.7
degrees and shifted (40, -30) um, stage errors of 1 um per field (positions known to
0.2 um as after ``geometry``), centroid noise 0.1 um (CP) and 0.4 um (SBS), 5 % of SBS
nuclei missed. The counts are of nuclei rows as the tables hold them (copies in
overlaps included). On one core (BLAS threads pinned to 1) it times, in the same run:

1. the baseline: ``scipy.spatial.cKDTree`` built on the SBS points and queried with
   every CP point (the points already in one frame), best of ``--repeat``;
2. ours: :func:`starrynight.algorithms.merge.merge_well` (placement, de-duplication of
   both arms, coarse correlation, RANSAC refinement, matching and statuses), best of
   ``--repeat``;
3. unless ``--no-module``: the ``merge`` module on parquet inputs in a temporary
   workspace (tables read, merge, cells table, report and QC picture written).

Prints seconds, the ratio to the baseline and the accuracy against the synthetic truth.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from starrynight import workspace  # noqa: E402
from starrynight.algorithms import merge as mg  # noqa: E402

CP_PX, SBS_PX, FIELD = 0.65, 1.29, 1480
SPACING = 20.0


def _grid(rows: int, cols: int, field_px: int, pixel: float, origin, rng):
    step = field_px * pixel * 0.9
    corners = np.array(
        [(origin[0] + r * step, origin[1] + c * step) for r in range(rows) for c in range(cols)]
    )
    true = corners + rng.normal(0, 1.0, corners.shape)
    known = true + rng.normal(0, 0.2, corners.shape)
    m = len(corners)
    fields = mg.Fields(np.arange(m), known, np.full((m, 2), pixel), np.full((m, 2), field_px))
    return fields, true


def _observe(world, fields, true, noise_um, rng, drop=0.0):
    site, cen, ids = [], [], []
    for k in range(len(fields.site)):
        px = fields.pixel_um[k, 0]
        c = (world - true[k]) / px - 0.5
        ok = np.all((c >= 0) & (c <= fields.shape_px[k, 0] - 1), axis=1)
        ok &= rng.random(len(c)) >= drop
        idx = np.flatnonzero(ok)
        site.append(np.full(len(idx), k))
        cen.append(c[idx] + rng.normal(0, noise_um / px, (len(idx), 2)))
        ids.append(idx)
    return np.concatenate(site), np.concatenate(cen), np.concatenate(ids)


def synth_well(cp_cells: int, sbs_cells: int, seed: int):
    """CP and SBS nuclei of one well, and the truth (cell ids, transform)."""
    rng = np.random.default_rng(seed)
    # Nuclei rows per um^2 of CP area, copies in the 10 % overlaps included.
    density = 0.8 / SPACING**2 / 0.81
    side = math.sqrt(cp_cells / density)
    n = int(side / SPACING) + 2
    g = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    cells = (g + 0.5) * SPACING + rng.uniform(-0.2, 0.2, g.shape) * SPACING
    cells = cells[rng.random(len(cells)) > 0.2]
    cp_rows = math.ceil(side / (FIELD * CP_PX * 0.9))
    cp_f, cp_t = _grid(cp_rows, cp_rows, FIELD, CP_PX, (0.0, 0.0), rng)
    sbs_area = sbs_cells / (density * 0.85)  # 5 % missed, thinner overlaps of a 2 x 2 grid
    sbs_field = int(math.sqrt(sbs_area) / (1.9 * SBS_PX))
    extent = sbs_field * SBS_PX * 1.9
    centre = (cp_rows * FIELD * CP_PX * 0.9) / 2
    sbs_f, sbs_t = _grid(2, 2, sbs_field, SBS_PX, (centre - extent / 2,) * 2, rng)
    truth = mg.similarity(1.0, 0.7, (40.0, -30.0), centre=(centre, centre))
    cp = _observe(cells, cp_f, cp_t, 0.1, rng)
    sbs_world = truth.inverse().apply(cells)
    sbs = _observe(sbs_world, sbs_f, sbs_t, 0.4, rng, drop=0.05)
    return (cp_f, *cp), (sbs_f, *sbs), truth, cells


def best_of(repeat: int, fn):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def write_inputs(ws: str, cp, sbs) -> None:
    """The tables ``merge`` reads: objects, barcode calls, positions (CP; SBS cycle 1)."""
    plate, well = "Plate1", "A1"
    for arm, (f, *_rest) in (("cp", cp), ("sbs", sbs)):
        m = len(f.site)
        uri = workspace.positions_path(ws, plate, well, arm, 1 if arm == "sbs" else None)
        os.makedirs(os.path.dirname(uri), exist_ok=True)
        pq.write_table(
            pa.table({
                "site": f.site.astype(np.int32), "cycle": np.full(m, 0 if arm == "cp" else 1),
                "y_um": f.corner_um[:, 0], "x_um": f.corner_um[:, 1],
                "y_px": f.corner_um[:, 0] / f.pixel_um[:, 0],
                "x_px": f.corner_um[:, 1] / f.pixel_um[:, 1],
                "height_px": f.shape_px[:, 0].astype(np.int32),
                "width_px": f.shape_px[:, 1].astype(np.int32),
                "pixel_size_y_um": f.pixel_um[:, 0], "pixel_size_x_um": f.pixel_um[:, 1],
            }),
            uri,
        )  # fmt: skip
    _, site, cen, _ = cp
    label = np.arange(len(site)) + 1
    uri = workspace.segmentation_objects_path(ws, plate, well)
    os.makedirs(os.path.dirname(uri), exist_ok=True)
    pq.write_table(
        pa.table({"site": site.astype(np.int32), "object": ["Nuclei"] * len(site),
                  "label": label.astype(np.int32), "centroid_y": cen[:, 0],
                  "centroid_x": cen[:, 1]}),
        uri,
    )  # fmt: skip
    _, site, cen, ids = sbs
    n = len(site)
    genes = np.array([f"G{i % 500}" for i in ids], dtype=object)
    uri = workspace.cell_barcodes_path(ws, plate, well)
    os.makedirs(os.path.dirname(uri), exist_ok=True)
    pq.write_table(
        pa.table({"site": site.astype(np.int32), "sbs_cell": np.arange(n, dtype=np.int32) + 1,
                  "nucleus_y": cen[:, 0], "nucleus_x": cen[:, 1], "barcode": genes,
                  "sgRNA": genes, "gene_symbol": genes, "status": ["assigned"] * n,
                  "reason": [""] * n, "confidence": np.ones(n, np.float32)}),
        uri,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cp-cells", type=int, default=100_000)
    ap.add_argument("--sbs-cells", type=int, default=25_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-module", action="store_true")
    args = ap.parse_args()
    cp, sbs, truth, _ = synth_well(args.cp_cells, args.sbs_cells, args.seed)
    print(f"well: {len(cp[1])} CP nuclei on {len(cp[0].site)} sites, "
          f"{len(sbs[1])} SBS nuclei on {len(sbs[0].site)} sites")  # fmt: skip
    cp_arm = mg.ArmNuclei(cp[0], cp[1], cp[2])
    sbs_arm = mg.ArmNuclei(sbs[0], sbs[1], sbs[2])
    cp_pts, _ = mg.place(cp[0], cp[0].rows(cp[1]), cp[2])
    sbs_pts = truth.apply(mg.place(sbs[0], sbs[0].rows(sbs[1]), sbs[2])[0])

    def baseline():
        return cKDTree(sbs_pts).query(cp_pts)

    t_base, _ = best_of(args.repeat, baseline)
    t_ours, res = best_of(args.repeat, lambda: mg.merge_well(cp_arm, sbs_arm))
    print(f"baseline cKDTree build + nearest-neighbour query: {t_base:.3f} s")
    print(f"merge_well (algorithm):                           {t_ours:.3f} s "
          f"({t_ours / t_base:.1f}x baseline)")  # fmt: skip
    reg = res.registration
    keep = res.cp.duplicates.keep
    cp_ids, sbs_ids = cp[3][keep], sbs[3]
    matched = res.code[keep] == mg.MATCHED
    right = int((sbs_ids[res.partner[keep][matched]] == cp_ids[matched]).sum())
    with_sbs = int(np.isin(cp_ids, sbs_ids).sum())
    t = reg.transform
    print(f"  registered {reg.registered} {list(reg.flags)}: scale {t.scale:.6f} (true 1), "
          f"rotation {t.rotation_deg:.4f} deg (true 0.7), residual {reg.residual_rms_um:.3f} um, "
          f"inlier share {reg.inlier_share:.3f}")  # fmt: skip
    wrong = int(matched.sum()) - right
    print(f"  CP cells {int(keep.sum())} (copies dropped {res.cp.duplicates.dropped}, "
          f"distinct truth {len(np.unique(cp[3]))}); with an SBS copy {with_sbs}: "
          f"right {right} ({right / with_sbs:.4f}), wrong {wrong}")  # fmt: skip
    if args.no_module:
        return
    from starrynight.modules.merge import merge_well

    with tempfile.TemporaryDirectory() as ws:
        write_inputs(ws, cp, sbs)
        t_mod, r = best_of(1, lambda: merge_well(ws, "Plate1", "A1", force=True))
    print(f"merge module (parquet in, table + report + PNG out): {t_mod:.3f} s "
          f"({t_mod / t_base:.1f}x baseline); matched {r.matched} of {r.inside_sbs_area} "
          "inside the SBS area")  # fmt: skip


if __name__ == "__main__":
    main()
