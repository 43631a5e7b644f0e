"""Configure a project: inventory, index, then the experiment checked against the index."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy.orm import Session

from conductor import runs
from conductor.api.common import ProjectId, dataset_partitions, get_project
from conductor.app import get_session
from conductor.auth import reader, writer
from conductor.schemas import ConfigureOut, ConfigureRequest
from starrynight import experiment, index, inventory, storage, workspace

router = APIRouter(prefix="/projects/{project_id}", tags=["configure"])
SessionDep = Annotated[Session, Depends(get_session)]


@router.post("/configure", response_model=ConfigureOut, dependencies=[Depends(writer)])
def configure(project_id: ProjectId, body: ConfigureRequest, session: SessionDep) -> dict:
    """Run inventory and index, then validate and save the experiment.

    Without an ``experiment`` in the body the template guessed from the index is used.
    Mistakes (a role naming a channel that does not exist, a missing barcode table...)
    come back as 422 with the message.
    """
    project = get_project(session, project_id)
    ws = project.workspace_uri
    inv = inventory.generate(project.dataset_uri, ws, progress=False)
    summary = index.generate(inv.path, ws, project.grammar, experiment.load_experiment_or_none(ws))
    choices = body.experiment
    if choices is None:
        choices = experiment.template(index.load_index(ws), index.dataset_root(ws))
    request_path = runs.experiment_request_path(ws)
    storage.write_bytes(request_path, (json.dumps(choices, indent=2) + "\n").encode())
    exp = experiment.new(ws, request_path)
    project.configured_at = datetime.now(UTC)
    session.commit()
    plates, _ = dataset_partitions(project)
    return {
        "inventory_files": inv.files,
        "index": summary.line(),
        "experiment": json.loads(exp.model_dump_json()),
        "plates": plates,
    }


@router.get("/experiment", dependencies=[Depends(reader)])
def read_experiment(project_id: ProjectId, session: SessionDep) -> dict[str, Any]:
    """The saved experiment (404 before ``configure``)."""
    project = get_project(session, project_id)
    path = workspace.experiment_path(project.workspace_uri)
    if not storage.exists(path):
        raise HTTPException(404, f"project {project.name} has no experiment yet; configure it")
    return json.loads(storage.read_bytes(path))


@router.get("/experiment/template", dependencies=[Depends(reader)])
def experiment_template(project_id: ProjectId, session: SessionDep) -> dict[str, Any]:
    """The experiment guessed from the index: a starting point for the user's choices."""
    project = get_project(session, project_id)
    dataset_partitions(project)  # 409 before the index exists
    ws = project.workspace_uri
    return experiment.template(index.load_index(ws), index.dataset_root(ws))
