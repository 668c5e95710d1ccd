"""Health for load balancers, container health checks and monitoring: no authentication.

`status` is `ok` (every enabled camera is recording), `degraded` (some are not, for reasons outside the
recorder: a camera offline, refusing its password, in backoff...; HTTP 200) or `failing` (HTTP 503:
the database does not answer, or the recorder itself fails cameras: a camera thread hung, or the
recording node stopped reporting them). Only counts are shown, never station names.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from vms.api.deps import Ctx
from vms.api.status import health_summary, status_cache

router = APIRouter(tags=["health"])


# The status list is recomputed in the background (stale-while-revalidate); one this old means its
# queries no longer finish (a lock, a half-open connection), and counts from it would be old news.
STALE_STATUS_S = 30.0


def _check(ctx) -> tuple[dict, int]:
    try:
        with ctx.database.session() as s:
            s.execute(text("SELECT 1"))
        snapshot = status_cache(ctx).snapshot()
    except Exception as exc:  # noqa: BLE001 - the answer is the error's kind
        return {"status": "failing", "database": type(exc).__name__, "time_ms": ctx.clock.now_ms()}, 503
    cameras = health_summary(snapshot.stations)
    age_s = ctx.clock.monotonic() - snapshot.computed_mono
    if age_s > STALE_STATUS_S:
        return {"status": "failing", "database": "ok", "status_age_s": round(age_s), "cameras": cameras,
                "time_ms": ctx.clock.now_ms()}, 503
    if cameras["stuck"]:
        status, code = "failing", 503
    elif cameras["not_recording"]:
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    return {"status": status, "database": "ok", "cameras": cameras, "time_ms": ctx.clock.now_ms()}, code


@router.get("/api/health", responses={503: {"description": "failing: database down or cameras stuck"}})
async def health(ctx: Ctx) -> JSONResponse:
    body, code = await asyncio.to_thread(_check, ctx)
    return JSONResponse(body, status_code=code)
