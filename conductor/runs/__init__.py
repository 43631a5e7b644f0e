"""Launching and observing Dagster runs of a project.

Each project has its own Dagster instance (``<data>/dagster/<project-id>``). A Conductor
run is a plan of Dagster runs (see :mod:`conductor.graph`) executed in order by one
launcher subprocess, so the service stays responsive. Status, progress and logs are read
from the instance's run storage and event log, never from the launcher's output.

One concern per module, re-exported here for callers outside the package:

- :mod:`~conductor.runs.instances`: where each project's Dagster instance lives, opening it
- :mod:`~conductor.runs.process`: the launcher subprocess (start, alive, cancel)
- :mod:`~conductor.runs.observe`: a run's status and per-step progress
- :mod:`~conductor.runs.logs`: a run's Dagster events as server-sent events
- :mod:`~conductor.runs.snapshot`: Dagster's partition facts, cached per instance
- :mod:`~conductor.runs.staleness`: partition statuses from storage ids
- :mod:`~conductor.runs.partitions`: the statuses a plate map shows
- :mod:`~conductor.runs.service`: runs as the API and the pages use them (database + Dagster)

Modules of the package import each other by their full names, never this facade.
"""

from conductor.runs.instances import (
    dagster_home,
    experiment_request_path,
    instance,
    instance_dir,
    instance_exists,
    project_env,
    run_dir,
)
from conductor.runs.logs import stream_logs
from conductor.runs.observe import FINISHED, TERMINAL, dagster_run_records, observe, step_seconds
from conductor.runs.partitions import NOT_APPLICABLE, mark_not_applicable, partition_statuses
from conductor.runs.process import cancel, launch, launcher_alive
from conductor.runs.staleness import UpstreamIndex, agrees, partition_keys, statuses_from_ids

__all__ = [
    "FINISHED",
    "NOT_APPLICABLE",
    "TERMINAL",
    "UpstreamIndex",
    "agrees",
    "cancel",
    "dagster_home",
    "dagster_run_records",
    "experiment_request_path",
    "instance",
    "instance_dir",
    "instance_exists",
    "launch",
    "launcher_alive",
    "mark_not_applicable",
    "observe",
    "partition_keys",
    "partition_statuses",
    "project_env",
    "run_dir",
    "statuses_from_ids",
    "step_seconds",
    "stream_logs",
]
