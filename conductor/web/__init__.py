"""Canvas: the server-rendered web interface of Conductor (pages under ``/ui``).

Pages call the same service functions and database sessions as the REST API; the
browser authenticates with the same bearer tokens, kept in an HttpOnly cookie after
the login form (see :mod:`conductor.web.session`).
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

if TYPE_CHECKING:
    from conductor.settings import Settings

STATIC = Path(__file__).parent / "static"
DEFAULT_DAGSTER_UI = "http://127.0.0.1:3000"
log = logging.getLogger("conductor.web")


# What opening a project's Dagster instance imports (private modules: a rename in a
# Dagster release only makes that first opening slower). Not a scratch instance: a new
# one stamps its schema through alembic's process-global context, which would collide
# with a migration running in another thread.
DAGSTER_STORAGE_MODULES = (
    "dagster._core.instance.factory",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.runs",
    "dagster._core.storage.event_log",
    "dagster._core.storage.schedules",
    "dagster._daemon",
)


def warm_up(settings: Settings) -> None:
    """Load what the first pages would otherwise wait for (all cached per process).

    Dagster and the code location (~1-2 s of imports), the modules opening a project's
    Dagster instance imports, and the page templates. Run in a background thread when
    the app is built; failures are left for the pages to report.
    """
    from conductor.graph import asset_graph
    from conductor.web.render import env

    steps: list[tuple[Callable[..., object], tuple]] = [(asset_graph, (settings.dagster_module,))]
    steps += [(importlib.import_module, (name,)) for name in DAGSTER_STORAGE_MODULES]
    steps += [(env.get_template, (name,)) for name in env.list_templates()]
    for step, args in steps:
        try:
            step(*args)
        except Exception as exc:
            log.debug("warm-up: %s%s: %s", getattr(step, "__name__", step), args, exc)
    # Dagster and the code location leave ~2*10^5 long-lived objects; full collections
    # walking them (65 ms idle) showed up under load as request stalls of 0.3-1 s.
    # Frozen, the collector skips them.
    gc.collect()
    gc.freeze()


def mount(app: FastAPI) -> None:
    """Add the Canvas pages, their static files and ``/`` -> ``/ui`` to ``app``.

    ``CONDUCTOR_DAGSTER_UI_URL`` is where links into the Dagster UI point
    (``{project_id}`` in it is replaced by the project's id). Dagster and the code
    location are loaded in a background thread meanwhile (:func:`warm_up`).
    """
    from conductor.web import configure, platemap, projects, qc, results, runs, session

    app.state.dagster_ui_url = os.environ.get("CONDUCTOR_DAGSTER_UI_URL", DEFAULT_DAGSTER_UI)
    settings = getattr(app.state, "settings", None)
    if settings is not None:
        warm = threading.Thread(target=warm_up, args=(settings,), name="canvas-warm-up")
        warm.daemon = True
        warm.start()
    for module in (session, projects, configure, platemap, runs, qc, results):
        app.include_router(module.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="canvas-static")

    @app.get("/", include_in_schema=False)
    async def _root() -> RedirectResponse:
        return RedirectResponse("/ui/projects", status_code=307)
