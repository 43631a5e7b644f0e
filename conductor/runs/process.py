"""The launcher subprocess of a run: start it, see whether it lives, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conductor.graph import AssetInfo, dynamic_partitions_needed
from conductor.models import Project, Run
from conductor.runs.instances import instance, project_env, run_dir
from conductor.settings import Settings

_PROCS: dict[int, subprocess.Popen] = {}
_PROCS_LOCK = threading.Lock()


def launch(
    settings: Settings, project: Project, run: Run, graph: tuple[AssetInfo, ...]
) -> int | None:
    """Start the launcher for ``run.plan``; returns its pid (None for an empty plan)."""
    if not run.plan:
        return None
    folder = run_dir(settings, run.id)
    folder.mkdir(parents=True, exist_ok=True)
    plan = {
        "module": settings.dagster_module,
        "conductor_run": run.id,
        "steps": run.plan,
        "dynamic_partitions": dynamic_partitions_needed(graph, run.plan),
    }
    (folder / "plan.json").write_text(json.dumps(plan, indent=2))
    # The instance's storage is created here, under the opening lock, before the
    # launcher starts: a new project's first launcher and this server opening it at
    # once both created its SQLite schemas ("table instance_info already exists").
    instance(settings, project.id)
    with open(folder / "launcher.log", "ab") as log:
        proc = subprocess.Popen(
            [settings.python or sys.executable, "-m", "conductor.launcher", "plan.json"],
            cwd=folder,
            env=project_env(settings, project),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: cancel signals the launcher and whatever it started.
            start_new_session=True,
        )
    with _PROCS_LOCK:
        _PROCS[proc.pid] = proc
    return proc.pid


def _is_launcher(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"conductor.launcher" in cmdline


def launcher_alive(pid: int | None) -> bool:
    """Whether the launcher ``pid`` is still running (reaps it when it is our child)."""
    if pid is None:
        return False
    with _PROCS_LOCK:
        proc = _PROCS.get(pid)
        if proc is not None:
            if proc.poll() is None:
                return True
            del _PROCS[pid]
            return False
    # Started by an earlier server process: check it is still the launcher.
    return _is_launcher(pid)


def last_log_line(settings: Settings, run_id: int) -> str:
    """The launcher's last non-blank output line (what it said before it exited)."""
    path = run_dir(settings, run_id) / "launcher.log"
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""


def _stop_launcher(pid: int | None, grace_seconds: float) -> None:
    # SIGTERM to the process group, SIGKILL after the grace period; returns once gone.
    if pid is None or not launcher_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while launcher_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if launcher_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while launcher_alive(pid):
            time.sleep(0.05)


def cancel(settings: Settings, run: Run, grace_seconds: float = 10.0) -> None:
    """Stop the launcher and mark its unfinished Dagster runs canceled.

    The launcher gets SIGTERM (Dagster stops the step and records the interruption as a
    failure), then SIGKILL after ``grace_seconds``; the runs that were unfinished are
    then reported canceled, which is what the user asked for.
    """
    inst = instance(settings, run.project_id)
    unfinished = []
    for step in run.plan:
        dagster_run = inst.get_run_by_id(step["run_id"])
        if dagster_run is None or not dagster_run.is_finished:
            unfinished.append(step["run_id"])
    _stop_launcher(run.launcher_pid, grace_seconds)
    for run_id in unfinished:
        dagster_run = inst.get_run_by_id(run_id)
        if dagster_run is not None and dagster_run.status.value != "CANCELED":
            inst.report_run_canceled(dagster_run, message="canceled through Conductor")
