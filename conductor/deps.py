"""FastAPI dependencies shared by the API routers and the Canvas pages.

Database sessions, the app's settings, bearer-token checks and the path and query
parameters every resource uses. Nothing here knows a route: routers and pages import
this module, never each other or :mod:`conductor.app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from conductor.auth import authenticate, require_rw
from conductor.settings import Settings, Token

T = TypeVar("T")
READ_THREADS = 2

# Ids are 32-bit in the database; larger values cannot exist and must not reach SQL.
ProjectId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Project id.")]
RunId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Run id.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=10**9, description="Items to skip.")]


def settings_of(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


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


SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]


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


_bearer = HTTPBearer(auto_error=False, description="A token from CONDUCTOR_TOKENS.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def reader(request: Request, creds: Credentials) -> Token:
    """Any configured token (``ro`` or ``rw``)."""
    return authenticate(settings_of(request).tokens, creds.credentials if creds else None)


async def writer(request: Request, creds: Credentials) -> Token:
    """A ``rw`` token; a ``ro`` token gets 403."""
    return require_rw(await reader(request, creds))
