"""Plates and wells: per asset, which partitions are done, failed, stale or missing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy.orm import Session

from conductor import indexcache, runs
from conductor.api.common import ProjectId, dataset_partitions, get_project, graph_of, settings_of
from conductor.app import get_read_session
from conductor.auth import reader
from conductor.schemas import PartitionStatusOut

router = APIRouter(tags=["partitions"])
SessionDep = Annotated[Session, Depends(get_read_session)]


@router.get("/assets", dependencies=[Depends(reader)])
def list_assets(request: Request) -> list[dict]:
    """The assets runs can select, in execution order, with their partition dimensions
    and the arms (``cp``, ``sbs``) a well needs for each (empty: every well)."""
    graph = graph_of(settings_of(request))
    return [
        {"name": a.name, "dimensions": list(a.dims), "parents": list(a.parents),
         "arms": list(a.arms)}
        for a in graph
    ]  # fmt: skip


@router.get(
    "/projects/{project_id}/partitions",
    response_model=PartitionStatusOut,
    dependencies=[Depends(reader)],
)
def partition_status(project_id: ProjectId, request: Request, session: SessionDep) -> dict:
    """Plate-map data: for each asset, each partition key's status.

    Statuses: ``done``, ``stale`` (an upstream partition is newer), ``failed``,
    ``running``, ``missing``, and ``n/a`` for a well that lacks the images the asset
    needs (e.g. the SBS products of a Cell Painting-only well). Keys are ``default``
    (unpartitioned), ``<plate>`` or ``<plate>|<well>``.
    """
    settings = settings_of(request)
    project = get_project(session, project_id)
    graph = graph_of(settings)
    plates, wells = dataset_partitions(project)
    statuses = runs.partition_statuses(settings, project.id, graph, plates, wells)
    statuses = runs.mark_not_applicable(
        graph, statuses, indexcache.well_arms(project.workspace_uri)
    )
    return {
        "plates": plates,
        "wells": wells,
        "assets": statuses,
        "dimensions": {a.name: list(a.dims) for a in graph},
    }
