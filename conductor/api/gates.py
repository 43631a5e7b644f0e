"""QC gates: a plate's gate state and history; a reviewer approves or closes it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from conductor import gates
from conductor.catalog import dataset_partitions
from conductor.deps import ProjectId, SessionDep, reader, settings_of, writer
from conductor.projects import get_project
from conductor.schemas import GateDecisionIn, GateOut
from conductor.settings import Token
from starrynight.gates import GATES

router = APIRouter(tags=["gates"])

PlateName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,200}$", description="Plate.")]
GateName = Annotated[str, Path(pattern=r"^[a-z_]{1,40}$", description="painting or barcoding.")]


@router.get(
    "/projects/{project_id}/gates",
    response_model=list[GateOut],
    dependencies=[Depends(reader)],
)
def list_gates(project_id: ProjectId, request: Request, session: SessionDep) -> list[dict]:
    """Every plate's gates: on or off, open or closed, and who decided when."""
    project = get_project(session, project_id)
    plates, _ = dataset_partitions(project)
    settings = settings_of(request)
    return [gates.gate_view(settings, session, project, p, g) for p in plates for g in GATES]


@router.post("/projects/{project_id}/plates/{plate}/gates/{gate}", response_model=GateOut)
def decide(
    project_id: ProjectId,
    plate: PlateName,
    gate: GateName,
    body: GateDecisionIn,
    request: Request,
    session: SessionDep,
    token: Annotated[Token, Depends(writer)],
) -> dict:
    """Approve (``approved: true``) or close a plate's gate, with an optional comment.

    Recorded with the token's name and the time; the project's Dagster sensor then
    checks the gate again, so what follows it starts (approved) or no new work of it
    starts (closed). 404 for an unknown plate, 409 before the gate's report exists,
    403 for a read-only token.
    """
    project = get_project(session, project_id)
    return gates.decide(
        settings_of(request), session, project, plate, gate, body.approved, body.comment, token
    )
