"""``starrynight inventory``: list every file of a dataset."""

from __future__ import annotations

import click

from starrynight import inventory as inventory_mod


@click.group()
def inventory() -> None:
    """The file inventory of a dataset (local folder or s3://bucket/prefix)."""


@inventory.command("gen")
@click.option(
    "-d", "--dataset", required=True,
    help="Dataset root: a local folder or s3://bucket/prefix (keys are relative to it).",
)  # fmt: skip
@click.option(
    "-o", "--workspace", "ws", required=True,
    help="Workspace folder or s3:// prefix; writes inventory/inventory.parquet there.",
)  # fmt: skip
@click.option(
    "--plate", default=None,
    help="List only this plate's folders and replace its rows in an existing inventory.",
)  # fmt: skip
@click.option(
    "--progress/--no-progress", default=None,
    help="Show a file counter (default: only when stderr is a terminal).",
)  # fmt: skip
def gen(dataset: str, ws: str, plate: str | None, progress: bool | None) -> None:
    """List every file under DATASET into WORKSPACE/inventory/inventory.parquet."""
    s = inventory_mod.generate(dataset, ws, plate=plate, progress=progress)
    extra = f"; replaced {s.replaced_plate_rows} row(s) of plate {plate}" if plate else ""
    click.echo(f"inventoried {s.files} file(s), {s.bytes / 1e9:.3f} GB -> {s.path}{extra}")
    if s.dangling:
        click.echo(
            f"warning: {len(s.dangling)} dangling symbolic link(s) not inventoried "
            f"(their targets do not exist), e.g. {s.dangling[0]}",
            err=True,
        )
