"""Where a camera session's packets come from, when not from an RTSP URL that FFmpeg opens itself.

One recording path, many sources: a GB/T 28181 camera (vms.gb28181.source) is invited over SIP and
pushes PS over RTP, which its source turns into a container PyAV reads; from there on the session,
the recorder, the analysis and the live tap are the same as for RTSP. Ingest imports nothing above it,
so sources are named "module:function" in the worker's spec (like observer factories), per URL scheme.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import av.container

    from vms.core.settings import Settings


class SourceUnavailable(Exception):
    """The source could not start a stream; `reason` becomes the gap's reason (e.g. unregistered,
    invite_timeout), `detail` its text."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class OpenedSource(Protocol):
    container: av.container.InputContainer

    def end_reason(self) -> tuple[str, str] | None:
        """Why the stream ended, when the source knows better than the demuxer's end of file (the
        device said BYE, its keepalives stopped); None otherwise."""

    def interrupt(self) -> None:
        """End the stream now (the stall watchdog's way of ending a connection that sends nothing)."""

    def close(self) -> None:
        """Release everything (idempotent); called after the container is closed."""


# (url, station transport, stop event) -> an opened source, or SourceUnavailable
SourceOpener = Callable[[str, str, threading.Event], OpenedSource]
SourceOpenerMaker = Callable[["Settings"], SourceOpener]


def url_scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def load_openers(names: dict[str, str], settings: Settings) -> dict[str, SourceOpener]:
    """{scheme: "module:function"} -> {scheme: opener}, each maker called once per worker."""
    out: dict[str, SourceOpener] = {}
    for scheme, name in names.items():
        module, _, function = name.partition(":")
        maker: SourceOpenerMaker = getattr(importlib.import_module(module), function)
        out[scheme] = maker(settings)
    return out
