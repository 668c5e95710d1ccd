"""Refusals with a stable error code: `{"detail": "<message for the operator>", "code": "<code>"}`.

The console maps `code` to its own text and behaviour (issue 19); `detail` is Chinese where an operator
reads it. Codes never change once published; add new ones instead.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse


class ApiError(HTTPException):
    """An HTTPException that also carries a stable machine-readable code."""

    def __init__(self, status_code: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, detail, headers=headers)
        self.code = code


async def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status_code,
                        headers=exc.headers)


def local_time(ms: int, tz: tzinfo) -> str:
    """A time as an operator reads it: local date and time to the second (never fails: a time datetime
    cannot hold, 9999-12-31 in UTC+8, is shown as milliseconds)."""
    try:
        return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"


api_error_response = api_error_handler  # the name the routers of issue 17's items 6-14 use
