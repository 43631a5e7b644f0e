"""Run a pipeline on a Slurm cluster: one ``sbatch`` job per node, edges as dependencies.

Every node that has to run is submitted at once, in topological order, with
``--dependency=afterok:<its upstream jobs>``, so the cluster orders the work and a run
survives the submitting process (the jobs keep running; their logs and flags stay in the
work folder). Each job runs a small script in ``<workdir>/jobs/`` that exports the node's
environment, runs its argv, appends to ``<workdir>/logs/<node>.log`` and, on success,
touches ``<workdir>/flags/<node>-<hash>.done``; a later run skips a node whose flag and
outputs exist unless a node it depends on runs again.

A node whose job from an earlier run is still queued or running (the submitting process
died, or Dagster retried the run) is followed, not submitted twice: the job id is kept in
``<workdir>/state/<node>.job``.

Retries keep the job's id, so its dependants keep waiting on it: a failed job with
attempts left is requeued held (``scontrol requeuehold``), given its new memory
(``memory_mb x attempt`` after ``OUT_OF_MEMORY``, the same otherwise; see
:mod:`pipecraft.retry`), released, and its dependants' dependency is set again (Slurm
marks it failed when the job failed). Slurm can accept a requeue (its restart count
grows) and still leave the job in its failed state, seen with a job whose previous attempt
had only just ended; a retry is therefore known started only once its job script has
logged the attempt, and is asked for again otherwise. A job that fails for good has its
pending dependants cancelled. Retries and state happen while the handle is polled (``wait``,
``node_states``); jobs already submitted run regardless.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipecraft.backends.base import (
    NodeState,
    RunHandle,
    RunStatus,
    last_log_line,
    overall_status,
    poll_until,
    read_log,
)
from pipecraft.backends.local import safe_filename
from pipecraft.errors import BackendConfigError
from pipecraft.node import Node, node_argv
from pipecraft.pipeline import DAG, Pipeline, _exists, as_dag
from pipecraft.retry import OOM_EXIT_CODES, describe_oom, memory_cap, next_memory

# Slurm job states (squeue %T) and what they mean for a node.
_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "RESIZING", "SIGNALING"}
_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "STOPPED"}
_FAILED = {"FAILED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
_OOM = "OUT_OF_MEMORY"
#: Seconds a requeued job may show its previous attempt's end before it is asked again.
_REQUEUE_GRACE_S = 20.0
_SBATCH_ID = re.compile(r"^(\d+)(;\S+)?$")


@dataclass
class _Job:
    """A submitted node: its Slurm job id and what its current attempt asked for."""

    node: str
    job_id: str
    memory_mb: int
    attempt: int = 1
    state: str = "PENDING"
    #: set once the node will not change any more
    final: NodeState | None = None
    reason: str = ""
    #: times the requeue of the current attempt was asked for again (see _requeue_lost)
    requeue_again: int = 0
    #: when the current attempt's requeue was last asked for (time.monotonic)
    requeued_at: float = 0.0


class SlurmBackend:
    """Run pipelines on Slurm with ``sbatch``.

    Parameters
    ----------
    workdir : str or Path
        Folder on a file system every compute node sees: job scripts, node logs and
        completion flags. Reuse it to skip completed nodes.
    partition, account, qos : str, optional
        Defaults for every job; a node's ``Resources.queue`` / ``account`` override the
        first two.
    sbatch_args : sequence of str
        Further ``sbatch`` options for every job (e.g. ``--constraint=avx2``).
    max_memory_mb : int, optional
        The cluster's cap on a retry's memory (the largest node), besides each node's.
    env : mapping, optional
        Extra environment for every job (``sbatch`` exports the submitter's environment).
    python : str
        Interpreter for PyFunction nodes, as the compute nodes see it.
    poll_first, poll_max : float
        First and longest pause, in seconds, between ``squeue`` polls.
    slurm_bin : str, optional
        Folder holding sbatch/squeue/scontrol/scancel (default: found on PATH).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        partition: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        sbatch_args: tuple[str, ...] | list[str] = (),
        max_memory_mb: int | None = None,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        poll_first: float = 0.5,
        poll_max: float = 10.0,
        slurm_bin: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        if self.workdir.exists() and not self.workdir.is_dir():
            raise BackendConfigError(f"SlurmBackend workdir {str(workdir)!r} is not a folder")
        if isinstance(sbatch_args, str) or not all(isinstance(a, str) for a in sbatch_args):
            raise BackendConfigError(
                f"SlurmBackend sbatch_args={sbatch_args!r}: expected a list of strings"
            )
        if max_memory_mb is not None and (not isinstance(max_memory_mb, int) or max_memory_mb < 1):
            raise BackendConfigError(
                f"SlurmBackend max_memory_mb={max_memory_mb!r}: expected an integer >= 1"
            )
        if not (0 < poll_first <= poll_max):
            raise BackendConfigError(
                f"SlurmBackend poll_first={poll_first!r}, poll_max={poll_max!r}: expected "
                "0 < poll_first <= poll_max"
            )
        for name, value in (("partition", partition), ("account", account), ("qos", qos)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise BackendConfigError(f"SlurmBackend {name}={value!r}: expected a name")
        self.partition = partition
        self.account = account
        self.qos = qos
        self.sbatch_args = list(sbatch_args)
        self.max_memory_mb = max_memory_mb
        self.env = dict(env or {})
        self.python = python
        self.poll_first = poll_first
        self.poll_max = poll_max
        self.slurm_bin = slurm_bin

    # -- commands ------------------------------------------------------------------

    def tool(self, name: str) -> str:
        """Path of a Slurm command (``sbatch``, ``squeue``...)."""
        if self.slurm_bin:
            return str(Path(self.slurm_bin) / name)
        return name

    def slurm(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command; raise BackendConfigError with its message if it fails."""
        try:
            proc = subprocess.run(
                [self.tool(name), *args], capture_output=True, text=True, check=False
            )
        except OSError as exc:
            raise BackendConfigError(
                f"SlurmBackend cannot run {name!r}: {exc.strerror or exc} (is Slurm installed "
                "and on PATH?)"
            ) from None
        if check and proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise BackendConfigError(
                f"{name} {' '.join(args[:3])}... failed (exit {proc.returncode}): "
                + (msg[-1] if msg else "no message")
            )
        return proc

    # -- paths ---------------------------------------------------------------------

    def flag_path(self, node: Node) -> Path:
        """Flag file the job touches when ``node`` succeeds."""
        return self.workdir / "flags" / f"{safe_filename(node.name)}-{node.fingerprint()[:16]}.done"

    def log_path(self, node: str) -> Path:
        """Log file of ``node`` (every attempt appends to it)."""
        return self.workdir / "logs" / f"{safe_filename(node)}.log"

    def script_path(self, node: str) -> Path:
        """Job script of ``node``."""
        return self.workdir / "jobs" / f"{safe_filename(node)}.sh"

    def rc_path(self, node: str) -> Path:
        """File where the job leaves its exit status (read once Slurm forgets the job)."""
        return self.workdir / "state" / f"{safe_filename(node)}.rc"

    def attempt_path(self, node: str) -> Path:
        """File holding the number of ``node``'s current attempt (absent: the first)."""
        return self.workdir / "state" / f"{safe_filename(node)}.attempt"

    def job_record(self, node: str) -> Path:
        """File naming the Slurm job of ``node``'s latest submission (and what it runs)."""
        return self.workdir / "state" / f"{safe_filename(node)}.job"

    # -- submission ----------------------------------------------------------------

    def _live_jobs(self, dag: DAG, names: list[str]) -> dict[str, _Job]:
        """Jobs of an earlier run of the same nodes that are still queued or running."""
        recorded: dict[str, str] = {}
        for n in names:
            try:
                job_id, fingerprint = self.job_record(n).read_text().split()
            except (OSError, ValueError):
                continue
            if fingerprint == dag.nodes[n].fingerprint():
                recorded[n] = job_id
        if not recorded:
            return {}
        proc = self.slurm(
            "squeue", "-h", "-j", ",".join(recorded.values()), "-o", "%i|%T|%m", check=False
        )
        seen = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                seen[parts[0]] = parts
        out = {}
        for n, job_id in recorded.items():
            if job_id in seen and seen[job_id][1] in _RUNNING | _PENDING:
                memory = _memory_mb(seen[job_id][2]) or dag.nodes[n].resources.memory_mb
                attempt = _read_int(self.attempt_path(n)) or 1
                out[n] = _Job(n, job_id, memory, attempt=attempt, state=seen[job_id][1])
        return out

    def job_script(self, node: Node) -> str:
        """Text of the batch script that runs ``node``."""
        argv = node_argv(node, self.python, with_env=False)
        env = {**self.env, **node.env}
        flag = self.flag_path(node)
        rc = self.rc_path(node.name)
        attempt = shlex.quote(str(self.attempt_path(node.name)))
        lines = [
            "#!/bin/bash",
            f"# pipecraft node {node.name!r}",
            # pipecraft's attempt number, not Slurm's restart count: that one can grow by
            # more than one per requeue
            f"attempt=$(cat {attempt} 2>/dev/null || echo 1)",
            'echo "=== pipecraft: attempt $attempt as slurm job '
            '$SLURM_JOB_ID on $(hostname) with ${SLURM_MEM_PER_NODE:-?} MB"',
            f"cd {shlex.quote(os.getcwd())} || exit 1",
            *(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())),
            'export PIPECRAFT_MEMORY_MB="${SLURM_MEM_PER_NODE:-}"',
            f"rm -f {shlex.quote(str(rc))}",
            shlex.join(argv),
            "rc=$?",
            f'echo "$rc" > {shlex.quote(str(rc))}',
            f"if [ $rc -eq 0 ]; then touch {shlex.quote(str(flag))}; fi",
            "exit $rc",
            "",
        ]
        return "\n".join(lines)

    def sbatch_command(
        self, dag: DAG, node: Node, memory_mb: int, dependencies: list[str]
    ) -> list[str]:
        """The ``sbatch`` argv that submits ``node`` after the jobs ``dependencies``."""
        res = node.resources
        args = [
            "--parsable",
            f"--job-name={dag.name}:{node.name}"[:200],
            f"--output={self.log_path(node.name)}",
            "--open-mode=append",
            "--ntasks=1",
            f"--cpus-per-task={res.cpus}",
            f"--mem={memory_mb}M",
            # pipecraft requeues a failed attempt itself (the job id must stay)
            "--requeue",
            "--kill-on-invalid-dep=no",
        ]
        if res.time_min is not None:
            args.append(f"--time={res.time_min}")
        partition = res.queue or self.partition
        if partition:
            args.append(f"--partition={partition}")
        account = res.account or self.account
        if account:
            args.append(f"--account={account}")
        if self.qos:
            args.append(f"--qos={self.qos}")
        if dependencies:
            args.append("--dependency=afterok:" + ":".join(dependencies))
        return [*args, *self.sbatch_args, str(self.script_path(node.name))]

    def _complete(self, node: Node) -> bool:
        return self.flag_path(node).exists() and all(_exists(o) for o in node.outputs)

    def to_run(self, dag: DAG) -> list[str]:
        """Nodes that must run: not complete, or downstream of a node that runs."""
        runs: set[str] = set()
        for n, node in dag.nodes.items():
            if any(d in runs for d in dag.deps[n]) or not self._complete(node):
                runs.add(n)
        return [n for n in dag.nodes if n in runs]

    def run(self, pipeline: Pipeline | DAG) -> SlurmRunHandle:
        """Validate, submit every node that must run and return the handle."""
        dag = as_dag(pipeline)
        for node in dag:
            node_argv(node, self.python, with_env=False)  # a __main__ function fails here
        for sub in ("jobs", "logs", "flags", "state"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.slurm("squeue", "--version")
        names = self.to_run(dag)
        handle = SlurmRunHandle(dag, self)
        live = self._live_jobs(dag, names)
        try:
            for n in names:
                node = dag.nodes[n]
                old = live.get(n)
                if old is not None and all(
                    d in handle.adopted or d not in handle.jobs for d in dag.deps[n]
                ):
                    # still queued or running from an earlier run of this node: follow it
                    handle.jobs[n] = old
                    handle.adopted.add(n)
                    continue
                if old is not None:  # it waits on a job that is being replaced
                    self.slurm("scancel", old.job_id, check=False)
                self.flag_path(node).unlink(missing_ok=True)
                self.rc_path(n).unlink(missing_ok=True)
                self.attempt_path(n).unlink(missing_ok=True)
                self.log_path(n).unlink(missing_ok=True)
                script = self.script_path(n)
                script.write_text(self.job_script(node))
                deps = [handle.jobs[d].job_id for d in dag.deps[n] if d in handle.jobs]
                proc = self.slurm(
                    "sbatch", *self.sbatch_command(dag, node, node.resources.memory_mb, deps)
                )
                m = _SBATCH_ID.match(proc.stdout.strip())
                if not m:
                    raise BackendConfigError(
                        f"sbatch printed {proc.stdout.strip()!r}, expected a job id"
                    )
                handle.jobs[n] = _Job(n, m.group(1), node.resources.memory_mb)
                self.job_record(n).write_text(f"{m.group(1)} {node.fingerprint()}\n")
        except BaseException:
            handle.cancel()  # never leave half a pipeline queued
            raise
        for n in dag.nodes:
            if n not in handle.jobs:
                handle.skipped.add(n)
        return handle


class SlurmRunHandle(RunHandle):
    """Handle of a pipeline submitted to Slurm."""

    def __init__(self, dag: DAG, backend: SlurmBackend) -> None:
        self.dag = dag
        self.backend = backend
        self.jobs: dict[str, _Job] = {}
        self.skipped: set[str] = set()
        #: nodes whose job, still queued or running from an earlier run, was taken over
        self.adopted: set[str] = set()
        self._cancelled = False
        self._lock = threading.RLock()

    # -- polling -------------------------------------------------------------------

    def _squeue(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """State and reason of each job Slurm still knows."""
        out: dict[str, tuple[str, str]] = {}
        for k in range(0, len(job_ids), 500):
            chunk = ",".join(job_ids[k : k + 500])
            proc = self.backend.slurm(
                "squeue", "-h", "-t", "all", "-j", chunk, "-o", "%i|%T|%r", check=False
            )
            for line in proc.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 3:
                    out[parts[0]] = (parts[1], parts[2])
        return out

    def refresh(self) -> None:
        """Poll Slurm once and act on finished attempts (retry, or settle the node)."""
        with self._lock:
            live = {j.job_id: j for j in self.jobs.values() if j.final is None}
            if not live:
                return
            seen = self._squeue(list(live))
            for job_id, job in live.items():
                if job_id in seen:
                    job.state, slurm_reason = seen[job_id]
                else:
                    job.state, slurm_reason = self._forgotten(job), ""
                self._settle(job, slurm_reason)

    def _forgotten(self, job: _Job) -> str:
        """State of a job Slurm no longer lists, from the exit status its script left."""
        try:
            rc = int(self.backend.rc_path(job.node).read_text().strip())
        except (OSError, ValueError):
            return "FAILED"
        if rc == 0:
            return "COMPLETED"
        return _OOM if rc in OOM_EXIT_CODES else "FAILED"

    def _settle(self, job: _Job, slurm_reason: str) -> None:
        st = job.state
        node = self.dag.nodes[job.node]
        if st in _RUNNING or st in _PENDING:
            return
        if st != "CANCELLED" and self._requeue_lost(job):
            return
        if st == "COMPLETED":
            missing = [o for o in node.outputs if not _exists(o)]
            if not missing:
                job.final = NodeState.SUCCEEDED
                return
            self.backend.flag_path(node).unlink(missing_ok=True)
            why = f"declared output {missing[0]!r} was not written"
            oom = False
        elif st == "CANCELLED":
            job.final = NodeState.CANCELLED if self._cancelled else NodeState.FAILED
            job.reason = f"slurm job {job.job_id} was cancelled outside pipecraft"
            self._cancel_dependants(job.node)
            return
        else:
            oom = st == _OOM
            why = f"slurm job {job.job_id} {st}" + (f" ({slurm_reason})" if slurm_reason else "")
            why += self._exit_code(job) + last_log_line(
                self.backend.log_path(job.node), skip=("slurmstepd",)
            )
        if self._cancelled:
            job.final = NodeState.CANCELLED
            return
        cap = memory_cap(node.resources, self.backend.max_memory_mb)
        grown = next_memory(
            node.resources, job.attempt, job.memory_mb, oom, self.backend.max_memory_mb
        )
        if job.attempt > node.retries or grown is None:
            if grown is None:
                why += f"; {describe_oom(job.memory_mb, cap)}, not retried"
            job.final, job.reason = NodeState.FAILED, why
            self._cancel_dependants(job.node)
            return
        self._requeue(job, grown, why)

    def _attempt_started(self, job: _Job) -> bool:
        """Whether the job script of ``job``'s current attempt has started (its log says)."""
        marker = f"=== pipecraft: attempt {job.attempt} as slurm job {job.job_id} "
        try:
            with open(self.backend.log_path(job.node)) as log:
                return any(line.startswith(marker) for line in log)
        except OSError:
            return False

    def _requeue_lost(self, job: _Job) -> bool:
        """Whether a finished state is still the previous attempt's: the retry has not begun.

        Slurm can report a requeued job in its old failed state for a while (seen with a
        retry asked for the moment the attempt ended), which must not count as the retry's
        outcome. After :data:`_REQUEUE_GRACE_S` without the retry's script starting, the
        requeue is asked for again, a few times at most; then the job fails with what
        Slurm last reported.
        """
        if job.attempt == 1 or self._attempt_started(job):
            return False
        if time.monotonic() - job.requeued_at < _REQUEUE_GRACE_S:
            return True
        if job.requeue_again >= 3 or not self._ask_requeue(job, job.memory_mb, check=False):
            return False
        job.requeue_again += 1
        job.requeued_at = time.monotonic()
        return True

    def _exit_code(self, job: _Job) -> str:
        proc = self.backend.slurm("scontrol", "-o", "show", "job", job.job_id, check=False)
        m = re.search(r"\bExitCode=(\d+):(\d+)", proc.stdout)
        if not m:
            return ""
        code, sig = m.groups()
        return f", exit code {code}" + (f" signal {sig}" if sig != "0" else "")

    def _requeue(self, job: _Job, memory_mb: int, why: str) -> None:
        """Run the job again under the same id, with ``memory_mb``."""
        with open(self.backend.log_path(job.node), "a") as log:
            log.write(f"=== pipecraft: {why}; retrying with {memory_mb} MB\n")
        _write_atomic(self.backend.attempt_path(job.node), f"{job.attempt + 1}\n")
        self._ask_requeue(job, memory_mb, check=True)
        job.attempt += 1
        job.memory_mb = memory_mb
        job.requeue_again = 0
        job.requeued_at = time.monotonic()

    def _ask_requeue(self, job: _Job, memory_mb: int, check: bool) -> bool:
        """Requeue ``job`` held, give it ``memory_mb``, release it; whether Slurm took it."""
        b = self.backend
        if b.slurm("scontrol", "requeuehold", job.job_id, check=check).returncode != 0:
            return False
        b.slurm(
            "scontrol", "update", f"JobId={job.job_id}", f"MinMemoryNode={memory_mb}", check=check
        )
        # A requeued job waits out a begin-time delay; start it as soon as it can.
        b.slurm("scontrol", "update", f"JobId={job.job_id}", "StartTime=now", check=check)
        b.slurm("scontrol", "release", job.job_id, check=check)
        job.state = "PENDING"
        # Slurm marked the dependants' dependency failed; set it again.
        for m in self.dag.dependents[job.node]:
            dep_job = self.jobs.get(m)
            if dep_job is None or dep_job.final is not None:
                continue
            ids = [self.jobs[d].job_id for d in self.dag.deps[m] if d in self.jobs]
            b.slurm(
                "scontrol",
                "update",
                f"JobId={dep_job.job_id}",
                "Dependency=afterok:" + ":".join(ids),
                check=False,
            )
        return True

    def _cancel_dependants(self, node: str) -> None:
        """Cancel every pending job downstream of ``node``: it can never run."""
        todo = list(self.dag.dependents[node])
        seen: set[str] = set()
        ids = []
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            todo.extend(self.dag.dependents[m])
            job = self.jobs.get(m)
            if job is not None and job.final is None:
                job.final = NodeState.UPSTREAM_FAILED
                ids.append(job.job_id)
        if ids:
            self.backend.slurm("scancel", *ids, check=False)

    # -- RunHandle -----------------------------------------------------------------

    def _states(self) -> dict[str, NodeState]:
        with self._lock:
            states: dict[str, NodeState] = {}
            for n in self.dag.nodes:
                job = self.jobs.get(n)
                if job is None:
                    states[n] = NodeState.SKIPPED if n in self.skipped else NodeState.CANCELLED
                elif job.final is not None:
                    states[n] = job.final
                elif job.state in _RUNNING:
                    states[n] = NodeState.RUNNING
                elif self._cancelled:
                    states[n] = NodeState.CANCELLED
                else:
                    states[n] = NodeState.PENDING
            return states

    def node_states(self) -> dict[str, NodeState]:
        self.refresh()
        return self._states()

    def status(self) -> RunStatus:
        return overall_status(self.node_states(), self._cancelled)

    def wait(self, timeout: float | None = None) -> RunStatus:
        poll_until(
            lambda: self.status().done, timeout, self.backend.poll_first, self.backend.poll_max
        )
        return self.status()

    def cancel(self) -> None:
        """Cancel every job of the run that has not finished."""
        with self._lock:
            self._cancelled = True
            ids = [j.job_id for j in self.jobs.values() if j.final is None]
            if ids:
                self.backend.slurm("scancel", *ids, check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                self.refresh()
                if all(j.final is not None for j in self.jobs.values()):
                    break
                time.sleep(0.2)

    def job_ids(self) -> dict[str, str]:
        """Slurm job id of every submitted node."""
        with self._lock:
            return {n: j.job_id for n, j in self.jobs.items()}

    def attempts(self) -> dict[str, tuple[int, int]]:
        """(attempt number, memory MB) of each submitted node's latest attempt."""
        with self._lock:
            return {n: (j.attempt, j.memory_mb) for n, j in self.jobs.items()}

    def logs(self, node: str) -> str:
        self._check_node(node)
        return read_log(self.backend.log_path(node))

    def failures(self) -> dict[str, str]:
        states = self.node_states()
        with self._lock:
            return {
                n: self.jobs[n].reason or "failed"
                for n, s in states.items()
                if s is NodeState.FAILED and n in self.jobs
            }


def _memory_mb(text: str) -> int | None:
    """MiB from squeue's ``%m`` (``2000M``, ``4G``)."""
    m = re.match(r"^(\d+)([KMGT]?)$", text.strip())
    if not m:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return int(int(m.group(1)) * scale)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
