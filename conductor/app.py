"""The FastAPI application: routers, pages, middleware and the mapping of errors."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from conductor import db
from conductor.api import configure, files, gates, health, partitions, projects, results, runs
from conductor.errors import EXPECTED, http_error
from conductor.middleware import AccessLog, BodyLimit, JsonFormatter
from conductor.settings import Settings
from conductor.web import mount as mount_canvas

__all__ = ["API", "JsonFormatter", "create_app"]
log = logging.getLogger("conductor")
API = "/api/v1"


async def _error(request: Request, exc: Exception) -> JSONResponse:
    """Every error as JSON ``{"detail": ...}``: ours by :func:`conductor.errors.http_error`,
    anything else logged and answered 500."""
    answer = http_error(exc)
    if answer is None:
        log.error(
            "unhandled error",
            exc_info=exc,
            extra={"fields": {"path": request.url.path, "method": request.method}},
        )
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)
    return JSONResponse({"detail": answer.detail}, answer.status, headers=answer.headers or None)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    engine = db.make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        log.info("conductor started", extra={"fields": {"database": engine.url.render_as_string()}})
        yield
        engine.dispose()
        log.info("conductor stopped")

    app = FastAPI(
        title="StarryNight Conductor",
        version="1.0.0",
        description="Projects, runs and files of StarryNight; drives Dagster.",
        openapi_url=f"{API}/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = db.make_sessionmaker(engine)
    # Reads need no transaction: autocommit saves the BEGIN and ROLLBACK round trips.
    app.state.read_sessionmaker = db.make_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT")
    )

    for module in (health, projects, configure, runs, partitions, files, results, gates):
        app.include_router(module.router, prefix=API)
    mount_canvas(app)  # the Canvas pages under /ui (conductor/web)
    # The expected kinds are handled inside the app; Exception (a bug) by the outermost
    # middleware, which answers and then lets the error reach the server's log.
    for kind in (*EXPECTED, Exception):
        app.add_exception_handler(kind, _error)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(BodyLimit, limit=settings.body_limit)
    app.add_middleware(AccessLog)
    return app
