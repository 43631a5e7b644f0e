"""``starrynight cp``: CellProfiler interop (LoadData CSVs, running a lab's .cppipe)."""

from __future__ import annotations

import click

from starrynight.cli.options import FORCE, comma_list, well_unit

_STEP_NAMES = (
    "illum_calc_cp", "illum_apply_cp", "segcheck_cp", "illum_calc_sbs", "illum_apply_sbs",
    "preprocess_sbs", "analysis",
)  # fmt: skip


@click.group("cp")
def cp() -> None:
    """CellProfiler interop: LoadData CSVs from the index, and running your .cppipe."""


@cp.command("loaddata")
@click.option(
    "-w", "--workspace", required=True,
    help="Workspace folder or s3:// prefix (holds the index and experiment).",
)  # fmt: skip
@click.option(
    "--step", required=True, type=click.Choice(_STEP_NAMES),
    help="Which images the CSV loads: " + ", ".join(_STEP_NAMES) + " (see README).",
)  # fmt: skip
@click.option(
    "--by", callback=comma_list, default=None,
    help="Unit of work, one CSV per group: comma-separated keys among plate,well,site "
    "(and cycle for illum_calc_sbs). Default: plate for illum_calc_*, else plate,well.",
)  # fmt: skip
@click.option(
    "--plate", "plates", callback=comma_list, help="Comma-separated plates (default: all)."
)
@click.option("--well", "wells", callback=comma_list, help="Comma-separated wells (default: all).")
@click.option(
    "--path-mask", default=None,
    help="Write PathName_ columns with the dataset root replaced by this prefix "
    "(where the cluster mounts the dataset); existence is checked on the real paths.",
)  # fmt: skip
@click.option(
    "--workspace-mask",
    default=None,
    help="Same as --path-mask for files under the workspace (illum, corrected, aligned).",
)
@click.option(
    "--name", "names", multiple=True,
    help="CHANNEL=NAME: CellProfiler name of a channel (as written in file names), "
    "overriding the role-based default (DNA, Phalloidin, Mito, A/C/G/T). Repeatable.",
)  # fmt: skip
@click.option(
    "--grid", type=click.Choice(["auto", "tiles", "sites"]), default="auto", show_default=True,
    help="Step analysis: rows over the tiles 'cp tiles' cut (tiles), over CP and SBS sites "
    "paired by number (sites; wells on one site grid only), or tiles where a well has "
    "them and sites elsewhere (auto).",
)  # fmt: skip
def loaddata(
    workspace: str,
    step: str,
    by: tuple[str, ...],
    plates: tuple[str, ...],
    wells: tuple[str, ...],
    path_mask: str | None,
    workspace_mask: str | None,
    names: tuple[str, ...],
    grid: str,
) -> None:
    """Write LoadData CSVs (PCPIP conventions) for one step into WORKSPACE/loaddata/<step>."""
    from starrynight.cellprofiler.loaddata import parse_name_overrides, write_loaddata

    result = write_loaddata(
        workspace, step, by or None, plates, wells, path_mask, workspace_mask,
        parse_name_overrides(names), grid,
    )  # fmt: skip
    click.echo(result.line())
    for c in result.csvs:
        click.echo(f"{c.uri}\t{c.rows} row(s)")


@cp.command("tiles")
@well_unit
@click.option(
    "--tiles-per-side", type=click.IntRange(1), default=None,
    help="PCPIP's tileperside: tiles along each side of the canvas. Default: tiles about "
    "one CP field of view on a side (or as many as --tile-size needs).",
)  # fmt: skip
@click.option(
    "--tile-size", type=click.IntRange(1), default=None,
    help="PCPIP's final_tile_size: side of a tile in CP pixels. Default: the smallest "
    "that covers the well with --tiles-per-side tiles.",
)  # fmt: skip
@click.option(
    "--transform", type=click.Choice(["merge", "stage"]), default="merge", show_default=True,
    help="How SBS is placed in the CP frame: the merge's similarity registered from the "
    "nuclei of both arms, or the recorded stage positions alone.",
)  # fmt: skip
@click.option(
    "--name", "names", multiple=True,
    help="CHANNEL=NAME, as for 'cp loaddata' (tile folders and files are named after the "
    "CellProfiler images). Repeatable.",
)  # fmt: skip
@FORCE
@click.option(
    "--workers", type=click.IntRange(1), default=2, show_default=True,
    help="Tiles cut in parallel.",
)  # fmt: skip
def tiles(
    workspace: str, plate: str, well: str, tiles_per_side: int | None, tile_size: int | None,
    transform: str, names: tuple[str, ...], force: bool, workers: int,
) -> None:  # fmt: skip
    """Cut both arms' mosaics of a well into one tile grid (PCPIP's stitch and crop).

    For wells whose CP and SBS arms were imaged on different site grids: PCPIP's
    9_Analysis then runs on the tiles ('cp loaddata --step analysis').
    """
    from starrynight.cellprofiler.loaddata import parse_name_overrides
    from starrynight.cellprofiler.tiles import tile_well

    r = tile_well(
        workspace, plate, well, tiles_per_side, tile_size, parse_name_overrides(names),
        transform, force, workers,
    )  # fmt: skip
    for w in r.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(r.line())
    for uri in r.outputs:
        click.echo(uri)


@cp.command("run")
@click.option("-w", "--workspace", required=True, help="Workspace holding loaddata/<step>/*.csv.")
@click.option(
    "--step", required=True, type=click.Choice(_STEP_NAMES), help="Step whose CSVs to run."
)
@click.option(
    "-p", "--pipeline", required=True,
    help="Your CellProfiler pipeline (.cppipe) with a LoadData module.",
)  # fmt: skip
@click.option(
    "--plate", "plates", callback=comma_list, help="Comma-separated plates (default: all)."
)
@click.option(
    "--backend", type=click.Choice(["local", "snakemake", "aws_batch"]), default="local",
    show_default=True, help="Where the CellProfiler processes run.",
)  # fmt: skip
@click.option(
    "--cellprofiler", default="cellprofiler", show_default=True,
    help="CellProfiler executable: name on PATH or path (inside the image on AWS Batch).",
)  # fmt: skip
@click.option(
    "--plugins-directory", default=None,
    help="Folder of CellProfiler plugin modules (.py) the pipeline uses, e.g. "
    "CompensateColors and CallBarcodes of PCPIP 7 and 9 from CellProfiler-plugins "
    "(not on PyPI: bring them). A module neither stock nor here is refused before the run.",
)  # fmt: skip
@click.option(
    "--input-folder", default=None,
    help="CellProfiler's Default Input Folder (-i). Default: WORKSPACE/cellprofiler/<step>/"
    "_input, holding the experiment's barcode table as Barcodes.csv when the pipeline "
    "reads it from there (CallBarcodes).",
)  # fmt: skip
@click.option(
    "--workers", type=click.IntRange(1), default=1, show_default=True,
    help="Units run at once (local, snakemake); each CellProfiler uses about 1 core.",
)  # fmt: skip
@click.option(
    "--workdir", default=None,
    help="Local folder for logs and completion records "
    "(default: WORKSPACE/cellprofiler/<step>/_pipecraft).",
)  # fmt: skip
@click.option("--job-queue", default=None, help="AWS Batch job queue (aws_batch backend).")
@click.option("--image", default=None, help="CellProfiler container image (aws_batch backend).")
@click.option(
    "--no-file-check",
    is_flag=True,
    help="Do not check that the files the CSVs name exist (CSVs written with a path mask).",
)
@click.option(
    "--no-load-check", is_flag=True,
    help="Do not load the pipeline with CellProfiler's own interpreter before the run "
    "(that check refuses a module CellProfiler cannot build, which it would drop silently).",
)  # fmt: skip
def run(
    workspace: str,
    step: str,
    pipeline: str,
    plates: tuple[str, ...],
    backend: str,
    cellprofiler: str,
    plugins_directory: str | None,
    input_folder: str | None,
    workers: int,
    workdir: str | None,
    job_queue: str | None,
    image: str | None,
    no_file_check: bool,
    no_load_check: bool,
) -> int:
    """Run PIPELINE over every LoadData CSV of STEP, one CellProfiler per CSV."""
    from starrynight.cellprofiler.run import run_pipeline

    report = run_pipeline(
        workspace, step, pipeline, plates, backend, cellprofiler, plugins_directory, workers,
        workdir, job_queue, image, check_files=not no_file_check, input_folder=input_folder,
        check_load=not no_load_check,
    )  # fmt: skip
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(report.line())
    for u in report.units:
        state = report.states.get(f"cp-{step}-{u.unit}")
        click.echo(f"{u.unit}\t{state.value if state else '?'}\t{u.output}")
    for node, reason in report.failures.items():
        click.echo(f"FAILED {node}: {reason}", err=True)
    return 0 if report.status.value == "succeeded" else 1
