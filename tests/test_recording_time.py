"""Segment timing from stream timestamps and the receive clock, with a simulated clock and real files:
missing timestamps, jumps, wraps, clock resets and drift never make segments overlap or go negative."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from tests.ingest_support import FPS, TICKS, assert_contiguous, make_clip, record_clip
from vms.recording.volumes import VolumeSet


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.ts", seconds=24)


def _record(clip, db, settings, clock, rewrite, clock_step=None, segment_seconds=5.0):
    return record_clip(clip, db, settings, clock, rewrite, clock_step, segment_seconds)


def _frames_on_disk(settings, segs) -> int:
    vols = VolumeSet.from_settings(settings)
    total = 0
    for seg in segs:
        with av.open(str(vols.file_path(seg.volume, seg.path))) as c:
            total += sum(1 for p in c.demux(video=0) if p.size)
    return total


def test_steady_stream_gives_contiguous_segments_of_stream_duration(clip, db, settings, clock):
    start = clock.now_ms()
    segs, gaps = _record(clip, db, settings, clock, lambda i, p: None)
    assert_contiguous(segs)
    assert all(b.start_ms == a.end_ms for a, b in zip(segs, segs[1:], strict=False))
    assert [s.duration_ms for s in segs] == [5000, 5000, 5000, 5000, 4000]
    assert segs[0].start_ms == start + round(1000 / FPS)  # received with the first packet
    assert sum(s.frames for s in segs) == _frames_on_disk(settings, segs) == 24 * FPS
    assert [g.reason for g in gaps] == ["stream_ended"] and gaps[0].start_ms == segs[-1].end_ms


def test_packets_without_timestamps_and_before_the_first_keyframe_are_skipped(clip, db, settings, clock):
    # The first 20 packets have no pts/dts at all (as after an RTSP connect): recording starts at the
    # first keyframe that has a timestamp (packet 30).
    segs, _ = _record(clip, db, settings, clock, lambda i, p: False if i < 20 else None)
    assert sum(s.frames for s in segs) == 24 * FPS - 30
    assert_contiguous(segs)


@pytest.mark.parametrize("jump", [3600 * 90000, -200 * 90000, "wrap"])
def test_timestamp_jumps_and_wraps_cost_one_frame_not_a_hole_or_an_overlap(clip, db, settings, clock, jump):
    def rewrite(i, pkt):
        if jump == "wrap":  # 33-bit MPEG timestamps wrap to 0
            base = 2**33 - 100 * TICKS
            pkt.dts = pkt.pts = (base + i * TICKS) % 2**33
        elif i >= 100:
            pkt.dts = pkt.pts = i * TICKS + jump + (10**9 if jump < 0 else 0)
            if jump < 0:
                pkt.dts = pkt.pts = max(0, i * TICKS + jump)

    segs, gaps = _record(clip, db, settings, clock, rewrite)
    assert_contiguous(segs)
    # Every frame kept; the media length is the frame count (the jump became one frame step).
    assert sum(s.frames for s in segs) == 24 * FPS
    assert abs(sum(s.duration_ms for s in segs) - 24000) <= 2 * 1000 // FPS
    assert [g.reason for g in gaps] == ["stream_ended"]


def test_receive_clock_jump_re_anchors_without_overlap(clip, db, settings, clock):
    # The machine's clock steps 30 s forward during packet 160 (NTP correction after a long drift).
    segs, gaps = _record(clip, db, settings, clock, lambda i, p: None,
                         clock_step=lambda i: 30 + 1 / FPS if i == 160 else 1 / FPS)
    assert_contiguous(segs)
    jumped = [g for g in gaps if g.reason == "clock_jump"]
    assert len(jumped) == 1
    g = jumped[0]
    before = [s for s in segs if s.end_ms <= g.start_ms]
    after = [s for s in segs if s.start_ms >= g.end_ms]
    assert before and after and before[-1].end_ms == g.start_ms and after[0].start_ms == g.end_ms
    assert sum(s.frames for s in segs) == 24 * FPS


def test_drifting_camera_clock_is_slewed_at_most_half_a_percent(clip, db, settings, clock):
    # The receive clock runs 0.3 % faster than the camera's timestamps.
    segs, gaps = _record(clip, db, settings, clock, lambda i, p: None, clock_step=lambda i: 1.003 / FPS)
    assert_contiguous(segs)
    assert all(b.start_ms == a.end_ms for a, b in zip(segs, segs[1:], strict=False))
    for s in segs:
        wall = s.end_ms - s.start_ms
        assert abs(wall - s.duration_ms) <= s.duration_ms * 0.005 + 1
    # The wall span follows the receive clock, not the camera's.
    span = segs[-1].end_ms - segs[0].start_ms
    assert span > 24000 * 1.002
    assert [g.reason for g in gaps] == ["stream_ended"]
