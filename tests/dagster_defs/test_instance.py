"""The production instance config against the real PostgreSQL server, and a smoke test
of `dagster dev` answering GraphQL over HTTP with the asset graph."""

import os
import shutil
import time
import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from starrynight import registry
from tests.dagster_defs.helpers import REPO, dagster_dev, post_graphql

PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture
def pg_database():
    name = f"sn_dagster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dg.asset(partitions_def=dg.DynamicPartitionsDefinition(name="plate"))
def tiny(context):
    return dg.MaterializeResult(metadata={"plate": context.partition_key})


def test_postgres_instance_config(tmp_path: Path, pg_database: str, monkeypatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    for k, v in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": "unused-trust",
        "DAGSTER_PG_DB": pg_database,
    }.items():
        monkeypatch.setenv(k, v)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        instance.add_dynamic_partitions("plate", ["Plate1"])
        result = dg.materialize([tiny], partition_key="Plate1", instance=instance)
        assert result.success
    finally:
        instance.dispose()
    # the records are in the database, not in the home folder
    with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={pg_database}") as c:
        assert c.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        keys = c.execute("SELECT partition FROM dynamic_partitions").fetchall()
        assert keys == [("Plate1",)]


@pytest.mark.slow
def test_dagster_dev_serves_the_asset_graph(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "dataset").mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "STARRYNIGHT_DATASET_URI": str(tmp_path / "dataset"),
        "STARRYNIGHT_WORKSPACE_URI": str(tmp_path / "ws"),
    }
    with dagster_dev(env, tmp_path / "dev.log") as (proc, url):
        deadline = time.monotonic() + 180
        nodes = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                data = post_graphql(
                    url, "{ assetNodes { assetKey { path } partitionDefinition { description } } }"
                )
                nodes = data.get("data", {}).get("assetNodes")
                if nodes:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert nodes, (tmp_path / "dev.log").read_text()[-3000:]
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert keys == {s.name for s in registry.STEPS}
        sensors = post_graphql(
            url,
            "{ sensorsOrError(repositorySelector: {repositoryName: "
            '"__repository__", repositoryLocationName: "starrynight"}) '
            "{ ... on Sensors { results { name } } } }",
        )
        names = {s["name"] for s in sensors["data"]["sensorsOrError"]["results"]}
        assert "new_plate_sensor" in names
    assert proc.returncode is not None
