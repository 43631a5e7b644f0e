"""``starrynight qc``: the per-plate QC reports a reviewer decides a gate from."""

from __future__ import annotations

import click

from starrynight.cli.options import PLATE, WORKSPACE


@click.group()
def qc() -> None:
    """QC reports per plate and gate (figures, their data, an index.json)."""


@qc.command("report")
@WORKSPACE
@PLATE
@click.option(
    "--gate", type=click.Choice(["painting", "barcoding", "all"]), default="all",
    show_default=True, help="Which gate's report to write.",
)  # fmt: skip
@click.option(
    "--sample-sites", type=click.IntRange(0), default=6, show_default=True,
    help="Sites shown with segmentation outlines (painting), spread over the wells; "
    "sites with implausible counts first.",
)  # fmt: skip
def report_cmd(workspace: str, plate: str, gate: str, sample_sites: int) -> None:
    """Write qc_reports/<plate>/<gate>/: PNG figures, their data as parquet, index.json."""
    from starrynight.modules.qc import GATES, write_report

    for g in GATES if gate == "all" else (gate,):
        rep = write_report(workspace, plate, g, sample_sites=sample_sites)
        click.echo(f"{plate} {g}: {rep.status}, {len(rep.figures)} figure(s)")
        for f in rep.figures:
            mark = "!" if f["attention"] else " "
            click.echo(f" {mark} {f['name']}: {f['finding']}")
        if rep.missing:
            click.echo(f"{len(rep.missing)} input(s) missing, e.g. {rep.missing[0]}", err=True)
        click.echo(rep.index)
