"""Fixtures: the app (SQLite and Postgres, via the conductor fixtures) with a browser login."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from conductor.app import create_app
from conductor.settings import Settings
from tests.conductor import conftest as conductor_fixtures
from tests.conductor.conftest import RO, RW

__all__ = ["RO", "RW"]
# The conductor tests' database fixtures (SQLite and Postgres), shared by this folder.
database_url = conductor_fixtures.database_url
clean_database = conductor_fixtures.clean_database
settings = conductor_fixtures.settings

COOKIE = "canvas_token"


@pytest.fixture
def ui(settings: Settings) -> Iterator[TestClient]:
    """A client signed in with the rw token's cookie; redirects are not followed."""
    with TestClient(create_app(settings), follow_redirects=False) as c:
        c.cookies.set(COOKIE, RW)
        yield c


@pytest.fixture
def anon(settings: Settings) -> Iterator[TestClient]:
    """A client without any token."""
    with TestClient(create_app(settings), follow_redirects=False) as c:
        yield c


def csrf_of(html: str) -> str:
    """The CSRF value of the first form of a page."""
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert m, "page has no csrf field"
    return m.group(1)


def post_form(client: TestClient, url: str, data: dict, page: str | None = None):
    """POST ``data`` with the CSRF value read from ``page`` (default: GET ``url``)."""
    html = client.get(page or url).text
    return client.post(url, data={**data, "csrf": csrf_of(html)})
