"""Options and output shared by the ``starrynight`` commands."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import click


def comma_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    """Click callback: ``"a,b, c"`` -> ``("a", "b", "c")``; empty items are an error."""
    if value is None:
        return ()
    items = tuple(v.strip() for v in value.split(","))
    if any(not v for v in items):
        raise click.BadParameter(f"{value!r}: expected a comma-separated list without empty items")
    return items


WORKSPACE = click.option(
    "-w", "--workspace", required=True, help="Workspace folder or s3:// prefix (holds the index)."
)
PLATE = click.option("--plate", required=True, help="Plate name, as in the index.")
WELL = click.option("--well", required=True, help="Well name, as in the index.")

SITE_WORKERS = click.option(
    "--workers", type=click.IntRange(1), default=2, show_default=True,
    help="Sites processed in parallel.",
)  # fmt: skip


FORCE = click.option("--force", is_flag=True, help="Redo work whose outputs are already complete.")
SKIP_BAD = click.option(
    "--skip-bad", is_flag=True,
    help="Continue past unreadable or inconsistent images and list them (default: stop).",
)  # fmt: skip
PROGRESS = click.option(
    "--progress/--no-progress", default=None,
    help="Progress line: sites done / total, rate, time left [default: on a terminal].",
)  # fmt: skip


def well_unit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a per plate x well command with ``-w/--workspace``, ``--plate``, ``--well``."""
    return WORKSPACE(PLATE(WELL(fn)))


def well_step(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every per plate x well step's options, spelled the same way everywhere.

    ``-w/--workspace``, ``--plate``, ``--well``, ``--workers``, ``--force``,
    ``--skip-bad`` and ``--progress/--no-progress`` (the site runner's options, see
    :func:`starrynight.siterunner.run_sites`).
    """
    for option in (PROGRESS, SKIP_BAD, FORCE, SITE_WORKERS):
        fn = option(fn)
    return well_unit(fn)


def echo_bad(bad: Iterable[tuple[str, str]]) -> None:
    """Print the inputs a ``--skip-bad`` run left out, one a line on stderr."""
    for path, problem in bad:
        click.echo(f"skipped bad image: {path}: {problem}", err=True)


class WellOutcome(Protocol):
    """The part of a per-well step's result that :func:`echo_well` prints."""

    @property
    def plate(self) -> str: ...
    @property
    def well(self) -> str: ...
    @property
    def skipped(self) -> bool: ...
    @property
    def cells(self) -> int: ...
    @property
    def no_cells(self) -> Sequence[int]: ...
    @property
    def outputs(self) -> Sequence[str]: ...


def echo_well(res: WellOutcome, counts: str, notes: Iterable[str] = ()) -> None:
    """Print what a per plate x well step did.

    Parameters
    ----------
    res : WellOutcome
        The step's result.
    counts : str
        What it found, after ``<plate> <well>[ (already done)]:`` on the first line.
    notes : iterable of str
        Lines printed after the warnings about cells (which go to stderr), before the
        output URIs, one a line.
    """
    done = " (already done)" if res.skipped else ""
    click.echo(f"{res.plate} {res.well}{done}: {counts}")
    if res.cells == 0:
        click.echo("no cells found in this well", err=True)
    elif res.no_cells:
        click.echo(f"no cells found at site(s) {', '.join(map(str, res.no_cells))}", err=True)
    for line in notes:
        click.echo(line)
    for uri in res.outputs:
        click.echo(uri)
