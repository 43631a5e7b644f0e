"""The ``starrynight`` command line: one group per noun (``sample``, ``index``, ...)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import NoReturn

import click

from starrynight.errors import UserError, environment_error

#: Every top-level command: name -> "module:attribute". Commands are imported only when
#: used, so a light command does not pay for the image libraries a heavy one needs.
COMMANDS: dict[str, str] = {
    "sample": "starrynight.cli.sample:sample",
    "inventory": "starrynight.cli.inventory:inventory",
    "index": "starrynight.cli.index:index",
    "exp": "starrynight.cli.exp:exp",
    "illum": "starrynight.cli.illum:illum",
    "align": "starrynight.cli.align:align",
    "geometry": "starrynight.cli.geometry:geometry",
    "mosaic": "starrynight.cli.mosaic:mosaic",
    "merge": "starrynight.cli.merge:merge",
    "segment": "starrynight.cli.segment:segment",
    "segcheck": "starrynight.cli.segment:segcheck",
    "barcodes": "starrynight.cli.barcodes:barcodes",
    "analysis": "starrynight.cli.analysis:analysis",
    "results": "starrynight.cli.results:results",
    "cp": "starrynight.cli.cp:cp",
    "qc": "starrynight.cli.qc:qc",
}


class LazyGroup(click.Group):
    """A click group that imports a sub-command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, _, attr = COMMANDS[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="starrynight")
def cli() -> None:
    """StarryNight: optical pooled screen and Cell Painting image processing."""


def _register() -> None:
    """Load every command now (for tests that inspect ``cli.commands``)."""
    ctx = click.Context(cli)
    for name in COMMANDS:
        cli.get_command(ctx, name)


def run_group(group: click.Group, argv: list[str] | None = None) -> None:
    """Run a click group as a console script: user mistakes become one line and exit 2.

    So do refusals of the environment about a path (permission denied, read-only or
    full disk, a file where a folder should be; see
    :func:`starrynight.errors.environment_error`); ``STARRYNIGHT_TRACEBACK=1`` shows
    their traceback instead.

    Shared by every console script of the project (``starrynight``, ``conductor``).
    """
    try:
        rv = group.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        user_error = environment_error(exc)
        if user_error is None or os.environ.get("STARRYNIGHT_TRACEBACK"):
            raise
        click.echo(f"error: {user_error}", err=True)
        sys.exit(2)
    if isinstance(rv, int) and rv:
        sys.exit(rv)


def main(argv: list[str] | None = None) -> None:
    """Run the ``starrynight`` command line in this process (tests call it directly)."""
    run_group(cli, argv)


def console(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the console script and ``python -m starrynight.cli``.

    :func:`main`, then a hard exit. Arrow's native thread pools can abort the interpreter
    at exit ("terminate called without an active exception", SIGABRT, apache/arrow#34314)
    after all the work is done: seen here as a failed pipeline node whose outputs were
    complete. Every output is written (atomically) before this point, so the process
    flushes its streams and logs and leaves without running native destructors.
    """
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
