"""Segment timing from stream timestamps and the receive clock, with a simulated clock and real files:
missing timestamps, jumps, wraps, clock resets and drift never make segments overlap or go negative,
and the native copier records such streams exactly as the Python path does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from tests.ingest_support import (
    FPS,
    TICKS,
    assert_contiguous,
    assert_same_recording,
    gaps,
    make_clip,
    record_clip,
    record_connection,
    remux_with_timestamps,
)
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


# --- Both recording paths -------------------------------------------------------------------------
# The native copier (vms/recording/native_copy.pyx) repeats video_packet's timestamp rules in C for the
# ordinary packets of an open segment. Each clip below has one timestamp fault baked into the file,
# mid-GOP and past the first segment (where the copier records), and is recorded by both paths.

J = 187  # the faulty packet: 12.5 s in, between the keyframes at 180 and 195
N = 24 * FPS
SECOND = 90000


@dataclass
class Fault:
    stamps: Callable[[int], int | None]  # packet index -> dts (= pts), None: no timestamp
    frames: int = N  # frames recorded
    media_frames: int = N  # media length, in frames
    gaps: tuple[str, ...] = ("stream_ended",)
    open_options: dict | None = None
    clock_shift: Callable[[float], float] | None = None  # see StreamClock


FAULTS = {
    "forward-jump": Fault(lambda i: i * TICKS + (3600 * SECOND if i >= J else 0)),
    # (No further back than 60 s before the stream's first timestamp: FFmpeg's MPEG-TS wrap correction,
    # below, would read a timestamp below that as one 2^33 later.)
    "backward-jump": Fault(lambda i: 1000 * SECOND + i * TICKS - (40 * SECOND if i >= J else 0)),
    "reset-to-0": Fault(lambda i: i * TICKS if i < J else (i - J) * TICKS),
    # 33-bit MPEG-TS timestamps wrap every 26.5 h. FFmpeg's correction (`correct_ts_overflow`) moves the
    # timestamps more than 60 s below a stream's first one by 2^33: it unwraps a wrap soon after the
    # start (the "-corrected" clip: negative timestamps before it), but a stream that runs on meets a
    # raw 2^33 step within 26.5 h anyway, when its timestamps cross that reference. With the correction
    # off, this clip's wrap reaches the recorder raw.
    "33-bit-wrap": Fault(lambda i: (2**33 - J * TICKS + i * TICKS) % 2**33,
                         open_options={"correct_ts_overflow": "0"}),
    "33-bit-wrap-corrected": Fault(lambda i: (2**33 - J * TICKS + i * TICKS) % 2**33),
    # Three frames stamped with the previous frame's time: a frame each, and the next step is measured
    # from the repeated stamp (three frames more media than the clip's).
    "repeated-dts": Fault(lambda i: (J - 1) * TICKS if J <= i < J + 3 else i * TICKS, media_frames=N + 3),
    # Packets without any timestamp are not recorded; the timeline goes on from the next stamped one.
    "missing": Fault(lambda i: None if i in (J, J + 1, J + 20) else i * TICKS, frames=N - 3),
    # The camera stopped sending for 30 s and resumes with its timestamps 30 s on: the jump is one
    # frame of media, and at the next cut the receive clock is 30 s ahead: a clock_jump gap.
    "camera-pause": Fault(lambda i: i * TICKS + (30 * SECOND if i >= J else 0), gaps=("clock_jump", "stream_ended"),
                          clock_shift=lambda s: 30 if s >= J / FPS else 0),
    # The receive clock runs 0.3 % faster than the camera's: each segment's wall length is slewed.
    "camera-clock-drift": Fault(lambda i: i * TICKS, clock_shift=lambda s: 0.003 * s),
    # The machine's clock steps 30 s forward (NTP) while the stream runs on: the same gap.
    "receive-clock-step": Fault(lambda i: i * TICKS, gaps=("clock_jump", "stream_ended"),
                                clock_shift=lambda s: 30 if s >= J / FPS else 0),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_timestamp_faults_give_the_same_recording_on_both_paths(clip, db, settings, tmp_path, fault):
    f = FAULTS[fault]
    stamps = [f.stamps(i) for i in range(N)]
    faulty = remux_with_timestamps(clip, tmp_path / f"{fault}.ts", stamps)
    with av.open(str(faulty), options=f.open_options) as c:
        read = [p.dts for p in c.demux(video=0) if p.size]
    if fault == "33-bit-wrap-corrected":  # FFmpeg unwrapped it: negative before the wrap point
        assert read == [t - 2**33 if i < J else t for i, t in enumerate(stamps)]
    else:
        assert read == stamps, "the demuxer reads the fault as written"
    in_python: list[int] = []
    _, copied_py = record_connection(faulty, db, settings, "pingshan-town", native=False,
                                     clock_shift=f.clock_shift, open_options=f.open_options)
    _, copied = record_connection(faulty, db, settings, "baihua-town", native=True, clock_shift=f.clock_shift,
                                  open_options=f.open_options, recorded_in_python=in_python)
    # The copier really recorded the fault's GOP (else this would test Python twice), and nothing of
    # the first segment (its start may still move on the receive clock).
    assert copied_py == 0 and copied > 0
    assert not [p for p in in_python if 180 * TICKS < p < 195 * TICKS], "the fault's GOP went through Python"
    assert set(range(0, 5 * SECOND + 1, TICKS)) <= set(in_python)

    segs = assert_same_recording(db, settings, "pingshan-town", "baihua-town")
    holes = gaps(db, "pingshan-town")
    assert [g.reason for g in holes] == list(f.gaps)
    # The rules' outcome: no negative length, no overlap, contiguous but where a clock_jump gap tiles
    # the hole exactly; each segment cut at the first keyframe past 5 s (a jump taken for media
    # would make one hours long, a step backwards a negative one).
    assert_contiguous(segs)
    for a, b in zip(segs, segs[1:], strict=False):
        if b.start_ms != a.end_ms:
            assert any(g.reason == "clock_jump" and (g.start_ms, g.end_ms) == (a.end_ms, b.start_ms) for g in holes)
            assert 29_000 <= b.start_ms - a.end_ms <= 31_000
    for s in segs:
        assert 0 < s.duration_ms <= 5000 + 1000 + 3 * 1000 // FPS, s.duration_ms
        assert abs((s.end_ms - s.start_ms) - s.duration_ms) <= 0.005 * s.duration_ms + 1
    assert sum(s.frames for s in segs) == _frames_on_disk(settings, segs) == f.frames
    assert abs(sum(s.duration_ms for s in segs) - f.media_frames * 1000 / FPS) <= len(segs)
