"""The Dagster driver killed (SIGKILL) in the middle of a well run, then run again.

The killed run must not stay STARTED forever, and the second driver must finish the
graph: the killed well's products and the plate's gene summary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from dagster_defs.driver import DRIVER_TAG, driver_alive, driver_tag, fail_orphaned_runs
from tests.dagster_defs.helpers import REPO, age, make_sample

WELL_ASSETS = ["corrected_cp", "aligned_sbs", "segmentation", "barcode_calls", "cell_features"]
PLATE_ASSETS = ["inventory", "index", "illum_cp", "illum_sbs", "gene_summary"]


def _driver(root: Path, ws: Path, home: Path, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "dagster_defs.driver", "-d", str(root), "-w", str(ws)]
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        # Its own session: the steps it starts can be found (and waited for) by group.
        return subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _well_run(home: Path) -> dg.DagsterRun | None:
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        return next((r for r in runs if "|" in r.tags.get("dagster/partition", "")), None)
    finally:
        instance.dispose()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_driver_tag_names_a_live_process_and_not_a_dead_one() -> None:
    assert driver_alive(driver_tag()) is True
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert driver_alive(driver_tag(dead.pid)) is False
    # a recycled pid: same number, another process start
    host, pid, _ = driver_tag().split(":", 2)
    assert driver_alive(f"{host}:{pid}:not-this-process") is False
    assert driver_alive(f"another-host-{host}:{pid}:") is None


@pytest.mark.slow
def test_driver_killed_in_a_well_run_is_resumed_by_the_next_driver(tmp_path: Path) -> None:
    root = make_sample(tmp_path / "gen", ("Plate1",), wells=("A1",), size=80, sites=1, cycles=3)
    age(root)
    ws, home = tmp_path / "ws", tmp_path / "home"
    home.mkdir()
    first = _driver(root, ws, home, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 240
        while (run := _well_run(home)) is None:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no well run started within 240 s"
            time.sleep(0.2)
        # While its driver lives, a run is not an orphan.
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert fail_orphaned_runs(instance) == []
        time.sleep(1.0)  # into the run's steps
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        # The steps the driver had started finish (or fail) by themselves.
        deadline = time.monotonic() + 120
        while _group_alive(first.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if _group_alive(first.pid):
            os.killpg(first.pid, signal.SIGKILL)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        killed = instance.get_run_by_id(run.run_id)
        assert killed.status == dg.DagsterRunStatus.STARTED  # the fault: stuck
        assert DRIVER_TAG in killed.tags

    second = _driver(root, ws, home, tmp_path / "second.log")
    second.wait(timeout=600)
    out = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, out
    assert "Traceback" not in out

    with dg.DagsterInstance.from_config(str(home)) as instance:
        killed = instance.get_run_by_id(run.run_id)
        assert killed.status == dg.DagsterRunStatus.FAILURE
        [failure] = [
            e
            for e in instance.all_logs(run.run_id)
            if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_FAILURE"
        ]
        assert "is gone" in failure.message
        live = instance.get_runs(
            filters=dg.RunsFilter(
                statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.NOT_STARTED]
            )
        )
        assert live == []
        for key in WELL_ASSETS:
            assert instance.get_materialized_partitions(dg.AssetKey(key)) == {"Plate1|A1"}, key
        for key in PLATE_ASSETS:
            assert instance.get_materialized_partitions(dg.AssetKey(key)) == {"Plate1"}, key
    # every check line counts what ran; the killed run's planned checks are named
    assert "gene_summary    1/1 partitions" in out
