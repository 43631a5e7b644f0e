"""Per-plate illumination functions: ``illum_cp`` and ``illum_sbs`` (cycles inside)."""

from collections.abc import Iterator

import dagster as dg

from dagster_defs import checks
from dagster_defs.assets.catalog import plate_index
from dagster_defs.assets.common import (
    fail_if_any,
    file_digest,
    node_metadata,
    png_markdown,
    run_env,
    step_spec,
)
from dagster_defs.execution import run_pipeline
from dagster_defs.partitions import plate_partitions
from dagster_defs.resources import PipecraftBackend, StarryNightProject
from starrynight import storage
from starrynight import workspace as wsp
from starrynight.pipelines import ILLUM_STEPS, illum_pipeline, nodes_of

ILLUM_CP = checks.ILLUM_CP
ILLUM_SBS = checks.ILLUM_SBS


def _stats_metadata(ws: str, plate: str, cycles: list[int | None]) -> dict[str, object]:
    md: dict[str, object] = {"folder": dg.MetadataValue.path(wsp.illum_dir(ws, plate))}
    preview = None
    for cycle in cycles:
        stats = checks.read_json(wsp.illum_stats_path(ws, plate, cycle))
        prefix = "" if cycle is None else f"cycle {cycle} "
        for ch in stats["channels"]:
            md[f"{prefix}{ch['channel']} max/min"] = round(ch["max"] / ch["min"], 4)
            if preview is None:
                from starrynight.index import normalise_channel

                png = wsp.illum_png_path(ws, plate, normalise_channel(ch["channel"]), cycle)
                if storage.exists(png):
                    preview = png_markdown(storage.read_bytes(png), f"{prefix}{ch['channel']}")
                    md["preview_channel"] = f"{prefix}{ch['channel']}"
        md[f"{prefix}images"] = stats.get("n_images", 0)
    if preview is not None:
        md["preview"] = preview
    return md


@dg.multi_asset(
    specs=[step_spec(name, skippable=True) for name in ILLUM_STEPS],
    check_specs=[*checks.SPECS[ILLUM_CP], *checks.SPECS[ILLUM_SBS]],
    partitions_def=plate_partitions,
    can_subset=True,
)
def illumination(
    context: dg.AssetExecutionContext, project: StarryNightProject, backend: PipecraftBackend
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Compute the plate's CP function and its SBS functions (one node per cycle)."""
    _, ws = project.require()
    plate = context.partition_key
    rows = plate_index(ws, plate)
    arms = rows.column("arm").to_pylist()
    cycles = sorted(
        {c for c, a in zip(rows.column("cycle").to_pylist(), arms, strict=True) if a == "sbs"}
    )
    steps = []
    if ILLUM_CP in context.selected_asset_keys and "cp" in arms:
        steps.append("illum_cp")
    if ILLUM_SBS in context.selected_asset_keys and cycles:
        steps.append("illum_sbs")
    if not steps:
        context.log.info(f"plate {plate}: no images of the selected arms in the index; skipped")
        return
    pipeline = illum_pipeline(
        ws,
        plate,
        cycles,
        backend.runner(run_env(context)),
        steps,
        # separate machines per cycle pay off on Batch; locally a CLI start-up per cycle
        # costs more than it saves
        fan_out_cycles=backend.kind == "aws_batch",
    )
    outcome = run_pipeline(context, backend, pipeline, ws)
    for step, key, groups in (
        ("illum_cp", ILLUM_CP, [None]),
        ("illum_sbs", ILLUM_SBS, cycles),
    ):
        nodes = nodes_of(step, outcome.states)
        if step not in steps or not outcome.ok(nodes):
            continue
        stats = [wsp.illum_stats_path(ws, plate, c) for c in groups]
        yield dg.MaterializeResult(
            asset_key=key,
            metadata={**_stats_metadata(ws, plate, groups), **node_metadata(outcome, nodes)},
            data_version=file_digest(stats),
        )
        if dg.AssetCheckKey(key, checks.ILLUM_CHECK) in context.selected_asset_check_keys:
            yield checks.illum_function_check(ws, plate, key, groups)
    fail_if_any(outcome, f"illumination of plate {plate}")
