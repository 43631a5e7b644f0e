"""The screen's results: the gene table and one gene's statistics and feature shifts."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path

from conductor import results
from conductor.deps import ProjectId, ReadSessionDep, reader
from conductor.projects import get_project
from conductor.schemas import GeneResultOut, ScreenResultsOut

router = APIRouter(prefix="/projects/{project_id}/results", tags=["results"])
SortKey = Literal[
    "gene_symbol", "n_cells", "n_guides", "mAP", "p_value", "q_value", "hit",
    "guide_consistency", "activity_status",
]  # fmt: skip


@router.get("", response_model=ScreenResultsOut, dependencies=[Depends(reader)])
def screen_results(
    project_id: ProjectId,
    session: ReadSessionDep,
    sort: SortKey = "q_value",
    order: Literal["asc", "desc"] = "asc",
) -> dict:
    """One row per gene (n cells, n guides, mAP, p, q, hit, top features); empty with
    ``status: none`` and a message while the screen has no results."""
    res = results.load_results(get_project(session, project_id).workspace_uri)
    return {
        "status": res.status, "message": res.message, "plates": res.plates,
        "excluded": res.excluded, "control_label": res.control_label,
        "threshold": res.threshold, "unit": res.unit, "n_hits": res.n_hits,
        "genes": results.sort_genes(res.genes, sort, order == "desc"),
    }  # fmt: skip


@router.get("/genes/{gene}", response_model=GeneResultOut, dependencies=[Depends(reader)])
def gene_result(
    project_id: ProjectId, gene: Annotated[str, Path(max_length=200)], session: ReadSessionDep
) -> dict:
    """One gene's row and its largest feature shifts; 404 for a gene not in the results."""
    ws = get_project(session, project_id).workspace_uri
    row = results.gene_row(results.load_results(ws), gene)
    return {**row, "feature_shifts": dict(results.feature_shifts(ws, gene))}
