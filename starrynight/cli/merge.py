"""``starrynight merge``: every CP cell of a well once, with its SBS barcode, in the well frame."""

from __future__ import annotations

import click

from starrynight.algorithms.merge import MergeParams, RegisterParams
from starrynight.cli.options import well_unit
from starrynight.modules.merge import merge_well

POSITIVE = click.FloatRange(0, min_open=True)


@click.command("merge")
@well_unit
@click.option(
    "--reach-um", type=POSITIVE, default=5.0, show_default=True,
    help="Largest distance between a CP nucleus and its SBS nucleus after registration.",
)  # fmt: skip
@click.option(
    "--ambiguity-um", type=click.FloatRange(0), default=2.0, show_default=True,
    help="A runner-up this close to the nearest distance makes a match ambiguous.",
)  # fmt: skip
@click.option(
    "--duplicate-um", type=POSITIVE,
    help="Largest distance between two copies of a cell in overlapping sites "
    "[half the typical nucleus spacing].",
)  # fmt: skip
@click.option(
    "--model", type=click.Choice(["similarity", "affine"]), default="similarity",
    show_default=True, help="Transform fitted from the SBS frame to the CP frame.",
)  # fmt: skip
@click.option(
    "--max-shift-um", type=POSITIVE, default=200.0, show_default=True,
    help="Largest translation between the arms' positions searched.",
)  # fmt: skip
@click.option(
    "--max-rotation-deg", type=click.FloatRange(0), default=2.0, show_default=True,
    help="Largest rotation between the arms searched.",
)  # fmt: skip
@click.option(
    "--expected-scale", type=POSITIVE, default=1.0, show_default=True,
    help="Expected SBS-to-CP scale in micrometres (1 when the files' pixel sizes are right).",
)  # fmt: skip
@click.option(
    "--max-scale-error", type=POSITIVE, default=0.01, show_default=True,
    help="A fitted scale off the expected by more than this fraction leaves the well "
    "unregistered.",
)  # fmt: skip
@click.option(
    "--min-nuclei", type=click.IntRange(3), default=20, show_default=True,
    help="Fewer nuclei in either arm, or fewer agreeing pairs: the well is not registered.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Recompute when the well's merge report exists.")
def merge(
    workspace: str,
    plate: str,
    well: str,
    reach_um: float,
    ambiguity_um: float,
    duplicate_um: float | None,
    model: str,
    max_shift_um: float,
    max_rotation_deg: float,
    expected_scale: float,
    max_scale_error: float,
    min_nuclei: int,
    force: bool,
) -> None:
    """Register SBS onto CP per well and give every CP cell its SBS match, once."""
    register = RegisterParams(
        max_shift_um=max_shift_um, max_rotation_deg=max_rotation_deg, model=model,  # type: ignore[arg-type]
        expected_scale=expected_scale, max_scale_error=max_scale_error,
        min_nuclei=min_nuclei, min_inliers=min_nuclei,
    )  # fmt: skip
    params = MergeParams(register, reach_um, ambiguity_um, duplicate_um)
    r = merge_well(workspace, plate, well, params=params, force=force)
    done = " (already done)" if r.skipped else ""
    rate = "n/a" if r.match_rate is None else f"{100 * r.match_rate:.1f} %"
    click.echo(
        f"{plate} {well}{done}: {r.cells} CP cells ({r.cp_duplicates} duplicate copies "
        f"dropped), {r.sbs_cells} SBS cells ({r.sbs_duplicates} dropped); {r.matched} of "
        f"{r.inside_sbs_area} inside the SBS area matched ({rate}), {r.with_barcode} with a "
        "barcode"
    )
    if r.transform is not None and r.status == "registered":
        t = r.transform
        click.echo(
            f"  transform ({t['model']}): scale {t['scale']:.5f} ({t['scale_px']:.4f} CP px "
            f"per SBS px), rotation {t['rotation_deg']:.4f} deg, translation "
            f"({t['translation_um']['y']:.2f}, {t['translation_um']['x']:.2f}) um"
        )
    if r.status == "no SBS images":
        click.echo("  no SBS images: every cell kept with status 'no SBS images'", err=True)
    elif r.status != "registered":
        click.echo(f"  not registered: {r.reason}; no cell got a barcode", err=True)
    for flag in r.flags if r.status == "registered" else ():
        click.echo(f"  flagged: {flag}", err=True)
    for uri in r.outputs:
        click.echo(uri)
