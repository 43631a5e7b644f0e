"""``starrynight align``: register the SBS cycles of a well to cycle 1."""

from __future__ import annotations

import click

from starrynight.algorithms.align import AlignmentQC
from starrynight.cli.options import echo_bad, well_step
from starrynight.modules.align import align_well


@click.command("align")
@well_step
@click.option(
    "--interpolation", type=click.Choice(["cubic", "linear", "integer"]), default="cubic",
    show_default=True,
    help="Resampling of shifted images (integer: round the shift, no resampling).",
)  # fmt: skip
@click.option(
    "--upsample", type=click.IntRange(1, 1000), default=20, show_default=True,
    help="Registration precision is 1/UPSAMPLE pixel.",
)  # fmt: skip
@click.option(
    "--max-shift", type=click.FloatRange(0), default=50.0, show_default=True,
    help="QC: flag a cycle shifted by more than this many pixels.",
)  # fmt: skip
@click.option(
    "--min-correlation", type=click.FloatRange(-1, 1), default=0.8, show_default=True,
    help="QC: flag a cycle whose nuclei correlate less than this with cycle 1 after alignment.",
)  # fmt: skip
@click.option(
    "--warn-correlation", type=click.FloatRange(-1, 1), default=0.9, show_default=True,
    help="QC: warn below this correlation.",
)  # fmt: skip
def align(
    workspace: str,
    plate: str,
    well: str,
    interpolation: str,
    upsample: int,
    max_shift: float,
    min_correlation: float,
    warn_correlation: float,
    force: bool,
    skip_bad: bool,
    workers: int,
    progress: bool | None,
) -> None:
    """Illumination-correct (when SBS functions exist) and align a well's SBS cycles."""
    qc = AlignmentQC(max_shift, min_correlation, warn_correlation)
    r = align_well(
        workspace, plate, well, interpolation=interpolation,  # type: ignore[arg-type]
        upsample=upsample, qc=qc, force=force, skip_bad=skip_bad, workers=workers,
        progress=progress,
    )  # fmt: skip
    source = "illumination-corrected" if r.illum_corrected else "raw (no SBS illum functions)"
    click.echo(
        f"{plate} {well}: aligned {r.sites_written} site(s) x {len(r.cycles)} cycles from "
        f"{source} images, {r.sites_skipped} already complete; "
        f"{len(r.flagged)} flagged, {len(r.warned)} warned"
    )
    for site, cycle, reason in r.flagged:
        click.echo(f"FLAG site {site} cycle {cycle}: {reason}")
    for site, cycle, reason in r.warned:
        click.echo(f"warn site {site} cycle {cycle}: {reason}")
    echo_bad(r.bad_files)
    click.echo(f"table: {r.table}")
