"""``starrynight mosaic``: draw a well per arm as an OME-Zarr pyramid and a thumbnail."""

from __future__ import annotations

import click

from starrynight.cli.options import SITE_WORKERS, well_unit
from starrynight.modules.mosaic import mosaic_well


@click.command("mosaic")
@well_unit
@click.option(
    "--arm", "arms", type=click.Choice(["cp", "sbs"]), multiple=True,
    help="Arm(s) to draw (repeatable; default: every arm with positions).",
)  # fmt: skip
@click.option(
    "--chunk", type=click.IntRange(64, 8192), default=512, show_default=True,
    help="Zarr chunk side and band height, pixels.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Redraw mosaics that exist.")
@SITE_WORKERS
def mosaic(
    workspace: str, plate: str, well: str, arms: tuple[str, ...], chunk: int, force: bool,
    workers: int,
) -> None:  # fmt: skip
    """Stitched mosaic of a well per arm from its refined site positions."""
    r = mosaic_well(
        workspace, plate, well, arms=arms or ("cp", "sbs"), force=force, workers=workers,
        chunk=chunk,
    )  # fmt: skip
    for a in r.arms:
        done = " (already done)" if a.skipped else ""
        c, h, w = a.shape
        click.echo(
            f"{plate} {well} {a.arm}{done}: {a.sites} site(s) -> {c} channel(s) x {h} x {w} px "
            f"({a.pixel_size_um[1]:g} um/px), {a.levels} level(s)"
        )
        click.echo(a.zarr)
        click.echo(a.thumbnail)
