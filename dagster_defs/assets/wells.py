"""Per plate x well products: corrected CP images, aligned SBS cycles, segmentation,
barcode calls and per-cell features.

One subsettable multi-asset holds all five, so a well's run is one Dagster step whose
body hands one pipecraft pipeline (with the steps' real dependencies) to the backend:
on AWS Batch that is one submission of dependent jobs, locally one worker pool.
"""

from collections.abc import Iterator

import dagster as dg
import pyarrow.compute as pc

from dagster_defs import checks
from dagster_defs.assets.catalog import EXPERIMENT, plate_index
from dagster_defs.assets.common import (
    digest,
    fail_if_any,
    file_digest,
    node_metadata,
    png_markdown,
    rgb_png,
    run_env,
)
from dagster_defs.automation import follow_upstream
from dagster_defs.execution import run_pipeline
from dagster_defs.partitions import plate_of_well, plate_well_partitions, split_key
from dagster_defs.resources import PipecraftBackend, StarryNightProject
from starrynight import storage
from starrynight import workspace as wsp
from starrynight.pipelines import WELL_STEPS, well_pipeline

CORRECTED = dg.AssetKey("corrected_cp")
ALIGNED = checks.ALIGNED
SEGMENTATION = checks.SEGMENTATION
BARCODES = checks.BARCODES
FEATURES = dg.AssetKey("cell_features")
KEYS = {
    "corrected_cp": CORRECTED,
    "aligned_sbs": ALIGNED,
    "segmentation": SEGMENTATION,
    "barcode_calls": BARCODES,
    "cell_features": FEATURES,
}


def _plate_dep(key: str) -> dg.AssetDep:
    return dg.AssetDep(key, partition_mapping=plate_of_well)


#: Arms (cp, sbs) whose images each product needs; also published as the asset's
#: ``starrynight/arms`` metadata, so Conductor can tell "not applicable" from "missing".
NEEDS = {
    "corrected_cp": ("cp",),
    "aligned_sbs": ("sbs",),
    "segmentation": ("cp",),
    "barcode_calls": ("sbs",),
    "cell_features": ("cp", "sbs"),
}


def _spec(key: dg.AssetKey, deps: list, description: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        key,
        deps=deps,
        description=description,
        group_name="wells",
        automation_condition=follow_upstream(),
        skippable=True,
        metadata={"starrynight/arms": ",".join(NEEDS[key.to_user_string()])},
    )


SPECS = [
    _spec(
        CORRECTED,
        [_plate_dep("illum_cp"), _plate_dep("index")],
        "Illumination-corrected CP images, one TIFF per site and channel "
        "(images_corrected/painting/<plate>-<well>/).",
    ),
    _spec(
        ALIGNED,
        [_plate_dep("illum_sbs"), _plate_dep("index")],
        "SBS cycles corrected and aligned to cycle 1, with per-site QC "
        "(images_aligned/barcoding/, alignment/<plate>-<well>/).",
    ),
    _spec(
        SEGMENTATION,
        [CORRECTED, dg.AssetDep(EXPERIMENT)],
        "Nuclei and cell label masks and per-object tables (segmentation/<plate>-<well>/).",
    ),
    _spec(
        BARCODES,
        [ALIGNED, dg.AssetDep(EXPERIMENT)],
        "Spots, reads and the barcode of every SBS cell (barcodes/<plate>-<well>/).",
    ),
    _spec(
        FEATURES,
        [SEGMENTATION, BARCODES],
        "One row per CP cell: barcode, gene and features (features/<plate>-<well>/).",
    ),
]


def _arms(ws: str, plate: str, well: str) -> set[str]:
    rows = plate_index(ws, plate)
    rows = rows.filter(pc.equal(rows.column("well"), well))
    return set(rows.column("arm").to_pylist())


def _steps_for(arms: set[str], selected: set[dg.AssetKey]) -> list[str]:
    return [s for s in WELL_STEPS if KEYS[s] in selected and set(NEEDS[s]) <= arms]


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


def _metadata(
    ws: str, plate: str, well: str, step: str
) -> tuple[dict[str, object], dg.DataVersion]:
    """Metadata of one product and its data version (from its content)."""
    md, files = _describe(ws, plate, well, step)
    if files:
        return md, file_digest(files)
    folder = wsp.corrected_dir(ws, plate, well)
    return md, digest(f"{e.key}:{e.size}" for e in storage.list_files(folder))


def _describe(ws: str, plate: str, well: str, step: str) -> tuple[dict[str, object], list[str]]:
    if step == "corrected_cp":
        folder = wsp.corrected_dir(ws, plate, well)
        entries = sorted(storage.list_files(folder), key=lambda e: e.key)
        md = {
            "folder": dg.MetadataValue.path(folder),
            "files": len(entries),
            "bytes": sum(e.size for e in entries),
        }
        return md, []
    if step == "aligned_sbs":
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
    if step == "segmentation":
        path = wsp.segmentation_counts_path(ws, plate, well)
        t = checks.read_parquet(path).to_pydict()
        md = {
            "counts": dg.MetadataValue.path(path),
            "sites": len(t["site"]),
            "nuclei": sum(t["n_nuclei"]),
            "cells": sum(t["n_cells"]),
        }
        preview = _segmentation_preview(ws, plate, well)
        if preview is not None:
            md["preview"] = preview
        return md, [path, wsp.segmentation_objects_path(ws, plate, well)]
    if step == "barcode_calls":
        path = wsp.cell_barcodes_path(ws, plate, well)
        status = checks.read_parquet(path).column("status").to_pylist()
        md = {
            "cells": dg.MetadataValue.path(path),
            "sbs_cells": len(status),
            "assigned": sum(s == "assigned" for s in status),
        }
        return md, [path]
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


def _check(ws: str, plate: str, well: str, step: str, project: StarryNightProject):
    qc = project.qc
    if step == "aligned_sbs":
        return checks.alignment_check(ws, plate, well, qc.max_flagged_site_share)
    if step == "segmentation":
        return checks.segmentation_check(
            ws,
            plate,
            well,
            qc.min_cells_per_site,
            qc.max_cells_per_site,
            qc.max_flagged_segmentation_share,
        )
    if step == "barcode_calls":
        return checks.barcode_check(ws, plate, well, qc.min_assignment_rate)
    return None


@dg.multi_asset(
    specs=SPECS,
    check_specs=[*checks.SPECS[ALIGNED], *checks.SPECS[SEGMENTATION], *checks.SPECS[BARCODES]],
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
    steps = _steps_for(arms, selected)
    outcome = None
    if steps:
        pipeline = well_pipeline(ws, plate, well, backend.runner(run_env(context)), steps)
        outcome = run_pipeline(context, backend, pipeline, ws)
    # In WELL_STEPS order: Dagster wants a multi-asset's results in topological order.
    for step in WELL_STEPS:
        if KEYS[step] not in selected:
            continue
        if step not in steps:
            # A product this plate x well cannot have (no such well on this plate, or an
            # arm it lacks) is recorded as absent rather than left missing: wells are one
            # dimension shared by all plates, and a plate's gene summary waits for every
            # well key of its plate.
            yield _absent(KEYS[step], plate, well, arms)
            continue
        nodes = [n for n in outcome.states if n.startswith(f"{step}-")]
        if not outcome.ok(nodes):
            continue
        md, version = _metadata(ws, plate, well, step)
        yield dg.MaterializeResult(
            asset_key=KEYS[step],
            metadata={**md, **node_metadata(outcome, nodes)},
            data_version=version,
        )
        check = _check(ws, plate, well, step, project)
        if check is not None and (
            dg.AssetCheckKey(KEYS[step], check.check_name) in context.selected_asset_check_keys
        ):
            yield check
    if outcome is not None:
        fail_if_any(outcome, f"plate {plate} well {well}")
