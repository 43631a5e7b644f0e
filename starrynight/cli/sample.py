"""``starrynight sample``: the synthetic dataset with ground truth."""

from __future__ import annotations

import click

from starrynight.cli.options import comma_list
from starrynight.sample import SampleSpec, default_phenotypes, generate


def _grid(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    rows, sep, cols = value.lower().partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit() or min(int(rows), int(cols)) < 1:
        raise click.BadParameter(f"{value!r}: expected ROWSxCOLUMNS, e.g. 4x4")
    return int(rows), int(cols)


@click.group()
def sample() -> None:
    """Synthetic OPS datasets with a known answer (for demos, tests and benchmarks)."""


@sample.command("generate")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--dataset", default="sample", show_default=True, help="Dataset folder name.")
@click.option("--source", default="source_1", show_default=True, help="Source folder name.")
@click.option("--batch", default="Batch1", show_default=True, help="Batch folder name.")
@click.option(
    "--plates", default="Plate1", show_default=True, callback=comma_list,
    help="Comma-separated plate names.",
)  # fmt: skip
@click.option(
    "--wells", default="A1,A2", show_default=True, callback=comma_list,
    help="Comma-separated well names (A1, A01 and 1 are all accepted).",
)  # fmt: skip
@click.option("--sites", default=4, show_default=True, type=int, help="Sites per well.")
@click.option("--cycles", default=4, show_default=True, type=int, help="SBS cycles (0: CP only).")
@click.option("--size", default=512, show_default=True, type=int, help="Image size in pixels.")
@click.option(
    "--cp-channels", default="PhalloAF750,ZO1-AF488,DAPI", show_default=True,
    callback=comma_list, help="Cell Painting channel names, in frame order.",
)  # fmt: skip
@click.option(
    "--sbs-channels", default="C,A,T,G,DAPI", show_default=True, callback=comma_list,
    help="SBS channel names, in frame order; must include A, C, G, T and a nuclear stain.",
)  # fmt: skip
@click.option(
    "--noise", default=1.0, show_default=True, type=float,
    help="Noise level: 2 halves the photons and doubles the read noise; 0 is noise-free.",
)  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option(
    "--camera-offset", default=100, show_default=True, type=int,
    help="Dark counts the camera adds to every pixel.",
)  # fmt: skip
@click.option("--barcodes", "n_barcodes", default=24, show_default=True, type=int,
              help="Number of sgRNAs in Barcodes.csv.")  # fmt: skip
@click.option(
    "--phenotypes", callback=comma_list,
    help="Planted phenotypes GENE:EFFECT:AMOUNT,... (nucleus_grow, nucleus_dim, "
    "cytoplasm_dim), or 'default' for 5 genes [none].",
)  # fmt: skip
@click.option("--workers", default=2, show_default=True, type=int, help="Parallel processes.")
@click.option(
    "--geometry", type=click.Choice(["shared", "real"]), default="real", show_default=True,
    help="shared: CP and SBS image the same --sites fields at one scale; real: 20X CP and 10X "
    "SBS on their own overlapping grids of one well, SBS rotated and shifted, stage errors.",
)  # fmt: skip
@click.option(
    "--cp-grid", default="4x4", show_default=True, callback=_grid,
    help="Real geometry: CP sites as ROWSxCOLUMNS.",
)  # fmt: skip
@click.option(
    "--sbs-grid", default="2x2", show_default=True, callback=_grid,
    help="Real geometry: SBS sites as ROWSxCOLUMNS.",
)  # fmt: skip
@click.option(
    "--overlap-pct", default=10.0, show_default=True, type=float,
    help="Real geometry: overlap of neighbouring fields, percent.",
)  # fmt: skip
@click.option(
    "--pixel-ratio", default=1.99, show_default=True, type=float,
    help="Real geometry: SBS pixel size over CP pixel size.",
)  # fmt: skip
@click.option(
    "--stage-error-um", default=1.0, show_default=True, type=float,
    help="Real geometry: stage error (standard deviation per axis, um).",
)  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
def generate_cmd(out: str, overwrite: bool, **options: object) -> None:
    """Write a sample OPS dataset (Cell Painting + SBS cycles) and its ground truth."""
    if options["phenotypes"] == ("default",):
        options["phenotypes"] = default_phenotypes()
    spec = SampleSpec(**options)  # type: ignore[arg-type]
    result = generate(spec, out, overwrite=overwrite)
    if spec.geometry == "real":
        sites = (
            f"{spec.cp_grid[0]}x{spec.cp_grid[1]} CP and {spec.sbs_grid[0]}x{spec.sbs_grid[1]} "
            "SBS site(s)"
        )
    else:
        sites = f"{spec.sites} site(s)"
    click.echo(
        f"wrote {result.n_files} images of {len(spec.plates)} plate(s) x {len(spec.wells)} "
        f"well(s) x {sites} ({spec.cycles} SBS cycles), {result.n_cells} cells, "
        f"in {result.seconds:.1f} s"
    )
    click.echo(f"dataset:      {result.dataset_root}")
    click.echo(f"ground truth: {result.ground_truth}")
