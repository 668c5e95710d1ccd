"""Where a segment file goes. Folders use local time (settings.timezone, Asia/Shanghai by default):
operators and auditors browse a station's day in local time, and China has no daylight saving, so
local hours are never ambiguous or missing. Index rows keep UTC; see docs/design/time.md."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

STREAM_SUFFIX = {"main": "", "sub": "-sub"}


def segment_rel_path(station_id: str, start_ms: int, tz: ZoneInfo, stream: str = "main") -> str:
    """`<station>/<YYYY-MM-DD>/<HH>/<YYYYMMDDTHHMMSS.mmm>.mp4` relative to the volume root."""
    local = datetime.fromtimestamp(start_ms / 1000, tz)
    stamp = local.strftime("%Y%m%dT%H%M%S") + f".{start_ms % 1000:03d}"
    return f"{station_id}/{local:%Y-%m-%d}/{local:%H}/{stamp}{STREAM_SUFFIX.get(stream, '-' + stream)}.mp4"
