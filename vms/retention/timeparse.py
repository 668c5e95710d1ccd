"""Times typed by operators: ISO 8601, local time (settings.timezone) when no offset is given."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from vms.core.clock import to_ms
from vms.core.errors import VmsError


def parse_time_ms(text: str, tz: ZoneInfo, what: str = "time") -> int:
    raw = text.strip()
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise VmsError(
            f"invalid {what} {text!r}: use ISO 8601, e.g. 2026-01-15T08:30 (local time) or 2026-01-15T00:30Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return to_ms(when)


def format_local(ms: int | None, tz: ZoneInfo) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="seconds")
