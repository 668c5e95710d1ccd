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
    if parts.scheme == "gb28181":
        return check_gb28181_url(url)
    if parts.scheme not in ("rtsp", "rtsps"):
        return (f"scheme must be rtsp://, rtsps:// or gb28181://, got "
                f"{parts.scheme + '://' if parts.scheme else 'none'}")
    if not parts.hostname:
        return "URL has no host"
    if port is not None and not 0 < port < 65536:
        return f"port {port} out of range"
    return None


_GB_URL = re.compile(r"^gb28181://(?P<device>\d{20})/(?P<channel>\d{20})$")


def check_gb28181_url(url: str) -> str | None:
    """gb28181://<device-id>/<channel-id>: both 20 digits (GB/T 28181 codes); nothing else in it."""
    if _GB_URL.match(url) is None:
        return ("a GB/T 28181 camera is gb28181://<device ID>/<channel ID>, each 20 digits, "
                f"got {mask_url(url)}")
    return None


def parse_gb28181_url(url: str) -> tuple[str, str]:
    """(device ID, channel ID) of a valid gb28181:// URL; ValueError otherwise."""
    m = _GB_URL.match(url)
    if m is None:
        raise ValueError(check_gb28181_url(url) or f"not a gb28181 URL: {mask_url(url)}")
    return m.group("device"), m.group("channel")
