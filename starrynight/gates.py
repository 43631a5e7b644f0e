"""QC gates: a person's decision, per plate and gate, that a screen may go on.

Two gates per plate, as the reference pipelines have them: ``painting`` (after the
illumination functions, the corrected images, the segmentation and the geometry) and
``barcoding`` (after SBS illumination, alignment and barcode calling). A reviewer reads
the plate's QC report (:mod:`starrynight.modules.qc`) and approves the gate, or closes it
again.

Each decision is one small JSON object of its own in the workspace, under
:func:`starrynight.workspace.qc_gate_dir` (``qc_reports/<plate>/gates/<gate>/``), named
by its time and a random suffix and written with a conditional create
(:func:`starrynight.storage.create_bytes`: S3 ``If-None-Match``), never overwritten: it
holds the state (``approved`` or ``closed``), who decided, when (UTC, ISO 8601) and an
optional comment. The gate's history is those objects in time order, its state the
latest. So two decisions landing together (two reviewers, Canvas and the CLI) are both
kept without a lock or a read-modify-write, on S3 as locally. A gate file of the older
single-file layout (:func:`starrynight.workspace.qc_gate_path`) is read as the start of
the history. This is the one store: the CLI and Conductor write it, Dagster's gate
checks and sensor read it.

An approval is of the pictures the reviewer saw: a report made after it (an upstream
step re-ran) is not approved (:func:`approval_covers`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from starrynight import storage, workspace
from starrynight.errors import UserError

GATES = ("painting", "barcoding")
STATES = ("approved", "closed")
#: The state of a gate nobody has decided on.
UNDECIDED = "closed"


@dataclass(frozen=True)
class Decision:
    """One approval or closing of a gate."""

    state: str
    by: str
    at: str  # UTC, ISO 8601
    comment: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"state": self.state, "by": self.by, "at": self.at, "comment": self.comment}


@dataclass(frozen=True)
class GateState:
    """What is known of one plate's gate: its latest decision and every earlier one."""

    plate: str
    gate: str
    current: Decision | None
    history: list[Decision] = field(default_factory=list)

    @property
    def state(self) -> str:
        """``approved`` or ``closed`` (``closed`` when nobody decided yet)."""
        return self.current.state if self.current is not None else UNDECIDED

    def as_dict(self) -> dict[str, Any]:
        cur = self.current
        return {
            "plate": self.plate,
            "gate": self.gate,
            "state": self.state,
            "by": cur.by if cur else None,
            "at": cur.at if cur else None,
            "comment": cur.comment if cur else "",
            "history": [d.as_dict() for d in self.history],
        }


def check_gate(gate: str) -> str:
    """``gate`` if it is a gate name; else a :class:`UserError` naming the gates."""
    if gate not in GATES:
        raise UserError(f"gate {gate!r}: expected one of {', '.join(GATES)}")
    return gate


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the microsecond (a decision is compared with
    Dagster materialisation times, which have sub-second precision)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def parse_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (UTC assumed when it has no zone)."""
    t = dt.datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _decision(raw: Any, where: str) -> Decision:
    if not isinstance(raw, dict) or raw.get("state") not in STATES:
        raise UserError(f"{where}: a decision without a state approved/closed")
    try:
        parse_time(str(raw.get("at")))
    except ValueError:
        raise UserError(f"{where}: decision time {raw.get('at')!r} is not ISO 8601") from None
    return Decision(str(raw["state"]), str(raw.get("by") or ""), str(raw["at"]),
                    str(raw.get("comment") or ""))  # fmt: skip


def _decisions(ws: str, plate: str, gate: str) -> list[tuple[str, str]]:
    """(name, URI) of the gate's decision objects, by name (= time) order."""
    folder = workspace.qc_gate_dir(ws, plate, gate)
    if not storage.exists(folder):
        return []
    names = [e.key for e in storage.list_files(folder) if "/" not in e.key]
    return [(n, storage.join(folder, n)) for n in sorted(names) if n.endswith(".json")]


def _read_doc(uri: str) -> Any:
    try:
        return json.loads(storage.read_bytes(uri))
    except ValueError as exc:
        raise UserError(f"{uri}: not JSON ({exc})") from None


def read_gate(ws: str, plate: str, gate: str) -> GateState:
    """The gate's state as its decisions say (undecided when there is none).

    Raises
    ------
    UserError
        Unknown gate, or a decision that is not what :func:`record` writes.
    """
    check_gate(gate)
    history: list[Decision] = []
    legacy = workspace.qc_gate_path(ws, plate, gate)
    if storage.exists(legacy):
        doc = _read_doc(legacy)
        if not isinstance(doc, dict):
            raise UserError(f"{legacy}: expected a JSON object")
        history += [_decision(d, legacy) for d in doc.get("history") or []]
    history += [_decision(_read_doc(uri), uri) for _, uri in _decisions(ws, plate, gate)]
    # Time order (a stable sort: equal times keep the order of the names)
    history.sort(key=lambda d: parse_time(d.at))
    return GateState(plate, gate, history[-1] if history else None, history)


def gate_version(ws: str, plate: str, gate: str) -> str | None:
    """A token that changes whenever a decision is added (None: no decision yet).

    From the names of the decision objects (immutable once written), so it reads no
    decision; an older single gate file counts by its content.
    """
    parts = [name for name, _ in _decisions(ws, plate, gate)]
    legacy = workspace.qc_gate_path(ws, plate, gate)
    if storage.exists(legacy):
        parts.append(hashlib.sha1(storage.read_bytes(legacy)).hexdigest())
    if not parts:
        return None
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def record(ws: str, plate: str, gate: str, approved: bool, by: str, comment: str = "") -> GateState:
    """Approve (``approved``) or close a plate's gate; returns the new state.

    The decision is a new object (conditional create), so concurrent decisions are all
    kept. The caller checks that the plate and its report exist (:func:`require_report`).

    Raises
    ------
    UserError
        Unknown gate, an empty reviewer name, or an unreadable gate.
    """
    check_gate(gate)
    if not by.strip():
        raise UserError("--by: the reviewer's name is empty")
    new = Decision("approved" if approved else "closed", by.strip(), now_iso(), comment)
    body = json.dumps({"plate": plate, "gate": gate, **new.as_dict()}, indent=2).encode()
    stamp = dt.datetime.fromisoformat(new.at).strftime("%Y%m%dT%H%M%S%fZ")
    folder = workspace.qc_gate_dir(ws, plate, gate)
    # A taken name (the same microsecond and random suffix) is never overwritten.
    for _ in range(5):
        name = f"{stamp}_{uuid.uuid4().hex[:12]}.json"
        if storage.create_bytes(storage.join(folder, name), body):
            break
    else:
        raise UserError(f"{folder}: could not find a free name for the decision")
    return read_gate(ws, plate, gate)


def require_report(ws: str, plate: str, gate: str) -> str:
    """The URI of the plate's report for ``gate``; a :class:`UserError` when the plate is
    not in the index or its report was not made yet (nothing to approve)."""
    from starrynight.index import load_index, rows_of_plate

    check_gate(gate)
    rows_of_plate(ws, load_index(ws).select(["plate"]), plate)
    index = workspace.qc_index_path(ws, plate, gate)
    if not storage.exists(index):
        raise UserError(
            f"plate {plate!r}: no {gate} QC report yet ({index}); its upstream steps and "
            f"'starrynight qc report --report {gate}' must run first"
        )
    return index


def approval_covers(state: GateState, made_at: float | None) -> bool:
    """Whether the gate's approval is of the report made at ``made_at`` (epoch seconds).

    True only when the latest decision is an approval given after the report was made:
    a report made again (its upstream re-ran) needs a new look.
    """
    if state.current is None or state.current.state != "approved" or made_at is None:
        return False
    return parse_time(state.current.at) > made_at
