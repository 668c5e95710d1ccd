"""The native copier (vms/recording/native_copy.pyx): built by bootstrap, reads packets as PyAV does,
and records exactly the segments the Python path records, byte for byte."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from tests.ingest_support import assert_same_recording, decode_all, record_connection, segments
from vms.analysis.detector import ActivityTracker
from vms.core.settings import AnalysisSettings
from vms.recording import copier as copier_mod
from vms.recording.volumes import VolumeSet

FPS = 15


def make_bframe_clip(path, seconds: int = 24, gop: int = FPS):
    """H.264 with B-frames (pts != dts), a keyframe every `gop` frames (a second), in MPEG-TS (1/90000
    like RTSP)."""
    with av.open(str(path), "w", format="mpegts") as out:
        s = out.add_stream("libx264", rate=FPS, options={
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:sliced-threads=0", "bf": "2"})
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        rng = np.random.default_rng(7)
        for i in range(seconds * FPS):
            img = np.full((96, 160, 3), (i * 3) % 255, np.uint8)
            img[rng.integers(0, 80):, rng.integers(0, 140):][:16, :20] = 255  # something moves
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def test_module_is_built_and_reads_packets_as_pyav_does(tmp_path):
    assert copier_mod.native_copy_built(), "bootstrap.sh builds it (scripts/build_native.py)"
    from vms.recording import native_copy

    clip = make_bframe_clip(tmp_path / "clip.ts", seconds=3)
    with av.open(str(clip)) as c:
        pkts = [p for p in c.demux(video=0) if p.size]
        for p in pkts:
            pts, dts, size, index, flags, tb_num, tb_den = native_copy.packet_fields(p)
            assert (pts, dts, size, index, bool(flags & 1)) == (p.pts, p.dts, p.size, p.stream_index, p.is_keyframe)
            assert (tb_num, tb_den) == (1, 90000)
    assert any(p.pts != p.dts for p in pkts), "the clip has B-frames"


def test_native_copy_records_the_same_segments_byte_for_byte(tmp_path, db, settings):
    clip = make_bframe_clip(tmp_path / "clip.ts", seconds=24)
    _, copied_py = record_connection(clip, db, settings, "pingshan-town", native=False)
    rec, copied = record_connection(clip, db, settings, "baihua-town", native=True)
    # The first PULLBACK_S (10 s) of a connection go through Python; the rest is copied in C but
    # for the keyframe of each second.
    assert copied_py == 0
    assert copied >= (24 - 10 - 1) * (FPS - 1), copied
    assert len(assert_same_recording(db, settings, "pingshan-town", "baihua-town")) >= 4


class FailingStream(io.RawIOBase):
    """A clip whose reads fail after `limit` bytes, like a dropped connection."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.data, self.limit, self.pos = data, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.pos >= self.limit:
            raise ConnectionResetError("the camera's connection dropped")
        n = min(len(buf), self.limit - self.pos, 4096)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def test_a_read_error_after_copied_packets_indexes_them_all(tmp_path, db, settings):
    """The copier meets the read error after copying packets in the same pump: the recorder takes
    them over before the error is raised, so the index counts every frame the file holds."""
    clip = make_bframe_clip(tmp_path / "clip.ts", seconds=24)
    data = clip.read_bytes()
    with pytest.raises((ConnectionResetError, av.error.FFmpegError)):  # as PyAV's demux reports it
        record_connection(FailingStream(data, int(len(data) * 0.8)), db, settings, "pingshan-town", native=True)
    segs = segments(db, "pingshan-town")
    assert segs and all(s.state == "complete" for s in segs)
    vols = VolumeSet.from_settings(settings)
    for s in segs:
        frames, _ = decode_all(vols.file_path(s.volume, s.path))
        assert frames == s.frames, (s.path, frames, s.frames)
    assert sum(s.frames for s in segs) >= 0.75 * 24 * FPS


def test_the_copier_keeps_the_gop_in_c_and_hands_it_over_whole_when_copying_stops(tmp_path, db, settings):
    """With `keep` (the live tap), the packets the copier records stay in C, across batches, until
    a pump must hand every packet over (copy not allowed, as when a live viewer comes): then the
    observer gets them, and so has every packet of the current GOP, in order, each once, before the
    next packet. Nothing is handed over while copying goes on, and a keyframe drops what was kept."""
    gop = 3 * FPS  # longer than the copier's one-second batches: pumps end mid-GOP
    clip = make_bframe_clip(tmp_path / "clip.ts", seconds=30, gop=gop)

    def allowed(t: float) -> bool:
        return not (13.5 <= t < 16.2 or 19.2 <= t < 20.5 or 22.6 <= t < 23.9)  # longer than a batch

    observed: list[tuple[bool, int]] = []  # (keyframe, wall ms) of the current GOP, as the tap keeps it
    handed: list[int] = []
    now = {"t": 0.0}

    def keep(pkt, wall):
        if pkt.is_keyframe:
            observed.clear()
        if observed or pkt.is_keyframe:
            observed.append((pkt.is_keyframe, wall))

    def on_kept(packets):
        assert not allowed(now["t"]), "handed over while the copier may copy on"
        assert packets and not any(p.is_keyframe for p, _ in packets)
        handed.append(len(packets))
        for pkt, wall in packets:
            keep(pkt, wall)

    def on_packet(pkt, wall):
        keep(pkt, wall)
        if not allowed(now["t"]):
            # Every packet of the GOP so far, once each and in order (walls a frame apart).
            walls = [w for _, w in observed]
            assert observed[0][0], "the GOP starts at its keyframe"
            assert walls == sorted(set(walls)), walls
            assert round((walls[-1] - walls[0]) * FPS / 1000) + 1 == len(walls), walls

    _, copied = record_connection(clip, db, settings, "pingshan-town", native=True, segment_seconds=60,
                                  hook=lambda t: now.update(t=t), copy_allowed=allowed,
                                  on_kept=on_kept, on_packet=on_packet)
    assert copied > 10 * FPS
    assert len(handed) == 3 and sum(handed) > 4 * FPS, handed


def test_attention_ends_a_pump_before_it_reads(tmp_path):
    from vms.recording import native_copy

    clip = make_bframe_clip(tmp_path / "clip.ts", seconds=2)
    with av.open(str(clip)) as c:
        vs = c.streams.video[0]
        cp = native_copy.PacketCopier(c, [vs], vs.index)
        cp.attention = True
        assert cp.pump() == native_copy.STATUS_ATTENTION and cp.copied == 0 and not cp.attention
        # Not armed: every packet is handed over, in order, then the end.
        dts = []
        while (status := cp.pump()) == native_copy.STATUS_PACKET:
            if cp.packet.size:
                dts.append(cp.packet.dts)
                assert cp.packet.time_base == vs.time_base and cp.packet.stream is vs
        assert status == native_copy.STATUS_END
    assert len(dts) == 2 * FPS and dts == sorted(dts)


@pytest.mark.parametrize("gop_ms", [1000, 10_000])
def test_activity_batches_match_packet_by_packet(gop_ms):
    """The copier reports non-key packets a second at a time at most; the tracker's buckets are those
    it makes from each packet (GOPs of 1 s), or end within that second (10 s GOPs, split at MAX_BUCKET_MS)."""
    rng = np.random.default_rng(1)
    times = [i * 1000 // FPS for i in range(60 * FPS)]
    sizes = [int(s) for s in rng.integers(500, 5000, len(times))]
    keys = [t % gop_ms == 0 for t in times]
    one, batched = ActivityTracker(AnalysisSettings()), ActivityTracker(AnalysisSettings())
    run: list[tuple[int, int]] = []

    def flush():
        if run:
            batched.copied(run[0][0], run[-1][0], sum(s for _, s in run), len(run))
            run.clear()

    for t, size, key in zip(times, sizes, keys, strict=True):
        one.packet(t, size, key)
        if key:
            flush()
            batched.packet(t, size, True)
        else:
            if run and t - run[0][0] >= 1000:  # the copier's batch of one second
                flush()
            run.append((t, size))
    flush()
    if gop_ms <= ActivityTracker.MAX_BUCKET_MS:
        # Buckets end at keyframes, which always end a batch: exactly the same.
        assert one._held == batched._held
        assert (one._start, one._bytes, one._frames) == (batched._start, batched._bytes, batched._frames)
    else:
        # Long GOPs: a bucket that reached MAX_BUCKET_MS ends at the next batch (within a second).
        spans = [(start, end) for start, end, _ in batched._held]
        assert len(spans) >= 2, spans  # (the checks below hold for no buckets at all)
        assert all(b0 == a1 for (_, a1), (b0, _) in zip(spans, spans[1:], strict=False))
        assert all(ActivityTracker.MAX_BUCKET_MS <= end - start <= ActivityTracker.MAX_BUCKET_MS + 1000
                   for start, end in spans if end % gop_ms)
        assert len(batched._held) == len(one._held)


# --- Pause planning (docs/design/recording.md, "Pausing between reads") --------------------------
# GopTracker and nap_us run the inline functions of the copier's read loop.

FRAME = 90000 // FPS  # ticks per frame, 1/90000 as over RTSP


def camera(tracker, seconds: float, gop_frames: int, bitrate_bps: int, start_dts: int = 0):
    """Feed a 15 fps camera's packets (keyframes 5x a P-frame's size) to `tracker`; yields each dts
    after the tracker has seen its packet."""
    p_frame = bitrate_bps / 8 / (FPS + 4 * FPS / gop_frames)
    for i in range(round(seconds * FPS)):
        key = i % gop_frames == 0
        tracker.packet(start_dts + i * FRAME, round(p_frame * (5 if key else 1)), key)
        yield start_dts + i * FRAME


@pytest.mark.parametrize("gop_frames", [15, 30, 150])
def test_a_pause_ends_two_frames_and_100_ms_before_the_next_keyframe_is_due(gop_frames):
    from vms.recording.native_copy import GopTracker

    tracker = GopTracker()
    planned = []
    for dts in camera(tracker, 3 * gop_frames / FPS, gop_frames, 100_000):
        us = tracker.pause_us(FRAME, 10_000_000)
        if dts < gop_frames * FRAME:
            assert us == 0, "no pause before a GOP has been seen"
            continue
        # The next keyframe is due this many ticks after the packet just read.
        due = gop_frames * FRAME - dts % (gop_frames * FRAME)
        bound_us = (due - 2 * FRAME) * 1_000_000 // 90000 - 100_000
        if us:
            # The keyframe is not read late: the pause ends in time (exactly at the bound here, the
            # bitrate being low).
            assert us == bound_us
            planned.append(us)
        else:
            assert bound_us < 20_000, "a pause worth a wake-up was missed"
    assert planned and max(planned) == (gop_frames - 2) * 1_000_000 // FPS - 100_000
    # The longest pause allowed bounds it too.
    assert pause_after_a_keyframe(gop_frames, max_us=300_000) == 300_000


def pause_after_a_keyframe(gop_frames: int, max_us: int, bitrate_bps: int = 100_000) -> int:
    from vms.recording.native_copy import GopTracker

    tracker = GopTracker()
    for _ in camera(tracker, 2 * gop_frames / FPS + 1 / FPS, gop_frames, bitrate_bps):
        pass
    return tracker.pause_us(FRAME, max_us)


@pytest.mark.parametrize("mbps", [0.5, 2, 4, 8, 16, 64])
def test_at_most_128_kb_gather_during_a_pause(mbps):
    from vms.recording.native_copy import GopTracker

    tracker = GopTracker()
    for _ in camera(tracker, 2 + 1 / FPS, 30, int(mbps * 1_000_000)):
        pass
    bytes_per_us = tracker.gop_bytes / (30 * 1_000_000 / FPS)
    assert abs(bytes_per_us * 8 - mbps) < 0.01 * mbps  # the rate comes from the last GOP's bytes
    us = tracker.pause_us(FRAME, 500_000)
    assert us * bytes_per_us <= 131072
    if mbps <= 2:
        assert us == 500_000  # a camera at the common bitrates pauses as long as allowed
    elif mbps <= 16:
        assert 20_000 <= us < 500_000 and us * bytes_per_us > 131072 - 100  # shortened to the bound
    else:
        assert us == 0  # under 20 ms: not worth a wake-up


def test_keyframe_intervals_over_20_s_are_timestamp_jumps_not_gops():
    from vms.recording.native_copy import GopTracker

    second = 90000
    # A "smart codec" camera with 20 s GOPs: a GOP, so it pauses.
    tracker = GopTracker()
    tracker.packet(0, 50_000, key=True)
    tracker.packet(20 * second, 50_000, key=True)
    assert tracker.gop_ticks == 20 * second
    tracker.packet(20 * second + FRAME, 5_000)
    assert tracker.pause_us(FRAME, 500_000) == 500_000
    # Keyframes 21 s apart: a jump, so no GOP is known and no pause is planned until the next regular
    # interval.
    tracker.packet(41 * second, 50_000, key=True)
    tracker.packet(41 * second + FRAME, 5_000)
    assert tracker.gop_ticks == 0 and tracker.pause_us(FRAME, 500_000) == 0
    tracker.packet(42 * second, 50_000, key=True)
    tracker.packet(42 * second + FRAME, 5_000)
    assert tracker.gop_ticks == second and tracker.pause_us(FRAME, 500_000) > 0
    # A timestamp reset (the next keyframe before the last) is no GOP either; nor is a jump forward
    # within a GOP a reason to sleep past the next keyframe.
    tracker.packet(0, 50_000, key=True)
    tracker.packet(FRAME, 5_000)
    assert tracker.gop_ticks == 0 and tracker.pause_us(FRAME, 500_000) == 0
    tracker = GopTracker()
    for _ in camera(tracker, 2 + 2 / FPS, 15, 500_000):
        pass
    assert tracker.pause_us(FRAME, 500_000) > 0
    tracker.packet(3600 * second, 5_000)  # a P-frame an hour on
    assert tracker.pause_us(FRAME, 500_000) == 0
    tracker.packet(-3600 * second, 5_000)  # and one an hour back
    assert tracker.pause_us(FRAME, 500_000) == 0


def test_no_pause_while_disarmed_when_attention_is_asked_or_over_udp(tmp_path):
    from vms.recording.native_copy import nap_us

    now = 1_000_000_000
    assert nap_us(True, False, now + 300_000, now) == 300_000
    # Not armed: a connection's first segment (its start may still move), or a live viewer watches.
    assert nap_us(False, False, now + 300_000, now) == 0
    assert nap_us(True, True, now + 300_000, now) == 0  # a stop or a periodic task is due
    assert nap_us(True, False, now + 19_999, now) == 0  # not worth a wake-up
    assert nap_us(True, False, 0, now) == 0  # none planned
    clip = make_bframe_clip(tmp_path / "clip.ts", seconds=1)
    with av.open(str(clip)) as c:
        vs = c.streams.video[0]
        assert copier_mod.make_copier(c, [vs], vs.index, 0.5, "tcp").pause_us == 500_000
        assert copier_mod.make_copier(c, [vs], vs.index, 0.5, "udp").pause_us == 0
