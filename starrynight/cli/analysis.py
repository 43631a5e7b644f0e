"""``starrynight analysis``: per-cell table with gene and features; per-gene summary."""

from __future__ import annotations

from typing import Any

import click

from starrynight.algorithms.features import FAMILIES
from starrynight.cli.options import PLATE, WORKSPACE, echo_bad, echo_well, well_step
from starrynight.modules.analysis import analyse_well, summarise_plate


@click.group()
def analysis() -> None:
    """Join Cell Painting and SBS cells, measure features, summarise per gene."""


def _families(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise click.BadParameter(
            f"{', '.join(unknown) or 'none given'}: expected some of {', '.join(FAMILIES)}"
        )
    return names


@analysis.command("run")
@well_step
@click.option(
    "--scale", type=float,
    help="SBS pixels per CP pixel [try 1 and the magnification ratio of the index].",
)  # fmt: skip
@click.option(
    "--max-distance", type=float, default=6.0, show_default=True,
    help="Largest distance in pixels between matched CP and SBS nuclei after registration.",
)  # fmt: skip
@click.option(
    "--families", default=",".join(FAMILIES), show_default=True, callback=_families,
    help="Feature families measured, comma-separated (features cost ~100 CPU-s per 1480^2 "
    "site with all of them; radial, texture and granularity are most of it).",
)  # fmt: skip
def run(**kw: Any) -> None:
    """One row per CP cell: barcode, gene, features (needs segment, and merge or barcodes call)."""
    res = analyse_well(
        kw["workspace"], kw["plate"], kw["well"], scale=kw["scale"],
        max_distance=kw["max_distance"], workers=kw["workers"], force=kw["force"],
        skip_bad=kw["skip_bad"], progress=kw["progress"], families=kw["families"],
    )  # fmt: skip
    echo_well(
        res, f"{res.cells} cells, {res.matched} matched to SBS, {res.with_barcode} with a barcode"
    )
    echo_bad(res.bad_files)


@analysis.command("summary")
@WORKSPACE
@PLATE
def summary(**kw: Any) -> None:
    """Per-gene table of a plate: cell counts and median features.

    Wells of the plate that are not analysed yet are left out and named (on stderr and
    in the table's metadata).
    """
    res = summarise_plate(kw["workspace"], kw["plate"])
    click.echo(f"{kw['plate']}: {res.genes} gene(s) from {len(res.wells)} well(s)")
    if res.missing:
        click.echo(
            f"warning: {kw['plate']}: {len(res.missing)} well(s) of the index not analysed, "
            f"left out of this summary: {', '.join(res.missing)} "
            "(run `starrynight analysis run` for them, then summarise again)",
            err=True,
        )
    click.echo(res.uri)
