"""API documentation (/docs Swagger UI, /redoc, /openapi.json) served from files installed with vms:
the county center may be offline, and a page that loads scripts from a public CDN would run whatever
that CDN serves with the reader's session. Who may read it is `api.docs` (login | public | off).

The Swagger UI and ReDoc bundles come from the fastapi-offline package (MIT; it ships swagger-ui-dist,
Apache-2.0, and redoc's standalone bundle, MIT, with their licence headers): pip keeps them current,
and the repository does not carry 2.8 MB of minified JavaScript."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from vms.api.deps import current_principal, get_ctx
from vms.api.errors import ApiError

router = APIRouter(include_in_schema=False)

ASSETS_URL = "/docs/assets"
ASSET_TYPES = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
               "redoc.standalone.js": "text/javascript; charset=utf-8", "favicon.png": "image/png"}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def _asset_dir() -> FsPath:
    import fastapi_offline

    return FsPath(fastapi_offline.__file__).parent / "static"


def _docs_csp(inline_scripts: list[str]) -> str:
    """The console's policy, plus the one inline script of the page (by hash) and what the two
    viewers need: Swagger UI's data: icons, ReDoc's injected styles and its search worker."""
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
                      for s in inline_scripts)
    return (f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; font-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'").replace("  ", " ")


async def _allowed(request: Request) -> Response | None:
    """None if the caller may read the docs; else the answer to give."""
    ctx = await get_ctx(request)
    mode = ctx.settings.api.docs
    if mode == "off":
        return JSONResponse({"detail": "API 文档未开放（api.docs: off）", "code": "docs_off"}, status_code=404)
    if mode == "public":
        return None
    try:
        await current_principal(request, ctx)
    except HTTPException as exc:
        code = exc.code if isinstance(exc, ApiError) else "not_logged_in"
        return JSONResponse({"detail": "API 文档需要登录：请先在控制台（/console/）登录", "code": code},
                            status_code=401)
    return None


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = _docs_csp(_INLINE_SCRIPT.findall(bytes(page.body).decode()))
    page.headers["Cache-Control"] = "no-store"
    return page


@router.get("/openapi.json")
async def openapi_json(request: Request) -> Response:
    refusal = await _allowed(request)
    return refusal or JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui(request: Request) -> Response:
    refusal = await _allowed(request)
    if refusal is not None:
        return refusal
    return _with_csp(get_swagger_ui_html(
        openapi_url="/openapi.json", title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png"))


@router.get("/redoc")
async def redoc(request: Request) -> Response:
    refusal = await _allowed(request)
    if refusal is not None:
        return refusal
    return _with_csp(get_redoc_html(
        openapi_url="/openapi.json", title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js", redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
        with_google_fonts=False))


@router.get(ASSETS_URL + "/{name}")
def docs_asset(name: Annotated[str, Path(max_length=64)]) -> FileResponse:
    """The viewers' own files (open-source bundles; no login needed, like the console's scripts)."""
    if name not in ASSET_TYPES:
        raise ApiError(404, "not_found", f"没有文档文件 {name}")
    return FileResponse(_asset_dir() / name, media_type=ASSET_TYPES[name],
                        headers={"Cache-Control": "public, max-age=86400"})
