"""Times typed by operators: ISO 8601, local time (settings.timezone) when no offset is given."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from vms.core.errors import VmsError
from vms.core.timetext import EARLIEST_TEXT, LATEST_TEXT, TimeTextError, parse_time_text


def parse_time_ms(text: str, tz: ZoneInfo, what: str = "time") -> int:
    try:
        return parse_time_text(text, tz)
    except TimeTextError as exc:
        if exc.kind == "out_of_range":
            raise VmsError(f"{what} {text!r} is out of range: from {EARLIEST_TEXT} to {LATEST_TEXT}") from None
        raise VmsError(
            f"invalid {what} {text!r}: use ISO 8601, e.g. 2026-01-15T08:30 (local time) or 2026-01-15T00:30Z"
        ) from None


def format_local(ms: int | None, tz: ZoneInfo) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="seconds")
