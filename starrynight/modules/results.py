"""Screen results: per-plate normalised profiles and per-screen hits (the I/O around
:mod:`starrynight.algorithms.profiles`).

Two steps, each one call, one CLI command and one Dagster asset
(``dagster_defs/assets/results.py``):

- :func:`plate_profiles` (per plate, downstream of every well's ``features/<plate>-<well>/
  cells.parquet``): filters the cells, robust z-scores them against the plate's own
  non-targeting controls and writes ``results/<plate>/<plate>_cells_normalized.parquet``,
  the median profile per well x sgRNA (``<plate>_guides.parquet``) and the filter
  counts (``<plate>_profiles.json``, written last: the plate is complete when it exists).
- :func:`screen_hits` (per screen, downstream of every plate's profiles): selects
  features, aggregates to sgRNA and gene across plates, scores phenotypic activity
  with copairs and writes ``results/screen/hits.parquet`` (+ ``hits.csv``),
  ``gene_profiles.parquet``, ``guide_profiles.parquet`` and ``screen.json`` (last).

Memory: the plate step holds one plate's feature matrix (float32) and transforms it in
place; the screen step holds the per-well guide profiles plus the sampled cells only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from starrynight import storage, workspace
from starrynight.algorithms import profiles as prof
from starrynight.errors import UserError
from starrynight.modules.segment import write_table

#: Per-cell columns carried through to the normalised table (when present).
CELL_META = ("plate", "well", "site", "cell", "sgRNA", "gene_symbol")
#: Non-feature columns of the per-cell table (besides ``barcode_*``).
NON_FEATURES = {*CELL_META, "sbs_site", "sbs_cell", "barcode", "field_edge", "well_edge"}
#: Profile units for phenotypic activity.
UNITS = ("guide", "cell")


@dataclass(frozen=True)
class PlateProfiles:
    """What :func:`plate_profiles` did."""

    plate: str
    counts: prof.FilterCounts
    n_controls: int
    n_features: int
    unscalable: list[str]
    outputs: list[str]
    skipped: bool = False
    #: ``profiled``, or ``no_controls`` / ``controls_unusable`` (control cells none, or
    #: none of their features varies; with ``allow_no_controls``: nothing written but
    #: the report, which says why in ``message``).
    status: str = "profiled"
    message: str = ""


@dataclass(frozen=True)
class ScreenHits:
    """What :func:`screen_hits` did."""

    plates: list[str]
    unit: str
    n_genes: int
    n_scored: int
    n_hits: int
    n_features: int
    dropped: dict[str, list[str]]
    outputs: list[str]
    skipped: bool = False
    hits: list[str] = field(default_factory=list)
    #: ``scored``, or ``no_usable_plates`` (every plate lacked controls; see ``excluded``).
    status: str = "scored"
    message: str = ""
    #: Plates left out, with the reason (a plate without control cells).
    excluded: dict[str, str] = field(default_factory=dict)


def _plate_well_tables(ws: str, plate: str) -> list[str]:
    root = storage.join(ws, "features")
    uris = []
    if storage.exists(root):
        for entry in storage.list_files(root):
            folder, _, name = entry.key.partition("/")
            if folder.startswith(f"{plate}-") and name == "cells.parquet":
                uris.append(storage.join(root, folder, name))
    if not uris:
        raise UserError(
            f"plate {plate!r}: no analysed wells under {root} (run `starrynight analysis run`)"
        )
    return sorted(uris)


def _parquet(uri: str) -> pq.ParquetFile:
    fs, path = storage.filesystem(uri)
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except (OSError, pa.ArrowInvalid) as exc:
        raise UserError(f"{uri}: not a readable parquet file ({exc})") from exc


def _feature_names(schema: pa.Schema) -> list[str]:
    return [
        f.name for f in schema
        if f.name not in NON_FEATURES and not f.name.startswith("barcode_")
        and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
    ]  # fmt: skip


def _read_cells(uris: list[str]) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Metadata frame and float32 feature matrix of the wells (features of the first)."""
    files = [_parquet(u) for u in uris]
    features = _feature_names(files[0].schema_arrow)
    for uri, f in zip(uris[1:], files[1:], strict=True):
        other = _feature_names(f.schema_arrow)
        if other != features:
            missing = sorted(set(features) - set(other))[:3]
            raise UserError(
                f"{uri}: feature columns differ from {uris[0]} (e.g. missing {missing}); "
                "re-run `starrynight analysis run --force` on the plate's wells"
            )
    total = sum(f.metadata.num_rows for f in files)
    matrix = np.empty((total, len(features)), np.float32)
    metas = []
    row = 0
    for f in files:
        names = set(f.schema_arrow.names)
        meta_cols = [c for c in (*CELL_META, "field_edge", "well_edge") if c in names]
        metas.append(f.read(columns=meta_cols).to_pandas())
        n = f.metadata.num_rows
        # A few columns at a time: a whole row group of every feature decoded at once
        # would cost another copy of the table.
        for start in range(0, len(features), 32):
            block = features[start : start + 32]
            part = f.read(columns=block)
            for j, name in enumerate(block):
                matrix[row : row + n, start + j] = part.column(name).to_numpy()
            del part
        row += n
    meta = pd.concat(metas, ignore_index=True) if metas else pd.DataFrame()
    return meta, matrix, features


def _write_json(uri: str, payload: dict[str, Any]) -> None:
    storage.write_bytes(uri, json.dumps(payload, indent=2, default=str).encode())


def plate_profiles(
    ws: str,
    plate: str,
    *,
    control_label: str = prof.CONTROL_LABEL,
    outlier_z: float = 10.0,
    outlier_fraction: float = 0.1,
    allow_no_controls: bool = False,
    force: bool = False,
) -> PlateProfiles:
    """Filter, normalise to the plate's controls, and write a plate's cell and guide profiles.

    Parameters
    ----------
    ws : str
        Workspace URI.
    plate : str
        Plate name.
    control_label : str
        ``gene_symbol`` of the non-targeting control guides.
    outlier_z, outlier_fraction : float
        A cell is an outlier when more than ``outlier_fraction`` of its features have
        ``|z| > outlier_z``.
    allow_no_controls : bool
        A plate without control cells, or whose control cells vary in no feature, is not
        an error: its report says so (status ``no_controls`` / ``controls_unusable``) and
        no profiles are written, so :func:`screen_hits` leaves the
        plate out and lists it. What the Dagster asset uses: one plate without controls
        must not stop the screen.
    force : bool
        Recompute even when the report records the same inputs and parameters.

    Returns
    -------
    PlateProfiles

    Raises
    ------
    UserError
        No analysed wells, no feature columns, or no usable control cells on the plate
        (unless ``allow_no_controls``).
    """
    report_uri = workspace.plate_profiles_report_path(ws, plate)
    cells_uri = workspace.plate_cell_profiles_path(ws, plate)
    guides_uri = workspace.plate_guide_profiles_path(ws, plate)
    outputs = [cells_uri, guides_uri, report_uri]
    uris = _plate_well_tables(ws, plate)
    params = {
        "control_label": control_label,
        "outlier_z": outlier_z,
        "outlier_fraction": outlier_fraction,
        "allow_no_controls": allow_no_controls,
    }
    inputs = _fingerprints(uris)
    rep = _read_report(report_uri)
    if not force and rep and rep.get("inputs") == inputs and rep.get("params") == params:
        status = rep.get("status", "profiled")
        return PlateProfiles(
            plate, prof.FilterCounts(**rep["filters"]), rep["n_controls"], rep["n_features"],
            rep["unscalable_features"], outputs if status == "profiled" else [report_uri],
            skipped=True, status=status, message=rep.get("message", ""),
        )  # fmt: skip
    meta, matrix, features = _read_cells(uris)
    if not features:
        raise UserError(f"plate {plate!r}: {uris[0]} has no numeric feature columns")
    total = len(meta)
    genes = meta["gene_symbol"] if "gene_symbol" in meta else pd.Series([None] * total)
    no_gene = genes.isna().to_numpy()
    field_edge = _flag(meta, "field_edge") & ~no_gene
    well_edge = _flag(meta, "well_edge") & ~no_gene & ~field_edge
    kept = ~(no_gene | field_edge | well_edge)
    controls = kept & (genes == control_label).to_numpy()

    def unusable(status: str, message: str) -> PlateProfiles:
        """The plate cannot be normalised: refuse, or (allowed) report why and write no profiles."""
        if not allow_no_controls:
            raise UserError(message)
        counts = prof.FilterCounts(
            total=total, no_gene=int(no_gene.sum()), field_edge=int(field_edge.sum()),
            well_edge=int(well_edge.sum()), outliers=0,
        )  # fmt: skip
        # Profiles of an earlier run (other cells, another label) would be read as current.
        for stale in (cells_uri, guides_uri):
            if storage.exists(stale):
                storage.remove(stale)
        _write_json(
            report_uri,
            {"plate": plate, "status": status, "message": message,
             "control_label": control_label, "wells": uris, "inputs": inputs,
             "params": params, "filters": asdict(counts), "kept": 0,
             "n_controls": int(controls.sum()), "n_features": len(features),
             "unscalable_features": []},
        )  # fmt: skip
        return PlateProfiles(
            plate, counts, 0, len(features), [], [report_uri], status=status, message=message
        )

    if not controls.any():
        seen = sorted(set(genes.dropna()))
        message = (
            f"plate {plate!r}: no cells of the non-targeting control {control_label!r} among "
            f"{int(kept.sum())} usable cells (genes: {', '.join(seen[:8]) or 'none'}"
            f"{', ...' if len(seen) > 8 else ''}); set the control label (--control-label)"
        )
        return unusable("no_controls", message)
    _, mad = prof.normalize_to_controls(matrix, controls)
    unscalable = [f for f, m in zip(features, mad, strict=True) if not (np.isfinite(m) and m > 0)]
    if len(unscalable) == len(features):
        return unusable(
            "controls_unusable",
            f"plate {plate!r}: no feature varies among the {int(controls.sum())} "
            f"{control_label} cells (all NaN or constant); nothing can be normalised",
        )
    outliers = np.zeros(total, bool)
    outliers[kept] = prof.outlier_cells(
        matrix, np.flatnonzero(kept), z=outlier_z, fraction=outlier_fraction
    )
    kept &= ~outliers
    counts = prof.FilterCounts(
        total=total, no_gene=int(no_gene.sum()), field_edge=int(field_edge.sum()),
        well_edge=int(well_edge.sum()), outliers=int(outliers.sum()),
    )  # fmt: skip
    rows = np.flatnonzero(kept)
    cell_meta = meta.iloc[rows].reset_index(drop=True)
    _write_cells(cells_uri, cell_meta, matrix, rows, features)
    keys, medians, n_cells = prof.group_medians(
        matrix, cell_meta[["well", "sgRNA", "gene_symbol"]].astype(str), rows
    )
    keys.insert(0, "plate", plate)
    keys["n_cells"] = n_cells
    table = pa.Table.from_pandas(keys, preserve_index=False)
    for j, name in enumerate(features):
        table = table.append_column(name, pa.array(medians[:, j], pa.float32()))
    write_table(guides_uri, table)
    n_controls = int((controls & kept).sum())
    _write_json(
        report_uri,
        {
            "plate": plate, "status": "profiled", "message": "",
            "control_label": control_label, "wells": uris, "inputs": inputs, "params": params,
            "filters": asdict(counts), "kept": counts.kept, "n_controls": n_controls,
            "n_features": len(features), "unscalable_features": unscalable,
            "outlier_rule": {"z": outlier_z, "fraction": outlier_fraction},
            "normalisation": "pycytominer RobustMAD (mad_robustize) fitted on the plate's "
            f"{control_label} cells",
        },
    )  # fmt: skip
    return PlateProfiles(plate, counts, n_controls, len(features), unscalable, outputs)


def _fingerprints(uris: list[str]) -> dict[str, list[int] | None]:
    """``uri -> [size, mtime_ns]``: what a report records of the files it was made from."""
    return {
        u: list(st) if st is not None else None
        for u, st in zip(uris, storage.stat_many(uris), strict=True)
    }


def _read_report(uri: str) -> dict[str, Any] | None:
    """A JSON report, or None when absent or unreadable (then the step recomputes)."""
    if not storage.exists(uri):
        return None
    try:
        rep = json.loads(storage.read_bytes(uri))
    except (UserError, ValueError):
        return None
    return rep if isinstance(rep, dict) else None


def _flag(meta: pd.DataFrame, name: str) -> np.ndarray:
    if name not in meta:
        return np.zeros(len(meta), bool)
    return meta[name].fillna(False).astype(bool).to_numpy()


def _write_cells(
    uri: str, meta: pd.DataFrame, matrix: np.ndarray, rows: np.ndarray, features: list[str]
) -> None:
    """Stream the kept rows to parquet in blocks (no second copy of the matrix)."""
    block = 65536
    schema = pa.schema(
        [(c, pa.int32() if c in ("site", "cell") else pa.string()) for c in meta.columns
         if c in CELL_META]
        + [(f, pa.float32()) for f in features]
    )  # fmt: skip
    with (
        storage.atomic_local_path(uri, suffix=".parquet") as tmp,
        # Dictionary encoding and statistics cost more than they give on float z-scores.
        pq.ParquetWriter(
            tmp, schema, use_dictionary=list(CELL_META), write_statistics=False
        ) as writer,
    ):
        for start in range(0, max(len(rows), 1), block):
            part = rows[start : start + block]
            m = meta.iloc[start : start + len(part)]
            arrays = [pa.array(m[c].to_numpy(), schema.field(c).type, from_pandas=True)
                      for c in schema.names if c in CELL_META]  # fmt: skip
            values = matrix[part]
            arrays += [pa.array(values[:, j]) for j in range(len(features))]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))


def plate_reports(ws: str) -> dict[str, dict[str, Any]]:
    """The profiles report of every plate that has one, by plate (sorted).

    A report's ``status`` is ``profiled``, ``no_controls`` or ``controls_unusable`` (then
    ``message`` says why).
    """
    root = storage.join(ws, "results")
    if not storage.exists(root):
        return {}
    reports = {}
    for entry in storage.list_files(root):
        folder, _, name = entry.key.partition("/")
        if folder != "screen" and name == f"{folder}_profiles.json":
            rep = _read_report(storage.join(root, entry.key))
            if rep is not None:
                reports[folder] = rep
    return dict(sorted(reports.items()))


def screen_hits(
    ws: str,
    plates: list[str] | None = None,
    *,
    unit: str = "guide",
    control_label: str = prof.CONTROL_LABEL,
    threshold: float = 0.05,
    null_size: int = 10000,
    seed: int = 0,
    max_cells_per_gene: int = 200,
    max_control_cells: int = 5000,
    selection_rows: int = 20000,
    na_cutoff: float = 0.05,
    corr_threshold: float = 0.9,
    blocklist: tuple[str, ...] = (),
    top_k: int = 5,
    allow_no_controls: bool = False,
    force: bool = False,
) -> ScreenHits:
    """Select features, aggregate to sgRNA and gene across plates, score and call hits.

    Parameters
    ----------
    ws : str
        Workspace URI.
    plates : list of str, optional
        Plates to combine (default: every plate with profiles).
    unit : {"guide", "cell"}
        Profiles compared by copairs: per plate x well x sgRNA medians (``guide``, the
        usual choice: replicates of a gene are its guides in every well), or single
        cells (``cell``, for small screens; at most ``max_cells_per_gene`` per gene
        and ``max_control_cells`` controls, drawn with ``seed``).
    control_label : str
        ``gene_symbol`` of the non-targeting controls (as for :func:`plate_profiles`).
    threshold : float
        q-value below which a gene is a hit.
    null_size, seed : int
        copairs' permutation null size and the seed of every random draw.
    selection_rows : int
        Cells sampled for ``pycytominer.feature_select``.
    na_cutoff, corr_threshold : float
        pycytominer's missing-fraction and correlation thresholds.
    blocklist : tuple of str
        Extra glob patterns of features to drop.
    top_k : int
        Features listed per gene in ``top_features``.
    allow_no_controls : bool
        When every profiled plate lacked control cells, write a report saying so (status
        ``no_usable_plates``) instead of raising. Plates without controls are left out
        (and listed in the report's ``excluded``) either way when ``plates`` is not given.
    force : bool
        Recompute even when ``results/screen/screen.json`` records the same plates'
        profiles and the same parameters.

    Returns
    -------
    ScreenHits
    """
    if unit not in UNITS:
        raise UserError(f"unit {unit!r}: expected one of {', '.join(UNITS)}")
    report_uri = workspace.screen_results_path(ws, "screen.json")
    names = ("hits.parquet", "hits.csv", "gene_profiles.parquet", "guide_profiles.parquet",
             "volcano.png")  # fmt: skip
    outputs = [workspace.screen_results_path(ws, n) for n in names] + [report_uri]
    reports = plate_reports(ws)
    available = [p for p, r in reports.items() if r.get("status", "profiled") == "profiled"]
    excluded = {p: str(r.get("message", "")) for p, r in reports.items() if p not in available}
    if plates:
        plates = sorted(plates)
        for p in plates:
            if p in excluded:
                raise UserError(f"{excluded[p]}; leave plate {p!r} out of --plates")
        excluded = {}
    else:
        plates = available
    params = {"unit": unit, "control_label": control_label, "threshold": threshold,
              "null_size": null_size, "seed": seed, "max_cells_per_gene": max_cells_per_gene,
              "max_control_cells": max_control_cells, "selection_rows": selection_rows,
              "na_cutoff": na_cutoff, "corr_threshold": corr_threshold,
              "blocklist": list(blocklist), "top_k": top_k}  # fmt: skip
    # The plates' reports change whenever their profiles are rewritten.
    inputs = _fingerprints(
        [workspace.plate_profiles_report_path(ws, p) for p in [*plates, *excluded]]
    )
    rep = _read_report(report_uri)
    if (not force and rep and rep.get("plates") == plates and rep.get("inputs") == inputs
            and rep.get("params") == params):  # fmt: skip
        return ScreenHits(
            rep["plates"], rep["unit"], rep["n_genes"], rep["n_scored"], rep["n_hits"],
            rep["n_features"], rep["dropped"],
            outputs if rep.get("status", "scored") == "scored" else [report_uri],
            skipped=True, hits=rep["hits"], status=rep.get("status", "scored"),
            message=rep.get("message", ""), excluded=rep.get("excluded", {}),
        )  # fmt: skip
    if not plates and excluded and allow_no_controls:
        message = (
            f"no plate has cells of the non-targeting control {control_label!r} "
            f"({', '.join(excluded)}): nothing can be scored"
        )
        for stale in outputs[:-1]:
            if storage.exists(stale):
                storage.remove(stale)
        _write_json(
            report_uri,
            {"status": "no_usable_plates", "message": message, "plates": [],
             "excluded": excluded, "unit": unit, "control_label": control_label,
             "inputs": inputs, "params": params, "n_genes": 0, "n_scored": 0, "n_hits": 0,
             "hits": [], "n_features": 0, "dropped": {}},
        )  # fmt: skip
        return ScreenHits([], unit, 0, 0, 0, 0, {}, [report_uri], status="no_usable_plates",
                          message=message, excluded=excluded)  # fmt: skip
    missing = sorted(set(plates) - set(available))
    if not plates or missing:
        why = "; ".join(excluded.values())
        raise UserError(
            f"no profiles for plate(s) {', '.join(missing) or '(none found)'} under "
            f"{storage.join(ws, 'results')}; "
            + (why if why else "run `starrynight results profiles` first")
        )
    rng = np.random.default_rng(seed)
    guide_tables, samples = [], []
    for plate in plates:
        guide_tables.append(_read_frame(workspace.plate_guide_profiles_path(ws, plate)))
        samples.append(
            _sample_cells(
                workspace.plate_cell_profiles_path(ws, plate), control_label,
                max_cells_per_gene // len(plates) or 1, max_control_cells // len(plates) or 1, rng,
            )
        )  # fmt: skip
    guides = pd.concat(guide_tables, ignore_index=True)
    cells = pd.concat(samples, ignore_index=True)
    features = [c for c in guides.columns if c not in {"plate", "well", "sgRNA", "gene_symbol",
                                                       "n_cells"}]  # fmt: skip
    if not (guides["gene_symbol"] == control_label).any():
        raise UserError(f"plates {', '.join(plates)}: no {control_label!r} guide profiles")
    pick = rng.permutation(len(cells))[:selection_rows]
    kept, dropped = prof.select_features(
        cells.iloc[pick], features, na_cutoff=na_cutoff, corr_threshold=corr_threshold,
        blocklist=blocklist,
    )  # fmt: skip
    if not kept:
        raise UserError(
            f"plates {', '.join(plates)}: feature selection kept no feature of {len(features)} "
            f"(dropped: {', '.join(f'{k} {len(v)}' for k, v in dropped.items())})"
        )
    # Screen-level sgRNA profile: median over its plate x well profiles.
    g_keys, g_prof, _ = prof.group_medians(
        guides[kept].to_numpy(np.float32), guides[["sgRNA", "gene_symbol"]]
    )
    g_cells = guides.groupby(["sgRNA", "gene_symbol"])["n_cells"].sum()
    g_keys["n_cells"] = g_cells.loc[list(zip(g_keys["sgRNA"], g_keys["gene_symbol"], strict=True))
                                   ].to_numpy()  # fmt: skip
    gene_keys, gene_prof, n_guides = prof.group_medians(g_prof, g_keys[["gene_symbol"]])
    if unit == "guide":
        act_meta, act_prof = guides[["gene_symbol"]], guides[kept].to_numpy(np.float64)
    else:
        act_meta, act_prof = cells[["gene_symbol"]], cells[kept].to_numpy(np.float64)
    activity = prof.phenotypic_activity(
        act_meta, np.nan_to_num(act_prof), control_label=control_label, null_size=null_size,
        seed=seed, threshold=threshold,
    )  # fmt: skip
    consistency = prof.guide_consistency(
        g_keys["gene_symbol"].to_numpy(), np.nan_to_num(g_prof.astype(np.float64))
    )
    n_cells = g_keys.groupby("gene_symbol")["n_cells"].sum()
    gene_list = gene_keys["gene_symbol"].tolist()
    top = {g: prof.top_features(gene_prof[i], kept, top_k) for i, g in enumerate(gene_list)}
    hits = activity
    hits.insert(1, "n_cells", hits["gene_symbol"].map(n_cells).astype(np.int64))
    guides_per_gene = dict(zip(gene_list, n_guides, strict=True))
    hits.insert(2, "n_guides", hits["gene_symbol"].map(guides_per_gene).astype(np.int64))
    hits["guide_consistency"] = hits["gene_symbol"].map(consistency)
    hits["top_features"] = hits["gene_symbol"].map(top)
    hits = hits.sort_values(["q_value", "p_value", "gene_symbol"], na_position="last")
    hits_table = pa.Table.from_pandas(hits.reset_index(drop=True), preserve_index=False)
    write_table(outputs[0], hits_table)
    buf = pa.BufferOutputStream()
    pacsv.write_csv(hits_table, buf)
    storage.write_bytes(outputs[1], buf.getvalue().to_pybytes())
    write_table(outputs[2], _profile_table(gene_keys, gene_prof, kept))
    write_table(outputs[3], _profile_table(g_keys, g_prof, kept))
    storage.write_bytes(outputs[4], volcano_png(hits, threshold))
    hit_genes = hits.loc[hits["hit"], "gene_symbol"].tolist()
    scored = int(hits["activity_status"].eq("scored").sum())
    _write_json(
        report_uri,
        {
            "status": "scored", "message": "", "excluded": excluded, "inputs": inputs,
            "params": params,
            "plates": plates, "unit": unit, "control_label": control_label,
            "threshold": threshold, "null_size": null_size, "seed": seed,
            "n_genes": len(hits), "n_scored": scored, "n_hits": len(hit_genes),
            "hits": hit_genes, "n_features": len(kept), "features": kept, "dropped": dropped,
            "n_activity_profiles": len(act_meta),
        },
    )  # fmt: skip
    return ScreenHits(
        plates, unit, len(hits), scored, len(hit_genes), len(kept), dropped, outputs,
        hits=hit_genes, excluded=excluded,
    )  # fmt: skip


def volcano_png(hits: pd.DataFrame, threshold: float = 0.05) -> bytes:
    """The volcano-style plot of a hits table: mAP against -log10 q, hits named.

    Parameters
    ----------
    hits : pandas.DataFrame
        :func:`screen_hits`' table (``gene_symbol``, ``mAP``, ``q_value``, ``hit``).
    threshold : float
        The q-value of a hit, drawn as a dashed line.

    Returns
    -------
    bytes
        A PNG (matplotlib, Agg; no pyplot state).
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    scored = hits[np.isfinite(hits["q_value"].astype(float))]
    y = -np.log10(np.clip(scored["q_value"].astype(float).to_numpy(), 1e-300, 1))
    x = scored["mAP"].astype(float).to_numpy()
    hit = scored["hit"].astype(bool).to_numpy()
    ax.scatter(x[~hit], y[~hit], s=14, c="#8a8a8a", label="not a hit")
    ax.scatter(x[hit], y[hit], s=18, c="#c0392b", label=f"hit (q < {threshold:g})")
    for gx, gy, name in zip(x[hit], y[hit], scored["gene_symbol"][hit], strict=True):
        ax.annotate(str(name), (gx, gy), xytext=(3, 3), textcoords="offset points", fontsize=7)
    ax.axhline(-np.log10(threshold), color="#c0392b", lw=0.8, ls="--")
    ax.set_xlabel("mAP against non-targeting controls")
    ax.set_ylabel("-log10 q")
    ax.set_title(f"{int(hit.sum())} hit(s) of {len(hits)} gene(s)")
    if len(scored):
        ax.legend(loc="upper left", fontsize=7, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _profile_table(keys: pd.DataFrame, values: np.ndarray, features: list[str]) -> pa.Table:
    table = pa.Table.from_pandas(keys.reset_index(drop=True), preserve_index=False)
    for j, name in enumerate(features):
        table = table.append_column(name, pa.array(values[:, j], pa.float32()))
    return table


def _read_frame(uri: str, columns: list[str] | None = None) -> pd.DataFrame:
    return _parquet(uri).read(columns=columns).to_pandas()


def _sample_cells(
    uri: str, control_label: str, per_gene: int, controls: int, rng: np.random.Generator
) -> pd.DataFrame:
    """Up to ``per_gene`` cells of each gene and ``controls`` control cells of a plate.

    Reads the gene column first and then only the chosen rows' features, batch by batch.
    """
    f = _parquet(uri)
    genes = f.read(columns=["gene_symbol"]).column(0).to_numpy(zero_copy_only=False)
    chosen = []
    for g in np.unique(genes):
        rows = np.flatnonzero(genes == g)
        cap = controls if g == control_label else per_gene
        chosen.append(rows if len(rows) <= cap else np.sort(rng.choice(rows, cap, replace=False)))
    take = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    parts, offset = [], 0
    for batch in f.iter_batches(batch_size=65536):
        local = take[(take >= offset) & (take < offset + batch.num_rows)] - offset
        if local.size:
            parts.append(pa.Table.from_batches([batch]).take(pa.array(local)))
        offset += batch.num_rows
    if not parts:
        return f.schema_arrow.empty_table().to_pandas()
    return pa.concat_tables(parts).to_pandas()
