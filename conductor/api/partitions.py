"""Plates and wells: per asset, which partitions are done, failed, stale or missing."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from conductor.catalog import graph_of
from conductor.deps import ProjectId, ReadSessionDep, reader, settings_of
from conductor.runs.service import project_partition_statuses
from conductor.schemas import PartitionStatusOut

router = APIRouter(tags=["partitions"])


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
def partition_status(project_id: ProjectId, request: Request, session: ReadSessionDep) -> dict:
    """Plate-map data: for each asset, each partition key's status.

    Statuses: ``done``, ``stale`` (an upstream partition is newer), ``failed``,
    ``running``, ``missing``, and ``n/a`` for a well that lacks the images the asset
    needs (e.g. the SBS products of a Cell Painting-only well). Keys are ``default``
    (unpartitioned), ``<plate>`` or ``<plate>|<well>``.
    """
    return project_partition_statuses(settings_of(request), session, project_id)
