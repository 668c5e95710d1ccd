"""The web console: static Chinese pages (plain JS modules) served from vms/console/static."""

from __future__ import annotations

import functools
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, RedirectResponse

import vms.console
from vms.api.errors import ApiError

router = APIRouter(include_in_schema=False)

STATIC = FsPath(vms.console.__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/console/")


@router.get("/console/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type=TYPES[".html"],
                        headers={"Cache-Control": "no-cache"})


@router.get("/console/{name}")
def asset(name: Annotated[str, Path(pattern=r"^[a-z0-9_-]+\.(html|js|css)$")]) -> FileResponse:
    # Only the files shipped in STATIC: the name never reaches the file system (a 253-character name
    # made stat() fail with ENAMETOOLONG, a 500 with a traceback per request, before login).
    if name not in _shipped_files():
        raise ApiError(404, "not_found", f"没有控制台文件 {name[:64]}")
    path = STATIC / name
    return FileResponse(path, media_type=TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


@functools.cache
def _shipped_files() -> frozenset[str]:
    return frozenset(p.name for p in STATIC.iterdir() if p.is_file() and p.suffix in TYPES)
