"""Partition statuses: the indexed stale rule against its plain definition, and the
per-instance snapshot against what Dagster stores (SQLite and Postgres storage)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent, DagsterEventType

from conductor import runs
from conductor.graph import AssetInfo, partition_key, partition_values
from conductor.runs import instances, snapshot
from conductor.settings import Settings
from tests.conductor.conftest import TOY, pg_create, pg_drop

PLATE = (("plate", "plate"),)
STARTED = dg.DagsterRunStatus.STARTED
PLATE_WELL = (("plate", "plate"), ("well", "well"))
GRAPH = (
    AssetInfo("inventory", ("plate",), (), PLATE),
    AssetInfo("experiment", (), ("inventory",), ()),
    AssetInfo("illum", ("plate",), ("inventory", "experiment"), PLATE),
    AssetInfo("corrected", ("plate", "well"), ("illum", "inventory"), PLATE_WELL),
    AssetInfo("segmentation", ("plate", "well"), ("corrected", "experiment"), PLATE_WELL),
    AssetInfo("summary", ("plate",), ("segmentation", "outside"), PLATE),
)
PLATES = ["P1", "P2", "P3"]
WELLS = {"P1": ["A1", "A2", "B1"], "P2": ["A1", "B2"], "P3": ["C3"]}


def plain_statuses(
    graph: tuple[AssetInfo, ...], latest: dict[str, dict[str, int]]
) -> dict[str, dict[str, str]]:
    """The definition, literally: stale when some parent partition that this partition
    reads (agrees on every shared dimension) has a higher storage id. Quadratic."""
    dims_of = {a.name: a.dims for a in graph}

    def reads(parent_dims: tuple[str, ...], key: str, values: dict[str, str]) -> bool:
        if not parent_dims:
            return True
        parent_values = dict(zip(parent_dims, key.split("|"), strict=False))
        return all(parent_values.get(d, v) == v for d, v in values.items())

    out = {}
    for info in graph:
        ids = latest.get(info.name, {})
        statuses = {}
        for values in partition_values(info.dims, PLATES, WELLS):
            k = partition_key(info.dims, values)
            if k not in ids:
                statuses[k] = "missing"
                continue
            newer = any(
                pid > ids[k]
                for parent in info.parents
                if parent in dims_of
                for pk, pid in latest.get(parent, {}).items()
                if reads(dims_of[parent], pk, values)
            )
            statuses[k] = "stale" if newer else "done"
        out[info.name] = statuses
    return out


def indexed_statuses(
    graph: tuple[AssetInfo, ...], latest: dict[str, dict[str, int]]
) -> dict[str, dict[str, str]]:
    return {
        info.name: runs.statuses_from_ids(
            info, graph, partition_values(info.dims, PLATES, WELLS), latest, {}
        )
        for info in graph
    }


def test_indexed_stale_rule_on_a_hand_checked_case() -> None:
    latest = {
        "inventory": {"P1": 1, "P2": 2},  # no P3: missing upstream
        "experiment": {"default": 3},
        "illum": {"P1": 4, "P2": 20, "P3": 5},
        "corrected": {"P1|A1": 10, "P1|A2": 11, "P2|A1": 12, "P3|C3": 13},
        "segmentation": {"P1|A1": 14, "P1|A2": 9, "P2|A1": 15, "P3|C3": 16},
        "summary": {"P1": 17, "P2": 18, "P3": 19},
        "outside": {"P1": 99},  # not in the graph: never makes anything stale
    }
    got = indexed_statuses(GRAPH, latest)
    assert got == plain_statuses(GRAPH, latest)
    assert got["illum"] == {"P1": "done", "P2": "done", "P3": "done"}
    # A plate-level parent newer than the well: P2's illum (20) after P2|A1 (12).
    assert got["corrected"] == {
        "P1|A1": "done",
        "P1|A2": "done",
        "P1|B1": "missing",
        "P2|A1": "stale",
        "P2|B2": "missing",
        "P3|C3": "done",  # inventory has no P3 partition: nothing upstream is newer
    }
    # Same-dimension parent: P1|A2's corrected (11) is newer than its segmentation (9).
    assert got["segmentation"]["P1|A2"] == "stale"
    assert got["segmentation"]["P1|A1"] == "done"
    # A plate-level child reads all of its plate's wells: none is newer than the summary.
    assert got["summary"] == {"P1": "done", "P2": "done", "P3": "done"}
    latest["segmentation"]["P3|Z9"] = 30  # a well the index no longer lists still counts
    assert indexed_statuses(GRAPH, latest)["summary"] == {
        "P1": "done",
        "P2": "done",
        "P3": "stale",
    }
    latest["inventory"]["P2"] = 40  # the unpartitioned experiment reads every plate
    assert indexed_statuses(GRAPH, latest)["experiment"] == {"default": "stale"}


@pytest.mark.parametrize("seed", range(200))
def test_indexed_stale_rule_agrees_with_the_definition(seed: int) -> None:
    rng = random.Random(seed)
    keys = {
        (): ["default"],
        ("plate",): [*PLATES, "P9"],  # P9: materialised once, no longer indexed
        ("plate", "well"): [
            f"{p}|{w}" for p in [*PLATES, "P9"] for w in ["A1", "A2", "B1", "B2", "C3", "Z9"]
        ],
    }
    ids = rng.sample(range(1, 10_000), 500)
    latest: dict[str, dict[str, int]] = {}
    for info in (*GRAPH, AssetInfo("outside", ("plate",), (), PLATE)):
        chosen = [k for k in keys[info.dims] if rng.random() < 0.6]
        if info.dims == ("plate", "well") and rng.random() < 0.3:
            chosen.append("P1")  # a key with a missing part agrees on that dimension
        latest[info.name] = {k: ids.pop() for k in chosen}
    assert indexed_statuses(GRAPH, latest) == plain_statuses(GRAPH, latest)


def test_running_and_failed_win_over_ids() -> None:
    info = GRAPH[3]
    latest = {"corrected": {"P1|A1": 5, "P1|A2": 6}, "illum": {"P1": 1}, "inventory": {}}
    values = partition_values(info.dims, ["P1"], {"P1": ["A1", "A2", "B1"]})
    flags = {"P1|A1": "running", "P1|B1": "failed"}
    got = runs.statuses_from_ids(info, GRAPH, values, latest, flags)
    assert got == {"P1|A1": "running", "P1|A2": "done", "P1|B1": "failed"}


# --- Through a real Dagster instance (the toy code location) --------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def dagster_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings whose project instances store in SQLite files or in a Postgres database."""
    yaml = None
    name = None
    if request.param == "postgres":
        name = f"dagster_test_{uuid.uuid4().hex[:10]}"
        url = pg_create(name).replace("postgresql+psycopg://", "postgresql://")
        yaml = tmp_path / "dagster.yaml"
        yaml.write_text(
            f"storage:\n  postgres:\n    postgres_url: {url}\ntelemetry:\n  enabled: false\n"
        )
    yield Settings(
        database_url="sqlite://", data_dir=tmp_path / "data", dagster_module=TOY, dagster_yaml=yaml
    )
    if name is not None:
        instances._instance.cache_clear()  # close nothing explicitly: drop the pooled connections
        pg_drop(name)


def _materialize(inst, asset: str, plate: str, well: str | None = None) -> None:
    partition = dg.MultiPartitionKey({"plate": plate, "well": well}) if well else plate
    inst.report_runless_asset_event(dg.AssetMaterialization(asset, partition=partition))


def _plan(inst, run_id: str, asset: str, key: str) -> None:
    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value,
        job_name="__ASSET_JOB",
        event_specific_data=AssetMaterializationPlannedData(dg.AssetKey(asset), partition=key),
    )
    inst.report_dagster_event(event, run_id=run_id)


def test_snapshot_follows_the_instance(
    dagster_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conductor.graph import asset_graph

    settings, pid = dagster_settings, 7
    graph = asset_graph(TOY)
    inst = runs.instance(settings, pid)
    inst.add_dynamic_partitions("plate", ["Plate1"])
    inst.add_dynamic_partitions("well", ["A1", "B02"])
    wells = {"Plate1": ["A1", "B02"]}

    def statuses(**kw) -> dict[str, dict[str, str]]:
        return runs.partition_statuses(settings, pid, graph, ["Plate1"], wells, **kw)

    def uncached() -> dict[str, dict[str, str]]:
        snapshot._SNAPSHOTS.clear()
        return statuses()

    assert statuses()["corrected_cp"] == {"Plate1|A1": "missing", "Plate1|B02": "missing"}
    for asset in ("inventory", "illum_cp"):
        _materialize(inst, asset, "Plate1")
    _materialize(inst, "corrected_cp", "Plate1", "A1")
    first = statuses()
    assert first == {
        "inventory": {"Plate1": "done"},
        "illum_cp": {"Plate1": "done"},
        "corrected_cp": {"Plate1|A1": "done", "Plate1|B02": "missing"},
    }
    _materialize(inst, "illum_cp", "Plate1")  # newer upstream: read incrementally
    assert statuses(assets=["corrected_cp"]) == {
        "corrected_cp": {"Plate1|A1": "stale", "Plate1|B02": "missing"}
    }
    assert statuses() == uncached()

    run = inst.add_run(
        dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=STARTED)
    )
    _plan(inst, run.run_id, "corrected_cp", "Plate1|B02")
    assert statuses()["corrected_cp"]["Plate1|B02"] == "running"
    inst.report_run_failed(run)  # the run's end turns its planned partition failed
    assert statuses()["corrected_cp"] == {"Plate1|A1": "stale", "Plate1|B02": "failed"}
    assert statuses() == uncached()
    _materialize(inst, "corrected_cp", "Plate1", "B02")
    assert statuses()["corrected_cp"] == {"Plate1|A1": "stale", "Plate1|B02": "done"}

    run_id = str(uuid.uuid4())
    inst.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=run_id, status=STARTED))
    _plan(inst, run_id, "corrected_cp", "Plate1|A1")
    assert statuses()["corrected_cp"]["Plate1|A1"] == "running"
    inst.delete_run(run_id)  # no event at all: Dagster then calls it neither running nor failed
    assert statuses()["corrected_cp"] == {"Plate1|A1": "stale", "Plate1|B02": "done"}

    monkeypatch.setattr(snapshot, "SNAPSHOT_MAX_AGE", 0.0)  # every call starts afresh
    assert statuses()["corrected_cp"] == {"Plate1|A1": "stale", "Plate1|B02": "done"}
