"""Run a pipecraft pipeline from an asset body and relay it into the Dagster run.

The asset starts the pipeline on the configured backend and polls its handle: every
node's state change (with its AWS Batch job id when there is one) and, when a node
finishes, the tail of its log (local file, Snakemake log or CloudWatch stream) become
Dagster log lines of the run. For AWS Batch this is the "step launcher": the Dagster run
shows each Batch job's status, its log and the metadata the asset then reads from the
workspace. We relay pipecraft's handle rather than write a Dagster Pipes client because
the handle already submits the whole DAG with ``dependsOn`` and array jobs and reads
CloudWatch; Pipes would need the container to speak the Pipes protocol and would
duplicate that submission logic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import dagster as dg

from pipecraft import NodeState, Pipeline, RunStatus
from pipecraft.errors import PipecraftError


@dataclass
class PipelineOutcome:
    """What a pipeline run ended with."""

    status: RunStatus
    states: dict[str, NodeState]
    failures: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    job_ids: dict[str, str] = field(default_factory=dict)

    def ok(self, nodes: list[str]) -> bool:
        """Whether every node in ``nodes`` completed (ran or was already complete)."""
        return all(self.states[n].ok for n in nodes)


def _job_ids(handle: object) -> dict[str, str]:
    getter = getattr(handle, "_node_job_ids", None)
    if getter is None:
        return {}
    try:
        return {n: j for n, j in getter().items() if j}
    except Exception:  # a relay must never break the run it reports on
        return {}


def run_pipeline(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    backend: object,
    pipeline: Pipeline,
    workspace: str,
) -> PipelineOutcome:
    """Run ``pipeline`` on the ``backend`` resource and relay its progress into ``context``.

    Parameters
    ----------
    context : dagster context
        The asset's execution context (its log receives states and node logs).
    backend : PipecraftBackend
        The backend resource.
    pipeline : pipecraft.Pipeline
        What to run.
    workspace : str
        Workspace URI (picks the default local work folder).

    Returns
    -------
    PipelineOutcome
        Final status, node states, failure reasons, per-node seconds and Batch job ids.

    Raises
    ------
    dagster.Failure
        When the pipeline is malformed or the backend cannot run it.
    """
    log = context.log
    try:
        dag = pipeline.compile()
        handle = backend.build(workspace).run(dag)  # type: ignore[attr-defined]
    except PipecraftError as exc:
        raise dg.Failure(description=f"pipeline {pipeline.name}: {exc}") from None
    poll = float(getattr(backend, "poll_seconds", 1.0))
    tail = int(getattr(backend, "log_tail", 200))
    log.info(
        f"pipeline {dag.name}: {len(dag)} node(s) on {getattr(backend, 'kind', '?')}: "
        + ", ".join(dag.nodes)
    )
    seen: dict[str, NodeState] = {}
    started: dict[str, float] = {}
    seconds: dict[str, float] = {}
    job_ids: dict[str, str] = {}

    def relay() -> dict[str, NodeState]:
        states = handle.node_states()
        job_ids.update(_job_ids(handle))
        now = time.monotonic()
        for node, state in states.items():
            if seen.get(node) is state:
                continue
            seen[node] = state
            job = f" (job {job_ids[node]})" if node in job_ids else ""
            if state is NodeState.RUNNING:
                started.setdefault(node, now)
            if state is NodeState.PENDING and not job:
                # every local node starts pending; the pipeline line above says so once
                # (each Dagster log line is an event-log write, ~50 ms on SQLite). A
                # submitted Batch job is worth a line: it names the job id.
                seen.pop(node)
                continue
            if not state.done:
                log.info(f"{node}: {state.value}{job}")
                continue
            seconds[node] = round(now - started.get(node, now), 3)
            lines = handle.log_lines(node) if state not in (NodeState.SKIPPED,) else []
            text = "\n".join(lines[-tail:])
            msg = f"{node}: {state.value}{job}" + (f"\n{text}" if text else "")
            if state is NodeState.FAILED:
                log.error(msg + f"\nreason: {handle.failures().get(node, 'failed')}")
            elif state is NodeState.UPSTREAM_FAILED or state is NodeState.CANCELLED:
                log.warning(msg)
            else:
                log.info(msg)
        return states

    try:
        while True:
            status = handle.wait(timeout=poll)
            states = relay()
            if status.done:
                break
    except BaseException:
        # The Dagster run was stopped (or the relay broke): stop the backend's work too.
        handle.cancel()
        raise
    failures = handle.failures()
    return PipelineOutcome(handle.status(), states, failures, seconds, job_ids)
