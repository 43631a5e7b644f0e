"""Results: the screen's gene table, its volcano plot, and a page per gene."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response

from conductor import results
from conductor.deps import ProjectId, SessionDep
from conductor.projects import get_project
from conductor.web.render import PageRoute, render
from conductor.web.session import Reader

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
Gene = Annotated[str, Path(max_length=200)]
HEADINGS = {
    "gene_symbol": "Gene", "n_cells": "Cells", "n_guides": "Guides", "mAP": "mAP",
    "p_value": "p", "q_value": "q", "hit": "Hit", "guide_consistency": "Guide consistency",
    "activity_status": "Status",
}  # fmt: skip
SortKey = Literal[
    "gene_symbol", "n_cells", "n_guides", "mAP", "p_value", "q_value", "hit",
    "guide_consistency", "activity_status",
]  # fmt: skip


@router.get("/projects/{project_id}/results", response_class=HTMLResponse)
def results_page(
    project_id: ProjectId,
    request: Request,
    session: SessionDep,
    _token: Reader,
    sort: SortKey = "q_value",
    order: Literal["asc", "desc"] = "asc",
) -> HTMLResponse:
    """The gene table (sortable by any column) and the volcano plot of the screen."""
    project = get_project(session, project_id)
    res = results.load_results(project.workspace_uri)
    genes = results.sort_genes(res.genes, sort, order == "desc")
    return render(
        request, "results.html", project=project, res=res, genes=genes, sort=sort,
        order=order, headings=HEADINGS, plot=results.volcano_points(res), nav="results",
    )  # fmt: skip


@router.get("/projects/{project_id}/results/genes/{gene}", response_class=HTMLResponse)
def gene_page(
    project_id: ProjectId, gene: Gene, request: Request, session: SessionDep, _token: Reader
) -> HTMLResponse:
    """One gene: its statistics, the features that move most, its cells next to controls."""
    project = get_project(session, project_id)
    res = results.load_results(project.workspace_uri)
    row = results.gene_row(res, gene)
    shifts = results.feature_shifts(project.workspace_uri, gene)
    top = max([abs(v) for _, v in shifts] + [1.0])
    return render(
        request, "gene.html", project=project, res=res, row=row, shifts=shifts, top=top,
        headings=HEADINGS, nav="results",
    )  # fmt: skip


@router.get("/projects/{project_id}/results/genes/{gene}/montage.png")
def montage(project_id: ProjectId, gene: Gene, session: SessionDep, _token: Reader) -> Response:
    """Crops of the gene's cells (top row) and of control cells (bottom row)."""
    project = get_project(session, project_id)
    res = results.load_results(project.workspace_uri)
    results.gene_row(res, gene)
    png = results.montage_png(project.workspace_uri, gene, res)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})
