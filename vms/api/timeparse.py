"""Times in requests: ISO 8601 (without an offset = the configured local zone, Asia/Shanghai) or
epoch milliseconds; ranges are checked and errors name the parameter (vms.core.timetext checks the
text: ASCII digits only, short, between 2000 and 2100)."""

from __future__ import annotations

from datetime import tzinfo
from typing import overload

from vms.api.errors import ApiError, local_time
from vms.core.clock import from_ms
from vms.core.timetext import EARLIEST_TEXT, LATEST_TEXT, TimeTextError, parse_time_text

SHOWN_CHARS = 40  # of a refused value in the message: a 4,300-digit value is not echoed whole


def _shown(value: str) -> str:
    return repr(value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "…")


def parse_time(value: str, name: str, tz: tzinfo) -> int:
    """UTC epoch milliseconds from ISO 8601 or an integer of milliseconds; 400 naming `name` if neither
    or out of range."""
    try:
        return parse_time_text(value, tz, epoch_ms=True)
    except TimeTextError as exc:
        if exc.kind == "out_of_range":
            raise ApiError(400, "time_out_of_range",
                           f"{name}={_shown(value)} 超出范围：时间须在 {EARLIEST_TEXT} 至 {LATEST_TEXT} 之间") from None
        raise ApiError(400, "time_invalid",
                       f"{name}={_shown(value)} 不是时间：请用 ISO 8601，如 2026-03-01T08:30:00（本地时间）"
                       f"或 2026-03-01T00:30:00Z，或毫秒时间戳") from None


def parse_range(start: str, end: str, tz: tzinfo, max_ms: int | None = None,
                what: str = "时间范围") -> tuple[int, int]:
    s = parse_time(start, "start", tz)
    e = parse_time(end, "end", tz)
    if e <= s:
        raise ApiError(400, "time_range_reversed",
                       f"结束时间 end（{local_time(e, tz)}）须晚于开始时间 start（{local_time(s, tz)}）")
    if max_ms is not None and e - s > max_ms:
        raise ApiError(400, "time_range_too_long", f"{what}过长：{(e - s) / 60000:.0f} 分钟，"
                                                   f"最多 {max_ms / 60000:.0f} 分钟")
    return s, e


@overload
def iso(ms: int, tz: tzinfo) -> str: ...
@overload
def iso(ms: int | None, tz: tzinfo) -> str | None: ...
def iso(ms: int | None, tz: tzinfo) -> str | None:
    """Local ISO 8601 with offset, to the millisecond."""
    if ms is None:
        return None
    return from_ms(ms, tz).isoformat(timespec="milliseconds")
