"""Property tests from the OpenAPI schema: no generated request gets a 5xx.

Runs on SQLite and Postgres (Postgres refuses NUL bytes and 64-bit ids that SQLite
accepts, so both matter). Datasets and workspaces are fenced into the test's folder so
generated projects can neither reach S3 nor touch anything else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from conductor.app import create_app
from conductor.settings import Settings
from tests.conductor.conftest import RW, project_body


@pytest.fixture
def api_schema(settings: Settings, tmp_path: Path, dataset: Path):
    """The app's schema, with one project in the database so ids 1.. often exist."""
    fenced = dataclasses.replace(settings, allowed_roots=(str(tmp_path),))
    app = create_app(fenced)
    from fastapi.testclient import TestClient

    with TestClient(app, headers={"Authorization": f"Bearer {RW}"}) as c:
        assert c.post("/api/v1/projects", json=project_body(tmp_path, dataset)).status_code == 201
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


def test_no_server_errors(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        def check(case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {RW}"}, checks=[not_a_server_error]
            )

        check()
