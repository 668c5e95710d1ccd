"""The web console: static Chinese pages (plain JS modules) served from vms/console/static."""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import FileResponse, RedirectResponse

import vms.console

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
    path = STATIC / name
    if not path.is_file():
        raise HTTPException(404, f"no console file {name}")
    return FileResponse(path, media_type=TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
