"""The index writer over months: what it remembers per camera stays bounded."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from sqlalchemy import select

from tests.ingest_support import FPS, TICKS, gaps, make_clip
from vms.db.models import OnlineInterval
from vms.recording.index import IndexWriter
from vms.recording.recorder import StreamRecorder
from vms.recording.volumes import VolumeSet

SID = "pingshan-town"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.ts", seconds=3)


def test_reconnects_do_not_grow_the_writer_and_every_row_is_closed(clip, db, settings, clock):
    """Each connection opens a gap and an online interval, each identified by a token until its row
    exists; the token -> row id map kept every one for the life of the worker (two per reconnect)."""
    connections = 25
    index = IndexWriter(db, "t").start()
    rec = StreamRecorder(SID, VolumeSet.from_settings(settings), settings.tz, index, clock, segment_seconds=2)
    try:
        for n in range(connections):
            online = None
            with av.open(str(clip)) as c:  # as a camera session does with each connection
                vs = c.streams.video[0]
                rec.begin(vs, None)
                for i, pkt in enumerate(p for p in c.demux(vs) if p.size):
                    clock.advance(1 / FPS)
                    pkt.dts = pkt.pts = i * TICKS
                    if rec.video_packet(pkt) is not None and online is None:
                        online = index.open_online(SID, clock.now_ms())
                rec.end("stalled" if n % 2 else "stream_ended")  # the reason changes too
                index.close_online(online, clock.now_ms())
            clock.advance(3)  # the reconnect's backoff
            if n == connections // 2:
                assert index.flush()
                midway = len(index._ids)
        assert index.flush()
        assert len(index._ids) <= 2 and midway <= 2  # held 2 ids per connection before
    finally:
        index.stop()
    rows = gaps(db, SID)
    assert len(rows) == connections
    assert all(g.end_ms is not None and g.end_ms > g.start_ms for g in rows[:-1])  # each ended by the next footage
    assert rows[-1].end_ms is None  # the last stays open until the camera records again
    with db.session() as s:
        intervals = s.scalars(select(OnlineInterval).where(OnlineInterval.station_id == SID)).all()
    assert len(intervals) == connections and all(iv.end_ms is not None for iv in intervals)


def test_operations_from_many_threads_are_gathered_into_one_commit_a_second_and_a_flush_does_not_wait(
        db, settings):
    """~70 camera threads enqueue a segment's progress every few seconds each: committed as they came,
    that was a transaction per operation. The writer gathers them for commit_interval_s; a flush()
    still returns at once, and nothing is lost or reordered (the last value of each row wins)."""
    import threading
    import time

    from sqlalchemy import event

    from vms.db.models import Segment

    commits: list[float] = []
    event.listen(db.engine, "commit", lambda conn: commits.append(time.monotonic()))
    index = IndexWriter(db, "t", commit_interval_s=1.0).start()
    try:
        for cam in range(20):
            index.open_segment(station_id=SID, stream="main", volume="v", path=f"p{cam}.mp4", start_ms=cam,
                               end_ms=cam, state="growing", codec="h264")
        assert index.flush()
        commits.clear()
        stop = threading.Event()

        def camera(cam: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                index.update_segment("v", f"p{cam}.mp4", end_ms=1000 + n, duration_ms=n)
                time.sleep(0.05)

        threads = [threading.Thread(target=camera, args=(cam,)) for cam in range(20)]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(3.2)
        t0 = time.monotonic()
        assert index.flush(5)
        flush_s = time.monotonic() - t0
        stop.set()
        for t in threads:
            t.join()
        assert index.flush()
        # ~400 operations a second came in; at most one paced commit a second, plus the flushes'
        assert len([c for c in commits if c < t0]) <= 5, f"{len(commits)} commits in {t0 - started:.1f} s"
        assert flush_s < 0.5, f"flush() waited {flush_s:.2f} s for the pace"
    finally:
        index.stop()
    with db.session() as s:
        rows = s.execute(select(Segment.path, Segment.duration_ms).where(Segment.station_id == SID)).all()
    assert len(rows) == 20 and all(duration > 10 for _, duration in rows)
