"""The daemon path end to end: a plate dropped into the dataset while `dagster dev` runs
is added by the sensor and processed up to its QC gates, which hold what follows them;
approving the gates (the CLI, as a reviewer would) lets the rest of the plate run, and
every asset of the plate ends materialised."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus as CheckStatus,
)

from dagster_defs.assets.qc import GATE_CHECKS
from starrynight import gates, registry
from starrynight.cli.main import main as starrynight_cli
from tests.dagster_defs.helpers import dagster_dev, make_sample, post_graphql

PLATE_ASSETS = list(registry.names_at("plate"))
WELL_ASSETS = list(registry.names_at("well"))
GATE_REPORTS = {s.name for s in registry.STEPS if s.group == "qc"}


def _behind_gates() -> set[str]:
    """Every step downstream of a gate's report (registry order is a dependency order)."""
    behind = set(GATE_REPORTS)
    for s in registry.STEPS:
        if set(s.needs) & behind:
            behind.add(s.name)
    return behind - GATE_REPORTS


BEHIND_GATES = _behind_gates()
DAGSTER_YAML = """\
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def _missing(home: Path, among: set[str] | None = None) -> list[str]:
    """Assets (with partition) of Plate1 / Plate1|A1 not materialised yet (of ``among``)."""
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        missing = [
            f"{a}[Plate1]"
            for a in PLATE_ASSETS
            if (among is None or a in among)
            and "Plate1" not in instance.get_materialized_partitions(dg.AssetKey(a))
        ]
        missing += [
            f"{a}[Plate1|A1]"
            for a in WELL_ASSETS
            if (among is None or a in among)
            and "Plate1|A1" not in instance.get_materialized_partitions(dg.AssetKey(a))
        ]
        if instance.get_latest_materialization_event(dg.AssetKey("experiment")) is None:
            missing.append("experiment")
        return missing
    finally:
        instance.dispose()


def _gate_checks(home: Path) -> dict[str, CheckStatus | None]:
    """Gate -> status of Plate1's latest gate check (None: not run yet)."""
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        out = {}
        for gate, key in GATE_CHECKS.items():
            history = instance.event_log_storage.get_asset_check_execution_history(key, limit=20)
            latest = next((r for r in history if r.partition == "Plate1"), None)
            out[gate] = None if latest is None else latest.status
        return out
    finally:
        instance.dispose()


def _runs_touching(home: Path, assets: set[str]) -> list[str]:
    """Runs whose selection includes one of ``assets``."""
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        return [
            f"{r.run_id[:8]} {sorted(k.to_user_string() for k in r.asset_selection or ())}"
            for r in instance.get_runs()
            if {k.to_user_string() for k in r.asset_selection or ()} & assets
        ]
    finally:
        instance.dispose()


def _failed_runs(home: Path) -> list[str]:
    """Runs that failed, with their asset selection."""
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        return [
            f"{r.run_id[:8]} {sorted(k.to_user_string() for k in r.asset_selection or ())}"
            for r in runs
        ]
    finally:
        instance.dispose()


def test_plate_dropped_while_the_daemon_runs_waits_at_its_gates(tmp_path: Path) -> None:
    root = make_sample(tmp_path / "gen", ("Plate1",), wells=("A1",), size=96, sites=1, cycles=3)
    plate = next(root.glob("*/*/images/Plate1"))
    # The dataset without the plate (the barcode table stays): the plate arrives later.
    dataset = tmp_path / "dataset"
    shutil.copytree(
        root, dataset, ignore=lambda d, names: ["Plate1"] if d == str(plate.parent) else []
    )
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    project = tmp_path / "project.json"
    project.write_text(
        json.dumps(
            {
                "dataset_uri": str(dataset),
                "workspace_uri": str(tmp_path / "ws"),
                "stable_seconds": 0,
                "tick_seconds": 2,
                "backend_options": {"max_workers": 2, "step_workers": 1},
                "qc": {"gates": list(gates.GATES)},
            }
        )
    )
    env = {**os.environ, "DAGSTER_HOME": str(home), "STARRYNIGHT_PROJECT_FILE": str(project)}
    for var in ("STARRYNIGHT_DATASET_URI", "STARRYNIGHT_WORKSPACE_URI", "STARRYNIGHT_BACKEND"):
        env.pop(var, None)

    def tail() -> str:
        return (tmp_path / "dev.log").read_text(errors="replace")[-4000:]

    with dagster_dev(env, tmp_path / "dev.log") as (proc, url):
        deadline = time.monotonic() + 120
        up = False
        while time.monotonic() < deadline and proc.poll() is None and not up:
            try:
                up = bool(post_graphql(url, "{ version }").get("data"))
            except OSError:
                time.sleep(1)
        assert up, tail()
        # Drop the plate in at once (a rename), as a finished copy would appear.
        staging = tmp_path / "staging"
        shutil.copytree(plate, staging)
        staging.rename(dataset / plate.relative_to(root))
        # The sensor adds the plate; what precedes the gates runs, with the reports.
        deadline = time.monotonic() + 240
        before = set(PLATE_ASSETS + WELL_ASSETS) - BEHIND_GATES
        missing, checks = _missing(home, before), _gate_checks(home)
        while (missing or None in checks.values()) and time.monotonic() < deadline:
            assert proc.poll() is None, tail()
            time.sleep(2)
            missing, checks = _missing(home, before), _gate_checks(home)
        assert not missing, f"not materialised: {missing}\n{tail()}"
        assert set(checks.values()) == {CheckStatus.FAILED}, checks
        # Closed gates hold: automation ticks on (every 2 s) and requests nothing behind them.
        time.sleep(8)
        assert _runs_touching(home, BEHIND_GATES) == [], tail()
        held = [f"{a}[Plate1]" for a in PLATE_ASSETS if a in BEHIND_GATES]
        held += [f"{a}[Plate1|A1]" for a in WELL_ASSETS if a in BEHIND_GATES]
        assert sorted(_missing(home, BEHIND_GATES)) == sorted(held)
        # A reviewer approves both gates: the sensor sees the decisions, the gate checks
        # pass and the rest of the plate follows.
        ws = str(tmp_path / "ws")
        for gate in gates.GATES:
            starrynight_cli(["qc", "approve", "-w", ws, "--plate", "Plate1", "--gate", gate,
                             "--by", "ada", "--comment", "looks right"])  # fmt: skip
        deadline = time.monotonic() + 240
        missing = _missing(home)
        while missing and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(2)
            missing = _missing(home)
        assert not missing, f"not materialised: {missing}\n{tail()}"
        assert set(_gate_checks(home).values()) == {CheckStatus.SUCCEEDED}
        # nothing was started before its upstream existed (and failed for it)
        assert not _failed_runs(home), f"{_failed_runs(home)}\n{tail()}"
