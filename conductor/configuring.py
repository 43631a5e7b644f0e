"""Configuring a project: inventory, index, and the experiment checked against the index.

Used by ``POST /projects/{id}/configure`` and the Canvas configure page alike.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from conductor.catalog import dataset_partitions
from conductor.errors import NotFound
from conductor.models import Project
from conductor.projects import get_project
from conductor.runs.instances import experiment_request_path
from starrynight import experiment, index, inventory, storage, workspace


def template(ws: str) -> dict[str, Any]:
    """The experiment guessed from the workspace's index."""
    return experiment.template(index.load_index(ws), index.dataset_root(ws))


def saved_choices(ws: str) -> dict[str, Any] | None:
    """The user's last experiment choices (or the validated experiment), if any."""
    for uri in (experiment_request_path(ws), workspace.experiment_path(ws)):
        if storage.exists(uri):
            try:
                return json.loads(storage.read_bytes(uri))
            except ValueError:
                continue
    return None


def save_experiment(session: Session, project: Project, choices: dict[str, Any]) -> Any:
    """Keep ``choices`` as the experiment asset's input, validate them against the index
    and mark the project configured; returns the validated experiment.

    Raises
    ------
    UserError
        A role naming a channel that does not exist, a missing barcode table...
    """
    ws = project.workspace_uri
    request_path = experiment_request_path(ws)
    storage.write_bytes(request_path, (json.dumps(choices, indent=2) + "\n").encode())
    exp = experiment.new(ws, request_path)
    project.configured_at = datetime.now(UTC)
    session.commit()
    return exp


def configure(session: Session, project_id: int, choices: dict[str, Any] | None) -> dict[str, Any]:
    """Inventory and index the dataset, then save ``choices`` (default: the template)."""
    project = get_project(session, project_id)
    ws = project.workspace_uri
    inv = inventory.generate(project.dataset_uri, ws, progress=False)
    summary = index.generate(inv.path, ws, project.grammar, experiment.load_experiment_or_none(ws))
    exp = save_experiment(session, project, template(ws) if choices is None else choices)
    plates, _ = dataset_partitions(project)
    return {
        "inventory_files": inv.files,
        "index": summary.line(),
        "experiment": json.loads(exp.model_dump_json()),
        "plates": plates,
    }


def read_experiment(session: Session, project_id: int) -> dict[str, Any]:
    """The saved experiment (:class:`NotFound` before ``configure``)."""
    project = get_project(session, project_id)
    path = workspace.experiment_path(project.workspace_uri)
    if not storage.exists(path):
        raise NotFound(f"project {project.name} has no experiment yet; configure it")
    return json.loads(storage.read_bytes(path))


def experiment_template(session: Session, project_id: int) -> dict[str, Any]:
    """The experiment guessed from the index (:class:`Conflict` before the index exists)."""
    project = get_project(session, project_id)
    dataset_partitions(project)
    return template(project.workspace_uri)
