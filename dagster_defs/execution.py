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
from typing import Any

import dagster as dg

from pipecraft import NodeState, Pipeline, RunHandle, RunStatus
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


def _job_ids(handle: RunHandle) -> dict[str, str]:
    try:
        return {n: j for n, j in handle.job_ids().items() if j}
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
    log.info(
        f"pipeline {dag.name}: {len(dag)} node(s) on {getattr(backend, 'kind', '?')}: "
        + ", ".join(dag.nodes)
    )
    relay = _Relay(handle, log, int(getattr(backend, "log_tail", 200)))
    try:
        while True:
            status = handle.wait(timeout=poll)
            states = relay.poll()
            if status.done:
                break
    except BaseException:
        # The Dagster run was stopped (or the relay broke): stop the backend's work too.
        handle.cancel()
        raise
    failures = handle.failures()
    return PipelineOutcome(handle.status(), states, failures, relay.seconds, relay.job_ids)


@dataclass
class _Relay:
    """Turns a run handle's node state changes into Dagster log lines."""

    handle: Any
    log: Any
    #: Lines of a finished node's log that are relayed.
    tail: int
    seen: dict[str, NodeState] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    job_ids: dict[str, str] = field(default_factory=dict)

    def poll(self) -> dict[str, NodeState]:
        """Log every node whose state changed since the last poll; return all states."""
        states = self.handle.node_states()
        self.job_ids.update(_job_ids(self.handle))
        now = time.monotonic()
        for node, state in states.items():
            if self.seen.get(node) is state:
                continue
            self.seen[node] = state
            job = f" (job {self.job_ids[node]})" if node in self.job_ids else ""
            if state is NodeState.RUNNING:
                self.started.setdefault(node, now)
            if state is NodeState.PENDING and not job:
                # every local node starts pending; the pipeline line above says so once
                # (each Dagster log line is an event-log write, ~50 ms on SQLite). A
                # submitted Batch job is worth a line: it names the job id.
                self.seen.pop(node)
                continue
            if not state.done:
                self.log.info(f"{node}: {state.value}{job}")
                continue
            self.seconds[node] = round(now - self.started.get(node, now), 3)
            self._finished(node, state, job)
        return states

    def _finished(self, node: str, state: NodeState, job: str) -> None:
        """Log a finished node with the tail of its log, at the level its state deserves."""
        lines = self.handle.log_lines(node) if state not in (NodeState.SKIPPED,) else []
        text = "\n".join(lines[-self.tail :])
        msg = f"{node}: {state.value}{job}" + (f"\n{text}" if text else "")
        if state is NodeState.FAILED:
            self.log.error(msg + f"\nreason: {self.handle.failures().get(node, 'failed')}")
        elif state is NodeState.UPSTREAM_FAILED or state is NodeState.CANCELLED:
            self.log.warning(msg)
        else:
            self.log.info(msg)
