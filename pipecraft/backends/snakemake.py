"""Run a pipeline with Snakemake (locally, or on a cluster through an executor plugin).

The pipeline compiles to a Snakefile with one rule per node. Every DAG edge is encoded
through flag files: a rule's output is ``<workdir>/flags/<node>-<hash>.done`` (touched
when its command succeeds) and its inputs are the flags of the nodes it depends on, so
order never depends on Snakemake matching data file names. The hash covers the node's
command and paths, so a changed node re-runs. Commands are quoted with :func:`shlex.quote`
and brace-escaped for Snakemake's formatter, so arguments with spaces, commas, quotes or
braces reach the program unchanged. ``PyFunction`` nodes run as
``python -m pipecraft.run_node <json>``. A node's container image becomes the rule's
``container:`` (used with ``--software-deployment-method apptainer``). Resources become
``threads``, ``mem_mb``, ``runtime``, ``slurm_partition`` and ``slurm_account``; with
retries, ``mem_mb`` grows with each attempt up to the node's cap (Snakemake cannot tell
an out-of-memory kill from another failure).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipecraft.backends.base import NodeState, RunHandle, RunStatus, overall_status, read_log
from pipecraft.backends.local import safe_filename
from pipecraft.errors import BackendConfigError
from pipecraft.node import Node, node_argv
from pipecraft.pipeline import DAG, Pipeline, as_dag

_BUILTIN_EXECUTORS = {"local", "dryrun", "touch"}


def _container(node: Node) -> list[str]:
    # Honoured when Snakemake runs with --software-deployment-method apptainer (pass it in
    # extra_args); otherwise Snakemake ignores the directive and runs on the host.
    image = getattr(node, "image", None)
    if not image:
        return []
    uri = image if "://" in image else f"docker://{image}"
    return [f"    container: {uri!r}"]


def _resources(node: Node) -> str:
    """The rule's ``resources:`` (names the Slurm executor plugin reads)."""
    res = node.resources
    if node.retries:
        # Snakemake does not say why an attempt failed, so memory grows with every
        # attempt (memory_mb x attempt, capped), as in nf-pooled-cellpainting.
        cap = f", {res.max_memory_mb}" if res.max_memory_mb is not None else ""
        mem = f"lambda wildcards, attempt: min({res.memory_mb} * attempt{cap})"
    else:
        mem = str(res.memory_mb)
    parts = [f"mem_mb={mem}"]
    if res.time_min is not None:
        parts.append(f"runtime={res.time_min}")
    if res.queue is not None:
        parts.append(f"slurm_partition={res.queue!r}")
    if res.account is not None:
        parts.append(f"slurm_account={res.account!r}")
    return ", ".join(parts)


def _braces(s: str) -> str:
    # Snakemake formats shell strings with str.format; double braces are literal.
    return s.replace("{", "{{").replace("}", "}}")


def rule_name(index: int, node: str) -> str:
    """Rule name of the ``index``-th node: a Python identifier that keeps the name legible."""
    return f"n{index}_{re.sub(r'[^A-Za-z0-9_]', '_', node)[:60]}"


class SnakemakeBackend:
    """Run pipelines by generating a Snakefile and calling ``snakemake``.

    Parameters
    ----------
    workdir : str or Path
        Folder for the Snakefile, flags, node logs and Snakemake's own state; reuse it
        to resume a killed or failed run (complete nodes are not re-run).
    cores : int, optional
        ``--cores`` (default: all cores).
    executor : str, optional
        Snakemake executor (``local`` by default; ``slurm``, ``aws-batch``... when the
        ``snakemake-executor-plugin-<name>`` package is installed).
    jobs : int, optional
        ``--jobs``: how many jobs a remote executor may run at once.
    extra_args : sequence of str
        Further snakemake arguments (e.g. executor plugin settings).
    keep_going : bool
        Finish independent branches after a failure (default True, like the local backend).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        cores: int | None = None,
        executor: str | None = None,
        jobs: int | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
        keep_going: bool = True,
        python: str = sys.executable,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        if "{" in str(self.workdir) or "}" in str(self.workdir):
            raise BackendConfigError(
                f"SnakemakeBackend workdir {str(workdir)!r} contains braces, which Snakemake "
                "reads as wildcards: choose another folder"
            )
        if self.workdir.exists() and not self.workdir.is_dir():
            raise BackendConfigError(f"SnakemakeBackend workdir {str(workdir)!r} is not a folder")
        if cores is not None and (not isinstance(cores, int) or cores < 1):
            raise BackendConfigError(f"SnakemakeBackend cores={cores!r}: expected an integer >= 1")
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise BackendConfigError(f"SnakemakeBackend jobs={jobs!r}: expected an integer >= 1")
        if executor is not None and executor not in _BUILTIN_EXECUTORS:
            module = "snakemake_executor_plugin_" + executor.replace("-", "_")
            if importlib.util.find_spec(module) is None:
                raise BackendConfigError(
                    f"SnakemakeBackend executor={executor!r}: plugin package "
                    f"snakemake-executor-plugin-{executor} is not installed (built in: "
                    f"{', '.join(sorted(_BUILTIN_EXECUTORS))})"
                )
        if isinstance(extra_args, str) or not all(isinstance(a, str) for a in extra_args):
            raise BackendConfigError(
                f"SnakemakeBackend extra_args={extra_args!r}: expected a list of strings"
            )
        self.cores = cores or os.cpu_count() or 1
        self.executor = executor
        self.jobs = jobs
        self.extra_args = list(extra_args)
        self.keep_going = keep_going
        self.python = python

    # -- compilation ---------------------------------------------------------------

    def flag_path(self, node: Node) -> Path:
        """Flag file touched when ``node`` succeeds."""
        return Path(self._flag(node))

    def log_path(self, node: str) -> Path:
        """Log file of ``node``."""
        return Path(self._log(node))

    # string forms: pathlib costs too much for 10^4-node Snakefiles
    def _flag(self, node: Node) -> str:
        return f"{self.workdir}/flags/{safe_filename(node.name)}-{node.fingerprint()[:16]}.done"

    def _log(self, node: str) -> str:
        return f"{self.workdir}/logs/{safe_filename(node)}.log"

    def compile(self, pipeline: Pipeline | DAG) -> str:
        """Snakefile text for the pipeline (validated; nothing is written)."""
        dag = as_dag(pipeline)
        cwd = os.getcwd()
        flags = {n: self._flag(node) for n, node in dag.nodes.items()}
        rules = {n: rule_name(i, n) for i, n in enumerate(dag.nodes)}
        out = [
            f"# Generated by pipecraft for pipeline {dag.name!r}; do not edit.",
            "",
            "rule all:",
            f"    input: {sorted(flags.values())!r}",
            "    default_target: True",
            "",
        ]
        cd = f"cd {shlex.quote(cwd)} && "
        for n, node in dag.nodes.items():
            argv = node_argv(node, self.python)
            log = self._log(n)
            cmd = f"{cd}{shlex.join(argv)} > {shlex.quote(log)} 2>&1"
            out += [
                f"# node {n!r}",
                f"rule {rules[n]}:",
                f"    input: {[flags[d] for d in dag.deps[n]]!r}",
                f"    output: touch({flags[n]!r})",
                f"    log: {log!r}",
                f"    threads: {node.resources.cpus}",
                f"    resources: {_resources(node)}",
                f"    retries: {node.retries}",
                *_container(node),
                f"    shell: {_braces(cmd)!r}",
                "",
            ]
        return "\n".join(out)

    def _write_snakefile(self, dag: DAG) -> Path:
        text = self.compile(dag)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "flags").mkdir(exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        path = self.workdir / "Snakefile"
        tmp = path.with_name(".Snakefile.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def _base_cmd(self, snakefile: Path) -> list[str]:
        return [
            self.python,
            "-m",
            "snakemake",
            "--snakefile",
            str(snakefile),
            "--directory",
            str(self.workdir),
            "--cores",
            str(self.cores),
            "--nocolor",
        ]

    def _unlock_if_needed(self, snakefile: Path) -> None:
        # A killed snakemake leaves its lock behind; this workdir belongs to pipecraft,
        # so a stale lock is removed rather than blocking the resume.
        locks = self.workdir / ".snakemake" / "locks"
        if locks.is_dir() and any(locks.iterdir()):
            subprocess.run(
                [*self._base_cmd(snakefile), "--unlock"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )

    def dry_run(self, pipeline: Pipeline | DAG) -> list[str]:
        """Names of the nodes Snakemake would run now (nothing is executed).

        Raises
        ------
        BackendConfigError
            If snakemake rejects the generated workflow.
        """
        dag = as_dag(pipeline)
        snakefile = self._write_snakefile(dag)
        self._unlock_if_needed(snakefile)
        proc = subprocess.run(
            [*self._base_cmd(snakefile), "--dry-run", "--rerun-incomplete"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BackendConfigError(
                f"snakemake dry-run failed (exit {proc.returncode}): "
                + _last_line(proc.stdout + proc.stderr)
            )
        rules = {rule_name(i, n): n for i, n in enumerate(dag.nodes)}
        found = re.findall(r"^(?:local)?rule (\S+?):\s*$", proc.stdout + proc.stderr, re.M)
        seen = dict.fromkeys(rules[r] for r in found if r in rules)
        return [n for n in dag.nodes if n in seen]

    def run(self, pipeline: Pipeline | DAG) -> SnakemakeRunHandle:
        """Write the Snakefile and start snakemake in the background; return its handle."""
        dag = as_dag(pipeline)
        snakefile = self._write_snakefile(dag)
        self._unlock_if_needed(snakefile)
        cmd = [*self._base_cmd(snakefile), "--rerun-incomplete", "--printshellcmds"]
        if self.keep_going:
            cmd.append("--keep-going")
        if self.executor:
            cmd += ["--executor", self.executor]
        if self.jobs:
            cmd += ["--jobs", str(self.jobs)]
        cmd += self.extra_args
        return SnakemakeRunHandle(dag, self, cmd)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


class SnakemakeRunHandle(RunHandle):
    """Handle of a snakemake run; node states come from flags and snakemake's log."""

    def __init__(self, dag: DAG, backend: SnakemakeBackend, cmd: list[str]) -> None:
        self.dag = dag
        self.backend = backend
        self.cmd = cmd
        self.snakemake_log = backend.workdir / "snakemake.log"
        self._flags = {n: backend.flag_path(node) for n, node in dag.nodes.items()}
        self._rules = {rule_name(i, n): n for i, n in enumerate(dag.nodes)}
        self._before = {n for n, f in self._flags.items() if f.exists()}
        self._cancelled = False
        self._lock = threading.Lock()
        self._final: dict[str, NodeState] | None = None
        self._log_file = open(self.snakemake_log, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def returncode(self) -> int | None:
        """Exit status of snakemake (None while it runs)."""
        return self.proc.poll()

    def _scan_log(self) -> tuple[set[str], dict[str, str]]:
        try:
            text = self.snakemake_log.read_text(errors="replace")
        except FileNotFoundError:
            return set(), {}
        started = {
            self._rules[r]
            for r in re.findall(r"^(?:local)?rule (\S+?):\s*$", text, re.M)
            if r in self._rules
        }
        failed: dict[str, str] = {}
        for r in re.findall(r"^Error in rule (\S+?):", text, re.M):
            if r in self._rules:
                n = self._rules[r]
                tail = _last_line(self.logs(n)) if self.logs(n).strip() else "no output"
                failed[n] = f"command failed in snakemake rule {r}: {tail}"
        return started, failed

    def _compute(self) -> dict[str, NodeState]:
        if self._final is not None:
            return self._final
        code = self.proc.poll()
        started, failed = self._scan_log()
        states: dict[str, NodeState] = {}
        bad: set[str] = set()
        for n in self.dag.nodes:
            flag = self._flags[n]
            if n in failed:
                states[n] = NodeState.FAILED
                bad.add(n)
            elif flag.exists():
                states[n] = (
                    NodeState.SKIPPED
                    if n in self._before and n not in started
                    else NodeState.SUCCEEDED
                )
            elif code is None:
                states[n] = NodeState.RUNNING if n in started else NodeState.PENDING
            elif any(d in bad for d in self.dag.deps[n]):
                states[n] = NodeState.UPSTREAM_FAILED
                bad.add(n)
            elif self._cancelled:
                states[n] = NodeState.CANCELLED
            else:
                states[n] = NodeState.FAILED
                failed[n] = f"snakemake exited with code {code} before running it: " + _last_line(
                    self.snakemake_log.read_text(errors="replace")
                )
                bad.add(n)
        self._reasons = failed
        if code is not None:
            self._final = states
        return states

    def node_states(self) -> dict[str, NodeState]:
        with self._lock:
            return dict(self._compute())

    def status(self) -> RunStatus:
        return overall_status(self.node_states(), self._cancelled)

    def wait(self, timeout: float | None = None) -> RunStatus:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.status()
        self._log_file.close()
        return self.status()

    def cancel(self) -> None:
        self._cancelled = True
        if self.proc.poll() is None:
            # snakemake on SIGTERM stops its jobs and marks their outputs incomplete
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()

    def logs(self, node: str) -> str:
        self._check_node(node)
        return read_log(self.backend.log_path(node))

    def failures(self) -> dict[str, str]:
        states = self.node_states()
        return {
            n: self._reasons.get(n, "failed") for n, s in states.items() if s is NodeState.FAILED
        }
