"""Camera URL checks and masking: credentials in a URL are never printed, logged or returned."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/\s]*)@")


def mask_url(url: str | None) -> str | None:
    """rtsp://admin:secret@host/path -> rtsp://***@host/path (user and password both hidden)."""
    if url is None:
        return None
    return _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", url)


def mask_text(text: str) -> str:
    """Mask every URL credential inside free text (log lines, error messages from FFmpeg)."""
    return _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", text)


def check_camera_url(url: str) -> str | None:
    """Return what is wrong with a camera URL, or None if it is usable."""
    if not isinstance(url, str) or not url.strip():
        return "empty URL"
    if any(c.isspace() for c in url):
        return "URL contains whitespace"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"malformed URL ({exc})"
    if parts.scheme not in ("rtsp", "rtsps"):
        return f"scheme must be rtsp:// or rtsps://, got {parts.scheme + '://' if parts.scheme else 'none'}"
    if not parts.hostname:
        return "URL has no host"
    if port is not None and not 0 < port < 65536:
        return f"port {port} out of range"
    return None
