"""The FastAPI application: routers, security middleware and error mapping."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conductor import db
from conductor.settings import Settings
from starrynight.errors import UserError

log = logging.getLogger("conductor")
T = TypeVar("T")
API = "/api/v1"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: easy to ship to any log store."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class BodyLimit:
    """Refuse request bodies above ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(send, self.limit)
            return
        seen = 0
        refused = False

        async def limited() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and not refused:
                    # Answer now and tell the app the client went away, so it stops
                    # reading; whatever it tries to send afterwards is dropped.
                    refused = True
                    await _too_large(send, self.limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, guarded_send)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A database session for one request (FastAPI dependency).

    Async only so FastAPI does not hop to a worker thread for it: creating a session does
    no I/O, and the endpoints that use it are sync (run in the thread pool).
    """
    session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


async def get_read_session(request: Request) -> AsyncIterator[Session]:
    """A session without a transaction, for endpoints that only read (FastAPI dependency)."""
    session = request.app.state.read_sessionmaker()
    try:
        yield session
    finally:
        session.close()


READ_THREADS = 2


async def run_read(request: Request, fn: Callable[[Session], T]) -> T:
    """``fn(session)`` with a read session, on the app's small pool of read threads.

    The hot short reads (list and get) share ``READ_THREADS`` threads instead of
    Starlette's pool of 40: with the GIL, 40 threads each holding a request make every
    request wait for all the others (bench/bench_conductor.py, 1 worker, 8 connections:
    p99 of GET /projects/{id} 24-30 ms instead of 46-146 ms). Long calls (configure, log
    streams) stay on the big pool, so they cannot starve these.
    """
    state = request.app.state
    limiter = getattr(state, "read_limiter", None)
    if limiter is None:
        # Made on first use: a limiter belongs to the running event loop.
        limiter = state.read_limiter = anyio.CapacityLimiter(READ_THREADS)

    def job() -> T:
        with state.read_sessionmaker() as session:
            return fn(session)

    return await anyio.to_thread.run_sync(job, limiter=limiter)


class AccessLog:
    """One structured log line per request: method, path, status, milliseconds, id.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` costs a task per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = (headers.get(b"x-request-id") or uuid.uuid4().hex[:16].encode())[:64]
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if log.isEnabledFor(logging.INFO):
                fields = {
                    "id": request_id.decode("latin-1"),
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.perf_counter() - start) * 1000, 2),
                }
                log.info("request", extra={"fields": fields})


def _database_down(_request: Request, exc: Exception) -> JSONResponse:
    reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0][:200]
    log.warning("database unavailable", extra={"fields": {"error": reason}})
    return JSONResponse(
        {"detail": f"database unavailable: {reason}"}, status_code=503, headers={"Retry-After": "5"}
    )


def _is_connection_problem(exc: sa_exc.DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    # psycopg OperationalError covers refused/terminated connections; sqlite's covers a
    # missing file or table (database moved away or not migrated).
    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for ``settings`` (default: from the environment)."""
    from conductor.api import configure, files, health, partitions, projects, runs

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

    for module in (health, projects, configure, runs, partitions, files):
        app.include_router(module.router, prefix=API)
    from conductor.web import mount as mount_canvas

    mount_canvas(app)  # the Canvas pages under /ui (conductor/web)

    @app.exception_handler(UserError)
    async def _user_error(_request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unhandled error",
            exc_info=exc,
            extra={"fields": {"path": request.url.path, "method": request.method}},
        )
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)

    @app.exception_handler(sa_exc.DBAPIError)
    async def _dbapi(request: Request, exc: sa_exc.DBAPIError) -> JSONResponse:
        if isinstance(exc, sa_exc.IntegrityError):
            reason = str(exc.orig).splitlines()[0][:200]
            return JSONResponse({"detail": f"conflict: {reason}"}, status_code=409)
        if _is_connection_problem(exc):
            return _database_down(request, exc)
        return await _internal(request, exc)

    @app.exception_handler(sa_exc.TimeoutError)
    async def _pool_timeout(request: Request, exc: sa_exc.TimeoutError) -> JSONResponse:
        return _database_down(request, exc)

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
