"""Option parsing shared by the ``starrynight`` commands."""

from __future__ import annotations

import click


def comma_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    """Click callback: ``"a,b, c"`` -> ``("a", "b", "c")``; empty items are an error."""
    if value is None:
        return ()
    items = tuple(v.strip() for v in value.split(","))
    if any(not v for v in items):
        raise click.BadParameter(f"{value!r}: expected a comma-separated list without empty items")
    return items
