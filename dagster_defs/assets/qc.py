"""Per-plate QC reports and their gates: ``qc_painting``, ``qc_barcoding``, ``qc_merge``.

Each asset writes one report of a plate (``starrynight qc report --report R``) and shows
it as metadata: the report's status and summary, every figure's finding and an inline
preview of the figure that most needs a look. ``qc_merge`` (after every well's merge:
match rates against the merge checks' thresholds, distances, residuals) gates nothing;
it follows the merge even where a well's blocking match-rate check failed, since that
well is what its reader must see.

Each carries a *blocking* asset check, ``painting_approved`` / ``barcoding_approved``,
partitioned by plate like its asset. It passes when the project has the gate off, or when
the plate's gate file (:mod:`starrynight.gates`) holds an approval newer than the asset's
latest materialisation: a report made again after an upstream step re-ran needs a new
approval. Otherwise it fails, with WARN severity, saying what it waits for.

Why a blocking check: ``follow_upstream`` requires every upstream blocking check to have
passed (``all_deps_blocking_checks_passed``), so the merge and the per-cell features of a
plate whose gate is closed are not requested by automation, and the Dagster UI shows
the failed check (and its "waiting for approval" metadata) on the report asset, with its
history per plate. WARN rather than ERROR: a closed gate is a decision pending, not a
failed run (an ERROR blocking check fails the step that evaluates it). Downstream assets
are plate x well, so they never share a run with the plate's report; in-run blocking is
not needed. When a decision changes, the new-plate sensor requests a check-only run of
that plate (:mod:`dagster_defs.sensors`).
"""

import json

import dagster as dg

from dagster_defs.assets.common import (
    digest,
    fail_if_any,
    node_metadata,
    png_markdown,
    run_env,
    step_deps,
)
from dagster_defs.automation import follow_upstream
from dagster_defs.execution import run_pipeline
from dagster_defs.partitions import plate_partitions
from dagster_defs.resources import PipecraftBackend, StarryNightProject
from starrynight import gates, registry, storage
from starrynight import workspace as wsp
from starrynight.errors import UserError
from starrynight.modules.qc import MERGE_REPORT
from starrynight.pipelines import plate_step_pipeline

#: Gate -> the asset holding its report.
GATE_ASSETS: dict[str, dg.AssetKey] = {g: dg.AssetKey(f"qc_{g}") for g in gates.GATES}


def check_name(gate: str) -> str:
    """The gate check's name (``painting_approved``)."""
    return f"{gate}_approved"


#: Gate -> its blocking check.
GATE_CHECKS: dict[str, dg.AssetCheckKey] = {
    g: dg.AssetCheckKey(key, check_name(g)) for g, key in GATE_ASSETS.items()
}


def report_metadata(ws: str, plate: str, gate: str) -> tuple[dict[str, object], dg.DataVersion]:
    """The report's metadata and a data version from its content (not its date)."""
    index_uri = wsp.qc_index_path(ws, plate, gate)
    doc = json.loads(storage.read_bytes(index_uri))
    figures = doc.get("figures") or []
    rows = ["| figure | finding |", "|---|---|"]
    for f in figures:
        mark = "**needs a look** " if f.get("attention") else ""
        rows.append(f"| {f.get('title', f['name'])} | {mark}{f.get('finding', '')} |")
    md: dict[str, object] = {
        "report": dg.MetadataValue.path(wsp.qc_report_dir(ws, plate, gate)),
        "status": doc.get("status", ""),
        "summary": doc.get("summary", ""),
        "figures": len(figures),
        "attention": ", ".join(doc.get("attention") or []) or "none",
        "missing_inputs": len(doc.get("missing") or []),
        "findings": dg.MetadataValue.md("\n".join(rows)),
    }
    folder = wsp.qc_report_dir(ws, plate, gate)
    first = next((f for f in figures if f.get("attention")), figures[0] if figures else None)
    if first is not None and storage.exists(storage.join(folder, first["png"])):
        png = storage.read_bytes(storage.join(folder, first["png"]))
        md["preview"] = png_markdown(png, first.get("title", first["name"]), width=512)
        md["preview_figure"] = first["name"]
    stable = {k: v for k, v in doc.items() if k != "generated_at"}
    parts: list[bytes | str] = [json.dumps(stable, sort_keys=True)]
    parts += [storage.read_bytes(storage.join(folder, f["parquet"])) for f in figures]
    return md, digest(parts)


def gate_result(
    instance: dg.DagsterInstance, project: StarryNightProject, plate: str, gate: str
) -> dg.AssetCheckResult:
    """The gate check's outcome for ``plate`` (see the module docstring)."""
    key = GATE_ASSETS[gate]
    name = check_name(gate)
    if gate not in project.qc.gates:
        return dg.AssetCheckResult(
            asset_key=key, check_name=name, passed=True,
            metadata={"gate": "gate off", "why": f"the project does not gate {gate} QC"},
        )  # fmt: skip
    _, ws = project.require()
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[plate]), limit=1
    ).records
    made_at = records[0].timestamp if records else None
    try:
        state = gates.read_gate(ws, plate, gate)
    except UserError as exc:
        state, problem = gates.GateState(plate, gate, None), str(exc)
    else:
        problem = ""
    md: dict[str, object] = {"gate": "on", "state": state.state}
    cur = state.current
    if cur is not None:
        md.update({"by": cur.by, "at": cur.at, "comment": cur.comment or "-"})
    if made_at is not None:
        md["report_made_at"] = dg.MetadataValue.timestamp(made_at)
    if gates.approval_covers(state, made_at):
        md["waiting_for"] = "nothing: approved"
        return dg.AssetCheckResult(asset_key=key, check_name=name, passed=True, metadata=md)
    if problem:
        why = f"a readable gate file ({problem})"
    elif made_at is None:
        why = f"the plate's {gate} QC report (not materialised yet)"
    elif cur is not None and cur.state == "approved":
        why = (
            f"a new approval: the report was made again after {cur.by}'s approval of "
            f"{cur.at} (an upstream step re-ran)"
        )
    elif cur is not None:
        why = f"an approval (closed by {cur.by} at {cur.at})"
    else:
        why = "a reviewer's approval of the report"
    md["waiting_for"] = f"{why}: starrynight qc approve --plate {plate} --gate {gate}, or Canvas"
    return dg.AssetCheckResult(
        asset_key=key, check_name=name, passed=False,
        severity=dg.AssetCheckSeverity.WARN, metadata=md,
    )  # fmt: skip


def _make_report_asset(report: str) -> dg.AssetsDefinition:
    step = registry.step(f"qc_{report}")
    gated = report in gates.GATES

    @dg.asset(
        key=step.name,
        deps=step_deps(step),
        partitions_def=plate_partitions,
        description=step.description,
        group_name=step.group,
        automation_condition=follow_upstream(held_by_blocking_checks=gated),
    )
    def report_asset(
        context: dg.AssetExecutionContext, project: StarryNightProject, backend: PipecraftBackend
    ) -> dg.MaterializeResult:
        _, ws = project.require()
        plate = context.partition_key
        # The merge report draws the thresholds the merge checks of this project use.
        options = [] if gated else [
            "--warn-match-rate", repr(project.qc.warn_match_rate),
            "--min-match-rate", repr(project.qc.min_match_rate),
        ]  # fmt: skip
        runner = backend.runner(run_env(context))
        pipeline = plate_step_pipeline(step.name, ws, plate, runner, options)
        outcome = run_pipeline(context, backend, pipeline, ws)
        fail_if_any(outcome, f"{report} QC report of plate {plate}")
        md, version = report_metadata(ws, plate, report)
        return dg.MaterializeResult(
            metadata={**md, **node_metadata(outcome, list(outcome.states))},
            data_version=version,
        )

    report_asset.__doc__ = f"Write the plate's {report} QC report."
    return report_asset


def _make_gate_check(gate: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=GATE_ASSETS[gate],
        name=check_name(gate),
        blocking=True,
        partitions_def=plate_partitions,
        description=f"A reviewer approved this report of the plate (or the project does not "
        f"gate {gate} QC); blocks what follows the gate for the plate.",
    )
    def gate_check(
        context: dg.AssetCheckExecutionContext, project: StarryNightProject
    ) -> dg.AssetCheckResult:
        return gate_result(context.instance, project, context.partition_key, gate)

    return gate_check


qc_painting = _make_report_asset("painting")
qc_barcoding = _make_report_asset("barcoding")
qc_merge = _make_report_asset(MERGE_REPORT)
painting_approved = _make_gate_check("painting")
barcoding_approved = _make_gate_check("barcoding")

QC_ASSETS = [qc_painting, qc_barcoding, qc_merge]
QC_CHECKS = [painting_approved, barcoding_approved]
