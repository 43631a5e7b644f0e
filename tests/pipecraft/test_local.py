"""The local backend: dependencies, failures, logs, retries, skipping, cancellation."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from pipecraft import (
    BackendConfigError,
    Command,
    LocalBackend,
    NodeState,
    Parallel,
    Pipeline,
    PyFunction,
    Resources,
    RunStatus,
    Scatter,
    Seq,
)
from pipecraft.backends.local import Journal
from pipecraft.testing import DEMO_EXPECTED, demo_pipeline, fail, noop, write_text

PY = sys.executable
S = NodeState


def states(handle) -> dict[str, str]:
    return {n: s.value for n, s in handle.node_states().items()}


def test_demo_pipeline_fan_out_fan_in_with_failure_branch(tmp_path: Path) -> None:
    data = tmp_path / "my data, v1"
    h = LocalBackend(tmp_path / "run", max_workers=2).run(demo_pipeline(data))
    assert h.wait(60) is RunStatus.FAILED
    assert states(h) == DEMO_EXPECTED
    assert (data / "gathered.txt").read_text() == "prepared+a\nprepared+b\nprepared+c\n"
    assert not (data / "never.txt").exists()
    assert h.failures() == {"doomed": "exit code 3: failing with exit code 3: doomed on purpose"}
    assert h.log_lines("doomed")[0] == "failing with exit code 3: doomed on purpose"
    assert h.logs("after-doomed") == ""
    with pytest.raises(KeyError, match="no node named 'nope'"):
        h.logs("nope")


def test_rerun_skips_complete_nodes_and_reruns_failed_ones(tmp_path: Path) -> None:
    data = tmp_path / "d"
    backend = LocalBackend(tmp_path / "run", max_workers=2)
    backend.run(demo_pipeline(data)).wait(60)
    mtime = (data / "gathered.txt").stat().st_mtime_ns
    h = backend.run(demo_pipeline(data))
    assert h.wait(60) is RunStatus.FAILED
    expected = {n: ("skipped" if v == "succeeded" else v) for n, v in DEMO_EXPECTED.items()}
    assert states(h) == expected
    assert (data / "gathered.txt").stat().st_mtime_ns == mtime


def test_deleted_output_or_changed_command_reruns_node_and_its_dependents(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"

    def pipe(text: str) -> Pipeline:
        return Pipeline(
            "p",
            Seq(
                PyFunction(
                    name="a",
                    func=write_text,
                    kwargs={"path": str(a), "text": text},
                    outputs=[str(a)],
                ),
                Command(name="b", argv=["cp", str(a), str(b)], inputs=[str(a)], outputs=[str(b)]),
                PyFunction(
                    name="c", func=write_text, kwargs={"path": str(tmp_path / "c"), "text": ""}
                ),
            ),
        )

    backend = LocalBackend(tmp_path / "run", max_workers=2)
    assert backend.run(pipe("one")).wait(30) is RunStatus.SUCCEEDED
    h = backend.run(pipe("two"))
    assert h.wait(30) is RunStatus.SUCCEEDED
    assert states(h) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert b.read_text() == "two"
    b.unlink()
    h = backend.run(pipe("two"))
    h.wait(30)
    assert states(h) == {"a": "skipped", "b": "succeeded", "c": "succeeded"}
    assert b.read_text() == "two"


def test_killed_node_is_rerun_not_mistaken_for_done(tmp_path: Path) -> None:
    out, started, block = tmp_path / "slow.txt", tmp_path / "started", tmp_path / "block"
    block.touch()
    script = (
        f"import os, time; open({str(started)!r}, 'w').close(); "
        f"open({str(out)!r}, 'w').write('half-written')\n"
        f"while os.path.exists({str(block)!r}): time.sleep(0.05)\n"
        f"open({str(out)!r}, 'w').write('complete')"
    )
    node = Command(name="slow", argv=[PY, "-c", script], outputs=[str(out)])
    backend = LocalBackend(tmp_path / "run")
    h = backend.run(Pipeline("p", node))
    while not started.exists():
        threading.Event().wait(0.02)
    h.cancel()
    assert h.wait(20) is RunStatus.CANCELLED
    assert h.node_states() == {"slow": S.CANCELLED}
    assert out.read_text() == "half-written"
    assert Journal(tmp_path / "run" / "state" / "completed.journal").done == set()
    block.unlink()
    h2 = backend.run(Pipeline("p", node))  # the very same node: must run again
    assert h2.wait(20) is RunStatus.SUCCEEDED
    assert h2.node_states() == {"slow": S.SUCCEEDED}
    assert out.read_text() == "complete"
    h3 = backend.run(Pipeline("p", node))
    assert h3.wait(20) is RunStatus.SUCCEEDED
    assert h3.node_states() == {"slow": S.SKIPPED}
    assert Journal(tmp_path / "run" / "state" / "completed.journal").done == {h3.marker("slow")}


def test_cancel_stops_scheduling_and_marks_the_rest_cancelled(tmp_path: Path) -> None:
    started = tmp_path / "started"
    script = f"open({str(started)!r}, 'w').close(); import time; time.sleep(30)"
    p = Pipeline(
        "p", Seq(Command(name="slow", argv=[PY, "-c", script]), Command(name="next", argv=["true"]))
    )
    h = LocalBackend(tmp_path / "run").run(p)
    while not started.exists():
        threading.Event().wait(0.02)
    assert h.status() is RunStatus.RUNNING
    h.cancel()
    assert h.wait(20) is RunStatus.CANCELLED
    assert h.node_states() == {"slow": S.CANCELLED, "next": S.CANCELLED}
    assert h.failures() == {}


def test_retries_rerun_a_failing_command(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    script = (
        f"import pathlib; p = pathlib.Path({str(counter)!r}); "
        "n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n)); "
        "print('attempt', n); raise SystemExit(0 if n == 3 else 1)"
    )
    ok = Command(name="flaky", argv=[PY, "-c", script], retries=2)
    h = LocalBackend(tmp_path / "run").run(Pipeline("p", ok))
    assert h.wait(30) is RunStatus.SUCCEEDED
    assert counter.read_text() == "3"
    lines = h.log_lines("flaky")
    # a failure that is not for memory retries with the same request
    assert lines[0] == "=== pipecraft: attempt 1/3 with 1024 MB" and "attempt 3" in lines
    assert "=== pipecraft: attempt 3/3 with 1024 MB" in lines
    counter.unlink()
    short = Command(name="flaky", argv=[PY, "-c", script], retries=1)
    h = LocalBackend(tmp_path / "run2").run(Pipeline("p", short))
    assert h.wait(30) is RunStatus.FAILED
    assert h.failures() == {"flaky": "exit code 1: attempt 2"}


# Killed with SIGKILL (what the OOM killer sends) unless granted enough memory.
GREEDY = (
    "import os, signal; mb = int(os.environ['PIPECRAFT_MEMORY_MB']); print('granted', mb); "
    "os.kill(os.getpid(), signal.SIGKILL) if mb < int(os.environ['NEED_MB']) else print('ok')"
)


def test_out_of_memory_retries_grow_memory_up_to_the_cap(tmp_path: Path) -> None:
    res = Resources(memory_mb=1000, max_memory_mb=2500)
    node = Command(
        name="greedy", argv=[PY, "-c", GREEDY], env={"NEED_MB": "2500"}, resources=res, retries=4
    )
    h = LocalBackend(tmp_path / "run").run(Pipeline("p", node))
    assert h.wait(30) is RunStatus.SUCCEEDED
    granted = [ln for ln in h.log_lines("greedy") if ln.startswith("granted")]
    assert granted == ["granted 1000", "granted 2000", "granted 2500"]
    assert "=== pipecraft: attempt 2/5 with 2000 MB" in h.log_lines("greedy")

    # Out of memory at the cap: not retried, though retries are left.
    node = Command(
        name="greedy", argv=[PY, "-c", GREEDY], env={"NEED_MB": "9999"}, resources=res, retries=4
    )
    h = LocalBackend(tmp_path / "run2").run(Pipeline("p", node))
    assert h.wait(30) is RunStatus.FAILED
    granted = [ln for ln in h.log_lines("greedy") if ln.startswith("granted")]
    assert granted == ["granted 1000", "granted 2000", "granted 2500"]
    reason = h.failures()["greedy"]
    assert reason.startswith("exit code -9 (killed: out of memory?)")
    assert reason.endswith("out of memory with 2500 MB (the cap, 2500 MB), not retried")


def test_pyfunction_logs_are_per_node_and_failures_carry_the_exception(tmp_path: Path) -> None:
    p = Pipeline(
        "p",
        Parallel(
            Scatter(
                "w",
                range(6),
                lambda i: PyFunction(
                    name=f"w{i}",
                    func=write_text,
                    kwargs={"path": str(tmp_path / f"{i}.txt"), "text": str(i)},
                ),
            ),
            PyFunction(name="bad", func=fail, kwargs={"message": "no barcode table"}),
        ),
    )
    h = LocalBackend(tmp_path / "run", max_workers=3).run(p)
    assert h.wait(30) is RunStatus.FAILED
    for i in range(6):
        assert h.logs(f"w{i}") == f"wrote {tmp_path / f'{i}.txt'}\n"
    assert h.failures() == {"bad": "RuntimeError: no barcode table"}
    assert h.log_lines("bad")[0] == "about to fail: no barcode table"
    assert "Traceback" in h.logs("bad")


def test_journal_ignores_a_line_cut_short_and_honours_revocations(tmp_path: Path) -> None:
    path = tmp_path / "completed.journal"
    path.write_text("+a-1\n+b-2\n-a-1\n+c-3")  # "+c-3" was cut short by a crash
    j = Journal(path)
    assert j.done == {"b-2"}
    j.add("d-4")
    j.revoke("b-2")
    j.close()
    assert Journal(path).done == {"d-4"}


def test_silent_pyfunction_leaves_no_log_and_stale_logs_are_removed(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "run")
    talk = PyFunction(name="n", func=write_text, kwargs={"path": str(tmp_path / "x"), "text": ""})
    h = backend.run(Pipeline("p", talk))
    h.wait(30)
    assert h.log_path("n").exists()
    quiet = PyFunction(name="n", func=noop)
    h = backend.run(Pipeline("p", quiet))
    assert h.wait(30) is RunStatus.SUCCEEDED
    assert h.logs("n") == "" and not h.log_path("n").exists()


def test_missing_declared_output_fails_the_node(tmp_path: Path) -> None:
    node = Command(name="liar", argv=["true"], outputs=[str(tmp_path / "promised.txt")])
    h = LocalBackend(tmp_path / "run").run(Pipeline("p", node))
    assert h.wait(30) is RunStatus.FAILED
    assert (
        h.failures()["liar"]
        == f"declared output {str(tmp_path / 'promised.txt')!r} was not written"
    )


def test_missing_program_is_a_clear_failure(tmp_path: Path) -> None:
    node = Command(name="ghost", argv=["no-such-program-pipecraft"])
    h = LocalBackend(tmp_path / "run").run(Pipeline("p", node))
    assert h.wait(30) is RunStatus.FAILED
    assert h.failures()["ghost"].startswith("cannot start 'no-such-program-pipecraft'")


def test_cpu_hints_limit_concurrency(tmp_path: Path) -> None:
    # Each node records how many nodes run at once via a shared folder of "running" files.
    live = tmp_path / "live"
    live.mkdir()
    script = (
        "import os, sys, time, pathlib; d = pathlib.Path(sys.argv[1]); me = d / sys.argv[2]; "
        "me.touch(); time.sleep(0.3); n = len(list(d.iterdir())); me.unlink(); "
        "open(sys.argv[3], 'w').write(str(n))"
    )
    p = Pipeline(
        "p",
        Scatter(
            "s",
            range(4),
            lambda i: Command(
                name=f"n{i}",
                argv=[PY, "-c", script, str(live), str(i), str(tmp_path / f"seen{i}")],
                resources=Resources(cpus=2),
            ),
        ),
    )
    h = LocalBackend(tmp_path / "run", max_workers=2).run(p)
    assert h.wait(60) is RunStatus.SUCCEEDED
    assert all((tmp_path / f"seen{i}").read_text() == "1" for i in range(4))


def test_bad_backend_configuration() -> None:
    with pytest.raises(BackendConfigError, match="max_workers=0"):
        LocalBackend("x", max_workers=0)
    with pytest.raises(BackendConfigError, match="is not a folder"):
        LocalBackend(__file__)
