"""QC gates in Conductor: reviewers' decisions, recorded and written where Dagster reads.

A decision is written through :mod:`starrynight.gates` (the workspace's gate file, which
the project's Dagster sensor watches and the gate checks read) and recorded in
Conductor's database (:class:`~conductor.models.GateDecision`, the audit trail: who, when,
which plate, the comment). Launching a run that includes what follows a closed gate of a
plate is refused (:func:`refuse_closed`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from conductor.catalog import dataset_partitions
from conductor.errors import Conflict, NotFound
from conductor.graph import AssetInfo
from conductor.models import GateDecision, Project
from conductor.runs.instances import instance
from conductor.settings import Settings, Token
from starrynight import gates, storage
from starrynight import workspace as wsp


def gate_asset(gate: str) -> str:
    """The Dagster asset holding a gate's report (``qc_painting``)."""
    return f"qc_{gate}"


def report_made_at(settings: Settings, project: Project, plate: str, gate: str) -> float | None:
    """When Dagster last materialised the plate's report for ``gate`` (epoch seconds)."""
    import dagster as dg

    records = (
        instance(settings, project.id)
        .fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(gate_asset(gate)), asset_partitions=[plate]
            ),
            limit=1,
        )
        .records
    )
    return records[0].timestamp if records else None


def gate_view(
    settings: Settings, session: Session, project: Project, plate: str, gate: str
) -> dict[str, Any]:
    """A plate's gate as :class:`~conductor.schemas.GateOut`."""
    gates.check_gate(gate)
    enabled = gate in (project.qc_gates or [])
    state = gates.read_gate(project.workspace_uri, plate, gate)
    report = storage.exists(wsp.qc_index_path(project.workspace_uri, plate, gate))
    made_at = report_made_at(settings, project, plate, gate) if enabled else None
    covered = gates.approval_covers(state, made_at)
    if not enabled:
        reason = "gate off for this project"
    elif covered:
        reason = f"approved by {state.current.by} at {state.current.at}"  # type: ignore[union-attr]
    elif made_at is None:
        reason = f"waiting for the plate's {gate} report"
    elif state.state == "approved":
        reason = "the report was made again after the approval: approve it again"
    else:
        reason = "waiting for a reviewer's approval"
    rows = session.scalars(
        select(GateDecision)
        .where(
            GateDecision.project_id == project.id,
            GateDecision.plate == plate,
            GateDecision.gate == gate,
        )
        .order_by(GateDecision.id)
    ).all()
    return {
        "plate": plate,
        "gate": gate,
        "enabled": enabled,
        "state": state.state,
        "open": not enabled or covered,
        "report": report,
        "reason": reason,
        "history": list(rows),
    }


def decide(
    settings: Settings,
    session: Session,
    project: Project,
    plate: str,
    gate: str,
    approved: bool,
    comment: str,
    token: Token,
) -> dict[str, Any]:
    """Approve or close a plate's gate as ``token``'s holder; the gate's new view.

    Raises
    ------
    UserError
        An unknown gate (422).
    NotFound
        A plate the project's index does not hold.
    Conflict
        No report for the gate yet (its upstream did not run): nothing to approve.
    """
    gates.check_gate(gate)
    plates, _ = dataset_partitions(project)
    if plate not in plates:
        raise NotFound(
            f"plate {plate!r} is not in project {project.name}'s index "
            f"(plates: {', '.join(plates) or 'none'})"
        )
    if not storage.exists(wsp.qc_index_path(project.workspace_uri, plate, gate)):
        raise Conflict(
            f"plate {plate}: no {gate} QC report yet; run its upstream steps and "
            f"the {gate_asset(gate)} report first"
        )
    row = GateDecision(
        project_id=project.id, plate=plate, gate=gate, approved=approved,
        decided_by=token.name, comment=comment, decided_at=datetime.now(UTC),
    )  # fmt: skip
    session.add(row)
    session.flush()
    # The file first (what Dagster acts on); the database row commits only if it was
    # written, so the audit trail never claims a decision Dagster did not see.
    state = gates.record(project.workspace_uri, plate, gate, approved, token.name, comment)
    if state.current is not None:
        row.decided_at = datetime.fromtimestamp(gates.parse_time(state.current.at), UTC)
    session.commit()
    return gate_view(settings, session, project, plate, gate)


def _downstream(graph: tuple[AssetInfo, ...], root: str) -> set[str]:
    children: dict[str, set[str]] = {}
    for a in graph:
        for p in a.parents:
            children.setdefault(p, set()).add(a.name)
    found: set[str] = set()
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def refuse_closed(
    settings: Settings,
    project: Project,
    graph: tuple[AssetInfo, ...],
    plan: list[dict[str, Any]],
) -> None:
    """:class:`Conflict` naming the plate and gate when ``plan`` materialises something
    that follows a closed gate of that plate (the gate check would hold it in Dagster's
    automation; a launch must not go round it)."""
    for gate in project.qc_gates or []:
        below = _downstream(graph, gate_asset(gate))
        plates = sorted(
            {
                step["values"]["plate"]
                for step in plan
                if set(step["assets"]) & below and "plate" in (step.get("values") or {})
            }
        )
        for plate in plates:
            state = gates.read_gate(project.workspace_uri, plate, gate)
            if gates.approval_covers(state, report_made_at(settings, project, plate, gate)):
                continue
            held = sorted({a for s in plan for a in s["assets"] if a in below})
            raise Conflict(
                f"plate {plate}: the {gate} QC gate is closed ({state.state}, report "
                f"{gate_asset(gate)} not approved since it was made); {', '.join(held)} "
                f"follow it. Approve the gate on the QC page, or select only what precedes it"
            )
