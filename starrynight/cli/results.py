"""``starrynight results``: per-plate normalised profiles and per-screen hits."""

from __future__ import annotations

from typing import Any

import click

from starrynight.algorithms.profiles import CONTROL_LABEL
from starrynight.cli.options import PLATE, WORKSPACE, comma_list

CONTROL = click.option(
    "--control-label", default=CONTROL_LABEL, show_default=True,
    help="gene_symbol of the non-targeting control guides (Barcodes.csv).",
)  # fmt: skip


ALLOW_NO_CONTROLS = click.option(
    "--allow-no-controls", is_flag=True,
    help="A plate without control cells is reported (status no_controls) and left out of "
    "the screen instead of being an error.",
)  # fmt: skip


@click.group()
def results() -> None:
    """Screen results: normalised per-gene profiles and hits with statistics."""


@results.command("profiles")
@WORKSPACE
@PLATE
@CONTROL
@click.option(
    "--outlier-z", type=float, default=10.0, show_default=True,
    help="A feature is extreme in a cell beyond this robust z-score.",
)  # fmt: skip
@click.option(
    "--outlier-fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True,
    help="A cell is an outlier when more than this fraction of its features are extreme.",
)  # fmt: skip
@ALLOW_NO_CONTROLS
@click.option("--force", is_flag=True, help="Recompute when the plate's profiles are current.")
def profiles(**kw: Any) -> None:
    """Filter a plate's cells and robust z-score them against its own controls."""
    from starrynight.modules.results import plate_profiles

    res = plate_profiles(
        kw["workspace"], kw["plate"], control_label=kw["control_label"],
        outlier_z=kw["outlier_z"], outlier_fraction=kw["outlier_fraction"],
        allow_no_controls=kw["allow_no_controls"], force=kw["force"],
    )  # fmt: skip
    c = res.counts
    done = " (already done)" if res.skipped else ""
    if res.status != "profiled":
        click.echo(f"{res.plate}{done}: not profiled: {res.message}")
        for uri in res.outputs:
            click.echo(uri)
        return
    click.echo(
        f"{res.plate}{done}: {c.kept} of {c.total} cells kept (no gene {c.no_gene}, field edge "
        f"{c.field_edge}, well edge {c.well_edge}, outliers {c.outliers}); {res.n_controls} "
        f"control cells, {res.n_features} features"
    )
    if res.unscalable:
        click.echo(
            f"{len(res.unscalable)} feature(s) without spread in the controls, left NaN: "
            f"{', '.join(res.unscalable[:5])}{', ...' if len(res.unscalable) > 5 else ''}",
            err=True,
        )
    for uri in res.outputs:
        click.echo(uri)


@results.command("hits")
@WORKSPACE
@click.option("--plates", callback=comma_list, help="Plates to combine [every profiled plate].")
@click.option(
    "--unit", type=click.Choice(["guide", "cell"]), default="guide", show_default=True,
    help="Profiles compared for mAP: per well x sgRNA medians, or single cells (small screens).",
)  # fmt: skip
@CONTROL
@click.option("--threshold", type=float, default=0.05, show_default=True, help="q-value of a hit.")
@click.option(
    "--null-size", type=click.IntRange(100), default=10000, show_default=True,
    help="Permutations of the mAP null distribution.",
)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random draw.")
@click.option(
    "--max-cells-per-gene", type=click.IntRange(2), default=200, show_default=True,
    help="Cells per gene compared with --unit cell.",
)  # fmt: skip
@click.option(
    "--max-control-cells", type=click.IntRange(2), default=5000, show_default=True,
    help="Control cells compared with --unit cell.",
)  # fmt: skip
@click.option(
    "--corr-threshold", type=click.FloatRange(0, 1), default=0.9, show_default=True,
    help="Drop one of each pair of features correlated above this.",
)  # fmt: skip
@click.option(
    "--na-cutoff", type=click.FloatRange(0, 1), default=0.05, show_default=True,
    help="Drop features missing in more than this fraction of cells.",
)  # fmt: skip
@click.option(
    "--blocklist", callback=comma_list,
    help="Glob patterns of features to drop, comma-separated (location features always are).",
)  # fmt: skip
@click.option("--top", "top_k", type=click.IntRange(1), default=5, show_default=True,
              help="Features listed per gene.")  # fmt: skip
@ALLOW_NO_CONTROLS
@click.option("--force", is_flag=True, help="Recompute when the screen's results are current.")
def hits(**kw: Any) -> None:
    """Aggregate to sgRNA and gene across plates, score activity (copairs mAP), call hits."""
    from starrynight.modules.results import screen_hits

    res = screen_hits(
        kw["workspace"], list(kw["plates"]) or None, unit=kw["unit"],
        control_label=kw["control_label"], threshold=kw["threshold"],
        null_size=kw["null_size"], seed=kw["seed"],
        max_cells_per_gene=kw["max_cells_per_gene"], max_control_cells=kw["max_control_cells"],
        na_cutoff=kw["na_cutoff"], corr_threshold=kw["corr_threshold"],
        blocklist=kw["blocklist"], top_k=kw["top_k"],
        allow_no_controls=kw["allow_no_controls"], force=kw["force"],
    )  # fmt: skip
    done = " (already done)" if res.skipped else ""
    for plate, why in res.excluded.items():
        click.echo(f"plate {plate} left out: {why}", err=True)
    if res.status != "scored":
        click.echo(f"screen{done}: not scored: {res.message}")
        for uri in res.outputs:
            click.echo(uri)
        return
    click.echo(
        f"screen{done} ({', '.join(res.plates)}; unit {res.unit}): {res.n_hits} hit(s) at q < "
        f"{kw['threshold']:g} among {res.n_scored} scored of {res.n_genes} gene(s); "
        f"{res.n_features} features selected"
    )
    if res.hits:
        click.echo(f"hits: {', '.join(res.hits)}")
    if res.n_scored < res.n_genes:
        click.echo(
            f"{res.n_genes - res.n_scored} gene(s) could not be scored (see activity_status)",
            err=True,
        )
    for uri in res.outputs:
        click.echo(uri)
