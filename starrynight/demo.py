"""The CLI walk-through: generate the sample screen and run every step on it.

``python -m starrynight.demo --out demo_out`` runs exactly the commands a user would
type (see the README's worked session), one ``starrynight`` process per step and unit
of work, and prints what each produced and how long it took. It is also the reference
that the Dagster benchmark compares against.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from starrynight.errors import UserError


@dataclass(frozen=True)
class StepRun:
    """One CLI call and how it went."""

    argv: tuple[str, ...]
    seconds: float
    output: str


def cli_steps(
    dataset: str, ws: str, plates: Sequence[str], wells: Sequence[str]
) -> list[list[str]]:
    """The CLI calls, in order, that process a dataset end to end.

    Parameters
    ----------
    dataset, ws : str
        Dataset root and workspace (local folders or ``s3://`` URIs).
    plates, wells : sequence of str
        The plates and wells to process.

    Returns
    -------
    list of argv lists (without the program name)
    """
    steps: list[list[str]] = [
        ["inventory", "gen", "-d", dataset, "-o", ws, "--no-progress"],
        ["index", "gen", "-i", ws, "-o", ws],
        ["exp", "init", "-w", ws],
        ["exp", "new", "-w", ws, "-i", str(Path(ws, "experiment", "experiment.init.json"))],
    ]
    for plate in plates:
        steps.append(["illum", "calc", "-w", ws, "--plate", plate])
        for well in wells:
            unit = ["-w", ws, "--plate", plate, "--well", well]
            steps += [
                ["illum", "apply", *unit],
                ["align", *unit],
                ["segcheck", *unit],
                ["segment", *unit],
                ["barcodes", "call", *unit],
                ["analysis", "run", *unit],
            ]
        steps.append(["analysis", "summary", "-w", ws, "--plate", plate])
    return steps


def run_step(argv: Sequence[str]) -> StepRun:
    """Run ``starrynight <argv>`` in a fresh process; raise UserError if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "starrynight.cli", *argv], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise UserError(f"step 'starrynight {' '.join(argv)}' failed: {last[0]}")
    return StepRun(tuple(argv), seconds, proc.stdout.strip())


@click.command()
@click.option("--out", default="demo_out", show_default=True, help="Folder for everything.")
@click.option("--sites", default=4, show_default=True, help="Sites per well.")
@click.option("--size", default=512, show_default=True, help="Image size in pixels.")
def main(out: str, sites: int, size: int) -> None:
    """Generate the sample screen and run every step on it through the CLI."""
    root = Path(out).absolute()
    data, ws = root / "data", root / "workspace"
    plates, wells = ["Plate1"], ["A1", "A2"]
    total = time.perf_counter()
    gen = ["sample", "generate", "-o", str(data), "--overwrite", "--geometry", "shared",
           "--sites", str(sites),
           "--size", str(size), "--plates", ",".join(plates),
           "--wells", ",".join(wells)]  # fmt: skip
    runs = [run_step(gen)]
    for argv in cli_steps(str(data / "sample"), str(ws), plates, wells):
        click.echo(f"$ starrynight {' '.join(argv)}", err=True)
        runs.append(run_step(argv))
    for r in runs:
        click.echo(f"{r.seconds:7.1f} s  starrynight {' '.join(r.argv[:2])}")
        for line in r.output.splitlines()[:3]:
            click.echo(f"           {line}")
    click.echo(f"total {time.perf_counter() - total:.1f} s; dataset {data}; workspace {ws}")


if __name__ == "__main__":
    try:
        main(standalone_mode=True)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
