"""Liveness and readiness."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from conductor.graph import load_definitions
from starrynight.errors import UserError

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    """The process answers (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/ready")
def ready(request: Request) -> JSONResponse:
    """Database reachable, Dagster code location loadable, data folder writable; else 503."""
    settings = request.app.state.settings
    checks: dict[str, str] = {}
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM projects LIMIT 1"))  # schema present too
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = "unavailable: " + str(exc).splitlines()[0][:200]
    try:
        load_definitions(settings.dagster_module)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(settings.data_dir, os.W_OK):
            raise UserError(f"{settings.data_dir}: not writable")
        checks["dagster"] = "ok"
    except Exception as exc:
        checks["dagster"] = "unavailable: " + str(exc).splitlines()[0][:200]
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)  # fmt: skip
