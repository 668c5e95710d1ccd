"""Response headers that keep the console and the API out of frames and other sites' scripts, and the
question whether a request came over HTTPS (for the session cookie's Secure flag)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The console (vms/console/static) loads its own modules and stylesheet only, fetches and opens its
# WebSocket on the same origin ('self' covers ws:/wss: of the page's host), plays recorded video from
# /api and live MSE from blob: URLs, and shows snapshots from /api. Inline style attributes stay
# allowed (the timeline's bars are positioned with them); scripts never run inline.
CONSOLE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; font-src 'self'; "
               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class SecurityHeaders:
    """Adds the headers to every HTTP response (a plain ASGI middleware: no copy of the body, no thread,
    so file downloads and the cached station list pass as before). A response that sets its own
    Content-Security-Policy (the API docs pages) keeps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", CONSOLE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def served_over_https(request: Request, trusted_proxies: Iterable[str] | None) -> bool:
    """Whether the browser reached us over HTTPS: the request's own scheme (uvicorn sets it from
    X-Forwarded-Proto when it trusts the proxy), or X-Forwarded-Proto from a configured trusted proxy."""
    if request.url.scheme in ("https", "wss"):
        return True
    proxies = list(trusted_proxies or ())
    if not proxies or request.client is None:
        return False
    try:
        client = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    if not any(client in ipaddress.ip_network(p, strict=False) for p in proxies if _is_network(p)):
        return False
    # The last value is the one the nearest proxy (the trusted one) set or appended.
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
    return forwarded == "https"


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False
