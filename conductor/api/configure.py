"""Configure a project: inventory, index, then the experiment checked against the index."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from conductor import configuring
from conductor.deps import ProjectId, SessionDep, reader, writer
from conductor.schemas import ConfigureOut, ConfigureRequest

router = APIRouter(prefix="/projects/{project_id}", tags=["configure"])


@router.post("/configure", response_model=ConfigureOut, dependencies=[Depends(writer)])
def configure(project_id: ProjectId, body: ConfigureRequest, session: SessionDep) -> dict:
    """Run inventory and index, then validate and save the experiment.

    Without an ``experiment`` in the body the template guessed from the index is used.
    Mistakes (a role naming a channel that does not exist, a missing barcode table...)
    come back as 422 with the message.
    """
    return configuring.configure(session, project_id, body.experiment)


@router.get("/experiment", dependencies=[Depends(reader)])
def read_experiment(project_id: ProjectId, session: SessionDep) -> dict[str, Any]:
    """The saved experiment (404 before ``configure``)."""
    return configuring.read_experiment(session, project_id)


@router.get("/experiment/template", dependencies=[Depends(reader)])
def experiment_template(project_id: ProjectId, session: SessionDep) -> dict[str, Any]:
    """The experiment guessed from the index: a starting point for the user's choices."""
    return configuring.experiment_template(session, project_id)
