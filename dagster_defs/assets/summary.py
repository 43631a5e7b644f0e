"""Per-plate ``gene_summary``: cell counts and median features per gene."""

import dagster as dg

from dagster_defs import checks
from dagster_defs.assets.common import (
    fail_if_any,
    file_digest,
    node_metadata,
    run_env,
    step_deps,
)
from dagster_defs.automation import follow_upstream
from dagster_defs.execution import run_pipeline
from dagster_defs.partitions import plate_partitions
from dagster_defs.resources import PipecraftBackend, StarryNightProject
from starrynight import registry
from starrynight import workspace as wsp
from starrynight.pipelines import gene_summary_pipeline


@dg.asset(
    key="gene_summary",
    deps=step_deps(registry.step("gene_summary")),
    partitions_def=plate_partitions,
    description=registry.step("gene_summary").description,
    group_name=registry.step("gene_summary").group,
    automation_condition=follow_upstream(),
)
def gene_summary(
    context: dg.AssetExecutionContext, project: StarryNightProject, backend: PipecraftBackend
) -> dg.MaterializeResult:
    """Summarise the plate's analysed wells per gene."""
    _, ws = project.require()
    plate = context.partition_key
    pipeline = gene_summary_pipeline(ws, plate, backend.runner(run_env(context)))
    outcome = run_pipeline(context, backend, pipeline, ws)
    fail_if_any(outcome, f"gene summary of plate {plate}")
    path = wsp.gene_summary_path(ws, plate)
    t = checks.read_parquet(path)
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.path(path),
            "genes": t.num_rows,
            "cells": int(sum(t.column("n_cells").to_pylist()))
            if "n_cells" in t.column_names
            else 0,
            **node_metadata(outcome, list(outcome.states)),
        },
        data_version=file_digest([path]),
    )
