"""``starrynight illum``: illumination functions (``calc``) and corrected images (``apply``)."""

from __future__ import annotations

import click

from starrynight.cli.options import FORCE, PLATE, SKIP_BAD, WORKSPACE, echo_bad, well_step
from starrynight.modules.illum import apply_illum, calc_illum

WORKERS = click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(1), help="Reading threads."
)


@click.group()
def illum() -> None:
    """Illumination correction: compute functions per plate, apply them per well."""


@illum.command("calc")
@WORKSPACE
@PLATE
@click.option(
    "--arm", type=click.Choice(["cp", "sbs"]), default=None,
    help="Only this arm (default: every arm the plate has).",
)  # fmt: skip
@click.option("--cycle", type=click.IntRange(1), default=None, help="Only this SBS cycle.")
@click.option(
    "--preset", type=click.Choice(["default", "cellprofiler"]), default="default",
    show_default=True,
    help="default: removes the camera dark level, median size 10, smooth log-quadratic "
    "surface; cellprofiler: "
    "CellProfiler 4.2.8's CorrectIlluminationCalculate with the legacy Broad settings.",
)  # fmt: skip
@click.option(
    "--dark-level", type=click.FloatRange(0), default=None,
    help="Camera dark level in counts for the default preset (default: the group's "
    "smallest pixel value).",
)  # fmt: skip
@FORCE
@SKIP_BAD
@WORKERS
def calc_cmd(
    workspace: str,
    plate: str,
    arm: str | None,
    cycle: int | None,
    preset: str,
    dark_level: float | None,
    force: bool,
    skip_bad: bool,
    workers: int,
) -> None:
    """Average the plate's images per channel (SBS: per cycle) into illumination functions."""
    result = calc_illum(
        workspace, plate, arm=arm, cycle=cycle, preset=preset,  # type: ignore[arg-type]
        dark_level=dark_level, force=force, skip_bad=skip_bad, workers=workers,
    )  # fmt: skip
    for g in result.groups:
        what = "cp" if g.cycle is None else f"sbs cycle {g.cycle}"
        if g.skipped:
            click.echo(f"{plate} {what}: complete, skipped ({g.n_images} images; --force redoes)")
            continue
        darks = ", ".join(f"{c} {d:g}" for c, d in g.dark_level.items())
        click.echo(
            f"{plate} {what}: {len(g.channels)} function(s) from {g.n_images} images "
            f"(dark level {darks})"
        )
    echo_bad(result.bad_files)


@illum.command("apply")
@well_step
def apply_cmd(
    workspace: str, plate: str, well: str, force: bool, skip_bad: bool, workers: int,
    progress: bool | None,
) -> None:  # fmt: skip
    """Correct one well's Cell Painting images: one uint16 TIFF per site and channel."""
    r = apply_illum(
        workspace, plate, well, force=force, skip_bad=skip_bad, workers=workers, progress=progress
    )
    click.echo(
        f"{plate} {well}: corrected {r.sites_written} site(s) ({r.files_written} files), "
        f"{r.sites_skipped} already complete"
    )
    echo_bad(r.bad_files)
