"""Canvas: the server-rendered web interface of Conductor (pages under ``/ui``).

Pages call the same service functions and database sessions as the REST API; the
browser authenticates with the same bearer tokens, kept in an HttpOnly cookie after
the login form (see :mod:`conductor.web.session`).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
DEFAULT_DAGSTER_UI = "http://127.0.0.1:3000"


def mount(app: FastAPI) -> None:
    """Add the Canvas pages, their static files and ``/`` -> ``/ui`` to ``app``.

    ``CONDUCTOR_DAGSTER_UI_URL`` is where links into the Dagster UI point
    (``{project_id}`` in it is replaced by the project's id).
    """
    from conductor.web import configure, platemap, projects, qc, runs, session

    app.state.dagster_ui_url = os.environ.get("CONDUCTOR_DAGSTER_UI_URL", DEFAULT_DAGSTER_UI)
    for module in (session, projects, configure, platemap, runs, qc):
        app.include_router(module.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="canvas-static")

    @app.get("/", include_in_schema=False)
    async def _root() -> RedirectResponse:
        return RedirectResponse("/ui/projects", status_code=307)
