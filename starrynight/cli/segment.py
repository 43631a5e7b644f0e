"""``starrynight segment`` and ``starrynight segcheck``: nuclei and cells of a plate x well."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from starrynight.algorithms.segmentation import NucleiParams
from starrynight.cli.options import SITE_WORKERS, echo_bad, well_step, well_unit
from starrynight.modules.segment import SegmentParams, SegmentResult, segcheck_well, segment_well


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--nuclei-channel", help="Nuclear stain (normalised name, e.g. DAPI)."),
        click.option("--cell-channel", help="Cell stain to grow cells on (e.g. PhalloAF750)."),
        click.option(
            "--diameter", type=click.FloatRange(min=1.0), default=None,
            help="Typical nucleus diameter in pixels (declumping scale) [estimated per "
            "well from the nuclear stain].",
        ),
        click.option(
            "--threshold-factor", type=float, default=0.85, show_default=True,
            help="Multiplies the Otsu threshold of the nuclear stain.",
        ),
        click.option(
            "--edge-fraction", type=click.FloatRange(0.0, 0.95), default=0.5,
            show_default=True,
            help="Redraw each nucleus's outline at this fraction of the way from the local "
            "background to its own brightness (0.5: half maximum; 0: keep the threshold's).",
        ),
        click.option("--min-area", type=float, help="Smallest nucleus in pixels [0.1 x disc]."),
        click.option("--max-area", type=float, help="Largest nucleus in pixels [10 x disc]."),
        click.option(
            "--cell-threshold-factor", type=float, default=0.7, show_default=True,
            help="Multiplies the Otsu threshold of the cell stain.",
        ),
        click.option(
            "--max-cell-distance", type=float, default=40.0, show_default=True,
            help="Largest distance in pixels a cell extends beyond its nucleus.",
        ),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def _params(kw: dict[str, Any]) -> SegmentParams:
    nuclei = NucleiParams(
        diameter=kw["diameter"],
        threshold_factor=kw["threshold_factor"],
        edge_fraction=kw["edge_fraction"] or None,
        min_area=kw["min_area"],
        max_area=kw["max_area"],
    )
    return SegmentParams(
        nuclei=nuclei,
        cell_threshold_factor=kw["cell_threshold_factor"],
        cell_max_distance=kw["max_cell_distance"],
    )


def _report(res: SegmentResult) -> None:
    click.echo(
        f"{res.plate} {res.well}: {res.sites} site(s) ({res.computed} computed, "
        f"{res.skipped} already done), {res.nuclei} nuclei, {res.cells} cells"
    )
    if res.nuclei == 0:
        click.echo("no cells found in this well", err=True)
    for site, why in sorted(res.flagged.items()):
        click.echo(f"flagged site {site}: {why}", err=True)
    if res.diameter is not None:
        click.echo(f"nucleus diameter {res.diameter:.1f} px ({res.diameter_source})")
    for uri in res.outputs:
        click.echo(uri)


@click.command("segment")
@well_step
@_common
def segment(**kw: Any) -> None:
    """Segment nuclei and cells on every site of a plate x well (corrected CP images)."""
    res = segment_well(
        kw["workspace"], kw["plate"], kw["well"],
        nuclei_channel=kw["nuclei_channel"], cell_channel=kw["cell_channel"],
        params=_params(kw), workers=kw["workers"], force=kw["force"], skip_bad=kw["skip_bad"],
        progress=kw["progress"],
    )  # fmt: skip
    _report(res)
    echo_bad(res.bad_files)


@click.command("segcheck")
@well_unit
@SITE_WORKERS
@_common
@click.option(
    "--every", type=click.IntRange(1), default=4, show_default=True,
    help="Check every n-th site of the well.",
)  # fmt: skip
def segcheck(**kw: Any) -> None:
    """Segment a sample of sites and render outline overlays (PNG) for review."""
    res = segcheck_well(
        kw["workspace"], kw["plate"], kw["well"], every=kw["every"],
        nuclei_channel=kw["nuclei_channel"], cell_channel=kw["cell_channel"],
        params=_params(kw), workers=kw["workers"],
    )  # fmt: skip
    _report(res)
