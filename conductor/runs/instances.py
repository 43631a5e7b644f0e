"""Each project's Dagster instance: where it lives, opening it, the launcher's environment."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from conductor.models import Project
from conductor.settings import Settings
from starrynight import storage

_DAGSTER_YAML = "telemetry:\n  enabled: false\n"
_OPENING = threading.Lock()


def instance_dir(settings: Settings, project_id: int) -> Path:
    """Where the project's ``DAGSTER_HOME`` lives (a link when the instance was adopted)."""
    return settings.data_dir / "dagster" / str(project_id)


def instance_exists(settings: Settings, project_id: int) -> bool:
    """Whether the project's Dagster instance was made (by a run, or adopted)."""
    return instance_dir(settings, project_id).is_dir()


def dagster_home(settings: Settings, project_id: int) -> Path:
    """The project's ``DAGSTER_HOME``, created with its ``dagster.yaml`` on first use.

    ``CONDUCTOR_DAGSTER_YAML`` (e.g. Postgres run/event storage) is copied in when set;
    otherwise the instance keeps its storage in SQLite files in that folder.
    """
    home = instance_dir(settings, project_id)
    yaml = home / "dagster.yaml"
    if not yaml.exists():
        home.mkdir(parents=True, exist_ok=True)
        text = settings.dagster_yaml.read_text() if settings.dagster_yaml else _DAGSTER_YAML
        # A name of its own per writer: requests opening a new instance at once must
        # not move each other's file away.
        tmp = yaml.with_name(f".dagster.yaml.{os.getpid()}-{threading.get_ident()}.tmp")
        tmp.write_text(text)
        tmp.replace(yaml)
    return home


def experiment_request_path(workspace_uri: str) -> str:
    """Where ``configure`` keeps the user's experiment choices (the experiment asset's input)."""
    return storage.join(workspace_uri, "experiment", "experiment.request.json")


def run_dir(settings: Settings, run_id: int) -> Path:
    """``<data>/runs/<run-id>``: the plan and the launcher's output."""
    return settings.data_dir / "runs" / str(run_id)


@contextmanager
def _opening(home: Path) -> Iterator[None]:
    """Held while an instance is opened: by one thread, and by one process at a time.

    Opening a new instance creates its SQLite schemas; two openings at once collide
    ("table runs already exists", a duplicate alembic version), which reached clients as
    503 "database unavailable" when a new project's pages were first loaded together.
    The lock file sits beside the home, which may be a link to an adopted instance.
    """
    with _OPENING, open(home.parent / f".{home.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@lru_cache(maxsize=64)
def _instance(home: str) -> Any:
    from dagster import DagsterInstance

    with _opening(Path(home)):
        return DagsterInstance.from_config(home)


def instance(settings: Settings, project_id: int) -> Any:
    """The project's Dagster instance (opened once per process), created on first use."""
    return _instance(str(dagster_home(settings, project_id)))


def project_env(settings: Settings, project: Project) -> dict[str, str]:
    """Environment of the launcher: the ``dagster_defs`` contract plus ``DAGSTER_HOME``."""
    home = dagster_home(settings, project.id)
    project_file = home / "project.json"
    # Exactly the fields dagster_defs accepts (it refuses unknown ones).
    data: dict[str, Any] = {
        "dataset_uri": project.dataset_uri,
        "workspace_uri": project.workspace_uri,
        "backend": project.backend,
        "backend_options": project.backend_options,
        "qc": {"gates": list(project.qc_gates or [])},
    }
    choices = experiment_request_path(project.workspace_uri)
    if storage.exists(choices):
        data["experiment_file"] = choices
    tmp = project_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(project_file)
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(home),
        STARRYNIGHT_PROJECT_FILE=str(project_file),
        STARRYNIGHT_DATASET_URI=project.dataset_uri,
        STARRYNIGHT_WORKSPACE_URI=project.workspace_uri,
        STARRYNIGHT_BACKEND=project.backend,
    )
    # The code location may live outside the installed packages (tests, a lab's repo).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
    return env
