"""Run a pipeline on this machine with a pool of workers.

Each node's output goes to ``<workdir>/logs/<node>.log`` (a PyFunction that prints
nothing leaves no file). After a node succeeds and its declared outputs exist, its
completion marker ``<node>-<hash>`` is appended to ``<workdir>/state/completed.journal``
with one ``write`` on an ``O_APPEND`` descriptor, so it is either wholly there or absent;
the hash covers the node's command, inputs, outputs and environment, so a changed node
re-runs. A later run skips a node whose marker is present and outputs exist, unless a
node it depends on ran again in that run. Before a node with a marker re-runs, the marker
is revoked (a ``-`` line), so a node killed half-way is never mistaken for done. One
journal instead of a file per node keeps the overhead per node well under a millisecond
on slow file systems.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from pipecraft.backends.base import (
    NodeState,
    RunHandle,
    RunStatus,
    last_log_line,
    overall_status,
    read_log,
)
from pipecraft.errors import BackendConfigError
from pipecraft.node import Command, Node, PyFunction
from pipecraft.pipeline import DAG, Pipeline, _exists, as_dag
from pipecraft.retry import OOM_EXIT_CODES, describe_oom, memory_cap, next_memory

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=@+-]")


def safe_filename(name: str) -> str:
    """A file-name-safe, collision-free spelling of a node name."""
    safe = _UNSAFE.sub("_", name)
    if safe != name or len(safe) > 120:
        safe = f"{safe[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return safe


class _ThreadRouter(io.TextIOBase):
    """A stand-in for sys.stdout/sys.stderr that sends each thread's writes to its own
    log file, so in-process PyFunction nodes running in parallel get separate logs."""

    def __init__(self, fallback: TextIO) -> None:
        self.fallback = fallback
        self.local = threading.local()

    def _target(self) -> TextIO:
        return getattr(self.local, "target", None) or self.fallback

    def write(self, s: str) -> int:
        return self._target().write(s)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return False


_router_lock = threading.Lock()
_router_users = 0
_routers: tuple[_ThreadRouter, _ThreadRouter] | None = None


def _install_router() -> tuple[_ThreadRouter, _ThreadRouter]:
    global _router_users, _routers
    with _router_lock:
        if _router_users == 0 or _routers is None:
            _routers = (_ThreadRouter(sys.stdout), _ThreadRouter(sys.stderr))
            sys.stdout, sys.stderr = _routers
        _router_users += 1
        return _routers


def _uninstall_router() -> None:
    global _router_users, _routers
    with _router_lock:
        _router_users -= 1
        if _router_users == 0 and _routers is not None:
            out, err = _routers
            if sys.stdout is out:
                sys.stdout = out.fallback
            if sys.stderr is err:
                sys.stderr = err.fallback
            _routers = None


class Journal:
    """Append-only record of completed node markers (``+key`` / ``-key`` lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        lines: list[str] = []
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        lines = text.split("\n")
        # A line without its newline was cut short by a crash: it never counted.
        for line in lines[:-1]:
            if line.startswith("+"):
                self.done.add(line[1:])
            elif line.startswith("-"):
                self.done.discard(line[1:])
        if (text and not text.endswith("\n")) or len(lines) > 2 * len(self.done) + 10_000:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text("".join(f"+{k}\n" for k in sorted(self.done)))
            os.replace(tmp, path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def add(self, key: str) -> None:
        os.write(self._fd, f"+{key}\n".encode())
        self.done.add(key)

    def revoke(self, key: str) -> None:
        if key in self.done:
            os.write(self._fd, f"-{key}\n".encode())
            self.done.discard(key)

    def close(self) -> None:
        os.close(self._fd)


class _LazyLog(io.TextIOBase):
    """A log file created on the first write, so silent nodes cost no file creation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: TextIO | None = None

    def file(self) -> TextIO:
        if self._f is None:
            self._f = open(self.path, "w", buffering=1)  # noqa: SIM115 - closed in close()
        return self._f

    def write(self, s: str) -> int:
        return self.file().write(s) if s else 0

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        super().close()  # flushes first, so the file must still be open
        if self._f is not None:
            self._f.close()


class LocalBackend:
    """Run pipelines with a local worker pool.

    Parameters
    ----------
    workdir : str or Path
        Folder for node logs (``logs/``) and completion markers (``state/``); reuse it
        across runs so completed nodes are skipped.
    max_workers : int, optional
        Worker slots (default: all cores). A node uses ``min(cpus, max_workers)`` slots.
    env : mapping, optional
        Extra environment for every Command node.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        max_workers: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise BackendConfigError(
                f"LocalBackend max_workers={max_workers!r}: expected an integer >= 1"
            )
        self.workdir = Path(workdir)
        if self.workdir.exists() and not self.workdir.is_dir():
            raise BackendConfigError(f"LocalBackend workdir {str(workdir)!r} is not a folder")
        self.max_workers = max_workers or os.cpu_count() or 1
        self.env = dict(env or {})

    def run(self, pipeline: Pipeline | DAG) -> LocalRunHandle:
        """Validate and start the pipeline in the background; return its handle."""
        dag = as_dag(pipeline)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "state").mkdir(parents=True, exist_ok=True)
        handle = LocalRunHandle(dag, self)
        handle._start()
        return handle


class LocalRunHandle(RunHandle):
    """Handle of a run of :class:`LocalBackend`."""

    def __init__(self, dag: DAG, backend: LocalBackend) -> None:
        self.dag = dag
        self.backend = backend
        self._states: dict[str, NodeState] = dict.fromkeys(dag.nodes, NodeState.PENDING)
        self._reasons: dict[str, str] = {}
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._journal_lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._thread = threading.Thread(target=self._schedule, name="pipecraft-local", daemon=True)
        self._safe = {n: safe_filename(n) for n in dag.nodes}

    # -- paths ---------------------------------------------------------------------

    def log_path(self, node: str) -> Path:
        """Path of the log file of ``node``."""
        return self.backend.workdir / "logs" / f"{self._safe[node]}.log"

    def marker(self, node: str) -> str:
        """Completion marker of ``node``: its name and a hash of what it does."""
        return f"{self._safe[node]}-{self.dag.nodes[node].fingerprint()[:16]}"

    # -- RunHandle -----------------------------------------------------------------

    def node_states(self) -> dict[str, NodeState]:
        with self._lock:
            return dict(self._states)

    def status(self) -> RunStatus:
        return overall_status(self.node_states(), self._cancel.is_set())

    def wait(self, timeout: float | None = None) -> RunStatus:
        self._thread.join(timeout)
        return self.status()

    def cancel(self) -> None:
        self._cancel.set()
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)

    def logs(self, node: str) -> str:
        self._check_node(node)
        return read_log(self.log_path(node))

    def failures(self) -> dict[str, str]:
        with self._lock:
            return {
                n: self._reasons.get(n, "failed")
                for n, s in self._states.items()
                if s is NodeState.FAILED
            }

    # -- scheduling ----------------------------------------------------------------

    def _start(self) -> None:
        self._thread.start()

    def _set(self, node: str, state: NodeState, reason: str | None = None) -> None:
        with self._lock:
            self._states[node] = state
            if reason is not None:
                self._reasons[node] = reason

    def _complete(self, node: Node) -> bool:
        if self.marker(node.name) not in self._journal.done:
            return False
        return all(_exists(o) for o in node.outputs)

    def _schedule(self) -> None:
        dag = self.dag
        capacity = self.backend.max_workers
        waiting = {n: len(d) for n, d in dag.deps.items()}
        # A node must re-run if something it depends on ran in this run.
        forced: set[str] = set()
        ready = deque(n for n, k in waiting.items() if k == 0)
        done_q: queue.SimpleQueue[tuple[str, NodeState, str | None]] = queue.SimpleQueue()
        running = 0
        free = capacity
        self._journal = Journal(self.backend.workdir / "state" / "completed.journal")
        has_py = any(isinstance(n, PyFunction) for n in dag)
        if has_py:
            _install_router()
        pool = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="pipecraft-node")

        def release(name: str, ran: bool) -> None:
            for m in dag.dependents[name]:
                if ran:
                    forced.add(m)
                waiting[m] -= 1
                if waiting[m] == 0:
                    ready.append(m)

        try:
            while True:
                while ready and not self._cancel.is_set():
                    name = ready[0]
                    node = dag.nodes[name]
                    need = min(node.resources.cpus, capacity)
                    if need > free:
                        break
                    ready.popleft()
                    if name not in forced and self._complete(node):
                        self._set(name, NodeState.SKIPPED)
                        release(name, ran=False)
                        continue
                    free -= need
                    running += 1
                    self._set(name, NodeState.RUNNING)
                    pool.submit(self._execute, node, done_q)
                if running == 0:
                    break
                name, state, reason = done_q.get()
                running -= 1
                free += min(dag.nodes[name].resources.cpus, capacity)
                self._set(name, state, reason)
                if state is NodeState.SUCCEEDED:
                    release(name, ran=True)
        finally:
            pool.shutdown(wait=True)
            self._journal.close()
            if has_py:
                _uninstall_router()
            self._finish_unrun()

    def _finish_unrun(self) -> None:
        with self._lock:
            bad = {
                n
                for n, s in self._states.items()
                if s in (NodeState.FAILED, NodeState.UPSTREAM_FAILED)
            }
            for n in self.dag.nodes:
                if self._states[n] is not NodeState.PENDING:
                    continue
                upstream_failed = any(d in bad for d in self.dag.deps[n])
                if upstream_failed:
                    self._states[n] = NodeState.UPSTREAM_FAILED
                    bad.add(n)
                else:
                    self._states[n] = NodeState.CANCELLED

    def _execute(self, node: Node, done_q: queue.SimpleQueue[Any]) -> None:
        try:
            state, reason = self._execute_node(node)
        except BaseException as exc:  # never lose a worker's result
            state, reason = NodeState.FAILED, f"pipecraft internal error: {exc!r}"
        done_q.put((node.name, state, reason))

    def _execute_node(self, node: Node) -> tuple[NodeState, str | None]:
        with self._journal_lock:
            self._journal.revoke(self.marker(node.name))
        attempts = node.retries + 1
        reason = "failed"
        memory = node.resources.memory_mb
        path = self.log_path(node.name)
        path.unlink(missing_ok=True)
        log: Any = open(path, "w", buffering=1) if isinstance(node, Command) else _LazyLog(path)  # noqa: SIM115
        with log:
            for attempt in range(1, attempts + 1):
                if self._cancel.is_set():
                    return NodeState.CANCELLED, None
                if attempts > 1:
                    log.write(f"=== pipecraft: attempt {attempt}/{attempts} with {memory} MB\n")
                oom = False
                if isinstance(node, Command):
                    ok, reason, oom = self._run_command(node, log, memory)
                elif isinstance(node, PyFunction):
                    ok, reason = self._run_function(node, log)
                else:
                    return NodeState.FAILED, f"node kind {node.kind!r} cannot run locally"
                if self._cancel.is_set() and not ok:
                    return NodeState.CANCELLED, None
                if ok:
                    missing = [o for o in node.outputs if not _exists(o)]
                    if missing:
                        reason = f"declared output {missing[0]!r} was not written"
                        log.write(f"=== pipecraft: {reason}\n")
                        continue
                    with self._journal_lock:
                        self._journal.add(self.marker(node.name))
                    return NodeState.SUCCEEDED, None
                log.write(f"=== pipecraft: {reason}\n")
                grown = next_memory(node.resources, attempt, memory, oom)
                if grown is None:
                    why = describe_oom(memory, memory_cap(node.resources))
                    reason = f"{reason}; {why}, not retried"
                    log.write(f"=== pipecraft: {why}: not retried\n")
                    break
                memory = grown
        return NodeState.FAILED, reason

    def _run_command(self, node: Command, log: TextIO, memory_mb: int) -> tuple[bool, str, bool]:
        """Run the command once; return (ok, reason, killed for memory)."""
        # No limit is imposed here (the machine's OOM killer or a container's is the
        # limit); the grant is passed on so a step can size its buffers and workers.
        env = {
            **os.environ,
            **self.backend.env,
            **node.env,
            "PIPECRAFT_MEMORY_MB": str(memory_mb),
        }
        log.flush()
        try:
            proc = subprocess.Popen(
                list(node.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return False, f"cannot start {node.argv[0]!r}: {exc.strerror or exc}", False
        with self._lock:
            self._procs[node.name] = proc
        try:
            code = proc.wait()
        finally:
            with self._lock:
                self._procs.pop(node.name, None)
        if code == 0:
            return True, "", False
        oom = code in OOM_EXIT_CODES and not self._cancel.is_set()
        what = f"exit code {code}" + (" (killed: out of memory?)" if oom else "")
        return False, what + last_log_line(self.log_path(node.name)), oom

    def _run_function(self, node: PyFunction, log: TextIO) -> tuple[bool, str]:
        out, err = _routers or (None, None)
        if out is not None and err is not None:
            out.local.target = log
            err.local.target = log
        try:
            node.call()
            return True, ""
        except BaseException as exc:
            traceback.print_exc(file=log)
            return False, f"{type(exc).__name__}: {exc}"
        finally:
            if out is not None and err is not None:
                out.local.target = None
                err.local.target = None
