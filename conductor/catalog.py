"""A project's asset graph and partitions, or the service error saying why there are none."""

from __future__ import annotations

from conductor.errors import Conflict, Unavailable
from conductor.graph import AssetInfo, asset_graph
from conductor.indexcache import plates_and_wells
from conductor.models import Project
from conductor.settings import Settings
from starrynight.errors import UserError


def graph_of(settings: Settings) -> tuple[AssetInfo, ...]:
    """The asset graph, or :class:`Unavailable` when the code location cannot be loaded."""
    try:
        return asset_graph(settings.dagster_module)
    except UserError as exc:
        raise Unavailable(f"Dagster code location unavailable: {exc}") from exc


def dataset_partitions(project: Project) -> tuple[list[str], dict[str, list[str]]]:
    """Plates and wells per plate from the project's index; :class:`Conflict` before it."""
    found = plates_and_wells(project.workspace_uri)
    if found is None:
        raise Conflict(
            f"project {project.name} is not configured yet: no index; run inventory and index first"
        )
    return found
