"""The Snakemake backend, run for real (each snakemake start costs a few seconds)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from pipecraft import (
    BackendConfigError,
    Command,
    NodeState,
    Pipeline,
    PyFunction,
    Resources,
    RunStatus,
    Seq,
)
from pipecraft.backends.snakemake import SnakemakeBackend
from pipecraft.testing import DEMO_EXPECTED, demo_pipeline, write_text

PY = sys.executable


def states(handle) -> dict[str, str]:
    return {n: s.value for n, s in handle.node_states().items()}


def test_demo_pipeline_dry_run_run_and_rerun(tmp_path: Path) -> None:
    data = tmp_path / "my data, v1"
    backend = SnakemakeBackend(tmp_path / "wd", cores=2)
    p = demo_pipeline(data)
    assert backend.dry_run(p) == list(p.compile().nodes)
    assert not data.exists()  # a dry run runs nothing

    h = backend.run(p)
    assert h.wait(120) is RunStatus.FAILED
    assert states(h) == DEMO_EXPECTED
    assert (data / "gathered.txt").read_text() == "prepared+a\nprepared+b\nprepared+c\n"
    assert not (data / "never.txt").exists()
    assert list(h.failures()) == ["doomed"]
    assert h.failures()["doomed"].endswith("failing with exit code 3: doomed on purpose")
    assert h.log_lines("doomed") == ["failing with exit code 3: doomed on purpose"]

    assert backend.dry_run(p) == ["doomed", "after-doomed"]
    h = backend.run(p)
    assert h.wait(120) is RunStatus.FAILED
    assert states(h) == {
        n: ("skipped" if v == "succeeded" else v) for n, v in DEMO_EXPECTED.items()
    }


TRICKY = [
    "a b",
    "c,d",
    "it's",
    '"q"',
    "{x}",
    "{{y}}",
    "$HOME",
    "back\\slash",
    "semi;colon",
    "new\nline",
    "*",
    "-n",
]


def test_arguments_reach_the_program_unchanged_and_pyfunctions_run(tmp_path: Path) -> None:
    out = tmp_path / "out dir, {1}" / "f.txt"
    p = Pipeline(
        "q",
        Seq(
            Command(
                name="echo",
                argv=[PY, "-m", "pipecraft.testing", "echo-args", *TRICKY],
                env={"PIPECRAFT_T": "x y"},
            ),
            PyFunction(
                name="py",
                func=write_text,
                kwargs={"path": str(out), "text": "it's {ok}"},
                outputs=[str(out)],
            ),
        ),
    )
    h = SnakemakeBackend(tmp_path / "wd", cores=1).run(p)
    assert h.wait(120) is RunStatus.SUCCEEDED, h.snakemake_log.read_text()
    assert h.log_lines("echo") == [repr(a) for a in TRICKY]
    assert out.read_text() == "it's {ok}"


def test_snakefile_encodes_every_edge_resources_and_retries(tmp_path: Path) -> None:
    # No files link these nodes: the order must come from flags alone.
    p = Pipeline(
        "e",
        Seq(
            Command(
                name="a",
                argv=["true"],
                resources=Resources(cpus=3, memory_mb=2048, max_memory_mb=5000, time_min=30),
                retries=2,
            ),
            Command(
                name="b",
                argv=["true"],
                image="repo/starrynight:1",
                resources=Resources(queue="bigmem", account="lab"),
            ),
        ),
    )
    backend = SnakemakeBackend(tmp_path / "wd")
    text = backend.compile(p)
    assert backend.dry_run(p) == ["a", "b"]  # Snakemake accepts the container directive
    flag_a = str(backend.flag_path(p.compile().nodes["a"]))
    rule_b = text[text.index("rule n1_b:") :]
    assert f"input: [{flag_a!r}]" in rule_b
    rule_a = text[text.index("rule n0_a:") : text.index("rule n1_b:")]
    assert "threads: 3" in rule_a and "retries: 2" in rule_a and "runtime=30" in rule_a
    assert "mem_mb=lambda wildcards, attempt: min(2048 * attempt, 5000)" in rule_a
    assert "resources: mem_mb=1024" in rule_b  # no retries: a plain figure
    assert "input: []" in rule_a
    assert "container:" not in rule_a
    assert "container: 'docker://repo/starrynight:1'" in rule_b
    assert "slurm_partition='bigmem', slurm_account='lab'" in rule_b


def test_resume_after_snakemake_is_killed(tmp_path: Path) -> None:
    started, block = tmp_path / "started", tmp_path / "block"
    block.touch()
    wait = (
        f"import os, time; open({str(started)!r}, 'w').close()\n"
        f"while os.path.exists({str(block)!r}): time.sleep(0.05)"
    )
    p = Pipeline(
        "k",
        Seq(
            Command(name="first", argv=["true"]),
            Command(name="slow", argv=[PY, "-c", wait]),
            Command(name="last", argv=["true"]),
        ),
    )
    backend = SnakemakeBackend(tmp_path / "wd", cores=1)
    h = backend.run(p)
    while not started.exists():
        assert h.returncode is None, h.snakemake_log.read_text()
        threading.Event().wait(0.05)
    assert h.node_states()["slow"] is NodeState.RUNNING
    os.killpg(h.proc.pid, signal.SIGKILL)  # no clean-up: stale lock, incomplete job
    h.proc.wait()
    block.unlink()
    h2 = SnakemakeBackend(tmp_path / "wd", cores=1).run(p)
    assert h2.wait(120) is RunStatus.SUCCEEDED, h2.snakemake_log.read_text()
    assert states(h2) == {"first": "skipped", "slow": "succeeded", "last": "succeeded"}


def test_bad_configuration_is_rejected_before_running(tmp_path: Path) -> None:
    with pytest.raises(
        BackendConfigError, match="snakemake-executor-plugin-nosuch is not installed"
    ):
        SnakemakeBackend(tmp_path, executor="nosuch")
    with pytest.raises(BackendConfigError, match="cores=0"):
        SnakemakeBackend(tmp_path, cores=0)
    with pytest.raises(BackendConfigError, match="contains braces"):
        SnakemakeBackend(tmp_path / "{w}")
    main_fn = PyFunction(name="m", func="__main__:thing")
    with pytest.raises(BackendConfigError, match="lives in __main__"):
        SnakemakeBackend(tmp_path / "wd").run(Pipeline("m", main_fn))
    assert not (tmp_path / "wd" / "Snakefile").exists()
