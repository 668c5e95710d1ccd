"""Refusals with a stable error code: `{"detail": "<message for the operator>", "code": "<code>"}`.

The console maps `code` to its own text and behaviour (issue 19); `detail` is Chinese where an operator
reads it. Codes never change once published; add new ones instead.
"""

from __future__ import annotations

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
