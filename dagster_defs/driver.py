"""Drive the asset graph to completion in this process, as the daemon would.

:func:`drive` alternates the two things the Dagster daemon does on its own: a tick of
:func:`~dagster_defs.sensors.new_plate_sensor` (new partitions, plate runs) and an
evaluation of the assets' automation conditions (the per-well runs and summaries that
follow). Each requested run is executed for real against the given instance, so the
Dagster UI afterwards shows the same runs, materialisations, checks and lineage as after
a daemon. ``make demo`` and the benchmark use it; ``python -m dagster_defs.driver``
runs it from the command line and prints the per-asset summary.

A driver can be killed (SIGKILL, OOM, a closed laptop) in the middle of a run. Each run it
executes is tagged with the driver's process; the next driver marks the runs whose
process is gone as failed (what Dagster's run monitoring does for a dead run worker) and
continues from the cursors of the last round that finished, which the instance keeps,
so the killed round is evaluated again and its runs requested again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import click
import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus as CheckStatus,
)

from dagster_defs.definitions import build_defs
from dagster_defs.resources import ConfigError, load_settings
from dagster_defs.sensors import new_plate_sensor

#: Tag on every run a driver executes: ``<host>:<pid>:<process start token>``.
DRIVER_TAG = "starrynight/driver"
#: Keys of the driver's cursors in the instance's key-value store.
SENSOR_CURSOR_KEY = "starrynight/driver/sensor_cursor"
AUTOMATION_CURSOR_KEY = "starrynight/driver/automation_cursor"
#: Run states that mean "a process is working on it".
LIVE_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass
class RunRecord:
    """One executed run."""

    run_id: str
    partition: str | None
    assets: list[str]
    success: bool
    seconds: float
    error: str = ""
    checks: list[str] = field(default_factory=list)  # a check-only run's checks


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
    checks: list[dg.AssetCheckKey] | None = None,
) -> RunRecord:
    """Execute one run of ``selection`` (with their checks) for ``partition_key`` on
    ``instance``; with ``checks`` and an empty ``selection``, a run of only those checks."""
    t0 = time.perf_counter()
    tags = {**(tags or {}), DRIVER_TAG: driver_tag()}
    # The run's own event log keeps every line; the console only needs problems.
    run_config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    if checks and not selection:
        result = _execute_checks(defs, instance, checks, partition_key, tags, run_config)
    else:
        chosen: Any = selection
        if checks:
            chosen = dg.AssetSelection.assets(*selection).without_checks() | (
                dg.AssetSelection.checks(*checks)
            )
        result = dg.materialize(
            [*(defs.assets or ()), *(defs.asset_checks or ())],  # type: ignore[list-item]
            selection=chosen,
            partition_key=partition_key,
            instance=instance,
            resources=defs.resources,
            raise_on_error=False,
            tags=tags,
            run_config=run_config,
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
        sorted(f"{c.asset_key.to_user_string()}:{c.name}" for c in checks or ()),
    )


def _execute_checks(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    checks: list[dg.AssetCheckKey],
    partition_key: str | None,
    tags: Mapping[str, str],
    run_config: Mapping[str, Any],
) -> dg.ExecuteInProcessResult:
    """A run of only ``checks`` (no asset): what a sensor's check-only request launches.

    ``materialize`` takes its partitions from the selected assets, and a job of only
    checks has no partitions definition in Dagster 1.13; the partition goes in the run's
    ``dagster/partition`` tag, as the daemon launches such a run.
    """
    job = dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=[
            dg.define_asset_job("__starrynight_checks", selection=dg.AssetSelection.checks(*checks))
        ],
        resources=defs.resources,
    ).resolve_job_def("__starrynight_checks")
    if partition_key is not None:
        tags = {**tags, "dagster/partition": partition_key}
    return job.execute_in_process(
        run_config=run_config, instance=instance, raise_on_error=False, tags=tags
    )


def _process_token(pid: int) -> str | None:
    """What tells this process apart from a later one given the same pid (Linux).

    The boot id and the process's start time in clock ticks since boot; ``None`` where
    ``/proc`` does not say (then only the pid is compared).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces and parentheses.
    return f"{boot}/{stat.rpartition(')')[2].split()[19]}"


def driver_tag(pid: int | None = None) -> str:
    """The :data:`DRIVER_TAG` value naming this process (or ``pid``) on this host."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_token(pid) or ''}"


def driver_alive(tag: str) -> bool | None:
    """Whether the driver process a :data:`DRIVER_TAG` names still runs.

    ``None`` when this host cannot tell: the tag names another host (or is malformed).
    """
    host, _, rest = tag.partition(":")
    pid_text, _, token = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    return not token or _process_token(pid) == token


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Mark failed every driver run whose driver process is gone; return them.

    A driver killed in the middle of a run leaves it STARTED (or NOT_STARTED) forever,
    and automation conditions never request an asset whose run is in progress. This is
    Dagster's run monitoring for runs a driver executes in its own process: their run
    worker *is* the driver, so a dead driver means a dead run. Runs of a live driver,
    of another host, or not launched by a driver (daemon, UI) are left alone.
    """
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=LIVE_STATUSES)):
        tag = run.tags.get(DRIVER_TAG)
        if tag is None or driver_alive(tag) is not False:
            continue
        host, _, rest = tag.partition(":")
        instance.report_run_failed(
            run,
            message=f"the driver process running it (pid {rest.partition(':')[0]} on {host}) "
            "is gone: killed or crashed; marked failed by the next driver",
        )
        failed.append(run)
    return failed


def _load_cursors(instance: dg.DagsterInstance) -> tuple[str | None, Any]:
    """The sensor and automation cursors the last finished round of a driver stored."""
    values = instance.run_storage.get_cursor_values({SENSOR_CURSOR_KEY, AUTOMATION_CURSOR_KEY})
    automation = None
    if values.get(AUTOMATION_CURSOR_KEY):
        try:
            automation = dg.deserialize_value(values[AUTOMATION_CURSOR_KEY])
        except Exception:  # a cursor of another Dagster version: start afresh
            automation = None
    return values.get(SENSOR_CURSOR_KEY) or None, automation


def _store_cursors(instance: dg.DagsterInstance, sensor: str | None, automation: Any) -> None:
    values = {AUTOMATION_CURSOR_KEY: dg.serialize_value(automation)}
    if sensor is not None:
        values[SENSOR_CURSOR_KEY] = sensor
    instance.run_storage.set_cursor_values(values)


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
    # Dagster launches one run per partition key for the assets requested at that key;
    # the runs come in the order of their first asset in ``keys``.
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
    resume: bool = True,
) -> tuple[DriveResult, str | None, Any]:
    """Tick the sensor and the automation conditions until nothing more is requested.

    Each round is one sensor tick and one automation evaluation, then the runs they
    requested; the round's cursors are stored in the instance once its runs finished.
    A driver killed in a round leaves the previous round's cursors: the next one first
    marks the killed runs failed (:func:`fail_orphaned_runs`), then evaluates that
    round again, so what it requested is requested again.

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
        Cursors to start from (default: those the instance stored, when ``resume``).
    resume : bool
        Start from the instance's stored cursors when none are given, and store them
        after each round.

    Returns
    -------
    (DriveResult, sensor cursor, automation cursor)
    """
    out = DriveResult()
    # Upstream first: one evaluation may request a plate's illumination and, because
    # the same index change reaches them directly, its wells' products; a well's run
    # must not start before the plate run whose functions it reads.
    keys = list(defs.resolve_asset_graph().toposorted_asset_keys)
    fail_orphaned_runs(instance)
    if resume and sensor_cursor is None and automation_cursor is None:
        sensor_cursor, automation_cursor = _load_cursors(instance)
    if automation_cursor is None:
        # The first evaluation only records the current state (Dagster's conditions
        # look for changes against a previous one): what exists now is the baseline.
        automation_cursor = evaluate_automation(defs, instance).cursor
        if resume:
            _store_cursors(instance, sensor_cursor, automation_cursor)

    def run(
        selection: list[dg.AssetKey],
        pk: str | None,
        tags: Mapping[str, str],
        checks: list[dg.AssetCheckKey] | None = None,
    ) -> None:
        rec = execute(defs, instance, selection, pk, tags, checks)
        out.runs.append(rec)
        if on_run:
            on_run(rec)

    for _ in range(max_rounds):
        ran = 0
        ctx = dg.build_sensor_context(
            instance=instance, cursor=sensor_cursor, definitions=defs, resources=defs.resources
        )
        tick = new_plate_sensor(ctx)
        next_sensor_cursor = sensor_cursor
        if isinstance(tick, dg.SensorResult):
            next_sensor_cursor = tick.cursor
            for req in tick.dynamic_partitions_requests or []:
                instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
            for rr in tick.run_requests or []:
                checks = list(rr.asset_check_keys) if rr.asset_check_keys is not None else None
                run(list(rr.asset_selection or ()), rr.partition_key, rr.tags, checks)
                ran += 1
        evaluation = evaluate_automation(defs, instance, automation_cursor)
        for pk, selection in _automation_runs(evaluation, keys).items():
            run(selection, pk, {"starrynight/trigger": "automation"})
            ran += 1
        sensor_cursor, automation_cursor = next_sensor_cursor, evaluation.cursor
        if resume:
            _store_cursors(instance, sensor_cursor, automation_cursor)
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
            passed = sum(r.status is CheckStatus.SUCCEEDED for r in records)
            evaluated = sum(r.status is not CheckStatus.PLANNED for r in records)
            # PLANNED: its run ended (failed, killed) before the check was evaluated.
            text = f"{ck.name} {passed}/{evaluated} passed"
            if evaluated < len(records):
                text += f", {len(records) - evaluated} not evaluated"
            checks.append(text)
        lines.append(
            f"{key.to_user_string():<15} {status}" + (f"  [{'; '.join(checks)}]" if checks else "")
        )
    return lines


def results_line(instance: dg.DagsterInstance) -> str | None:
    """The screen's hits as its latest ``screen_hits`` materialisation recorded them."""
    event = instance.get_latest_materialization_event(dg.AssetKey("screen_hits"))
    if event is None or event.asset_materialization is None:
        return None
    md = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    if md.get("status") != "scored":
        return f"hits:      none ({md.get('message', md.get('status'))})"
    return (
        f"hits:      {md['hits']} of {md['genes']} genes ({md['cells']} cells, plates "
        f"{md['plates']}): {md['hit genes']}"
    )


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
            f"run {rec.run_id[:8]} {rec.partition or '-':<12} "
            f"{','.join(rec.assets or rec.checks)} "
            f"{rec.seconds:.1f}s {state}"
        )

    with dg.DagsterInstance.get() as instance:
        result, _, _ = drive(defs, instance, on_run=show)
        click.echo(f"\n{len(result.runs)} run(s) in {time.perf_counter() - t0:.1f}s")
        for line in summary(defs, instance):
            click.echo(line)
        hits = results_line(instance)
        if hits:
            click.echo(f"\n{hits}")
    click.echo(f"\ndataset:   {settings['dataset_uri']}")
    click.echo(f"outputs:   {settings['workspace_uri']} (features/, results/, illum/, ...)")
    click.echo(f"instance:  {os.environ['DAGSTER_HOME']} (browse it with `make ui`)")
    if result.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
