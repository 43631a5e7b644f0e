"""Gate decisions in the workspace: each one its own object, written by a conditional
create, so decisions landing together are all kept, locally and on S3 (moto server)."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from starrynight import gates, storage, workspace
from tests.starrynight.test_storage import s3_endpoint  # noqa: F401 (the moto server)

PLATE = "Plate1"


@pytest.fixture(params=["local", "s3"])
def ws(request, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "ws")
    request.getfixturevalue("s3_endpoint")
    name = f"gates-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}/ws"


def test_create_bytes_never_overwrites(ws: str) -> None:
    uri = storage.join(ws, "events", "one.json")
    assert storage.create_bytes(uri, b"first")
    assert not storage.create_bytes(uri, b"second")
    assert storage.read_bytes(uri) == b"first"
    assert [e.key for e in storage.list_files(storage.join(ws, "events"))] == ["one.json"]


def test_decisions_landing_together_are_all_kept(ws: str) -> None:
    reviewers = [f"reviewer{i}" for i in range(8)]
    start = threading.Barrier(len(reviewers))
    errors: list[BaseException] = []

    def decide(name: str) -> None:
        try:
            start.wait()  # all within the same moment: the race a read-modify-write loses
            gates.record(ws, PLATE, "painting", name.endswith(("1", "3")), name, "at once")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=decide, args=(n,)) for n in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    state = gates.read_gate(ws, PLATE, "painting")
    assert sorted(d.by for d in state.history) == reviewers
    times = [gates.parse_time(d.at) for d in state.history]
    assert times == sorted(times) and state.current == state.history[-1]
    # the other gate and plate are untouched
    assert gates.read_gate(ws, PLATE, "barcoding").current is None
    assert gates.read_gate(ws, "Plate2", "painting").history == []


def test_version_changes_with_each_decision_and_old_gate_files_are_read(ws: str) -> None:
    assert gates.gate_version(ws, PLATE, "barcoding") is None
    # a gate file of the older single-file layout is the start of the history
    old = {"history": [{"state": "approved", "by": "ada", "at": "2026-01-02T03:04:05+00:00"}]}
    storage.write_bytes(workspace.qc_gate_path(ws, PLATE, "barcoding"), json.dumps(old).encode())
    v0 = gates.gate_version(ws, PLATE, "barcoding")
    assert gates.read_gate(ws, PLATE, "barcoding").state == "approved" and v0
    state = gates.record(ws, PLATE, "barcoding", False, "bob", "cycle 3 looks off")
    assert [(d.by, d.state) for d in state.history] == [("ada", "approved"), ("bob", "closed")]
    v1 = gates.gate_version(ws, PLATE, "barcoding")
    assert v1 not in (None, v0)
    assert gates.gate_version(ws, PLATE, "barcoding") == v1  # stable while nothing changes
    gates.record(ws, PLATE, "barcoding", True, "ada")
    assert gates.gate_version(ws, PLATE, "barcoding") not in (v0, v1)


def test_a_broken_decision_is_named(tmp_path: Path) -> None:
    from starrynight.errors import UserError

    ws = str(tmp_path / "ws")
    gates.record(ws, PLATE, "painting", True, "ada")
    folder = Path(workspace.qc_gate_dir(ws, PLATE, "painting"))
    (folder / "20260101T000000000000Z_broken.json").write_text("{not json")
    with pytest.raises(UserError, match=r"_broken\.json: not JSON"):
        gates.read_gate(ws, PLATE, "painting")
