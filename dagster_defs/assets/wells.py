"""Per plate x well products: corrected CP images, aligned SBS cycles, segmentation,
barcode calls and per-cell features.

One subsettable multi-asset holds all five, so a well's run is one Dagster step whose
body hands one pipecraft pipeline (with the steps' real dependencies) to the backend:
on AWS Batch that is one submission of dependent jobs, locally one worker pool.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dagster as dg
import pyarrow.compute as pc

from dagster_defs import checks
from dagster_defs.assets.catalog import plate_index
from dagster_defs.assets.common import (
    digest,
    fail_if_any,
    file_digest,
    node_metadata,
    png_markdown,
    rgb_png,
    run_env,
    step_spec,
)
from dagster_defs.execution import run_pipeline
from dagster_defs.partitions import plate_well_partitions, split_key
from dagster_defs.resources import PipecraftBackend, StarryNightProject
from starrynight import registry, storage
from starrynight import workspace as wsp
from starrynight.pipelines import nodes_of, well_pipeline

CORRECTED = dg.AssetKey("corrected_cp")
ALIGNED = checks.ALIGNED
SEGMENTATION = checks.SEGMENTATION
BARCODES = checks.BARCODES
FEATURES = dg.AssetKey("cell_features")


def _arms(ws: str, plate: str, well: str) -> set[str]:
    rows = plate_index(ws, plate)
    rows = rows.filter(pc.equal(rows.column("well"), well))
    return set(rows.column("arm").to_pylist())


def _segmentation_preview(ws: str, plate: str, well: str) -> dg.MetadataValue | None:
    """Outline overlay of the well's first site, drawn on its corrected nuclear image."""
    from starrynight.imageio import read_image
    from starrynight.modules.segment import overlay, read_mask

    counts = checks.read_parquet(wsp.segmentation_counts_path(ws, plate, well))
    if counts.num_rows == 0:
        return None
    site = int(counts.column("site")[0].as_py())
    nuclei = read_mask(wsp.segmentation_mask_path(ws, plate, well, site, "Nuclei"))
    cells = read_mask(wsp.segmentation_mask_path(ws, plate, well, site, "Cells"))
    folder = wsp.corrected_dir(ws, plate, well)
    prefix = f"Plate_{plate}_Well_{well}_Site_{site}_Corr"
    names = sorted(
        e.key.rsplit("/", 1)[-1]
        for e in storage.list_files(folder)
        if e.key.rsplit("/", 1)[-1].startswith(prefix)
    )
    if not names:
        return None
    dapi = [n for n in names if "DAPI" in n.upper() or "DNA" in n.upper()]
    image = read_image(storage.join(folder, (dapi or names)[0]), 1)[0]
    return png_markdown(rgb_png(overlay(image, nuclei, cells)), f"site {site} outlines")


def _corrected_md(ws: str, plate: str, well: str) -> tuple[dict[str, object], list[str]]:
    folder = wsp.corrected_dir(ws, plate, well)
    entries = sorted(storage.list_files(folder), key=lambda e: e.key)
    md = {
        "folder": dg.MetadataValue.path(folder),
        "files": len(entries),
        "bytes": sum(e.size for e in entries),
    }
    return md, []


def _aligned_md(ws: str, plate: str, well: str) -> tuple[dict[str, object], list[str]]:
    path = wsp.alignment_table_path(ws, plate, well)
    t = checks.read_parquet(path).to_pydict()
    md = {
        "table": dg.MetadataValue.path(path),
        "sites": len(set(t["site"])),
        "cycles": len(set(t["cycle"])),
        "max_shift_px": round(max(t["shift_px"], default=0.0), 3),
        "min_correlation": round(min(t["correlation"], default=0.0), 4),
        "flagged_cycles": sum(s == "flagged" for s in t["status"]),
    }
    return md, [path]


def _segmentation_md(ws: str, plate: str, well: str) -> tuple[dict[str, object], list[str]]:
    path = wsp.segmentation_counts_path(ws, plate, well)
    t = checks.read_parquet(path).to_pydict()
    md: dict[str, object] = {
        "counts": dg.MetadataValue.path(path),
        "sites": len(t["site"]),
        "nuclei": sum(t["n_nuclei"]),
        "cells": sum(t["n_cells"]),
    }
    preview = _segmentation_preview(ws, plate, well)
    if preview is not None:
        md["preview"] = preview
    return md, [path, wsp.segmentation_objects_path(ws, plate, well)]


def _barcodes_md(ws: str, plate: str, well: str) -> tuple[dict[str, object], list[str]]:
    path = wsp.cell_barcodes_path(ws, plate, well)
    status = checks.read_parquet(path).column("status").to_pylist()
    md = {
        "cells": dg.MetadataValue.path(path),
        "sbs_cells": len(status),
        "assigned": sum(s == "assigned" for s in status),
    }
    return md, [path]


def _features_md(ws: str, plate: str, well: str) -> tuple[dict[str, object], list[str]]:
    path = wsp.cell_features_path(ws, plate, well)
    t = checks.read_parquet(path)
    genes = t.column("gene_symbol").to_pylist() if "gene_symbol" in t.column_names else []
    md = {
        "table": dg.MetadataValue.path(path),
        "cells": t.num_rows,
        "cells_with_gene": sum(g is not None and g != "" for g in genes),
        "columns": t.num_columns,
    }
    return md, [path]


def _geometry_md(ws: str, plate: str, well: str) -> tuple[dict[str, object], list[str]]:
    path = wsp.geometry_report_path(ws, plate, well)
    report = checks.read_json(path)
    md: dict[str, object] = {"report": dg.MetadataValue.path(path)}
    for g in report["groups"]:
        rms = g.get("residual_rms_px")
        md[f"{g['label']} sites"] = g["sites"]
        md[f"{g['label']} pairs used"] = f"{g['pairs_used']}/{g['pairs']}"
        md[f"{g['label']} residual_rms_px"] = round(rms, 3) if rms is not None else "n/a"
        md[f"{g['label']} kept recorded"] = len(g["kept_recorded"])
        axes = g.get("stage_axes", "as_recorded")
        if axes != "as_recorded" or g.get("stage_axes_scores"):
            md[f"{g['label']} stage axes"] = f"{axes} ({g.get('stage_axes_decided', '')})"
    return md, [path]


def _mosaic_md(ws: str, plate: str, well: str) -> tuple[dict[str, object], list[str]]:
    md: dict[str, object] = {}
    files = []
    for arm in ("cp", "sbs"):
        png = wsp.mosaic_thumbnail_path(ws, plate, well, arm)
        if storage.exists(png):
            files.append(png)
            md[f"{arm} mosaic"] = dg.MetadataValue.path(wsp.mosaic_path(ws, plate, well, arm))
            if "preview" not in md:
                md["preview"] = png_markdown(storage.read_bytes(png), f"{arm} mosaic")
    return md, files


def _merge_md(ws: str, plate: str, well: str) -> tuple[dict[str, object], list[str]]:
    path = wsp.merge_report_path(ws, plate, well)
    report = checks.read_json(path)
    match, transform = report["match"], report.get("transform") or {}
    md: dict[str, object] = {
        "report": dg.MetadataValue.path(path),
        "cells": dg.MetadataValue.path(wsp.merge_cells_path(ws, plate, well)),
        "status": report["status"],
        "cp_cells": report["cp"]["cells"],
        "cp_duplicates_dropped": report["cp"]["duplicates_dropped"],
        "matched": match["matched"],
        "match_rate": match["match_rate"] if match["match_rate"] is not None else "n/a",
        "with_barcode": match["with_barcode"],
        "transform": dg.MetadataValue.json(transform) if transform else "none",
    }
    qc_png = wsp.merge_qc_path(ws, plate, well)
    if storage.exists(qc_png):
        md["preview"] = png_markdown(storage.read_bytes(qc_png), "merge QC")
    return md, [path, wsp.merge_cells_path(ws, plate, well)]


Describe = Callable[[str, str, str], tuple[dict[str, object], list[str]]]

#: Step name -> the product's Dagster metadata and the files its data version is read
#: from (none: the version comes from the listing of the step's output folder).
DESCRIBE: dict[str, Describe] = {
    "corrected_cp": _corrected_md,
    "aligned_sbs": _aligned_md,
    "segmentation": _segmentation_md,
    "barcode_calls": _barcodes_md,
    "geometry": _geometry_md,
    "mosaic": _mosaic_md,
    "merge": _merge_md,
    "cell_features": _features_md,
}


def _metadata(
    ws: str, plate: str, well: str, step: str
) -> tuple[dict[str, object], dg.DataVersion]:
    """Metadata of one product and its data version (from its content)."""
    md, files = DESCRIBE[step](ws, plate, well)
    if files:
        return md, file_digest(files)
    (folder,) = registry.step(step).outputs(ws, plate, well)
    return md, digest(f"{e.key}:{e.size}" for e in storage.list_files(folder))


ABSENT = dg.DataVersion("absent")


def _absent(key: dg.AssetKey, plate: str, well: str, arms: set[str]) -> dg.MaterializeResult:
    """A materialisation saying this plate x well has no such product, and why."""
    if not arms:
        reason = f"plate {plate} has no well {well} in the index"
    else:
        reason = f"well {well} of plate {plate} has only the {'/'.join(sorted(arms))} arm(s)"
    return dg.MaterializeResult(
        asset_key=key, metadata={"absent": reason, "files": 0}, data_version=ABSENT
    )


def _checks(
    ws: str, plate: str, well: str, step: str, project: StarryNightProject
) -> list[dg.AssetCheckResult]:
    """The QC checks of a step's product (see :data:`CHECKS`)."""
    check = CHECKS.get(step)
    if check is None:
        return []
    found = check(ws, plate, well, project.qc)
    return found if isinstance(found, list) else [found]


def _selected(
    context: dg.AssetExecutionContext, results: list[dg.AssetCheckResult]
) -> Iterator[dg.AssetCheckResult]:
    """The check results among ``results`` that the run selected."""
    for check in results:
        if dg.AssetCheckKey(check.asset_key, check.check_name) in context.selected_asset_check_keys:
            yield check


CheckFn = Callable[[str, str, str, Any], "dg.AssetCheckResult | list[dg.AssetCheckResult]"]

#: Step name -> its asset checks, from the step's own outputs and the project's QC limits.
CHECKS: dict[str, CheckFn] = {
    "aligned_sbs": lambda ws, p, w, qc: checks.alignment_check(
        ws, p, w, qc.max_flagged_site_share
    ),
    "segmentation": lambda ws, p, w, qc: checks.segmentation_check(
        ws, p, w, qc.min_cells_per_site, qc.max_cells_per_site,
        qc.max_flagged_segmentation_share,
    ),
    "barcode_calls": lambda ws, p, w, qc: checks.barcode_check(ws, p, w, qc.min_assignment_rate),
    "geometry": lambda ws, p, w, qc: checks.geometry_check(ws, p, w, qc.max_unplaced_site_share),
    "merge": lambda ws, p, w, qc: checks.merge_checks(
        ws, p, w, qc.warn_match_rate, qc.min_match_rate
    ),
}  # fmt: skip


def make_well_products(names: Sequence[str] | None = None) -> dg.AssetsDefinition:
    """The plate x well multi-asset over the registry's plate x well steps.

    Parameters
    ----------
    names : sequence of str, optional
        The steps it holds (default: every plate x well row of the registry, read now,
        so a step added to the registry is an asset without further code).

    Raises
    ------
    ValueError
        When a step has no :data:`DESCRIBE` entry (its Dagster metadata).
    """
    names = list(registry.names_at("well") if names is None else names)
    undescribed = [n for n in names if n not in DESCRIBE]
    if undescribed:
        raise ValueError(f"plate x well step(s) {undescribed} lack a DESCRIBE entry")
    keys = {name: dg.AssetKey(name) for name in names}

    @dg.multi_asset(
        name="well_products",
        specs=[step_spec(name, skippable=True) for name in names],
        check_specs=[spec for name in names if name in CHECKS for spec in checks.SPECS[keys[name]]],
        partitions_def=plate_well_partitions,
        can_subset=True,
    )
    def well_products(
        context: dg.AssetExecutionContext, project: StarryNightProject, backend: PipecraftBackend
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        """Run the selected per-well steps of one plate x well as one pipeline."""
        _, ws = project.require()
        plate, well = split_key(context.partition_key)
        arms = _arms(ws, plate, well)
        selected = set(context.selected_asset_keys)
        steps = [
            s for s in names if keys[s] in selected and registry.applicable(registry.step(s), arms)
        ]
        outcome = None
        if steps:
            pipeline = well_pipeline(ws, plate, well, backend.runner(run_env(context)), steps)
            outcome = run_pipeline(context, backend, pipeline, ws)
        # In registry order: Dagster wants a multi-asset's results in topological order.
        for step in names:
            if keys[step] not in selected:
                continue
            if step not in steps:
                # A product this plate x well cannot have (no such well on this plate, or
                # an arm it lacks) is recorded as absent rather than left missing: wells
                # are one dimension shared by all plates, and a plate's gene summary waits
                # for every well key of its plate.
                absent = _absent(keys[step], plate, well, arms)
                yield absent
                yield from _selected(
                    context, checks.not_applicable(keys[step], str(absent.metadata["absent"]))
                )
                continue
            nodes = nodes_of(step, outcome.states)
            if not outcome.ok(nodes):
                continue
            md, version = _metadata(ws, plate, well, step)
            yield dg.MaterializeResult(
                asset_key=keys[step],
                metadata={**md, **node_metadata(outcome, nodes)},
                data_version=version,
            )
            yield from _selected(context, _checks(ws, plate, well, step, project))
        if outcome is not None:
            fail_if_any(outcome, f"plate {plate} well {well}")

    return well_products
