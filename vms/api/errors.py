"""Refusals with a stable error code: `{"detail": "<message for the operator>", "code": "<code>"}`.

Every 4xx (and 5xx the API words itself) has this shape, whoever refuses: a router's ApiError, a plain
HTTPException, FastAPI's request validation (422, with the problems also listed under `errors`), the
router's unknown path (404) and wrong method (405), the body limit (413). The console maps `code` to
its own text and behaviour (issue 19); `detail` is Chinese, with local times. Codes never change once
published; add new ones instead (docs/design/api.md lists them).
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(HTTPException):
    """An HTTPException that also carries a stable machine-readable code."""

    def __init__(self, status_code: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, detail, headers=headers)
        self.code = code


async def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status_code,
                        headers=exc.headers)


# The code and Chinese message of a refusal that was raised without one: Starlette's own (unknown path,
# wrong method) and any HTTPException a library raises.
STATUS_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "请求有误"),
    401: ("not_logged_in", "未登录：请先登录"),
    403: ("forbidden", "无权进行此操作"),
    404: ("not_found", "没有这个地址"),
    405: ("method_not_allowed", "不支持此请求方法"),
    406: ("not_acceptable", "无法提供所要求的格式"),
    409: ("conflict", "与当前状态冲突"),
    410: ("gone", "已不存在"),
    411: ("length_required", "请求须带 Content-Length"),
    413: ("body_too_large", "请求内容过大"),
    415: ("unsupported_media_type", "不支持的请求内容类型"),
    416: ("range_not_satisfiable", "请求的字节范围无效"),
    422: ("invalid_request", "请求内容有误"),
    429: ("too_many_requests", "请求过于频繁，请稍后再试"),
    500: ("internal_error", "服务器内部错误"),
    503: ("unavailable", "服务暂不可用，请稍后再试"),
}
_CJK = re.compile(r"[\u3400-\u9fff]")


def _fallback(status: int) -> tuple[str, str]:
    return STATUS_CODES.get(status, (f"http_{status}", f"请求未能完成（HTTP {status}）"))


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Every HTTPException, ApiError or not: the same body shape with a code. A detail that is not
    Chinese (Starlette's "Not Found", a library's English) is replaced by the status's Chinese text."""
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        return await api_error_handler(request, exc)
    code, text = _fallback(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) and _CJK.search(exc.detail) else text
    if exc.status_code == 404 and detail == text:
        detail = f"{text}：{request.url.path[:200]}"
    elif exc.status_code == 405 and detail == text:
        detail = f"{text}：{getattr(request, 'method', '')} {request.url.path[:200]}"  # (a WebSocket has none)
    return JSONResponse({"detail": detail, "code": code}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


# Pydantic's error types as an operator reads them; `ctx` fills the limits in.
_VALIDATION_TEXT: dict[str, str] = {
    "missing": "缺少此项",
    "string_too_long": "过长：最多 {max_length} 个字符",
    "string_too_short": "过短：至少 {min_length} 个字符",
    "too_long": "过多：最多 {max_length} 项",
    "too_short": "过少：至少 {min_length} 项",
    "string_pattern_mismatch": "格式不对",
    "string_type": "须为文字",
    "int_parsing": "须为整数",
    "int_type": "须为整数",
    "int_from_float": "须为整数",
    "float_parsing": "须为数字",
    "float_type": "须为数字",
    "bool_parsing": "须为 true 或 false",
    "bool_type": "须为 true 或 false",
    "greater_than": "须大于 {gt}",
    "greater_than_equal": "须不小于 {ge}",
    "less_than": "须小于 {lt}",
    "less_than_equal": "须不大于 {le}",
    "literal_error": "须为以下之一：{expected}",
    "enum": "须为以下之一：{expected}",
    "extra_forbidden": "不认识此项",
    "json_invalid": "不是有效的 JSON",
    "model_attributes_type": "须为对象",
    "dict_type": "须为对象",
    "list_type": "须为列表",
    "value_error": "值无效",
    "uuid_parsing": "须为 UUID",
}
_WHERE = {"body": "请求体", "query": "查询参数", "path": "路径参数", "header": "请求头", "cookie": "Cookie"}
VALIDATION_SHOWN = 5  # problems worded in `detail`; all are listed under `errors`


def _problem_text(err: dict[str, Any]) -> str:
    loc = [str(x) for x in err.get("loc", ())]
    where = _WHERE.get(loc[0], loc[0]) if loc else "请求"
    name = ".".join(loc[1:])[:80]
    ctx = {k: str(v)[:80] for k, v in (err.get("ctx") or {}).items()}
    template = _VALIDATION_TEXT.get(str(err.get("type")), "值无效")
    try:
        what = template.format(**ctx)
    except (KeyError, IndexError, ValueError):
        what = "值无效"
    return f"{where} {name}：{what}" if name else f"{where}：{what}"


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """422 with a Chinese `detail` naming each problem and `errors` ({loc, type}) for programs. The
    refused input is never echoed (it can be a 64 KiB string)."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    texts = [_problem_text(e) for e in errors[:VALIDATION_SHOWN]]
    more = f"；另有 {len(errors) - VALIDATION_SHOWN} 处" if len(errors) > VALIDATION_SHOWN else ""
    listed = [{"loc": [x if isinstance(x, int) else str(x)[:80] for x in e.get("loc", ())],
               "type": str(e.get("type"))} for e in errors[:50]]
    return JSONResponse({"detail": "请求内容有误：" + "；".join(texts) + more, "code": "invalid_request",
                         "errors": listed}, status_code=422)


def error_body_schema() -> dict[str, Any]:
    """The OpenAPI schema of every refusal (replaces FastAPI's HTTPValidationError)."""
    return {"title": "ErrorBody", "type": "object", "required": ["detail", "code"], "properties": {
        "detail": {"type": "string", "description": "中文说明（给操作员看）"},
        "code": {"type": "string", "description": "stable English snake_case code (docs/design/api.md)"},
        "errors": {"type": "array", "description": "422 only: each problem's place and pydantic type",
                   "items": {"type": "object"}}}}


def local_time(ms: int, tz: tzinfo) -> str:
    """A time as an operator reads it: local date and time to the second (never fails: a time datetime
    cannot hold, 9999-12-31 in UTC+8, is shown as milliseconds)."""
    try:
        return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"


api_error_response = api_error_handler  # the name the routers of issue 17's items 6-14 use
