"""What every backend offers: ``run(pipeline) -> RunHandle``.

A :class:`RunHandle` reports the run's overall status, each node's state, each node's
log, and the failed nodes with their reasons, and can wait for or cancel the run. The
same pipeline gives the same node states on every backend.
"""

from __future__ import annotations

import enum
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pipecraft.pipeline import DAG, Pipeline


class RunStatus(enum.StrEnum):
    """Overall state of a run."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        """Whether the run has finished (successfully or not)."""
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class NodeState(enum.StrEnum):
    """State of one node in a run."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    #: outputs were already complete from an earlier run; nothing was done
    SKIPPED = "skipped"
    FAILED = "failed"
    #: not run because a node it depends on failed
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        """Whether the node will not change state any more."""
        return self not in (NodeState.PENDING, NodeState.RUNNING)

    @property
    def ok(self) -> bool:
        """Whether the node's outputs are complete."""
        return self in (NodeState.SUCCEEDED, NodeState.SKIPPED)


def overall_status(states: dict[str, NodeState], cancelled: bool) -> RunStatus:
    """Derive a run status from node states (used by every backend)."""
    values = set(states.values())
    if any(not s.done for s in values):
        if cancelled:
            return RunStatus.CANCELLED
        running = NodeState.RUNNING in values or any(s.done for s in values)
        return RunStatus.RUNNING if running else RunStatus.PENDING
    if cancelled and NodeState.CANCELLED in values:
        return RunStatus.CANCELLED
    if values & {NodeState.FAILED, NodeState.UPSTREAM_FAILED, NodeState.CANCELLED}:
        return RunStatus.FAILED
    return RunStatus.SUCCEEDED


class RunHandle(ABC):
    """A started run. Thread-safe to query while it runs."""

    dag: DAG

    @abstractmethod
    def node_states(self) -> dict[str, NodeState]:
        """State of every node, in topological order."""

    @abstractmethod
    def status(self) -> RunStatus:
        """Overall status of the run."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> RunStatus:
        """Block until the run finishes (or ``timeout`` seconds pass); return the status."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop the run: nothing new starts, running work is stopped where possible."""

    @abstractmethod
    def logs(self, node: str) -> str:
        """Log text of ``node`` (empty if it has not run)."""

    @abstractmethod
    def failures(self) -> dict[str, str]:
        """Failed nodes (state FAILED) and the reason each failed."""

    def job_ids(self) -> dict[str, str]:
        """Scheduler job id of each node submitted to one (AWS Batch, Slurm); else empty."""
        return {}

    def log_lines(self, node: str) -> list[str]:
        """Log of ``node`` as a list of lines."""
        return self.logs(node).splitlines()

    def _check_node(self, node: str) -> None:
        if node not in self.dag.nodes:
            raise KeyError(f"no node named {node!r} in pipeline {self.dag.name!r}")


class Backend(Protocol):
    """Anything that can run a pipeline."""

    def run(self, pipeline: Pipeline | DAG) -> RunHandle:
        """Validate, start the pipeline and return its handle without waiting."""
        ...


def read_log(path: Path) -> str:
    """Text of the log file at ``path``; empty when nothing has written it yet."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def last_log_line(path: Path, skip: tuple[str, ...] = ()) -> str:
    """``": <last line>"`` of a node's own output in the log at ``path``, or ``""``.

    Lines pipecraft itself wrote (``=== pipecraft``) and lines containing any of ``skip``
    (a scheduler's own messages) are passed over: a failure reason should say what the
    node printed last.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [
        ln
        for ln in tail.splitlines()
        if ln.strip() and not ln.startswith("=== pipecraft") and not any(s in ln for s in skip)
    ]
    return f": {lines[-1].strip()[:300]}" if lines else ""


def poll_until(check: Callable[[], bool], timeout: float | None, first: float, most: float) -> bool:
    """Call ``check()`` with growing sleeps until it returns True or ``timeout`` passes."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = first
    while not check():
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
        else:
            time.sleep(delay)
        delay = min(delay * 2, most)
    return True
