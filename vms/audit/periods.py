"""Local days and months (settings.timezone) as UTC millisecond ranges, and parsing of user input."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from vms.core.clock import to_ms
from vms.core.errors import VmsError

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")


class AuditInputError(VmsError):
    """A day, month, town or station given to the audit is malformed or unknown."""


def parse_day(text: str) -> date:
    if not isinstance(text, str) or not _DAY.match(text):
        raise AuditInputError(f"day {text!r}: expected YYYY-MM-DD, e.g. 2026-01-05")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise AuditInputError(f"day {text!r} is not a calendar date") from None


def parse_month(text: str) -> tuple[int, int]:
    if not isinstance(text, str) or not _MONTH.match(text):
        raise AuditInputError(f"month {text!r}: expected YYYY-MM, e.g. 2026-01")
    year, month = int(text[:4]), int(text[5:])
    if not 1 <= month <= 12:
        raise AuditInputError(f"month {text!r}: month must be 01-12")
    return year, month


def month_days(year: int, month: int) -> list[date]:
    first = date(year, month, 1)
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return [first + timedelta(days=i) for i in range((nxt - first).days)]


def month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def local_ms(day: date, seconds: int, tz: ZoneInfo) -> int:
    """UTC ms of `seconds` after local midnight of `day` (86400 = next midnight, DST-safe)."""
    if seconds >= 86400:
        return to_ms(datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)) + (seconds - 86400) * 1000
    return to_ms(datetime.combine(day, time(seconds // 3600, seconds % 3600 // 60, seconds % 60), tzinfo=tz))


@dataclass(frozen=True)
class DaySpan:
    """One local day as [start_ms, end_ms) in UTC ms."""

    day: date
    start_ms: int
    end_ms: int

    @property
    def key(self) -> str:
        return self.day.isoformat()

    @classmethod
    def of(cls, day: date, tz: ZoneInfo) -> DaySpan:
        return cls(day, local_ms(day, 0, tz), local_ms(day, 86400, tz))


def local_day_of(ms: int, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=tz).date()


def local_hhmm(ms: int | None, tz: ZoneInfo) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=tz).strftime("%H:%M")
