"""QC gates: a person's decision, per plate and gate, that a screen may go on.

Two gates per plate, as the reference pipelines have them: ``painting`` (after the
illumination functions, the corrected images, the segmentation and the geometry) and
``barcoding`` (after SBS illumination, alignment and barcode calling). A reviewer reads
the plate's QC report (:mod:`starrynight.modules.qc`) and approves the gate, or closes it
again. The decision is one small JSON file per plate and gate in the workspace
(:func:`starrynight.workspace.qc_gate_path`), written atomically; it holds the current
state (``approved`` or ``closed``), who decided, when (UTC, ISO 8601), an optional
comment and the history of every decision. It is the one store: the CLI and Conductor
write it, Dagster's gate checks read it.

An approval is of the pictures the reviewer saw: a report made after it (an upstream
step re-ran) is not approved (:func:`approval_covers`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator
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


def read_gate(ws: str, plate: str, gate: str) -> GateState:
    """The gate's state as its file says (undecided when there is no file).

    Raises
    ------
    UserError
        Unknown gate, or a gate file that is not what :func:`record` writes.
    """
    check_gate(gate)
    uri = workspace.qc_gate_path(ws, plate, gate)
    if not storage.exists(uri):
        return GateState(plate, gate, None, [])
    try:
        doc = json.loads(storage.read_bytes(uri))
    except ValueError as exc:
        raise UserError(f"{uri}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{uri}: expected a JSON object")
    history = [_decision(d, uri) for d in doc.get("history") or []]
    return GateState(plate, gate, history[-1] if history else None, history)


def gate_version(ws: str, plate: str, gate: str) -> str | None:
    """A token that changes whenever the gate's decision changes (None: no file)."""
    uri = workspace.qc_gate_path(ws, plate, gate)
    if not storage.exists(uri):
        return None
    import hashlib

    return hashlib.sha1(storage.read_bytes(uri)).hexdigest()[:16]


@contextlib.contextmanager
def _lock(uri: str) -> Iterator[None]:
    """Serialise read-modify-write of a local gate file between processes.

    On S3 there is no lock: two reviewers deciding within the same second may lose
    one history entry (the later write wins; the current state is still the latest).
    """
    if storage.is_s3(uri):
        yield
        return
    os.makedirs(os.path.dirname(uri), exist_ok=True)
    with open(f"{uri}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def record(ws: str, plate: str, gate: str, approved: bool, by: str, comment: str = "") -> GateState:
    """Approve (``approved``) or close a plate's gate; returns the new state.

    The caller checks that the plate and its report exist (:func:`require_report`).

    Raises
    ------
    UserError
        Unknown gate, an empty reviewer name, or an unreadable gate file.
    """
    check_gate(gate)
    if not by.strip():
        raise UserError("--by: the reviewer's name is empty")
    uri = workspace.qc_gate_path(ws, plate, gate)
    with _lock(uri):
        before = read_gate(ws, plate, gate)
        new = Decision("approved" if approved else "closed", by.strip(), now_iso(), comment)
        state = GateState(plate, gate, new, [*before.history, new])
        storage.write_bytes(uri, json.dumps(state.as_dict(), indent=2).encode())
    return state


def require_report(ws: str, plate: str, gate: str) -> str:
    """The URI of the plate's report for ``gate``; a :class:`UserError` when the plate is
    not in the index or its report was not made yet (nothing to approve)."""
    from starrynight.index import load_index

    check_gate(gate)
    plates = set(load_index(ws).column("plate").to_pylist())
    if plate not in plates:
        raise UserError(
            f"plate {plate!r}: not in the index {workspace.index_path(ws)} "
            f"(plates there: {', '.join(sorted(plates)) or 'none'})"
        )
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
