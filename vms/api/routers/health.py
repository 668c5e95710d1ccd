"""Liveness: no authentication, says whether the database answers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from vms.api.deps import Ctx

router = APIRouter(tags=["health"])


@router.get("/api/health")
def health(ctx: Ctx) -> JSONResponse:
    try:
        with ctx.database.session() as s:
            s.execute(text("SELECT 1"))
    except Exception as exc:
        return JSONResponse({"status": "error", "database": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok", "time_ms": ctx.clock.now_ms()})
