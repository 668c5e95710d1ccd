"""The web consoles: the first (static Chinese pages, plain JS modules, vms/console/static) at /console/,
and the second generation (Vue 3 + Element Plus, built by scripts/bootstrap.sh from console/ into
vms/console/next/) at /console/next/; see docs/design/console.md."""

from __future__ import annotations

import functools
import os
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

import vms.console
from vms.api.errors import ApiError
from vms.catalog.towns import COUNTY, TOWN_NAMES

router = APIRouter(include_in_schema=False)

STATIC = FsPath(vms.console.__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}


@router.get("/")
def root() -> RedirectResponse:
    # The second-generation console: every page is ported (docs/design/console.md). The first console
    # stays at /console/ for the switch-over, until its addresses redirect and it is retired.
    return RedirectResponse("/console/next/")


@router.get("/console/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type=TYPES[".html"],
                        headers={"Cache-Control": "no-cache"})


# ---- the second-generation console: a single-page app built into vms/console/next/ -----------------------
NEXT = FsPath(vms.console.__file__).parent / "next"
NEXT_PREFIX = "/console/next/"
NEXT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
              ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
              ".ico": "image/x-icon", ".woff2": "font/woff2", ".woff": "font/woff", ".json": "application/json"}
# Vite names every file under assets/ by a hash of its content: a new build gives new names, so the browser
# may keep them for a year; index.html (which names the current ones) is checked on every load.
HASHED_CACHE = "public, max-age=31536000, immutable"
NEXT_PATH_MAX = 512  # longer addresses are no page of this console (and never reach the file system anyway)
SYSTEM_NAME = "惠东县电商服务站视频监控联网系统"

NOT_BUILT_PAGE = f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>新版值班台尚未构建 · {SYSTEM_NAME}</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto; line-height: 1.7">
<h1>新版值班台尚未构建</h1>
<p>服务器上还没有新版值班台的文件（vms/console/next/）。请在服务器的 vms 目录中运行
<code>scripts/bootstrap.sh</code>：它会安装 Node.js 并构建新版值班台，然后刷新本页。</p>
<p>旧版值班台仍可使用：<a href="/console/">/console/</a></p>
</body></html>"""


@router.get("/console/next")
def next_root() -> RedirectResponse:
    return RedirectResponse(NEXT_PREFIX)


@router.get("/console/next/config.json")
def next_config() -> JSONResponse:
    """What the console shows that only the server knows: the county and its towns in the catalogue's order
    (the station list comes sorted by town name, which is not the order the county uses)."""
    return JSONResponse({"system_name": SYSTEM_NAME, "county": COUNTY, "towns": TOWN_NAMES},
                        headers={"Cache-Control": "no-cache"})


@router.get("/console/next/{path:path}", response_model=None)
def next_page(path: str) -> FileResponse | HTMLResponse:
    # Only files of the build are served: the requested path is looked up in the build's listing and never
    # joined to a directory itself (no "..", no symlink, no over-long name reaches the file system).
    files = _next_files()
    if "index.html" not in files:
        return HTMLResponse(NOT_BUILT_PAGE, status_code=404, headers={"Cache-Control": "no-cache"})
    if path in files:
        name = path
        cache = HASHED_CACHE if path.startswith("assets/") else "no-cache"
    elif len(path) > NEXT_PATH_MAX or path.startswith("assets/") or FsPath(path).suffix.lower() in NEXT_TYPES:
        # A file that is not in this build (an old build's chunk, a typo): a 404, not the page, which a
        # browser would try to run as a script.
        raise ApiError(404, "not_found", f"没有新版值班台文件 {path[:64]}")
    else:
        name = "index.html"  # a page of the app (/console/next/wall): the app's router shows it
        cache = "no-cache"
    return FileResponse(NEXT / name, media_type=NEXT_TYPES[FsPath(name).suffix.lower()],
                        headers={"Cache-Control": cache})


_next_listing: tuple[tuple[int, ...], frozenset[str]] | None = None


def _next_files() -> frozenset[str]:
    """The build's files (relative paths), listed again only when a build replaced them (the folders' and
    index.html's modification times changed): `scripts/bootstrap.sh` may rebuild while `vms serve` runs."""
    global _next_listing
    key = tuple(_mtime_ns(p) for p in (NEXT, NEXT / "assets", NEXT / "index.html"))
    listing = _next_listing
    if listing is not None and listing[0] == key:
        return listing[1]
    files: set[str] = set()
    for directory, prefix in ((NEXT, ""), (NEXT / "assets", "assets/")):
        try:
            entries = list(os.scandir(directory))
        except OSError:  # not built (yet), or being rebuilt
            continue
        for entry in entries:
            # Regular files of a shipped type only: not the build stamp (a dot file), not a symlink.
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            if FsPath(entry.name).suffix.lower() in NEXT_TYPES:
                files.add(prefix + entry.name)
    result = frozenset(files)
    _next_listing = (key, result)
    return result


def _mtime_ns(path: FsPath) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


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
