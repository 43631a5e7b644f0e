"""Pipecraft pipelines of StarryNight steps, one builder per step and partition.

Each builder returns a :class:`pipecraft.Pipeline` of ``Command`` nodes that run the
``starrynight`` CLI, so any pipecraft backend (local processes, Snakemake, AWS Batch
containers) runs exactly what a user would type. The Dagster assets call these builders;
nothing here imports Dagster.
"""

from starrynight.pipelines.steps import (
    CATALOG_STEPS,
    ILLUM_STEPS,
    WELL_STEPS,
    Runner,
    catalog_pipeline,
    experiment_pipeline,
    gene_summary_pipeline,
    illum_pipeline,
    node_name,
    nodes_of,
    plate_profiles_pipeline,
    plate_step_pipeline,
    screen_hits_pipeline,
    well_pipeline,
)

__all__ = [
    "CATALOG_STEPS",
    "ILLUM_STEPS",
    "WELL_STEPS",
    "Runner",
    "catalog_pipeline",
    "experiment_pipeline",
    "gene_summary_pipeline",
    "illum_pipeline",
    "node_name",
    "nodes_of",
    "plate_profiles_pipeline",
    "plate_step_pipeline",
    "screen_hits_pipeline",
    "well_pipeline",
]
