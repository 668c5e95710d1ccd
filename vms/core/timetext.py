"""Times typed by people or programs (API parameters, CLI options): checked before any arithmetic.

Only ASCII digits count (str.isdigit() accepts '²' and other digits int() and datetime refuse), text
is short, and a time must fall between EARLIEST_MS and LATEST_MS: datetime arithmetic and formatting
overflow for years near 1 and 9999 (in a time zone ahead of UTC, 0001-01-01 is before the first
representable instant), and this system has no footage before 2000 nor will it in 2100."""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo

from vms.core.errors import VmsError

EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
LATEST_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
EARLIEST_TEXT = "2000-01-01"
LATEST_TEXT = "2100-01-01"
MAX_TIME_TEXT = 64  # the longest ISO 8601 time with microseconds and offset is 32 characters
_EPOCH_MS = re.compile(r"[0-9]{10,}")
_EPOCH_MS_DIGITS = len(str(LATEST_MS))


class TimeTextError(VmsError):
    """`kind` says what is wrong: 'invalid' (not a time), 'out_of_range' (a time outside the years this
    system can hold); callers word the message for their audience."""

    def __init__(self, kind: str, text: str) -> None:
        self.kind = kind
        self.text = text
        super().__init__(f"{text!r}: " + ("not a time" if kind == "invalid" else
                                          f"out of range (from {EARLIEST_TEXT} to {LATEST_TEXT})"))


def parse_time_text(text: str, tz: tzinfo, *, epoch_ms: bool = False) -> int:
    """UTC epoch milliseconds of ISO 8601 `text` (no offset = `tz`) or, with `epoch_ms`, of a run of at
    least 10 ASCII digits taken as epoch milliseconds. TimeTextError if it is neither or out of range."""
    raw = text.strip()
    if not raw:
        raise TimeTextError("invalid", text)
    if epoch_ms and _EPOCH_MS.fullmatch(raw):
        # Range-checked by its length before int(): int() of more than 4300 digits raises.
        if len(raw.lstrip("0")) > _EPOCH_MS_DIGITS:
            raise TimeTextError("out_of_range", text)
        ms = int(raw)
    else:
        if len(raw) > MAX_TIME_TEXT or not raw.isascii():
            raise TimeTextError("invalid", text)
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            raise TimeTextError("invalid", text) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=tz)
        try:
            ms = int(when.astimezone(UTC).timestamp() * 1000)
        except (OverflowError, OSError, ValueError):
            raise TimeTextError("out_of_range", text) from None
    if not EARLIEST_MS <= ms < LATEST_MS:
        raise TimeTextError("out_of_range", text)
    return ms
