"""Conductor's errors, and their one translation into HTTP status, detail and headers.

Services (:mod:`conductor.projects`, :mod:`conductor.runs.service`, ...) raise these or
:class:`starrynight.errors.UserError`, never a web framework's exception, so the REST
API (JSON, :mod:`conductor.app`) and the Canvas pages (HTML, :mod:`conductor.web.render`)
answer the same failure with the same status and message: both call :func:`http_error`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import exc as sa_exc

from starrynight.errors import UserError

log = logging.getLogger("conductor")
RETRY_AFTER = "5"  # seconds a client should wait when the database is unavailable


class ServiceError(Exception):
    """A request that cannot be served as asked; ``status`` is its HTTP status."""

    status = 500

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class NotFound(ServiceError):
    """No such project, run, file or partition."""

    status = 404


class Conflict(ServiceError):
    """The request contradicts the current state (a taken name, an active run...)."""

    status = 409


class Unauthorized(ServiceError):
    """No token, or an unknown one."""

    status = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    """A valid token that may not do this (a ``ro`` token asking to change something)."""

    status = 403


class Unavailable(ServiceError):
    """Something the service depends on is down (database, Dagster code location)."""

    status = 503


class BadRequest(ServiceError):
    """A request body that cannot be read at all."""

    status = 400


class TooLarge(ServiceError):
    """A request body above the limit."""

    status = 413


@dataclass(frozen=True)
class HttpError:
    """What an error becomes on the wire."""

    status: int
    detail: str
    headers: dict[str, str] = field(default_factory=dict)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def is_connection_problem(exc: sa_exc.DBAPIError) -> bool:
    """Whether a database error means "the database cannot serve now", not a bad query.

    Besides refused, terminated and invalidated connections (OperationalError,
    InterfaceError; sqlite's OperationalError also covers a missing file or table), that
    is a server in a state no request can change: InternalError (e.g. a read-only
    transaction after a failover to a standby) and a bare DatabaseError (sqlite: "file
    is not a database" when the file was replaced under the service). Integrity, data
    and programming errors are answered apart (409) or are bugs (500).
    """
    if exc.connection_invalidated:
        return True
    down = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.InternalError)
    return isinstance(exc, down) or type(exc) is sa_exc.DatabaseError


def database_down(exc: BaseException) -> HttpError:
    """503 with ``Retry-After``: the database is unreachable, try again shortly."""
    reason = _first_line(exc)
    log.warning("database unavailable", extra={"fields": {"error": reason}})
    return HttpError(503, f"database unavailable: {reason}", {"Retry-After": RETRY_AFTER})


def http_error(exc: BaseException) -> HttpError | None:
    """The HTTP answer to ``exc``, or None when it is a bug (the caller logs it; 500).

    Also accepts the framework's own ``HTTPException`` (unknown routes, 405...), read
    through its ``status_code`` and ``detail``.
    """
    if isinstance(exc, ServiceError):
        return HttpError(exc.status, exc.detail, dict(exc.headers))
    if isinstance(exc, UserError):
        return HttpError(422, str(exc))
    if isinstance(exc, sa_exc.IntegrityError):
        return HttpError(409, f"conflict: {str(exc.orig).splitlines()[0][:200]}")
    if isinstance(exc, sa_exc.DBAPIError) and is_connection_problem(exc):
        return database_down(exc)
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return database_down(exc)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and hasattr(exc, "detail"):
        return HttpError(status, str(exc.detail), dict(getattr(exc, "headers", None) or {}))
    return None


# What :func:`http_error` answers: the exception classes a web app registers it for.
EXPECTED: tuple[type[Exception], ...] = (
    ServiceError,
    UserError,
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,
)
