"""Local days and months (settings.timezone) as UTC millisecond ranges, and parsing of user input."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from vms.core.clock import to_ms
from vms.core.errors import VmsError
from vms.core.timetext import EARLIEST_TEXT, LATEST_TEXT

# [0-9], not \d: \d also matches other scripts' digits, which int() reads (month '٢٠٢٥-٠١' was 2025-01).
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_MONTH = re.compile(r"^[0-9]{4}-[0-9]{2}$")
# Years whose days and months can be turned into UTC ranges (9999-12 overflowed: a 500 in the API).
FIRST_YEAR, LAST_YEAR = int(EARLIEST_TEXT[:4]), int(LATEST_TEXT[:4]) - 1


class AuditInputError(VmsError):
    """A day, month, town or station given to the audit is malformed or unknown."""


def parse_day(text: str) -> date:
    if not isinstance(text, str) or not _DAY.match(text):
        raise AuditInputError(f"日期 {text[:40]!r} 格式不对：须为 YYYY-MM-DD，如 2026-01-05")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise AuditInputError(f"日期 {text!r} 不存在") from None
    _check_year(day.year, f"日期 {text!r}")
    return day


def _check_year(year: int, what: str) -> None:
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise AuditInputError(f"{what}：年份须在 {FIRST_YEAR} 至 {LAST_YEAR} 之间")


def parse_month(text: str) -> tuple[int, int]:
    if not isinstance(text, str) or not _MONTH.match(text):
        raise AuditInputError(f"月份 {text[:40]!r} 格式不对：须为 YYYY-MM，如 2026-01")
    year, month = int(text[:4]), int(text[5:])
    if not 1 <= month <= 12:
        raise AuditInputError(f"月份 {text!r} 不存在：月须为 01 至 12")
    _check_year(year, f"月份 {text!r}")
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
