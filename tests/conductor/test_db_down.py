"""When the database goes away requests get 503 JSON; when it returns, service resumes."""

from __future__ import annotations

from pathlib import Path

import psycopg
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from conductor.settings import Settings
from tests.conductor.conftest import PG_ADMIN, project_body


def _take_down(settings: Settings) -> object:
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database)
        moved = path.with_suffix(".away")
        path.rename(moved)
        return path, moved
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (url.database,),
        )
    return url.database


def _bring_back(settings: Settings, token: object) -> None:
    if isinstance(token, tuple):
        path, moved = token
        for extra in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            extra.unlink(missing_ok=True)
        moved.rename(path)
        return
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{token}" ALLOW_CONNECTIONS true')


def test_503_then_recovery(
    client: TestClient, settings: Settings, tmp_path: Path, dataset: Path
) -> None:
    assert client.post("/api/v1/projects", json=project_body(tmp_path, dataset)).status_code == 201
    assert client.get("/api/v1/projects").json()["total"] == 1
    token = _take_down(settings)
    try:
        down = client.get("/api/v1/projects")
        assert down.status_code == 503, down.text
        assert down.json()["detail"].startswith("database unavailable")
        assert client.get("/api/v1/projects/1").status_code == 503
        ready = client.get("/api/v1/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("unavailable")
        assert client.get("/api/v1/health/live").status_code == 200
    finally:
        _bring_back(settings, token)
    back = client.get("/api/v1/projects")
    assert back.status_code == 200, back.text
    assert back.json()["total"] == 1
    assert client.get("/api/v1/health/ready").status_code == 200
