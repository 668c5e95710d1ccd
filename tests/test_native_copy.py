"""The native copier (vms/recording/native_copy.pyx): built by bootstrap, reads packets as PyAV does,
and records exactly the segments the Python path records, byte for byte."""

from __future__ import annotations

import hashlib
import io

import av
import numpy as np
import pytest

from tests.ingest_support import decode_all, gaps, record_connection, segments
from vms.analysis.detector import ActivityTracker
from vms.core.settings import AnalysisSettings
from vms.recording import copier as copier_mod
from vms.recording.volumes import VolumeSet

FPS = 15


def make_bframe_clip(path, seconds: int = 24):
    """H.264 with B-frames (pts != dts), a keyframe every second, in MPEG-TS (1/90000 like RTSP)."""
    with av.open(str(path), "w", format="mpegts") as out:
        s = out.add_stream("libx264", rate=FPS, options={
            "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0:sliced-threads=0", "bf": "2"})
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
    a, b = segments(db, "pingshan-town"), segments(db, "baihua-town")
    assert len(a) == len(b) >= 4

    def row(s):
        return (s.start_ms, s.end_ms, s.duration_ms, s.frames, s.keyframes, s.bytes, s.state)

    assert [row(s) for s in a] == [row(s) for s in b]
    vols = VolumeSet.from_settings(settings)
    for sa, sb in zip(a, b, strict=True):
        da = hashlib.sha256(vols.file_path(sa.volume, sa.path).read_bytes()).hexdigest()
        db_ = hashlib.sha256(vols.file_path(sb.volume, sb.path).read_bytes()).hexdigest()
        assert da == db_, (sa.path, sb.path)
    assert [(g.reason, g.start_ms) for g in gaps(db, "pingshan-town")] == \
        [(g.reason, g.start_ms) for g in gaps(db, "baihua-town")]


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
