"""Faults and bad input found by probing (issue 20): each answers clearly, never 500."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from conductor import files
from conductor.cli import main
from conductor.runs import instances
from conductor.settings import Settings
from starrynight.errors import UserError
from tests.conductor.conftest import PG_ADMIN, pg_create, pg_drop, project_body
from tests.conductor.runhelpers import API, make_configured_project

# --- Path components longer than a file system allows -------------------------------------


@pytest.mark.parametrize("name", ["a" * 256, "€" * 100])  # 256 bytes; 300 bytes in UTF-8
def test_a_path_component_too_long_is_422(
    client: TestClient, tmp_path: Path, dataset: Path, name: str
) -> None:
    pid = client.post(f"{API}/projects", json=project_body(tmp_path, dataset)).json()["id"]
    requests = [
        (f"{API}/projects/{pid}/files", {"prefix": f"illum/{name}"}),
        (f"{API}/projects/{pid}/files/content", {"path": f"{name}/x.npy"}),
        (f"{API}/projects/{pid}/files/preview", {"path": f"illum/{name}.png"}),
        (f"/ui/projects/{pid}/files/preview", {"path": f"{name}.png"}),
    ]
    for url, params in requests:
        answer = client.get(url, params=params)
        assert answer.status_code == 422, (url, answer.text)
        assert "longer than 255 bytes" in answer.text
    assert client.get(f"{API}/projects/{pid}/files", params={"prefix": "a" * 255}).json() == {
        "prefix": "a" * 255,
        "items": [],
        "truncated": False,
    }


def test_a_path_too_long_as_a_whole_is_one_line(tmp_path: Path) -> None:
    deep = "/".join(["b" * 250] * 20)  # each part fits; the whole exceeds PATH_MAX
    with pytest.raises(UserError, match="too long for the workspace's file system"):
        files.resolve(str(tmp_path), deep)


# --- Partitions before the project's Dagster instance exists ------------------------------


def test_partitions_before_any_run_are_the_empty_state(
    client: TestClient, settings: Settings, small_sample, tmp_path: Path
) -> None:
    pid = make_configured_project(client, small_sample.dataset_root, str(tmp_path / "ws"))
    answer = client.get(f"{API}/projects/{pid}/partitions")
    assert answer.status_code == 200, answer.text
    assert answer.json()["assets"] == {
        "inventory": {"Plate1": "missing"},
        "illum_cp": {"Plate1": "missing"},
        "corrected_cp": {"Plate1|A1": "missing", "Plate1|B02": "missing"},
    }
    assert client.get(f"/ui/projects/{pid}/plates").status_code == 200
    assert not instances.instance_dir(settings, pid).exists()  # reading created nothing


def test_a_new_instance_opened_by_many_requests_at_once(tmp_path: Path) -> None:
    # Unlocked, 4 threads opening a fresh instance collided on its schema in every trial
    # ("table runs already exists", UNIQUE constraint failed: alembic_version).
    for trial in range(3):
        settings = Settings(database_url="sqlite://", data_dir=tmp_path / str(trial))
        errors: list[str] = []

        def open_it(settings: Settings = settings, errors: list[str] = errors) -> None:
            try:
                instances.instance(settings, 1).get_runs_count()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        instances._instance.cache_clear()
        assert errors == []


# --- PATCH while the database cannot serve -----------------------------------------------


@contextmanager
def _unusable(settings: Settings) -> Iterator[None]:
    """The database answers, but cannot serve a write.

    SQLite: the file is replaced under the running service by one that is not a
    database. Postgres: the server turns read-only and drops the connections, as a
    failover to a standby does.
    """
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database)
        moved = path.with_suffix(".away")
        path.rename(moved)
        path.write_bytes(b"this is not an SQLite database" * 100)
        try:
            yield
        finally:
            for extra in (
                path,
                path.with_name(path.name + "-wal"),
                path.with_name(path.name + "-shm"),
            ):
                extra.unlink(missing_ok=True)
            moved.rename(path)
        return
    kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{url.database}" SET default_transaction_read_only = on')
        conn.execute(kill, (url.database,))
    try:
        yield
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{url.database}" RESET default_transaction_read_only')
            conn.execute(kill, (url.database,))


def test_patch_while_the_database_cannot_serve_is_503(
    client: TestClient, settings: Settings, tmp_path: Path, dataset: Path
) -> None:
    from tests.conductor.test_db_down import _bring_back, _take_down

    assert client.post(f"{API}/projects", json=project_body(tmp_path, dataset)).status_code == 201
    for cut in range(2):  # refused connections, then a database that cannot write
        if cut == 0:
            token = _take_down(settings)
            down = client.patch(f"{API}/projects/1", json={"name": "renamed"})
            _bring_back(settings, token)
        else:
            with _unusable(settings):
                down = client.patch(f"{API}/projects/1", json={"name": "renamed"})
        assert down.status_code == 503, down.text
        assert down.headers["retry-after"] == "5"
        assert down.json()["detail"].startswith("database unavailable: ")
    back = client.patch(f"{API}/projects/1", json={"name": "renamed"})
    assert (back.status_code, back.json()["name"]) == (200, "renamed")


# --- conductor serve ------------------------------------------------------------------


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """``uvicorn.run`` replaced by a recorder: ``serve`` does everything but listen."""
    calls: list[dict] = []
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_serve_upgrade_db_on_a_refusing_database_is_one_line(
    backend: str, tmp_path: Path, monkeypatch, capsys, no_server: list[dict]
) -> None:
    if backend == "sqlite":
        (tmp_path / "db-is-a-folder").mkdir()
        url = f"sqlite:///{tmp_path / 'db-is-a-folder'}"
    else:
        url = "postgresql://postgres@127.0.0.1:1/conductor"  # nothing listens on port 1
    monkeypatch.setenv("STARRYNIGHT_DATABASE_URL", url)
    monkeypatch.setenv("STARRYNIGHT_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--upgrade-db"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: database ")
    assert len(err.strip().splitlines()) == 1
    assert no_server == []  # never started listening


def test_serve_migrates_the_embedded_sqlite_database(
    tmp_path: Path, monkeypatch, no_server: list[dict]
) -> None:
    monkeypatch.delenv("STARRYNIGHT_DATABASE_URL", raising=False)  # the embedded default
    monkeypatch.setenv("STARRYNIGHT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONDUCTOR_TOKENS", "a:aaaaaaaaaaaaaaaa:rw")
    main(["serve"])
    assert len(no_server) == 1
    db_file = tmp_path / "data" / "conductor.db"
    tables = set(inspect(create_engine(f"sqlite:///{db_file}")).get_table_names())
    assert {"projects", "runs", "alembic_version"} <= tables


def test_serve_leaves_postgres_to_an_explicit_upgrade(
    tmp_path: Path, monkeypatch, no_server: list[dict]
) -> None:
    name = f"conductor_serve_{uuid.uuid4().hex[:10]}"
    url = pg_create(name)
    try:
        monkeypatch.setenv("STARRYNIGHT_DATABASE_URL", url)
        monkeypatch.setenv("STARRYNIGHT_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("CONDUCTOR_TOKENS", "a:aaaaaaaaaaaaaaaa:rw")
        main(["serve"])
        engine = create_engine(url)
        assert inspect(engine).get_table_names() == []
        main(["serve", "--upgrade-db"])
        assert {"projects", "runs"} <= set(inspect(engine).get_table_names())
        engine.dispose()
        assert len(no_server) == 2
    finally:
        pg_drop(name)
