"""The backfill writer (vms.recording.backfill): footage fetched after the fact into a gap, against the crash
repair that a (re)starting ingest worker runs over the same directories."""

from __future__ import annotations

import io
import time
from pathlib import Path

import av
import pytest
from sqlalchemy import select

from tests.ingest_support import one_station_database
from vms.db.models import Segment
from vms.gb28181.ps import PsMuxer
from vms.recording import backfill as backfill_module
from vms.recording.backfill import BackfillWriter
from vms.recording.repair import recover_orphans
from vms.recording.volumes import VolumeSet
from vms.simulate.content import VideoFormat, pattern_clip
from vms.simulate.gb28181_media import load_clip

STATION = "bf-station"
FPS = 15


@pytest.fixture
def env(tmp_path, simulator_cache):
    settings, db = one_station_database(tmp_path, STATION, "backfill test")
    clip = load_clip(pattern_clip(simulator_cache, VideoFormat(320, 240, FPS, 300, FPS), 2.0), "h264")
    muxer = PsMuxer("h264")
    ps = b"".join(muxer.video(clip.frames[i % len(clip.frames)], i * 90000 // FPS, clip.keyframe[i % len(clip.frames)])
                  for i in range(FPS * 12))  # 12 s of a card recording
    try:
        yield settings, db, VolumeSet.from_settings(settings), ps
    finally:
        db.dispose()


def test_a_worker_starting_while_a_backfill_segment_is_written_loses_nothing(env, monkeypatch) -> None:
    """The writer wrote each segment under its final name: a worker (re)starting meanwhile ran crash repair
    over the station's recent hours, trimmed the file being written and indexed it as an orphan; the writer
    then found "its" time already filed, unlinked the file, and left a row without a file."""
    settings, db, volumes, ps = env
    now_ms = int(time.time() * 1000)
    gap_start, gap_end = now_ms - 60_000, now_ms - 40_000
    writer = BackfillWriter(STATION, volumes, settings.tz, db, "node1", gap_start, gap_end,
                            stream_start_ms=gap_start, segment_seconds=4)
    real = backfill_module.SegmentFile.write_video
    repaired: list = []

    def write_video(self, packet, dts, pts):
        real(self, packet, dts, pts)
        if not repaired and dts > 3 * 90000:  # mid-segment: the worker restarts and repairs its stations
            repaired.extend(recover_orphans(db, volumes, settings.tz, "node1", [STATION], int(time.time() * 1000)))
            repaired.append("ran")

    monkeypatch.setattr(backfill_module.SegmentFile, "write_video", write_video)
    with av.open(io.BytesIO(ps), format="mpeg") as container:
        result = writer.write(container)
    assert repaired, "the repair never ran"
    assert result.segments >= 2
    with db.session() as s:
        rows = s.execute(select(Segment.path, Segment.start_ms, Segment.end_ms, Segment.bytes)
                         .where(Segment.station_id == STATION).order_by(Segment.start_ms)).all()
    assert len(rows) == result.segments, rows
    for path, start, end, size in rows:
        file = volumes.file_path("main", path)
        assert file.exists(), f"{path} is indexed but its file is gone"
        assert file.stat().st_size == size
        assert gap_start <= start < end <= gap_end
    for a, b in zip(rows, rows[1:], strict=False):
        assert a[2] <= b[1], "segments overlap"
    leftovers = [p for p in Path(volumes.root("main")).rglob("*") if p.is_file() and p.suffix != ".mp4"
                 and p.name != ".vms-volume"]
    assert not leftovers


def test_a_killed_backfill_leaves_no_unfinished_file_behind(env) -> None:
    settings, db, volumes, ps = env
    now_ms = int(time.time() * 1000)
    writer = BackfillWriter(STATION, volumes, settings.tz, db, "node1", now_ms - 60_000, now_ms - 40_000,
                            stream_start_ms=now_ms - 60_000, segment_seconds=4)
    with av.open(io.BytesIO(ps), format="mpeg") as container:
        video = container.streams.video[0]
        packet = next(p for p in container.demux(video) if p.is_keyframe)
        seg = writer._start(video, now_ms - 50_000, 0, packet)  # the kill comes while it is written
        seg.file.abandon()
    assert seg.file.path.name.endswith(".mp4.part")
    assert not recover_orphans(db, volumes, settings.tz, "node1", [STATION], now_ms)
    assert backfill_module.remove_unfinished(volumes, settings.tz, STATION, now_ms - 60_000, now_ms - 40_000) == 1
    assert not seg.file.path.exists()


def test_a_download_that_never_ends_is_ended_at_its_deadline():
    """A device that trickles packets and never says 121 must not hold the backfill thread for good."""
    import time as _time

    from vms.gb28181.backfill import _stop_on_end
    from vms.gb28181.server import LocalOwner

    class Receiver:
        ended = None
        last_packet_mono = None
        stopped_at: float | None = None

        def stop(self) -> None:
            self.stopped_at = _time.monotonic()

    receiver = Receiver()
    started = _time.monotonic()
    _stop_on_end(LocalOwner(), receiver, started + 0.3)  # type: ignore[arg-type]
    assert receiver.stopped_at is not None and 0.25 <= receiver.stopped_at - started < 2
