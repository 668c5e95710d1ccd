"""The FastAPI application. `vms serve` calls create_app(settings, database, clock) and runs it with
uvicorn; importing this module has no side effects."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vms.api.bodylimit import BodySizeLimit
from vms.api.context import ApiContext
from vms.api.errors import error_body_schema, http_error_handler, validation_error_handler
from vms.api.security import SecurityHeaders
from vms.core.clock import Clock
from vms.core.errors import VmsError
from vms.core.settings import Settings
from vms.db.engine import Database

log = logging.getLogger(__name__)


def serve_app(app: FastAPI, host: str, port: int, log_level: str,
              on_stop_signal: Callable[[], None] | None = None) -> None:
    """Serve `app` with uvicorn until a signal stops it: what `vms serve` runs (and the API benchmark).
    `on_stop_signal` runs (in a thread) as soon as SIGINT/SIGTERM arrives, while uvicorn drains its
    connections: the recorder stops in parallel, so the whole stop fits in its deadline."""
    import gc

    import uvicorn

    # Everything loaded so far (modules, settings, the catalogue) lives as long as the process. Frozen,
    # a full collection no longer walks it: measured ~90 ms pauses twice per 10 s under load without
    # this, which set GET /api/stations p99.
    gc.collect()
    gc.freeze()
    # A stop must finish within seconds (systemd, docker stop): open live views and downloads are cut
    # after 3 s rather than waited for.
    # X-Forwarded-For is believed only from the configured proxies: uvicorn's default trusts it from
    # 127.0.0.1, so any local client could pick its address (reset the login limit, forge the access log).
    api = app.state.ctx.settings.api
    # (The live WebSocket reads nothing but its close: uvicorn's 16 MiB message limit is far more than needed.)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=3, proxy_headers=bool(api.trusted_proxies),
                            forwarded_allow_ips=list(api.trusted_proxies), ws_max_size=api.max_body_bytes)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if on_stop_signal is not None and not self.should_exit:
                threading.Thread(target=on_stop_signal, name="stop", daemon=True).start()
            super().handle_exit(sig, frame)

    Server(config).run()


def create_app(settings: Settings, database: Database, clock: Clock) -> FastAPI:
    from vms.api.routers import auth, docs, health

    ctx = ApiContext.make(settings, database, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(_maintenance_loop(ctx))
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            _shutdown(ctx)

    app = FastAPI(
        title="vms control-console API",
        description="Huidong County e-commerce service stations: status, footage, exports, audits, "
                    "access log (调用登记).",
        version="1",
        lifespan=lifespan,
        # Served by routers/docs.py from local files, for whom api.docs allows.
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    app.state.ctx = ctx
    # The last added is the outermost: a body refused for its size still gets the security headers.
    app.add_middleware(BodySizeLimit, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(SecurityHeaders)

    # Every refusal answers {"detail": Chinese, "code": stable}: ApiError, plain HTTPExceptions and
    # Starlette's own 404/405 (one handler), request validation (422).
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)

    @app.exception_handler(VmsError)
    async def _vms_error(_request, exc: VmsError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "code": getattr(exc, "code", None) or "invalid_input"},
                            status_code=400)

    _document_error_body(app)

    for r in (health.router, auth.router, docs.router):
        app.include_router(r)
    for r in _optional_routers():
        app.include_router(r)
    return app


def _document_error_body(app: FastAPI) -> None:
    """The OpenAPI document describes 422s (and so every refusal) as the body the handlers give, not
    FastAPI's list of pydantic errors."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schemas = schema.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = error_body_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _optional_routers() -> list:
    """Routers added as they are written; missing modules are skipped so the skeleton always imports."""
    import importlib

    routers = []
    for name in ("stations", "footage", "exports", "holds", "audits", "access_log", "admin", "metrics", "live",
                 "alerts", "gb28181", "console"):
        try:
            module = importlib.import_module(f"vms.api.routers.{name}")
        except ModuleNotFoundError as exc:
            # A router over another team's module (vms.audit, vms.retention) that is not installed here.
            if exc.name == f"vms.api.routers.{name}" or (exc.name or "").split(".")[:2] in (
                    ["vms", "audit"], ["vms", "retention"]):
                log.warning("API router %s not available: %s", name, exc)
                continue
            raise
        routers.append(module.router)
    return routers


async def _maintenance_loop(ctx: ApiContext) -> None:
    """Expire old exports and playback files every api.maintenance_interval_seconds."""
    from vms.api import maintenance

    try:
        await run_in_threadpool(maintenance.startup, ctx)
    except Exception:
        log.exception("API start-up housekeeping failed")
    while True:
        try:
            await run_in_threadpool(maintenance.run, ctx)
        except Exception:  # keep the loop alive; the next round retries
            log.exception("API maintenance failed")
        await asyncio.sleep(ctx.settings.api.maintenance_interval_seconds)


def _shutdown(ctx: ApiContext) -> None:
    runner = ctx.extras.get("exports")
    if runner is not None:
        runner.shutdown()
    status_db = ctx.extras.get("status_db")
    if status_db is not None:
        status_db.dispose()
