"""The screen's results: per-plate ``plate_profiles`` and the screen's ``screen_hits``.

``plate_profiles`` (plate partitions) follows every well's ``cell_features`` of its
plate; ``screen_hits`` (unpartitioned) follows every plate's profiles. A plate without
cells of the non-targeting control cannot be normalised: its profiles asset still
materialises, with ``status: no_controls`` and the reason as metadata, and the screen
leaves it out and lists it under ``excluded plates``. When no plate has controls the
screen materialises with ``status: no_usable_plates`` and no hits. So one bad plate never
stops the results of the others, and the reason is on the asset, not in a log.
"""

import dagster as dg

from dagster_defs import checks
from dagster_defs.assets.common import (
    fail_if_any,
    file_digest,
    node_metadata,
    png_markdown,
    run_env,
    step_deps,
)
from dagster_defs.automation import follow_upstream
from dagster_defs.execution import run_pipeline
from dagster_defs.partitions import plate_partitions
from dagster_defs.resources import PipecraftBackend, StarryNightProject
from starrynight import registry, storage
from starrynight import workspace as wsp
from starrynight.pipelines import plate_profiles_pipeline, screen_hits_pipeline

PROFILES = registry.step("plate_profiles")
HITS = registry.step("screen_hits")
#: Hits named in the metadata (the table has them all).
HITS_SHOWN = 20


@dg.asset(
    key=PROFILES.name,
    deps=step_deps(PROFILES),
    partitions_def=plate_partitions,
    description=PROFILES.description,
    group_name=PROFILES.group,
    automation_condition=follow_upstream(),
)
def plate_profiles(
    context: dg.AssetExecutionContext, project: StarryNightProject, backend: PipecraftBackend
) -> dg.MaterializeResult:
    """Filter the plate's cells and normalise them to its own non-targeting controls."""
    _, ws = project.require()
    plate = context.partition_key
    pipeline = plate_profiles_pipeline(
        ws, plate, backend.runner(run_env(context)), project.results.profiles_args()
    )
    outcome = run_pipeline(context, backend, pipeline, ws)
    fail_if_any(outcome, f"profiles of plate {plate}")
    report_uri = wsp.plate_profiles_report_path(ws, plate)
    rep = checks.read_json(report_uri)
    status = rep.get("status", "profiled")
    filters = rep["filters"]
    md: dict[str, object] = {
        "status": status,
        "report": dg.MetadataValue.path(report_uri),
        "control_label": rep["control_label"],
        "cells": filters["total"],
        "cells kept": rep["kept"],
        "control cells": rep["n_controls"],
        "features": rep["n_features"],
        **{f"filtered {k}": v for k, v in filters.items() if k != "total"},
    }
    if status == "profiled":
        md["cells table"] = dg.MetadataValue.path(wsp.plate_cell_profiles_path(ws, plate))
        md["guides table"] = dg.MetadataValue.path(wsp.plate_guide_profiles_path(ws, plate))
        md["features without spread"] = len(rep["unscalable_features"])
    else:
        md["message"] = rep.get("message", "")
        context.log.warning(f"plate {plate}: {rep.get('message', status)}")
    md.update(node_metadata(outcome, list(outcome.states)))
    return dg.MaterializeResult(metadata=md, data_version=file_digest([report_uri]))


@dg.asset(
    key=HITS.name,
    deps=step_deps(HITS),
    description=HITS.description,
    group_name=HITS.group,
    automation_condition=follow_upstream(),
)
def screen_hits(
    context: dg.AssetExecutionContext, project: StarryNightProject, backend: PipecraftBackend
) -> dg.MaterializeResult:
    """Aggregate every profiled plate to genes, score phenotypic activity, call hits."""
    _, ws = project.require()
    pipeline = screen_hits_pipeline(
        ws, backend.runner(run_env(context)), project.results.hits_args()
    )
    outcome = run_pipeline(context, backend, pipeline, ws)
    fail_if_any(outcome, "screen hits")
    report_uri = wsp.screen_results_path(ws, "screen.json")
    rep = checks.read_json(report_uri)
    status = rep.get("status", "scored")
    excluded = rep.get("excluded", {})
    plates = rep.get("plates", [])
    cells = 0
    for plate in plates:
        cells += int(checks.read_json(wsp.plate_profiles_report_path(ws, plate))["kept"])
    hits = rep.get("hits", [])
    md: dict[str, object] = {
        "status": status,
        "report": dg.MetadataValue.path(report_uri),
        "hits": rep["n_hits"],
        "genes": rep["n_genes"],
        "genes scored": rep["n_scored"],
        "cells": cells,
        "features": rep["n_features"],
        "plates": ", ".join(plates) or "none",
        "unit": rep["unit"],
        "hit genes": ", ".join(hits[:HITS_SHOWN]) + (", ..." if len(hits) > HITS_SHOWN else "")
        or "none",
        "excluded plates": dg.MetadataValue.json(excluded) if excluded else "none",
    }
    if status == "scored":
        md["table"] = dg.MetadataValue.path(wsp.screen_results_path(ws, "hits.parquet"))
        volcano = wsp.screen_results_path(ws, "volcano.png")
        if storage.exists(volcano):
            md["preview"] = png_markdown(storage.read_bytes(volcano), "volcano plot", width=400)
    else:
        md["message"] = rep.get("message", "")
        context.log.warning(f"screen: {rep.get('message', status)}")
    for plate, why in excluded.items():
        context.log.warning(f"plate {plate} left out of the screen: {why}")
    md.update(node_metadata(outcome, list(outcome.states)))
    return dg.MaterializeResult(metadata=md, data_version=file_digest([report_uri]))
