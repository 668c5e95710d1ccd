"""Times in requests: ISO 8601 (without an offset = the configured local zone, Asia/Shanghai) or
epoch milliseconds; ranges are checked and errors name the parameter."""

from __future__ import annotations

from datetime import datetime, tzinfo

from fastapi import HTTPException

from vms.core.clock import from_ms


def parse_time(value: str, name: str, tz: tzinfo) -> int:
    """UTC epoch milliseconds from ISO 8601 or an integer of milliseconds; 400 naming `name` if neither."""
    text = value.strip()
    if text.isdigit() and len(text) >= 10:
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(
            400, f"{name}={value!r} is not a time: use ISO 8601 such as 2026-03-01T08:30:00 "
                 f"(local time) or 2026-03-01T00:30:00Z, or epoch milliseconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    try:
        return int(when.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        raise HTTPException(400, f"{name}={value!r} is out of range") from None


def parse_range(start: str, end: str, tz: tzinfo, max_ms: int | None = None,
                what: str = "range") -> tuple[int, int]:
    s = parse_time(start, "start", tz)
    e = parse_time(end, "end", tz)
    if e <= s:
        raise HTTPException(400, f"end ({iso(e, tz)}) must be after start ({iso(s, tz)})")
    if max_ms is not None and e - s > max_ms:
        raise HTTPException(400, f"{what} too long: {(e - s) / 60000:.0f} min, "
                                 f"at most {max_ms / 60000:.0f} min")
    return s, e


def iso(ms: int | None, tz: tzinfo) -> str | None:
    """Local ISO 8601 with offset, to the millisecond."""
    if ms is None:
        return None
    return from_ms(ms, tz).isoformat(timespec="milliseconds")
