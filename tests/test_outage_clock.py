"""The machine's wall clock steps an hour forward or back (NTP) while real cameras record; monotonic
time runs on. See docs/design/time.md, "Steps of the machine's clock": forward, the footage re-anchors
on the new time within a status interval and a keyframe, the hour is a clock_jump gap; back, footage
already filed "in the future" is never overlapped: later segments catch up at half speed. Either way
segments never overlap, never have negative length, their paths follow their start times, the index
matches the disk, and a daily audit of the result stays within its bounds."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from sqlalchemy import select

from tests.ingest_support import (
    RunningWorker,
    assert_contiguous,
    decode_all,
    gaps,
    ingest_settings,
    segments,
    wait_until,
)
from vms.audit.daily import audit_days
from vms.audit.periods import DaySpan
from vms.core.clock import SystemClock
from vms.db.models import AuditDaily, OnlineInterval
from vms.recording.repair import check, start_ms_from_name
from vms.recording.volumes import VolumeSet
from vms.simulate import Simulator

pytestmark = pytest.mark.slow  # real processes (simulator, vms serve, PostgreSQL): not for --fast

STATION = "huangbu-town"
HOUR_MS = 3_600_000


class SteppingClock(SystemClock):
    """The machine's clocks, whose wall time can step (as NTP steps it) while monotonic time runs on."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms

    def step(self, ms: int) -> None:
        self.offset_ms += ms


@pytest.fixture(scope="module")
def sim():
    with Simulator(cameras=1, names=[STATION], width=320, height=240, fps=15, bitrate_kbps=300, gop=15) as s:
        yield s


@pytest.mark.parametrize("step_ms", [HOUR_MS, -HOUR_MS], ids=["plus-1h", "minus-1h"])
def test_wall_clock_step_while_recording(sim, tmp_path, db, step_ms):
    # Segments of 8 s: the step must be noticed within a status interval (1 s here), not at the next cut.
    settings = ingest_settings(tmp_path, segment_seconds=8)
    clock = SteppingClock()
    with RunningWorker(settings, db, {STATION: sim.urls[STATION]}, clock=clock) as w:
        wait_until(lambda: len([s for s in segments(db, STATION) if s.state == "complete"]) >= 1, 30, "recording")
        before = {s.path for s in segments(db, STATION)}
        stepped_at = clock.now_ms()
        clock.step(step_ms)
        stepped_mono = time.monotonic()
        time.sleep(14)
        assert w.health(STATION).state == "streaming"
        stopped_at, elapsed_s = clock.now_ms(), time.monotonic() - stepped_mono

    segs = segments(db, STATION)
    assert_contiguous(segs)  # never overlapping, never negative
    for seg in segs:
        assert seg.state == "complete"
        # Never squashed: at least half its media length (catching up); its path names its start (the
        # first segment of a connection may start up to 10 s earlier: packets buffered during connect).
        assert seg.end_ms - seg.start_ms >= seg.duration_ms // 2 > 0
        assert 0 <= start_ms_from_name(seg.path, settings.tz)[1] - seg.start_ms <= 10_000
    assert [s.path for s in segs] == sorted(s.path for s in segs)
    after = [s for s in segs if s.path not in before]
    holes = [g for g in gaps(db, STATION) if g.reason != "ingest_stopped"]
    if step_ms > 0:
        # One clock_jump gap of the step: where the old timeline ended (a status interval and a keyframe
        # after the step at most) to where the new one starts.
        assert [g.reason for g in holes] == ["clock_jump"]
        jump = holes[0]
        assert stepped_at <= jump.start_ms <= stepped_at + 3000
        assert step_ms - 1000 <= jump.end_ms - jump.start_ms <= step_ms + 3000
        assert [s.end_ms for s in segs if s.end_ms <= jump.start_ms][-1] == jump.start_ms
        assert [s.start_ms for s in segs if s.start_ms >= jump.end_ms][0] == jump.end_ms
        # The new timeline is the clock's.
        assert abs(segs[-1].end_ms - stopped_at) <= 2000
    else:
        assert holes == []  # the footage is continuous, as it was
        assert all(b.start_ms == a.end_ms for a, b in zip(segs, segs[1:], strict=False))
        # From a keyframe after the step (noticed within a status interval), segments are filed at half
        # speed, so the footage comes back to the clock.
        halved = [s for s in after if abs((s.end_ms - s.start_ms) - s.duration_ms / 2) <= 2]
        assert len(halved) >= 2 and halved == after[after.index(halved[0]):]
        assert halved[0].start_ms <= stepped_at + 3000
        ahead = segs[-1].end_ms - stopped_at
        assert -step_ms - elapsed_s * 1000 / 2 - 4000 <= ahead <= -step_ms - elapsed_s * 1000 / 2 + 4000

    volumes = VolumeSet.from_settings(settings)
    report = check(db, volumes, settings.tz, clock, "test-node")
    assert report.problems == 0 and report.files == report.rows == len(segs)
    for seg in after:
        assert decode_all(volumes.file_path(seg.volume, seg.path))[0] == seg.frames
    with db.session() as s:
        online = list(s.scalars(select(OnlineInterval).where(OnlineInterval.station_id == STATION)))
        assert online and all(o.end_ms is not None and o.end_ms >= o.start_ms for o in online)
        # A daily audit of what was recorded stays within its bounds.
        now = clock.now_ms()
        days = sorted({datetime.fromtimestamp(ms / 1000, settings.tz).date() for ms in
                       [now] + [seg.start_ms for seg in segs] if DaySpan.of(
                           datetime.fromtimestamp(ms / 1000, settings.tz).date(), settings.tz).start_ms < now})
        audit_days(s, settings, clock, days)
        rows = list(s.scalars(select(AuditDaily).where(AuditDaily.station_id == STATION)))
        assert len(rows) == len(days), (rows, days)
        for row in rows:
            m = row.metrics
            assert 0 <= m["coverage_percent"] <= 100 and 0 <= m["online_percent"] <= 100, m
            assert all(v >= 0 for v in m["gaps_ms"].values()), m
