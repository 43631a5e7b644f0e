"""``starrynight barcodes call``: the barcode (and gene) of every SBS cell of a plate x well."""

from __future__ import annotations

from typing import Any

import click

from starrynight.algorithms.barcodes import SpotParams
from starrynight.algorithms.segmentation import NucleiParams
from starrynight.cli.options import echo_bad, echo_well, well_step
from starrynight.modules.barcodes import BarcodeParams, call_well


@click.group()
def barcodes() -> None:
    """Sequencing-by-synthesis barcode calling."""


@barcodes.command("call")
@well_step
@click.option(
    "--barcodes", "barcodes_csv", help="Barcodes.csv [experiment, else dataset metadata]."
)
@click.option(
    "--max-mismatches",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Hamming distance allowed between a read and its barcode.",
)
@click.option(
    "--spot-threshold",
    type=float,
    default=8.0,
    show_default=True,
    help="Spot score threshold in robust standard deviations above the median.",
)
@click.option(
    "--spot-sigma",
    type=click.FloatRange(min=0.3),
    default=None,
    help="Laplacian-of-Gaussian scale in pixels (about the spot radius / 1.4) "
    "[measured on each site's images; recorded as spot_sigma in cells.parquet].",
)
@click.option(
    "--no-compensation",
    is_flag=True,
    help="Do not estimate and undo the per-cycle crosstalk between base channels.",
)
@click.option(
    "--min-count",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Spots that must agree on a cell's barcode.",
)
@click.option(
    "--min-quality",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Ignore reads whose weakest base call has a lower quality, (top - second) / top.",
)
@click.option(
    "--min-odds",
    type=click.FloatRange(min=1.0),
    default=2.0,
    show_default=True,
    help="How many times more likely than all other barcodes together a cell's barcode "
    "must be; "
    "below, the cell is left as a tie.",
)
@click.option(
    "--diameter",
    type=click.FloatRange(min=1.0),
    default=None,
    help="Typical nucleus diameter in pixels (SBS nuclear stain) [estimated per site].",
)
@click.option(
    "--cell-expansion",
    type=float,
    help="Pixels a cell extends beyond its nucleus [0.75 x diameter].",
)
def call(**kw: Any) -> None:
    """Detect spots, read bases, match Barcodes.csv and assign a barcode to each cell."""
    params = BarcodeParams(
        spots=SpotParams(
            sigma=kw["spot_sigma"],
            threshold_sd=kw["spot_threshold"],
            max_distance=kw["max_mismatches"],
            compensate=not kw["no_compensation"],
            min_count=kw["min_count"],
            min_quality=kw["min_quality"],
            min_odds=kw["min_odds"],
        ),
        nuclei=NucleiParams(diameter=kw["diameter"]),
        cell_expansion=kw["cell_expansion"],
    )
    res = call_well(
        kw["workspace"], kw["plate"], kw["well"], barcodes=kw["barcodes_csv"], params=params,
        workers=kw["workers"], force=kw["force"], skip_bad=kw["skip_bad"],
        progress=kw["progress"],
    )  # fmt: skip
    reasons = sorted(res.reasons.items(), key=lambda kv: -kv[1])
    echo_well(
        res,
        f"{res.sites} site(s), {res.spots} spots, {res.cells} cells, {res.assigned} with a barcode",
        [f"unassigned ({why}): {n}" for why, n in reasons],
    )
    echo_bad(res.bad_files)
