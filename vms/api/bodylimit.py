"""Request bodies larger than `api.max_body_bytes` are refused with 413 before they are read.

A declared Content-Length over the limit is answered at once, before any routing, authentication or
handler; a body without one (chunked) is counted as it streams in and refused when it passes the
limit. Before, a 100 MB JSON body to /api/auth/login was read and parsed whole before the 422.

(Starlette's RequestBodyLimitMiddleware, behind FastAPI's `max_body_size`, refuses only once the app
reads the body or starts its response, so a handler that ignores the body still runs; and it answers
a bare "Content Too Large" without the stable error code the console maps.)
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vms.api.errors import ApiError, api_error_handler

CODE = "body_too_large"


def _mib(n: int) -> str:
    return f"{n / 1048576:g} MB" if n >= 1048576 else f"{n} 字节"


class BodyTooLarge(ApiError):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, CODE, f"请求内容过大：最多 {_mib(max_bytes)}", headers={"Connection": "close"})


class BodySizeLimit:
    """ASGI middleware; `max_bytes` for every HTTP request (no endpoint takes uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes an HTTPException from reading the body on to the app's handler.
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        response = await api_error_handler(None, BodyTooLarge(self.max_bytes))  # type: ignore[arg-type]
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
