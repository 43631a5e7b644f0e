"""``merge``: every Cell Painting cell of a well once, with its SBS barcode, in the well frame.

Inputs, per plate x well:

- the CP nuclei of ``segment`` (``segmentation/<plate>-<well>/objects.parquet``: per-site
  centroids in site pixels);
- the SBS cells of ``barcodes call`` (``barcodes/<plate>-<well>/cells.parquet``: nucleus
  centroid in the pixels of the site's cycle 1, barcode, sgRNA, gene, call status);
- the site positions of ``geometry``: CP, and SBS of the first cycle (the aligned SBS
  images, hence the barcode calls, are in that cycle's frame).

Both arms are placed in their well frames, cells seen twice in overlapping sites are
kept once, the SBS frame is registered onto the CP frame from the nuclei themselves and
CP and SBS cells are matched one to one (:mod:`starrynight.algorithms.merge`).

Outputs (``merge/<plate>-<well>/``; the report is written last and marks the well
done): ``cells.parquet`` with one row per physical CP cell (see :data:`CELLS_SCHEMA`),
``report.json`` (transform, residuals, inlier share, match rate, flags) and ``qc.png``
(CP nuclei by status and the registered SBS nuclei over the CP mosaic thumbnail when
``starrynight mosaic`` made one, else on a blank canvas).

A well without SBS images keeps every CP cell with status ``no SBS images``; a well
that cannot be registered keeps every CP cell with status ``not registered`` and the
reason: no barcode is ever given by guesswork.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from starrynight import storage, workspace
from starrynight.algorithms import merge as mg
from starrynight.errors import UserError
from starrynight.modules.segment import read_table, write_table

#: Words for the per-cell codes of :mod:`starrynight.algorithms.merge`.
STATUS = {
    mg.MATCHED: "matched",
    mg.OUTSIDE: "outside the SBS area",
    mg.NO_REACH: "no SBS cell within reach",
    mg.AMBIGUOUS: "ambiguous",
    mg.NOT_REGISTERED: "not registered",
    mg.NO_SBS: "no SBS images",
}

#: One row per physical CP cell (the kept copy of cells seen in two sites).
CELLS_SCHEMA = pa.schema(
    [
        ("plate", pa.string()),
        ("well", pa.string()),
        ("site", pa.int32()),
        ("cell", pa.int32()),
        ("Nuclei_AreaShape_Center_X", pa.float64()),
        ("Nuclei_AreaShape_Center_Y", pa.float64()),
        ("x_um", pa.float64()),
        ("y_um", pa.float64()),
        ("edge_distance_um", pa.float64()),
        ("n_copies", pa.int32()),
        ("duplicate_sites", pa.list_(pa.int32())),
        ("duplicate_cells", pa.list_(pa.int32())),
        ("sbs_site", pa.int32()),
        ("sbs_cell", pa.int32()),
        ("sbs_distance_um", pa.float64()),
        ("nearest_sbs_um", pa.float64()),
        ("barcode", pa.string()),
        ("sgRNA", pa.string()),
        ("gene_symbol", pa.string()),
        ("barcode_status", pa.string()),
        ("barcode_reason", pa.string()),
        ("barcode_confidence", pa.float32()),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)

_SBS_POSITIONS = re.compile(r"_SBS_Cycle(\d+)_positions\.parquet$")


@dataclass
class MergeResult:
    """What ``merge`` did for one well (the report's headline numbers)."""

    plate: str
    well: str
    skipped: bool
    status: str  # "registered", "not registered" or "no SBS images"
    reason: str
    flags: list[str]
    cells: int  # physical CP cells (rows of the table)
    cp_duplicates: int
    sbs_cells: int
    sbs_duplicates: int
    inside_sbs_area: int
    matched: int
    with_barcode: int
    match_rate: float | None
    transform: dict[str, Any] | None
    outputs: list[str] = field(default_factory=list)


def merge_well(
    ws: str,
    plate: str,
    well: str,
    *,
    params: mg.MergeParams | None = None,
    force: bool = False,
) -> MergeResult:
    """Merge the CP and SBS cells of one well (see the module's docstring).

    Parameters
    ----------
    ws : str
        Workspace URI.
    plate, well : str
        The unit of work.
    params : MergeParams, optional
        Registration and matching settings.
    force : bool
        Recompute when the well's report exists.

    Raises
    ------
    UserError
        When an input is missing (naming it and the command that makes it), when the
        well has SBS cells but no CP segmentation, or when a site has no position.
    """
    params = params or mg.MergeParams()
    report_uri = workspace.merge_report_path(ws, plate, well)
    cells_uri = workspace.merge_cells_path(ws, plate, well)
    qc_uri = workspace.merge_qc_path(ws, plate, well)
    if not force and storage.exists(report_uri) and storage.exists(cells_uri):
        return _from_report(json.loads(storage.read_bytes(report_uri)), skipped=True)
    cp, cp_pos = _cp_nuclei(ws, plate, well)
    sbs_table, sbs, sbs_pos = _sbs_cells(ws, plate, well)
    result = mg.merge_well(cp, sbs, params)
    table = _cells_table(plate, well, cp, result, sbs_table, params)
    # The old report goes first: a run stopped half-way leaves the well not done.
    _remove(report_uri)
    write_table(cells_uri, table, CELLS_SCHEMA)
    storage.write_bytes(qc_uri, _qc_png(ws, plate, well, cp_pos, result))
    report = _report(plate, well, cp, sbs, sbs_pos, result, table, params)
    report["outputs"] = {"cells": cells_uri, "qc": qc_uri, "report": report_uri}
    storage.write_bytes(report_uri, (json.dumps(report, indent=2) + "\n").encode())
    return _from_report(report, skipped=False)


# --------------------------------------------------------------------------- inputs


def _fields(uri: str) -> tuple[mg.Fields, pa.Table]:
    t = read_table(uri)
    need = ["site", "y_um", "x_um", "pixel_size_y_um", "pixel_size_x_um", "height_px", "width_px"]
    missing = [c for c in need if c not in t.column_names]
    if missing:
        raise UserError(f"{uri}: not a positions table (columns {missing} missing)")
    if t.num_rows == 0:
        raise UserError(f"{uri}: no site positions")
    col = {c: t[c].to_numpy(zero_copy_only=False) for c in need}
    fields = mg.Fields(
        col["site"].astype(np.int64),
        np.column_stack([col["y_um"], col["x_um"]]).astype(np.float64),
        np.column_stack([col["pixel_size_y_um"], col["pixel_size_x_um"]]).astype(np.float64),
        np.column_stack([col["height_px"], col["width_px"]]).astype(np.float64),
    )
    return fields, t


def _arm(
    fields: mg.Fields, site: np.ndarray, yx: np.ndarray, label: np.ndarray, what: str,
    data_uri: str, pos_uri: str, area: np.ndarray | None = None,
) -> mg.ArmNuclei:  # fmt: skip
    try:
        fields.rows(site)
    except KeyError as exc:
        raise UserError(
            f"{data_uri}: {what} site {exc.args[0]} has no position in {pos_uri} "
            "(re-run `starrynight geometry` for this well)"
        ) from None
    return mg.ArmNuclei(fields, site, yx, label, area)


def _geometry_hint(ws: str, plate: str, well: str) -> str:
    return f"run `starrynight geometry -w {ws} --plate {plate} --well {well}`"


def _cp_nuclei(ws: str, plate: str, well: str) -> tuple[mg.ArmNuclei, pa.Table]:
    objects_uri = workspace.segmentation_objects_path(ws, plate, well)
    if not storage.exists(objects_uri):
        if _sbs_present(ws, plate, well):
            raise UserError(
                f"plate {plate!r} well {well!r}: SBS cells but no Cell Painting cells "
                f"({objects_uri} missing): nothing to merge them onto; run `starrynight "
                "segment` if the well has Cell Painting images"
            )
        raise UserError(
            f"plate {plate!r} well {well!r}: no segmentation ({objects_uri} missing); "
            "run `starrynight segment` first"
        )
    pos_uri = workspace.positions_path(ws, plate, well, "cp")
    if not storage.exists(pos_uri):
        raise UserError(
            f"{pos_uri}: no CP site positions; {_geometry_hint(ws, plate, well)} --arm cp"
        )
    fields, pos = _fields(pos_uri)
    t = read_table(objects_uri)
    t = t.filter(pc.equal(t["object"], "Nuclei"))
    yx = np.column_stack(
        [
            t["centroid_y"].to_numpy(zero_copy_only=False),
            t["centroid_x"].to_numpy(zero_copy_only=False),
        ]
    ).astype(np.float64)
    ok = np.all(np.isfinite(yx), axis=1)
    site = t["site"].to_numpy(zero_copy_only=False).astype(np.int64)[ok]
    label = t["label"].to_numpy(zero_copy_only=False).astype(np.int64)[ok]
    area = None
    if "area" in t.column_names:
        area = t["area"].to_numpy(zero_copy_only=False).astype(np.float64)[ok]
    return _arm(fields, site, yx[ok], label, "CP", objects_uri, pos_uri, area), pos


def _sbs_present(ws: str, plate: str, well: str) -> bool:
    """Whether the well has an SBS arm: barcode calls, SBS positions or SBS images."""
    if storage.exists(workspace.cell_barcodes_path(ws, plate, well)):
        return True
    if _first_sbs_positions(ws, plate, well) is not None:
        return True
    if not storage.exists(workspace.index_path(ws)):
        return False
    from starrynight.index import load_index

    t = load_index(ws)
    hit = pc.and_(
        pc.and_(pc.equal(t["plate"], plate), pc.equal(t["well"], well)), pc.equal(t["arm"], "sbs")
    )
    return bool(pc.any(hit).as_py())


def _first_sbs_positions(ws: str, plate: str, well: str) -> str | None:
    folder = workspace.geometry_dir(ws, plate, well)
    if not storage.exists(folder):
        return None
    cycles = []
    for entry in storage.list_files(folder):
        m = _SBS_POSITIONS.search(entry.key)
        if m and "/" not in entry.key:
            cycles.append(int(m.group(1)))
    if not cycles:
        return None
    return workspace.positions_path(ws, plate, well, "sbs", min(cycles))


def _sbs_cells(
    ws: str, plate: str, well: str
) -> tuple[pa.Table | None, mg.ArmNuclei | None, pa.Table | None]:
    calls_uri = workspace.cell_barcodes_path(ws, plate, well)
    if not _sbs_present(ws, plate, well):
        return None, None, None
    if not storage.exists(calls_uri):
        raise UserError(
            f"plate {plate!r} well {well!r}: SBS images but no barcode calls ({calls_uri} "
            "missing); run `starrynight barcodes call` first"
        )
    pos_uri = _first_sbs_positions(ws, plate, well)
    if pos_uri is None:
        raise UserError(
            f"plate {plate!r} well {well!r}: no SBS site positions under "
            f"{workspace.geometry_dir(ws, plate, well)}; {_geometry_hint(ws, plate, well)}"
        )
    fields, pos = _fields(pos_uri)
    t = read_table(calls_uri)
    need = ["site", "sbs_cell", "nucleus_y", "nucleus_x", "barcode", "sgRNA", "gene_symbol",
            "status", "reason", "confidence"]  # fmt: skip
    missing = [c for c in need if c not in t.column_names]
    if missing:
        raise UserError(f"{calls_uri}: not a barcode calls table (columns {missing} missing)")
    yx = np.column_stack(
        [
            t["nucleus_y"].to_numpy(zero_copy_only=False),
            t["nucleus_x"].to_numpy(zero_copy_only=False),
        ]
    ).astype(np.float64)
    ok = np.all(np.isfinite(yx), axis=1)
    t = t.filter(pa.array(ok))
    site = t["site"].to_numpy(zero_copy_only=False).astype(np.int64)
    label = t["sbs_cell"].to_numpy(zero_copy_only=False).astype(np.int64)
    return t, _arm(fields, site, yx[ok], label, "SBS", calls_uri, pos_uri), pos


# --------------------------------------------------------------------------- outputs


def _take(column: pa.ChunkedArray, index: np.ndarray) -> pa.Array:
    """``column[index]`` with null where ``index`` is -1."""
    idx = pa.array(np.where(index >= 0, index, 0), pa.int64(), mask=index < 0)
    return pc.take(column, idx)


def _cells_table(
    plate: str,
    well: str,
    cp: mg.ArmNuclei,
    res: mg.WellMerge,
    sbs: pa.Table | None,
    params: mg.MergeParams,
) -> pa.Table:
    dup = res.cp.duplicates
    kept = np.flatnonzero(dup.keep)
    n = len(kept)
    label = cp.label if cp.label is not None else np.arange(len(cp.site))
    # Dropped copies listed on their kept copy's row.
    dropped = np.flatnonzero(~dup.keep)
    owner = dup.kept_as[dropped]
    order = np.argsort(owner, kind="stable")
    dropped, owner = dropped[order], owner[order]
    row_of = np.full(len(dup.keep), -1, np.int64)
    row_of[kept] = np.arange(n)
    counts = np.bincount(row_of[owner], minlength=n)
    offsets = pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32))
    dup_sites = pa.ListArray.from_arrays(offsets, pa.array(cp.site[dropped].astype(np.int32)))
    dup_cells = pa.ListArray.from_arrays(offsets, pa.array(label[dropped].astype(np.int32)))
    code = res.code[kept]
    partner = res.partner[kept]
    nearest = res.distance[kept]
    matched = partner >= 0
    status = np.array([STATUS[c] for c in range(6)], dtype=object)[code]
    reason = np.full(n, None, dtype=object)
    reach = params.reach_um
    reason[(code == mg.NO_REACH) & (nearest > reach)] = f"no SBS nucleus within {reach:g} um"
    reason[(code == mg.NO_REACH) & (nearest <= reach)] = (
        "its nearest SBS nucleus is matched to a nearer CP cell"
    )
    reason[code == mg.AMBIGUOUS] = (
        f"two candidates within {params.ambiguity_um:g} um of the same distance"
    )
    if res.registration is not None and not res.registration.registered:
        reason[code == mg.NOT_REGISTERED] = res.registration.reason
    points = res.cp.points[kept]
    cols: dict[str, Any] = {
        "plate": [plate] * n,
        "well": [well] * n,
        "site": cp.site[kept].astype(np.int32),
        "cell": label[kept].astype(np.int32),
        "Nuclei_AreaShape_Center_X": cp.centroid_px[kept, 1],
        "Nuclei_AreaShape_Center_Y": cp.centroid_px[kept, 0],
        "x_um": points[:, 1],
        "y_um": points[:, 0],
        "edge_distance_um": res.cp.edge_um[kept],
        "n_copies": (counts + 1).astype(np.int32),
        "duplicate_sites": dup_sites,
        "duplicate_cells": dup_cells,
        "sbs_distance_um": pa.array(np.where(matched, nearest, 0.0), mask=~matched),
        "nearest_sbs_um": pa.array(
            np.where(np.isfinite(nearest), nearest, 0.0), mask=~np.isfinite(nearest)
        ),
        "status": status.tolist(),
        "reason": reason.tolist(),
    }
    sbs_cols = {
        "sbs_site": "site", "sbs_cell": "sbs_cell", "barcode": "barcode", "sgRNA": "sgRNA",
        "gene_symbol": "gene_symbol", "barcode_status": "status", "barcode_reason": "reason",
        "barcode_confidence": "confidence",
    }  # fmt: skip
    for out, src in sbs_cols.items():
        typ = CELLS_SCHEMA.field(out).type
        if sbs is None or not matched.any():
            cols[out] = pa.nulls(n, typ)
        else:
            cols[out] = _take(sbs[src], partner).cast(typ)
    return pa.Table.from_pydict({f.name: cols[f.name] for f in CELLS_SCHEMA}, schema=CELLS_SCHEMA)


def _transform_dict(reg: mg.Registration, cp: mg.ArmNuclei, sbs: mg.ArmNuclei) -> dict | None:
    t = reg.transform
    if t is None:
        return None
    ratio = float(np.median(sbs.fields.pixel_um[:, 1]) / np.median(cp.fields.pixel_um[:, 1]))
    ty, tx = t.translation_um
    return {
        "model": t.model,
        "scale": t.scale,
        "scale_px": t.scale * ratio,
        "rotation_deg": t.rotation_deg,
        "translation_um": {"y": ty, "x": tx},
        "matrix_xy_um": t.matrix.tolist(),
        "pixel_ratio_from_files": ratio,
    }


def _report(
    plate: str,
    well: str,
    cp: mg.ArmNuclei,
    sbs: mg.ArmNuclei | None,
    sbs_pos: pa.Table | None,
    res: mg.WellMerge,
    table: pa.Table,
    params: mg.MergeParams,
) -> dict[str, Any]:
    status = table["status"].to_numpy(zero_copy_only=False)
    counts = {s: int((status == s).sum()) for s in STATUS.values() if (status == s).any()}
    inside = int(np.isin(status, ["matched", "ambiguous", "no SBS cell within reach"]).sum())
    matched = counts.get("matched", 0)
    reg = res.registration
    out: dict[str, Any] = {
        "plate": plate,
        "well": well,
        "status": "no SBS images" if reg is None else (
            "registered" if reg.registered else "not registered"
        ),
        "reason": "" if reg is None else reg.reason,
        "flags": [] if reg is None else list(reg.flags),
        "cp": {
            "sites": len(cp.fields.site), "nuclei": len(res.cp.points),
            "duplicates_dropped": res.cp.duplicates.dropped, "cells": table.num_rows,
            "duplicate_radius_um": res.cp.duplicates.radius_um,
            "pixel_size_um": float(np.median(cp.fields.pixel_um[:, 1])),
        },
        "sbs": None,
        "transform": None,
        "registration": None,
        "match": {
            "inside_sbs_area": inside, "matched": matched,
            "match_rate": matched / inside if inside else None,
            "with_barcode": int(pc.sum(pc.is_valid(table["barcode"])).as_py() or 0),
            "statuses": counts, "reach_um": params.reach_um,
            "ambiguity_um": params.ambiguity_um,
        },
        "params": asdict(params),
    }  # fmt: skip
    if sbs is not None and sbs_pos is not None and res.sbs is not None:
        cycle = sbs_pos["cycle"][0].as_py() if "cycle" in sbs_pos.column_names else None
        out["sbs"] = {
            "cycle": cycle, "sites": len(sbs.fields.site), "nuclei": len(res.sbs.points),
            "duplicates_dropped": res.sbs.duplicates.dropped,
            "cells": int(res.sbs.duplicates.keep.sum()),
            "duplicate_radius_um": res.sbs.duplicates.radius_um,
            "pixel_size_um": float(np.median(sbs.fields.pixel_um[:, 1])),
            "matched": len(np.unique(res.partner[res.partner >= 0])),
        }  # fmt: skip
    if reg is not None:
        out["transform"] = _transform_dict(reg, cp, sbs) if sbs is not None else None
        r = reg.residuals_um
        edges = np.linspace(0, params.register.inlier_um, 11)
        out["registration"] = {
            "nuclei": [reg.n_cp, reg.n_sbs], "pairs": reg.n_pairs, "inliers": reg.n_inliers,
            "common_nuclei": reg.n_common, "inlier_share": _num(reg.inlier_share),
            "residual_um": {
                "rms": _num(reg.residual_rms_um),
                "median": _num(np.median(r)) if len(r) else None,
                "p95": _num(np.percentile(r, 95)) if len(r) else None,
                "max": _num(r.max()) if len(r) else None,
                "histogram": {"edges": edges.tolist(),
                              "counts": np.histogram(r, edges)[0].tolist()},
            },
            "iterations": reg.iterations,
            "coarse": reg.coarse,
        }  # fmt: skip
    return out


def _num(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _from_report(report: dict[str, Any], skipped: bool) -> MergeResult:
    sbs = report.get("sbs") or {}
    match = report["match"]
    outputs = report.get("outputs", {})
    return MergeResult(
        report["plate"], report["well"], skipped, report["status"], report["reason"],
        list(report["flags"]), report["cp"]["cells"], report["cp"]["duplicates_dropped"],
        sbs.get("cells", 0), sbs.get("duplicates_dropped", 0), match["inside_sbs_area"],
        match["matched"], match["with_barcode"], match["match_rate"], report["transform"],
        [outputs[k] for k in ("cells", "qc", "report") if k in outputs],
    )  # fmt: skip


def _remove(uri: str) -> None:
    fs, path = storage.filesystem(uri)
    with contextlib.suppress(OSError):  # absent
        fs.delete_file(path)


# --------------------------------------------------------------------------- QC picture

_COLOURS = {
    mg.MATCHED: (60, 220, 60),
    mg.AMBIGUOUS: (250, 210, 40),
    mg.NO_REACH: (240, 60, 60),
    mg.OUTSIDE: (150, 150, 150),
    mg.NOT_REGISTERED: (240, 60, 60),
    mg.NO_SBS: (150, 150, 150),
}
_SBS_COLOUR = (70, 130, 255)
_SIDE = 1024


def _canvas(ws: str, plate: str, well: str, cp_pos: pa.Table, res: mg.WellMerge):
    """Background and the map from well-frame um (y x) to its pixels."""
    from PIL import Image

    py = float(cp_pos["pixel_size_y_um"][0].as_py())
    px = float(cp_pos["pixel_size_x_um"][0].as_py())
    y_px = cp_pos["y_px"].to_numpy(zero_copy_only=False)
    x_px = cp_pos["x_px"].to_numpy(zero_copy_only=False)
    y0, x0 = math.floor(y_px.min()), math.floor(x_px.min())
    h0 = max(round(v - y0) for v in y_px) + int(cp_pos["height_px"][0].as_py())
    w0 = max(round(v - x0) for v in x_px) + int(cp_pos["width_px"][0].as_py())
    thumb = workspace.mosaic_thumbnail_path(ws, plate, well, "cp")
    if storage.exists(thumb):
        grey = np.asarray(Image.open(io.BytesIO(storage.read_bytes(thumb))).convert("L"))
        rgb = np.repeat((grey.astype(np.float32) * 0.8).astype(np.uint8)[..., None], 3, axis=2)
        fy, fx = h0 / grey.shape[0], w0 / grey.shape[1]
        origin = np.array([y0 * py, x0 * px])
        scale = np.array([py * fy, px * fx])
        return rgb, origin, scale
    pts = [res.cp.points]
    if res.sbs_in_cp is not None:
        pts.append(res.sbs_in_cp)
    allp = np.concatenate([*pts, np.array([[y0 * py, x0 * px], [(y0 + h0) * py, (x0 + w0) * px]])])
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    um_per_px = max(float(np.max(hi - lo)) / _SIDE, 1e-9)
    shape = np.maximum(1, np.ceil((hi - lo) / um_per_px).astype(int) + 1)
    rgb = np.full((*shape, 3), 24, np.uint8)
    return rgb, lo, np.array([um_per_px, um_per_px])


def _dots(rgb: np.ndarray, yx: np.ndarray, colour, plus: bool) -> None:
    """Mark points: a plus of arm 3 px (``plus``) or a 2 x 2 dot."""
    h, w = rgb.shape[:2]
    iy, ix = np.rint(yx[:, 0]).astype(int), np.rint(yx[:, 1]).astype(int)
    arm = (-3, -2, 2, 3)
    steps = (
        [(d, 0) for d in arm] + [(0, d) for d in arm] if plus else [(0, 0), (0, 1), (1, 0), (1, 1)]
    )
    for dy, dx in steps:
        y, x = iy + dy, ix + dx
        ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        rgb[y[ok], x[ok]] = colour


def _qc_png(ws: str, plate: str, well: str, cp_pos: pa.Table, res: mg.WellMerge) -> bytes:
    """CP nuclei coloured by status and registered SBS nuclei, with a legend."""
    from PIL import Image, ImageDraw

    rgb, origin, scale = _canvas(ws, plate, well, cp_pos, res)
    keep = res.cp.duplicates.keep
    cp_px = (res.cp.points[keep] - origin) / scale
    codes = res.code[keep]
    for code, colour in _COLOURS.items():
        sel = codes == code
        if sel.any():
            _dots(rgb, cp_px[sel], colour, plus=True)
    # SBS on top: a registered SBS nucleus sits in the gap at the centre of its CP plus.
    if res.sbs_in_cp is not None and res.sbs is not None:
        keep_sbs = res.sbs.duplicates.keep
        _dots(rgb, (res.sbs_in_cp[keep_sbs] - origin) / scale, _SBS_COLOUR, plus=False)
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    legend = [("SBS nuclei (registered)", _SBS_COLOUR)] + [
        (STATUS[c], _COLOURS[c]) for c in _COLOURS if (codes == c).any()
    ]
    y = 4
    for text, colour in legend:
        draw.rectangle([4, y + 2, 12, y + 10], fill=colour)
        draw.text((16, y), text, fill=(255, 255, 255))
        y += 14
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
