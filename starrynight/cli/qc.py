"""``starrynight qc``: the per-plate QC reports a reviewer decides a gate from."""

from __future__ import annotations

import click

from starrynight.cli.options import PLATE, WORKSPACE
from starrynight.modules.qc_merge import MIN_MATCH_RATE, WARN_MATCH_RATE


@click.group()
def qc() -> None:
    """QC reports per plate and gate (figures, their data, an index.json)."""


@qc.command("report")
@WORKSPACE
@PLATE
@click.option(
    "--report", "--gate", "report", type=click.Choice(["painting", "barcoding", "merge", "all"]),
    default="all", show_default=True,
    help="Which report to write: a gate's (painting, barcoding), the after-merge one "
    "(merge: match rate, distances, residuals; it gates nothing) or all three. "
    "--gate is the older spelling.",
)  # fmt: skip
@click.option(
    "--sample-sites", type=click.IntRange(0), default=6, show_default=True,
    help="Sites shown with segmentation outlines (painting), spread over the wells; "
    "sites with implausible counts first.",
)  # fmt: skip
@click.option(
    "--warn-match-rate", type=click.FloatRange(0, 1), default=WARN_MATCH_RATE, show_default=True,
    help="Merge report: the match rate below which the merge check warns (drawn).",
)  # fmt: skip
@click.option(
    "--min-match-rate", type=click.FloatRange(0, 1), default=MIN_MATCH_RATE, show_default=True,
    help="Merge report: the match rate below which the merge check blocks the well (drawn).",
)  # fmt: skip
def report_cmd(
    workspace: str,
    plate: str,
    report: str,
    sample_sites: int,
    warn_match_rate: float,
    min_match_rate: float,
) -> None:
    """Write qc_reports/<plate>/<report>/: PNG figures, their data as parquet, index.json."""
    from starrynight.modules.qc import REPORTS, write_report
    from starrynight.modules.qc_merge import check_rates

    check_rates(warn_match_rate, min_match_rate)
    for g in REPORTS if report == "all" else (report,):
        rep = write_report(
            workspace, plate, g, sample_sites=sample_sites,
            warn_match_rate=warn_match_rate, min_match_rate=min_match_rate,
        )  # fmt: skip
        click.echo(f"{plate} {g}: {rep.status}, {len(rep.figures)} figure(s)")
        for f in rep.figures:
            mark = "!" if f["attention"] else " "
            click.echo(f" {mark} {f['name']}: {f['finding']}")
        if rep.missing:
            click.echo(f"{len(rep.missing)} input(s) missing, e.g. {rep.missing[0]}", err=True)
        click.echo(rep.index)


def _decide(workspace: str, plate: str, gate: str, by: str, comment: str, approved: bool) -> None:
    from starrynight import gates

    gates.require_report(workspace, plate, gate)
    state = gates.record(workspace, plate, gate, approved, by, comment)
    cur = state.current
    assert cur is not None
    click.echo(f"{plate} {gate}: {cur.state} by {cur.by} at {cur.at}")


_GATE = click.option(
    "--gate", type=click.Choice(["painting", "barcoding"]), required=True,
    help="Which gate of the plate.",
)  # fmt: skip
_BY = click.option("--by", required=True, help="Who decides (recorded with the decision).")
_COMMENT = click.option("--comment", default="", help="Why (recorded with the decision).")


@qc.command("approve")
@WORKSPACE
@PLATE
@_GATE
@_BY
@_COMMENT
def approve_cmd(workspace: str, plate: str, gate: str, by: str, comment: str) -> None:
    """Approve a plate's gate: its downstream steps may run (for the report seen now)."""
    _decide(workspace, plate, gate, by, comment, approved=True)


@qc.command("close")
@WORKSPACE
@PLATE
@_GATE
@_BY
@_COMMENT
def close_cmd(workspace: str, plate: str, gate: str, by: str, comment: str) -> None:
    """Close a plate's gate again: no new downstream work starts for the plate."""
    _decide(workspace, plate, gate, by, comment, approved=False)


@qc.command("gates")
@WORKSPACE
@click.option("--plate", default=None, help="Only this plate (default: every plate).")
def gates_cmd(workspace: str, plate: str | None) -> None:
    """List every plate's gates: state, who, when, comment, whether a report exists."""
    from starrynight import gates, storage
    from starrynight import workspace as wsp
    from starrynight.index import load_index

    plates = sorted(set(load_index(workspace).column("plate").to_pylist()))
    if plate is not None:
        if plate not in plates:
            from starrynight.errors import UserError

            raise UserError(f"--plate {plate!r}: not in the index {wsp.index_path(workspace)}")
        plates = [plate]
    click.echo(f"{'plate':<16} {'gate':<10} {'state':<9} {'report':<7} by / at / comment")
    for p in plates:
        for g in gates.GATES:
            st = gates.read_gate(workspace, p, g)
            report = "yes" if storage.exists(wsp.qc_index_path(workspace, p, g)) else "no"
            cur = st.current
            who = f"{cur.by} / {cur.at} / {cur.comment}" if cur else "undecided"
            click.echo(f"{p:<16} {g:<10} {st.state:<9} {report:<7} {who}")
