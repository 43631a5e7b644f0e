"""``starrynight exp``: the experiment configuration (channel roles, frame, barcodes)."""

from __future__ import annotations

import json

import click

from starrynight import experiment, storage
from starrynight.presets import PRESETS, empty_roles, suggest


@click.group()
def exp() -> None:
    """Experiment configuration: which channel plays which role, per arm."""


@exp.command("init")
@click.option("-w", "--workspace", "ws", required=True, help="Workspace holding the index.")
@click.option(
    "--preset", "presets", multiple=True,
    help="Channel-role preset for dye-named channels, at most one per arm (repeatable): "
    + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()) + ".",
)  # fmt: skip
def init(ws: str, presets: tuple[str, ...]) -> None:
    """Write experiment/experiment.init.json, a template guessed from the index, to edit."""
    path = experiment.init(ws, presets)
    data = json.loads(storage.read_bytes(path))
    click.echo(f"wrote {path}; edit it, then run: starrynight exp new -w {ws} -i {path}")
    for line in empty_roles(data):
        click.echo(line)
    for hint in suggest(data, presets):
        click.echo(f"hint: {hint}")


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
