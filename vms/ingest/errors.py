"""Turns what PyAV/FFmpeg raise into a gap reason and a message fit for an operator."""

from __future__ import annotations

import errno

import av

from vms.catalog.urls import mask_text


def classify(exc: BaseException, streaming: bool) -> tuple[str, str]:
    """(reason, detail) for a failed connect (streaming=False) or a failed read (streaming=True)."""
    detail = mask_text(f"{type(exc).__name__}: {exc}")[:300]
    if isinstance(exc, av.error.ExitError):
        if streaming:
            return "stalled", "no packet within the stall timeout"
        return "bad_stream", "no valid RTSP answer before the open deadline"
    if isinstance(exc, EOFError):
        return "stream_ended", "the camera ended the stream"
    # 401 (no or wrong credentials) and 403 (the account may not watch, or is locked) are both fixed
    # by correcting the credentials, and both count towards a camera's login lock-out.
    if isinstance(exc, av.error.HTTPUnauthorizedError):
        return "auth_failed", "the camera refused the credentials (401 Unauthorized)"
    if isinstance(exc, av.error.HTTPForbiddenError):
        return "auth_failed", "the camera refused access (403 Forbidden)"
    if isinstance(exc, av.error.HTTPNotFoundError):
        return "refused", "the camera has no such stream (404)"
    if isinstance(exc, av.error.HTTPError | av.error.HTTPClientError | av.error.HTTPServerError):
        return "refused", detail
    code = getattr(exc, "errno", None)
    if code == errno.ECONNREFUSED:
        return "refused", "connection refused"
    if code in (errno.ETIMEDOUT, errno.EAGAIN):
        return ("stalled", "no data within the stall timeout") if streaming else ("unreachable", "timed out")
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENOENT):
        return "unreachable", detail
    if code in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
        return ("stream_ended", "connection reset by the camera") if streaming else ("refused", detail)
    if isinstance(exc, av.error.InvalidDataError):
        return "bad_stream", "the camera sent data that is not a valid RTSP/RTP stream"
    if isinstance(exc, av.error.FFmpegError) and "Name or service not known" in str(exc):
        return "unreachable", detail
    return ("stream_ended" if streaming else "unreachable"), detail
