"""``starrynight geometry``: place every site of a well in its arm's well frame."""

from __future__ import annotations

import click

from starrynight.cli.options import SITE_WORKERS, well_unit
from starrynight.modules.geometry import RefineOptions, geometry_well


@click.command("geometry")
@well_unit
@click.option(
    "--arm", "arms", type=click.Choice(["cp", "sbs"]), multiple=True,
    help="Arm(s) to place (repeatable; default: every arm the well has).",
)  # fmt: skip
@click.option(
    "--cycle", "cycles", type=click.IntRange(1), multiple=True,
    help="SBS cycle(s) to place (repeatable; default: all).",
)  # fmt: skip
@click.option(
    "--max-shift-um", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
    help="Largest correction of a recorded neighbour offset searched (um).",
)  # fmt: skip
@click.option(
    "--min-correlation", type=click.FloatRange(-1, 1), default=0.5, show_default=True,
    help="Drop pairs whose overlaps correlate less than this after registration.",
)  # fmt: skip
@click.option(
    "--max-residual-px", type=click.FloatRange(0, min_open=True), default=1.5,
    show_default=True, help="Drop pairs that disagree with the joint solution by more (px).",
)  # fmt: skip
@click.option(
    "--allow-isolated", is_flag=True,
    help="Keep sites that overlap no other site at their recorded position (default: error).",
)  # fmt: skip
@click.option("--no-illum", is_flag=True, help="Register raw nuclear images even if illum exists.")
@click.option("--force", is_flag=True, help="Redo a well whose geometry report exists.")
@SITE_WORKERS
def geometry(
    workspace: str,
    plate: str,
    well: str,
    arms: tuple[str, ...],
    cycles: tuple[int, ...],
    max_shift_um: float,
    min_correlation: float,
    max_residual_px: float,
    allow_isolated: bool,
    no_illum: bool,
    force: bool,
    workers: int,
) -> None:
    """Site positions per arm (CP; SBS per cycle), refined by registering neighbours."""
    options = RefineOptions(
        max_shift_um=max_shift_um, min_correlation=min_correlation,
        max_residual_px=max_residual_px, allow_isolated=allow_isolated, illum=not no_illum,
    )  # fmt: skip
    r = geometry_well(
        workspace, plate, well, arms=arms or ("cp", "sbs"), cycles=cycles or None,
        options=options, force=force, workers=workers,
    )  # fmt: skip
    done = " (already done)" if r.skipped else ""
    click.echo(f"{plate} {well}{done}: placed {len(r.groups)} arm/cycle group(s)")
    for g in r.groups:
        residual = "n/a" if g.residual_rms_px is None else f"{g.residual_rms_px:.2f} px"
        click.echo(
            f"  {g.label}: {g.sites} site(s) from {g.source}, {g.pairs_used}/{g.pairs} pairs "
            f"used, residual {residual}, {len(g.kept_recorded)} kept at recorded position"
        )
        if g.stage_axes != "as_recorded" or g.stage_axes_scores:
            tried = ", ".join(f"{a} {v:.2f}" for a, v in g.stage_axes_scores.items())
            click.echo(
                f"  {g.label}: stage axes {g.stage_axes} ({g.stage_axes_decided})"
                + (f"; mean correlation of probe pairs: {tried}" if tried else "")
            )
        for k in g.kept_recorded:
            click.echo(f"  {g.label} site {k['site']}: kept recorded position: {k['reason']}")
    click.echo(f"report: {r.report}")
