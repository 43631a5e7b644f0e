"""Fixtures: the app on SQLite and on the real Postgres server, tokens, a sample project."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from conductor import db
from conductor.app import create_app
from conductor.settings import Settings, parse_tokens

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
RW = "rw-secret-0123456789abcdef"
RO = "ro-secret-0123456789abcdef"
TOKENS = parse_tokens(f"alice:{RW}:rw,bob:{RO}:ro", "test")
TOY = "tests.conductor.toy_defs"


def pg_create(name: str) -> str:
    """Create database ``name`` on the local server; return its SQLAlchemy URL."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def pg_drop(name: str) -> None:
    """Drop database ``name`` (terminating whatever is still connected)."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[str]:
    """A migrated, empty database per backend, shared by the session (tables are wiped)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'conductor.db'}"
        db.upgrade(url)
        yield url
        return
    name = f"conductor_test_{uuid.uuid4().hex[:10]}"
    url = pg_create(name)
    db.upgrade(url)
    yield url
    pg_drop(name)


@pytest.fixture
def clean_database(database_url: str) -> str:
    """The session database with its tables emptied and ids restarted."""
    engine = create_engine(database_url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE runs, projects RESTART IDENTITY CASCADE"))
        else:
            conn.execute(text("DELETE FROM runs"))
            conn.execute(text("DELETE FROM projects"))
    engine.dispose()
    return database_url


@pytest.fixture
def settings(clean_database: str, tmp_path: Path) -> Settings:
    """Settings with a rw and a ro token, the toy code location and a private data dir."""
    return Settings(
        database_url=clean_database,
        data_dir=tmp_path / "conductor",
        tokens=TOKENS,
        cors_origins=("http://ui.example",),
        body_limit=10_000,
        dagster_module=TOY,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """An httpx client on the app, authenticated with the rw token."""
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {RW}"}) as c:
        yield c


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A folder standing in for a dataset (projects only need it to exist)."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    return folder


def project_body(tmp_path: Path, dataset: Path, name: str = "screen1") -> dict:
    """A valid project creation body."""
    return {
        "name": name,
        "dataset_uri": str(dataset),
        "workspace_uri": str(tmp_path / f"ws_{name}"),
        "experiment_type": "ops",
    }


@pytest.fixture
def sample_copy(small_sample, tmp_path: Path) -> Path:
    """A private copy of the small sample dataset root (``OUT/<dataset>``)."""
    dst = tmp_path / "sample"
    shutil.copytree(small_sample.dataset_root, dst)
    return dst
