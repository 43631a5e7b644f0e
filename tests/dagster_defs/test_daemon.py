"""The daemon path end to end: a plate dropped into the dataset while `dagster dev` runs
ends with every asset of the plate materialised, with no human action."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import dagster as dg

from starrynight import registry
from tests.dagster_defs.helpers import dagster_dev, make_sample, post_graphql

PLATE_ASSETS = list(registry.names_at("plate"))
WELL_ASSETS = list(registry.names_at("well"))
DAGSTER_YAML = """\
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def _missing(home: Path) -> list[str]:
    """Assets (with partition) of Plate1 / Plate1|A1 not materialised yet."""
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        missing = [
            f"{a}[Plate1]"
            for a in PLATE_ASSETS
            if "Plate1" not in instance.get_materialized_partitions(dg.AssetKey(a))
        ]
        missing += [
            f"{a}[Plate1|A1]"
            for a in WELL_ASSETS
            if "Plate1|A1" not in instance.get_materialized_partitions(dg.AssetKey(a))
        ]
        if instance.get_latest_materialization_event(dg.AssetKey("experiment")) is None:
            missing.append("experiment")
        return missing
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


def test_plate_dropped_while_the_daemon_runs_is_materialised(tmp_path: Path) -> None:
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
        deadline = time.monotonic() + 240
        missing = _missing(home)
        while missing and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(3)
            missing = _missing(home)
        assert not missing, f"not materialised: {missing}\n{tail()}"
        # nothing was started before its upstream existed (and failed for it)
        assert not _failed_runs(home), f"{_failed_runs(home)}\n{tail()}"
