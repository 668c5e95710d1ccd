"""Refusals with a stable code: the JSON body is {"detail": message, "code": code}. The message is
for the operator (Chinese, naming the parameter and the problem); programs and tests go by `code`,
which does not change when the wording does."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import Request


class ApiError(HTTPException):
    """An HTTPException (so code that catches those still does) that also carries a stable code."""

    def __init__(self, status_code: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, detail, headers)
        self.code = code


async def api_error_response(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status_code,
                        headers=exc.headers)
