"""The Slurm backend against a real single-node cluster (``make slurm`` starts it).

The fixture runs ``scripts/ensure-slurm.sh`` (quick when the cluster is up). A machine
without Slurm skips these tests, except under ``CI=true``, where it fails them.
Memory is enforced by the cluster (cgroup v1 here), so the out-of-memory test really
allocates past its ``--mem``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipecraft import (
    BackendConfigError,
    Command,
    Parallel,
    Pipeline,
    PyFunction,
    Resources,
    RunStatus,
    Seq,
)
from pipecraft.backends.slurm import SlurmBackend
from pipecraft.testing import DEMO_EXPECTED, demo_pipeline, write_text

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slurm() -> None:
    """A running Slurm cluster, or a skip (a failure under CI)."""
    why = None
    if shutil.which("sbatch") is None and os.geteuid() != 0:
        why = "Slurm is not installed (sudo make slurm)"
    else:
        proc = subprocess.run(
            [str(ROOT / "scripts" / "ensure-slurm.sh")], capture_output=True, text=True
        )
        if proc.returncode != 0:
            why = "Slurm cluster not available: " + (proc.stderr.strip() or proc.stdout.strip())
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def states(handle) -> dict[str, str]:
    return {n: s.value for n, s in handle.node_states().items()}


def backend(tmp_path: Path, **kw) -> SlurmBackend:
    return SlurmBackend(tmp_path / "wd", poll_first=0.2, poll_max=1.0, **kw)


def test_demo_pipeline_run_and_rerun(slurm: None, tmp_path: Path) -> None:
    data = tmp_path / "my data, v1"
    b = backend(tmp_path)
    p = demo_pipeline(data)
    h = b.run(p)
    assert h.wait(120) is RunStatus.FAILED
    assert states(h) == DEMO_EXPECTED
    assert (data / "gathered.txt").read_text() == "prepared+a\nprepared+b\nprepared+c\n"
    assert not (data / "never.txt").exists()
    assert list(h.failures()) == ["doomed"]
    reason = h.failures()["doomed"]
    assert "FAILED" in reason and "exit code 3" in reason, reason
    assert reason.endswith("failing with exit code 3: doomed on purpose")
    assert "failing with exit code 3: doomed on purpose" in h.log_lines("doomed")
    # the job after the failed one was cancelled, not left pending forever
    ids = h.job_ids()
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ids["after-doomed"], "-o", "%T"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert out == "CANCELLED"

    h = b.run(p)
    assert set(h.job_ids()) == {"doomed", "after-doomed"}  # the rest is complete
    assert h.wait(120) is RunStatus.FAILED
    assert states(h) == {
        n: ("skipped" if v == "succeeded" else v) for n, v in DEMO_EXPECTED.items()
    }


# Allocates MB megabytes page by page (the cgroup kills it past its --mem).
HOG = (
    "import os, time; mb = int(os.environ['HOG_MB']); print('granted', os.environ["
    "'PIPECRAFT_MEMORY_MB'], flush=True); b = bytearray(mb << 20)\n"
    "for i in range(0, len(b), 4096): b[i] = 1\n"
    "print('allocated', mb, flush=True)"
)


def test_out_of_memory_is_retried_with_growing_memory(slurm: None, tmp_path: Path) -> None:
    out = tmp_path / "after.txt"
    hog = Command(
        name="hog",
        argv=[PY, "-c", HOG],
        env={"HOG_MB": "350"},
        resources=Resources(memory_mb=200, max_memory_mb=500),
        retries=3,
    )
    after = Command(
        name="after",
        argv=[PY, "-m", "pipecraft.testing", "write", str(out), "x"],
        outputs=[str(out)],
    )
    h = backend(tmp_path).run(Pipeline("oom", Seq(hog, after)))
    assert h.wait(180) is RunStatus.SUCCEEDED, h.logs("hog")
    # 200 MB is killed, 400 MB holds 350 MB: one retry, same job id, dependant waited
    assert h.attempts()["hog"] == (2, 400)
    granted = [ln for ln in h.log_lines("hog") if ln.startswith("granted")]
    assert granted == ["granted 200", "granted 400"]
    assert any("OUT_OF_MEMORY" in ln and "retrying with 400 MB" in ln for ln in h.log_lines("hog"))
    assert out.read_text() == "x"


def test_out_of_memory_at_the_cap_and_other_failures(slurm: None, tmp_path: Path) -> None:
    hog = Command(
        name="hog",
        argv=[PY, "-c", HOG],
        env={"HOG_MB": "600"},
        resources=Resources(memory_mb=200, max_memory_mb=300),
        retries=5,
    )
    flaky_count = tmp_path / "count"
    flaky = Command(
        name="flaky",
        argv=[
            PY,
            "-c",
            f"import pathlib; p = pathlib.Path({str(flaky_count)!r}); "
            "n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n)); "
            "raise SystemExit(0 if n == 2 else 1)",
        ],
        resources=Resources(memory_mb=150),
        retries=1,
    )
    h = backend(tmp_path).run(Pipeline("cap", Parallel(hog, flaky)))
    assert h.wait(180) is RunStatus.FAILED
    # flaky's retry follows its first attempt at once: the requeue Slurm accepted but
    # left failed (about 1 run in 5 here) must not count as the retry's outcome.
    why = (h.failures(), h.logs("flaky"))
    assert states(h) == {"hog": "failed", "flaky": "succeeded"}, why
    assert h.attempts() == {"hog": (2, 300), "flaky": (2, 150)}, why  # same request
    reason = h.failures()["hog"]
    assert "OUT_OF_MEMORY" in reason
    assert reason.endswith("out of memory with 300 MB (the cap, 300 MB), not retried")


def test_cancel_stops_running_and_queued_jobs(slurm: None, tmp_path: Path) -> None:
    started = tmp_path / "started"
    slow = Command(
        name="slow",
        argv=[PY, "-c", f"import time; open({str(started)!r}, 'w').close(); time.sleep(120)"],
    )
    nxt = Command(name="next", argv=["true"])
    h = backend(tmp_path).run(Pipeline("c", Seq(slow, nxt)))
    while not started.exists():
        assert not h.status().done, h.logs("slow")
        threading.Event().wait(0.1)
    assert h.status() is RunStatus.RUNNING
    h.cancel()
    assert h.wait(60) is RunStatus.CANCELLED
    assert states(h) == {"slow": "cancelled", "next": "cancelled"}
    assert h.failures() == {}


def test_a_new_run_follows_jobs_an_earlier_one_left_running(slurm: None, tmp_path: Path) -> None:
    # The submitting process goes away (here: its handle is dropped); a new run of the
    # same pipeline takes over the queued and running jobs instead of submitting twice.
    started, block, count = tmp_path / "started", tmp_path / "block", tmp_path / "count"
    block.touch()
    wait = (
        f"import os, pathlib, time; c = pathlib.Path({str(count)!r}); "
        "c.write_text(str(int(c.read_text()) + 1 if c.exists() else 1)); "
        f"open({str(started)!r}, 'w').close()\n"
        f"while os.path.exists({str(block)!r}): time.sleep(0.1)"
    )
    p = Pipeline(
        "k",
        Seq(
            Command(name="slow", argv=[PY, "-c", wait]),
            Command(name="last", argv=["true"]),
        ),
    )
    first = backend(tmp_path).run(p)
    ids = first.job_ids()
    while not started.exists():
        threading.Event().wait(0.1)
    del first
    again = backend(tmp_path).run(p)
    assert again.job_ids() == ids and again.adopted == {"slow", "last"}
    block.unlink()
    assert again.wait(60) is RunStatus.SUCCEEDED
    assert count.read_text() == "1"
    third = backend(tmp_path).run(p)
    assert third.job_ids() == {} and states(third) == {"slow": "skipped", "last": "skipped"}


def test_pyfunction_nodes_run_in_jobs(slurm: None, tmp_path: Path) -> None:
    out = tmp_path / "f.txt"
    node = PyFunction(
        name="py",
        func=write_text,
        kwargs={"path": str(out), "text": "it's {ok}"},
        outputs=[str(out)],
    )
    h = backend(tmp_path).run(Pipeline("py", node))
    assert h.wait(60) is RunStatus.SUCCEEDED, h.logs("py")
    assert out.read_text() == "it's {ok}"
    assert f"wrote {out}" in h.log_lines("py")


def test_resources_partition_and_account_reach_sbatch(tmp_path: Path) -> None:
    b = SlurmBackend(tmp_path / "wd", partition="batch", account="lab", qos="normal")
    node = Command(
        name="x",
        argv=["true"],
        resources=Resources(cpus=4, memory_mb=8000, time_min=90, queue="bigmem"),
        env={"A": "b c"},
    )
    p = Pipeline("pipe", node)
    dag = p.compile()
    cmd = b.sbatch_command(dag, dag.nodes["x"], 8000, ["12", "13"])
    assert "--cpus-per-task=4" in cmd and "--mem=8000M" in cmd and "--time=90" in cmd
    assert "--partition=bigmem" in cmd and "--account=lab" in cmd and "--qos=normal" in cmd
    assert "--dependency=afterok:12:13" in cmd
    assert "export A='b c'" in b.job_script(dag.nodes["x"])


def test_bad_configuration_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(BackendConfigError, match="max_memory_mb=0"):
        SlurmBackend(tmp_path, max_memory_mb=0)
    with pytest.raises(BackendConfigError, match="partition=''"):
        SlurmBackend(tmp_path, partition="")
    with pytest.raises(BackendConfigError, match="cannot run 'squeue'"):
        SlurmBackend(tmp_path / "wd", slurm_bin=str(tmp_path / "nowhere")).run(
            Pipeline("p", Command(name="x", argv=["true"]))
        )
    with pytest.raises(BackendConfigError, match="lives in __main__"):
        SlurmBackend(tmp_path / "wd").run(Pipeline("m", PyFunction(name="m", func="__main__:f")))
