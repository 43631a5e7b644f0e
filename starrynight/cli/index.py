"""``starrynight index``: what every image of the dataset is."""

from __future__ import annotations

import click

from starrynight import index as index_mod
from starrynight.experiment import load_experiment_or_none


@click.group()
def index() -> None:
    """The image index: dataset, plate, arm, cycle, well, site, channels of each file."""


@index.command("gen")
@click.option(
    "-i", "--inventory", "inventory_uri", required=True,
    help="Inventory parquet, or the workspace holding inventory/inventory.parquet.",
)  # fmt: skip
@click.option(
    "-o", "--workspace", "ws", required=True,
    help="Workspace; writes index/index.parquet and index/rejects.parquet there.",
)  # fmt: skip
@click.option(
    "-g", "--grammar", default=None,
    help="Pattern file (JSON) for another naming scheme; default: Cell Painting Gallery.",
)  # fmt: skip
def gen(inventory_uri: str, ws: str, grammar: str | None) -> None:
    """Parse the inventory's paths into the index; other paths go to the rejects table."""
    summary = index_mod.generate(inventory_uri, ws, grammar, load_experiment_or_none(ws))
    click.echo(summary.line())


@index.command("show")
@click.argument("ws", metavar="WORKSPACE")
def show(ws: str) -> None:
    """Per plate/well/arm/cycle: sites present, channels, missing images or channels."""
    rows = index_mod.show(ws, load_experiment_or_none(ws))
    cols = ["plate", "well", "arm", "cycle", "sites", "channels", "missing"]
    _print_table(cols, [[r[c] for c in cols] for r in rows])


@index.command("query")
@click.argument("ws", metavar="WORKSPACE")
@click.argument("sql")
def query(ws: str, sql: str) -> None:
    """Run DuckDB SQL over the tables "index" (alias images) and rejects.

    Example: starrynight index query WS "select plate, count(*) from images group by 1"
    """
    cols, rows = index_mod.query(ws, sql)
    _print_table(cols, rows)


@index.command("check")
@click.argument("ws", metavar="WORKSPACE")
def check(ws: str) -> None:
    """List every missing image or channel (per plate/well/site/cycle); exit 1 if any."""
    missing = index_mod.check(ws, load_experiment_or_none(ws))
    rows = [[r["plate"], r["well"], r["site"], r["arm"], r["cycle"], ",".join(r["missing"])]
            for r in missing.to_pylist()]  # fmt: skip
    if rows:
        _print_table(["plate", "well", "site", "arm", "cycle", "missing"], rows)
        raise click.exceptions.Exit(1)
    click.echo("complete: every site has every cycle and channel")


def _print_table(cols: list[str], rows: list) -> None:
    text = [[str(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in text]) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for r in text:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
