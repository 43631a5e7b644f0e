"""Drive the asset graph to completion in this process, as the daemon would.

:func:`drive` alternates the two things the Dagster daemon does on its own: a tick of
:func:`~dagster_defs.sensors.new_plate_sensor` (new partitions, plate runs) and an
evaluation of the assets' automation conditions (the per-well runs and summaries that
follow). Each requested run is executed for real against the given instance, so the
Dagster UI afterwards shows the same runs, materialisations, checks and lineage as after
a daemon. ``make demo`` and the benchmark use it; ``python -m dagster_defs.driver``
runs it from the command line and prints the per-asset summary.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import click
import dagster as dg

from dagster_defs.definitions import build_defs
from dagster_defs.resources import ConfigError, load_settings
from dagster_defs.sensors import new_plate_sensor


@dataclass
class RunRecord:
    """One executed run."""

    run_id: str
    partition: str | None
    assets: list[str]
    success: bool
    seconds: float
    error: str = ""


@dataclass
class DriveResult:
    """Every run :func:`drive` executed."""

    runs: list[RunRecord] = field(default_factory=list)

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.runs if not r.success]


def execute(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    selection: list[dg.AssetKey],
    partition_key: str | None,
    tags: Mapping[str, str] | None = None,
) -> RunRecord:
    """Execute one run of ``selection`` for ``partition_key`` on ``instance``."""
    t0 = time.perf_counter()
    result = dg.materialize(
        list(defs.assets or ()),
        selection=selection,
        partition_key=partition_key,
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
        tags=dict(tags or {}),
        # The run's own event log keeps every line; the console only needs problems.
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    errors = [
        (e.step_failure_data.error.message if e.step_failure_data.error else "failed").strip()
        for e in result.get_step_failure_events()
    ]
    return RunRecord(
        result.run_id,
        partition_key,
        sorted(k.to_user_string() for k in selection),
        result.success,
        time.perf_counter() - t0,
        "; ".join(errors),
    )


@contextlib.contextmanager
def _partitions_read_once(instance: dg.DagsterInstance) -> Iterator[None]:
    """Within the block, each dynamic partitions list is read from storage once.

    ``evaluate_automation_conditions`` asks the instance for the ``plate`` and ``well``
    partitions a few hundred times per evaluation (to serialise its cursor), and each
    ask is a fresh SQLite connection: ~2 s of a ~2.4 s evaluation for one plate. The
    daemon's evaluator caches these reads per tick; this does the same here. Nothing
    adds partitions during an evaluation, so the cached lists stay exact.
    """
    read = instance.get_dynamic_partitions
    cache: dict[str, list[str]] = {}

    def get_dynamic_partitions(partitions_def_name: str) -> list[str]:
        if partitions_def_name not in cache:
            cache[partitions_def_name] = list(read(partitions_def_name))
        return list(cache[partitions_def_name])

    def has_dynamic_partition(partitions_def_name: str, partition_key: str) -> bool:
        return partition_key in get_dynamic_partitions(partitions_def_name)

    # Instance attributes shadow the methods for this block only.
    instance.get_dynamic_partitions = get_dynamic_partitions  # type: ignore[method-assign]
    instance.has_dynamic_partition = has_dynamic_partition  # type: ignore[method-assign]
    try:
        yield
    finally:
        del instance.get_dynamic_partitions
        del instance.has_dynamic_partition


def evaluate_automation(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: Any = None
) -> dg.EvaluateAutomationConditionsResult:
    """One evaluation of every asset's automation condition (as a daemon tick does)."""
    with _partitions_read_once(instance):
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)


def _automation_runs(
    result: dg.EvaluateAutomationConditionsResult, keys: list[dg.AssetKey]
) -> dict[str | None, list[dg.AssetKey]]:
    # Dagster launches one run per partition key for the assets requested at that key.
    by_partition: dict[str | None, list[dg.AssetKey]] = defaultdict(list)
    for key in keys:
        for pk in result.get_requested_partitions(key):
            by_partition[pk].append(key)
    return by_partition


def drive(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    max_rounds: int = 100,
    on_run: Callable[[RunRecord], None] | None = None,
    sensor_cursor: str | None = None,
    automation_cursor: Any = None,
) -> tuple[DriveResult, str | None, Any]:
    """Tick the sensor and the automation conditions until nothing more is requested.

    Parameters
    ----------
    defs : dagster.Definitions
        The code location's definitions.
    instance : dagster.DagsterInstance
        Instance recording runs, partitions and materialisations.
    max_rounds : int
        Upper bound on sensor + automation rounds.
    on_run : callable, optional
        Called with each finished run.
    sensor_cursor, automation_cursor : optional
        Cursors from a previous call, to continue where it stopped.

    Returns
    -------
    (DriveResult, sensor cursor, automation cursor)
    """
    out = DriveResult()
    keys = sorted(defs.resolve_asset_graph().get_all_asset_keys())
    if automation_cursor is None:
        automation_cursor = evaluate_automation(defs, instance).cursor
    for _ in range(max_rounds):
        ran = 0
        ctx = dg.build_sensor_context(
            instance=instance, cursor=sensor_cursor, definitions=defs, resources=defs.resources
        )
        tick = new_plate_sensor(ctx)
        if isinstance(tick, dg.SensorResult):
            sensor_cursor = tick.cursor
            for req in tick.dynamic_partitions_requests or []:
                instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
            for rr in tick.run_requests or []:
                rec = execute(defs, instance, list(rr.asset_selection), rr.partition_key, rr.tags)
                out.runs.append(rec)
                ran += 1
                if on_run:
                    on_run(rec)
        evaluation = evaluate_automation(defs, instance, automation_cursor)
        automation_cursor = evaluation.cursor
        for pk, selection in _automation_runs(evaluation, keys).items():
            rec = execute(defs, instance, selection, pk, {"starrynight/trigger": "automation"})
            out.runs.append(rec)
            ran += 1
            if on_run:
                on_run(rec)
        if ran == 0:
            break
    return out, sensor_cursor, automation_cursor


def summary(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[str]:
    """One line per asset: materialised partitions and latest check outcomes."""
    graph = defs.resolve_asset_graph()
    lines = []
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        if node.partitions_def is None:
            done = instance.get_latest_materialization_event(key) is not None
            status = "materialised" if done else "missing"
        else:
            parts = instance.get_materialized_partitions(key)
            total = len(node.partitions_def.get_partition_keys(dynamic_partitions_store=instance))
            status = f"{len(parts)}/{total} partitions"
        checks = []
        for ck in sorted(node.check_keys, key=lambda c: c.name):
            records = instance.event_log_storage.get_asset_check_execution_history(ck, limit=1000)
            passed = sum(
                1
                for r in records
                if r.event
                and r.event.dagster_event
                and r.event.dagster_event.event_specific_data.passed
            )
            checks.append(f"{ck.name} {passed}/{len(records)} passed")
        lines.append(
            f"{key.to_user_string():<15} {status}" + (f"  [{'; '.join(checks)}]" if checks else "")
        )
    return lines


@click.command()
@click.option("--dataset", "-d", help="Dataset root (default: STARRYNIGHT_DATASET_URI).")
@click.option("--workspace", "-w", help="Workspace (default: STARRYNIGHT_WORKSPACE_URI).")
@click.option(
    "--stable-seconds",
    type=float,
    default=0.0,
    show_default=True,
    help="How long a plate must be unchanged before it starts.",
)
@click.option(
    "--dagster-home",
    help="Instance folder (default: DAGSTER_HOME); SQLite storage unless its dagster.yaml "
    "says otherwise.",
)
def main(
    dataset: str | None, workspace: str | None, stable_seconds: float, dagster_home: str | None
) -> None:
    """Materialise every asset of the project through Dagster and print a summary."""
    if dagster_home:
        os.makedirs(dagster_home, exist_ok=True)
        os.environ["DAGSTER_HOME"] = os.path.abspath(dagster_home)
    if not os.environ.get("DAGSTER_HOME"):
        raise click.UsageError("set DAGSTER_HOME or pass --dagster-home")
    # A fresh embedded instance: no telemetry banner, no beta-API notices in the summary.
    instance_yaml = os.path.join(os.environ["DAGSTER_HOME"], "dagster.yaml")
    if not os.path.exists(instance_yaml):
        with open(instance_yaml, "w") as fh:
            fh.write("telemetry:\n  enabled: false\n")
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if dataset:
        settings["dataset_uri"] = dataset
    if workspace:
        settings["workspace_uri"] = workspace
    settings["stable_seconds"] = stable_seconds
    if not settings.get("dataset_uri") or not settings.get("workspace_uri"):
        raise click.UsageError("give --dataset and --workspace (or the STARRYNIGHT_* variables)")
    defs = build_defs(settings)
    t0 = time.perf_counter()

    def show(rec: RunRecord) -> None:
        state = "ok" if rec.success else f"FAILED: {rec.error}"
        click.echo(
            f"run {rec.run_id[:8]} {rec.partition or '-':<12} {','.join(rec.assets)} "
            f"{rec.seconds:.1f}s {state}"
        )

    with dg.DagsterInstance.get() as instance:
        result, _, _ = drive(defs, instance, on_run=show)
        click.echo(f"\n{len(result.runs)} run(s) in {time.perf_counter() - t0:.1f}s")
        for line in summary(defs, instance):
            click.echo(line)
    click.echo(f"\ndataset:   {settings['dataset_uri']}")
    click.echo(f"outputs:   {settings['workspace_uri']} (features/, segmentation/, illum/, ...)")
    click.echo(f"instance:  {os.environ['DAGSTER_HOME']} (browse it with `make ui`)")
    if result.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
