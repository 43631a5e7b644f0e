"""Option parsing shared by the ``starrynight`` commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def well_unit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a per plate x well command with ``-w/--workspace``, ``--plate``, ``--well``."""
    return WORKSPACE(PLATE(WELL(fn)))
