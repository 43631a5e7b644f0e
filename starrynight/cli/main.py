"""The ``starrynight`` command line: one group per noun (``sample``, ``index``, ...)."""

from __future__ import annotations

import sys

import click

from starrynight.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="starrynight")
def cli() -> None:
    """StarryNight: optical pooled screen and Cell Painting image processing."""


def _register() -> None:
    # Sub-command modules are imported here, not at module top, so that
    # ``starrynight --help`` stays fast and each noun lives in its own module.
    from starrynight.cli import analysis, barcodes, exp, index, inventory, sample, segment

    cli.add_command(sample.sample)
    cli.add_command(inventory.inventory)
    cli.add_command(index.index)
    cli.add_command(exp.exp)
    cli.add_command(segment.segment)
    cli.add_command(segment.segcheck)
    cli.add_command(barcodes.barcodes)
    cli.add_command(analysis.analysis)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: user mistakes become one line and exit 2."""
    _register()
    try:
        rv = cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if isinstance(rv, int) and rv:
        sys.exit(rv)
