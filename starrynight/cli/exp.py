"""``starrynight exp``: the experiment configuration (channel roles, frame, barcodes)."""

from __future__ import annotations

import click

from starrynight import experiment


@click.group()
def exp() -> None:
    """Experiment configuration: which channel plays which role, per arm."""


@exp.command("init")
@click.option("-w", "--workspace", "ws", required=True, help="Workspace holding the index.")
def init(ws: str) -> None:
    """Write experiment/experiment.init.json, a template guessed from the index, to edit."""
    path = experiment.init(ws)
    click.echo(f"wrote {path}; edit it, then run: starrynight exp new -w {ws} -i {path}")


@exp.command("new")
@click.option("-w", "--workspace", "ws", required=True, help="Workspace holding the index.")
@click.option(
    "-i", "--input", "choices", required=True,
    help="The edited experiment file (JSON), e.g. experiment/experiment.init.json.",
)  # fmt: skip
def new(ws: str, choices: str) -> None:
    """Validate the experiment file against the index; write experiment/experiment.json."""
    e = experiment.new(ws, choices)
    arms = [a for a in ("cp", "sbs") if getattr(e, a) is not None]
    click.echo(f"wrote experiment for {e.dataset} ({', '.join(arms)})")
