"""Helpers shared by the asset bodies: run environment, metadata, data versions."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterable

import dagster as dg
import numpy as np

from dagster_defs.automation import follow_upstream
from dagster_defs.execution import PipelineOutcome
from dagster_defs.partitions import plate_of_well
from starrynight import registry, storage


def run_env(context: dg.AssetExecutionContext) -> dict[str, str]:
    """Environment for the nodes of this Dagster run.

    The run id changes the nodes' fingerprints, so a new Dagster run always calls the
    CLI (which skips complete work itself) instead of trusting an old marker.
    """
    return {"STARRYNIGHT_DAGSTER_RUN": context.run.run_id}


def png_markdown(png: bytes, alt: str, width: int = 256) -> dg.MetadataValue:
    """Markdown metadata showing ``png`` inline in the Dagster UI."""
    b64 = base64.b64encode(png).decode()
    return dg.MetadataValue.md(
        f'<img src="data:image/png;base64,{b64}" alt="{alt}" width="{width}"/>\n'
    )


def rgb_png(rgb: np.ndarray, max_side: int = 256) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 image, downsampled to ``max_side``."""
    from PIL import Image

    img = Image.fromarray(rgb)
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def digest(parts: Iterable[bytes | str]) -> dg.DataVersion:
    """A data version from content (so an unchanged product keeps its version)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return dg.DataVersion(h.hexdigest()[:24])


def file_digest(uris: Iterable[str]) -> dg.DataVersion:
    """Data version from the bytes of small files (tables, stats)."""
    return digest(storage.read_bytes(u) for u in uris)


def node_metadata(outcome: PipelineOutcome, nodes: list[str]) -> dict[str, object]:
    """Per-node seconds and scheduler job ids (AWS Batch, Slurm) for an asset's metadata."""
    md: dict[str, object] = {}
    for n in nodes:
        if n in outcome.seconds:
            md[f"seconds {n}"] = outcome.seconds[n]
        if n in outcome.job_ids:
            md[f"job {n}"] = outcome.job_ids[n]
    return md


def fail_if_any(outcome: PipelineOutcome, what: str) -> None:
    """Raise a Dagster failure naming every failed node and its reason."""
    if outcome.failures or outcome.status.value != "succeeded":
        reasons = "; ".join(f"{n}: {r}" for n, r in outcome.failures.items())
        raise dg.Failure(
            description=f"{what}: {reasons or outcome.status.value}",
            metadata={"failed_nodes": ", ".join(outcome.failures) or "none"},
        )


def step_deps(step: registry.Step) -> list[dg.AssetDep]:
    """Dagster dependencies of a step: the registry's ``needs``, mapped across levels.

    Between a plate x well and a per-plate product (either way) the mapping is
    :data:`plate_of_well`; the project-level experiment is unpartitioned.
    """
    deps = []
    for need in step.needs:
        upstream = registry.step(need)
        if {step.level, upstream.level} == {"well", "plate"}:
            deps.append(dg.AssetDep(need, partition_mapping=plate_of_well))
        else:
            deps.append(dg.AssetDep(need))
    return deps


def step_spec(name: str, automated: bool = True, **extra: object) -> dg.AssetSpec:
    """The asset spec of a registry step: key, dependencies, description, group.

    Plate x well products also publish the arms they need as ``starrynight/arms``
    metadata, so Conductor can tell "not applicable" from "missing".
    """
    s = registry.step(name)
    metadata = {"starrynight/arms": ",".join(s.arms)} if s.level == "well" else {}
    kwargs: dict[str, object] = {"automation_condition": follow_upstream()} if automated else {}
    return dg.AssetSpec(
        dg.AssetKey(name),
        deps=step_deps(s),
        description=s.description,
        group_name=s.group,
        metadata=metadata or None,
        **kwargs,
        **extra,
    )
