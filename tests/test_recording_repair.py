"""Crash repair at a worker's start (vms.recording.repair.recover_orphans): segment files a killed run left
without an index row. The index writer commits a new segment's row up to a second after the file is made
(its commit pacing), so a kill -9 in that second leaves a file the index does not know."""

from __future__ import annotations

import struct
import time
from datetime import datetime
from pathlib import Path

import av
import pytest
from sqlalchemy import select

from tests.ingest_support import one_station_database
from vms.core.clock import SimulatedClock
from vms.core.settings import Settings
from vms.db.models import Segment
from vms.recording import repair as repair_module
from vms.recording.fmp4 import playable_length
from vms.recording.liveness import RecorderLock
from vms.recording.repair import check, recover_growing, recover_orphans
from vms.recording.segment_file import SegmentFile
from vms.recording.volumes import VolumeSet
from vms.simulate.content import VideoFormat, pattern_clip

STATION = "repair-station"


@pytest.fixture
def env(tmp_path, simulator_cache):
    settings, db = one_station_database(tmp_path, STATION, "repair test")
    clip = pattern_clip(simulator_cache, VideoFormat(320, 240, 15, 300, 15), 4.0)
    try:
        volumes = VolumeSet.from_settings(settings)
        volumes.mark("main")  # as `vms ingest` does at its first start
        yield settings, db, volumes, clip
    finally:
        db.dispose()


def _segment(volumes: VolumeSet, settings: Settings, clip: Path, start_ms: int) -> tuple[str, Path]:
    """A whole segment of the clip under the name the recorder gives one starting at start_ms."""
    local = datetime.fromtimestamp(start_ms / 1000, settings.tz)
    rel = f"{STATION}/{local:%Y-%m-%d}/{local:%H}/{local:%Y%m%dT%H%M%S}.{start_ms % 1000:03d}.mp4"
    path = volumes.file_path("main", rel)
    with av.open(str(clip)) as source:
        video = source.streams.video[0]
        seg = SegmentFile(path, video)
        step = int(1 / (15 * video.time_base))  # a raw H.264 clip: the frame times are ours to give
        packets = [p for p in source.demux(video) if p.size]
        for i, packet in enumerate(packets):
            seg.write_video(packet, i * step, i * step)
        seg.close()
    return rel, path


def _fragment_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    pos, found = 0, []
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"moof":
            found.append(pos)
        pos += size
    assert found, "no fragment"
    return found


def test_a_killed_runs_files_without_rows_are_indexed_and_a_header_only_one_is_removed(env) -> None:
    settings, db, volumes, clip = env
    now_ms = int(time.time() * 1000)
    whole_rel, whole = _segment(volumes, settings, clip, now_ms - 20_000)
    torn_rel, torn = _segment(volumes, settings, clip, now_ms - 16_000)
    empty_rel, empty = _segment(volumes, settings, clip, now_ms - 12_000)
    # Killed mid-fragment: the header and the first fragments, then a torn one.
    last = _fragment_offsets(torn)[-1]
    with open(torn, "r+b") as f:
        f.truncate(last + 300)
    kept = playable_length(torn)
    assert kept == last
    # Killed before the first fragment ended: the header and half a fragment.
    header = _fragment_offsets(empty)[0]
    with open(empty, "r+b") as f:
        f.truncate(header + 50)
    assert playable_length(empty) == header  # the header only: no frame

    actions = {a.path: a for a in recover_orphans(db, volumes, settings.tz, "node1", [STATION], now_ms)}

    assert actions[whole_rel].kind == "file_without_row" and actions[whole_rel].repaired
    assert actions[torn_rel].kind == "file_without_row" and actions[torn_rel].repaired
    assert actions[empty_rel].kind == "removed_empty" and actions[empty_rel].repaired
    assert not empty.exists()
    assert torn.stat().st_size == kept  # the torn tail is cut, the whole fragments kept
    with db.session() as s:
        rows = {r.path: r for r in s.scalars(select(Segment).where(Segment.station_id == STATION))}
    assert set(rows) == {whole_rel, torn_rel}
    assert rows[whole_rel].state == "complete" and rows[whole_rel].bytes == whole.stat().st_size
    assert 3900 <= rows[whole_rel].duration_ms <= 4100 and rows[whole_rel].frames == 60
    assert rows[torn_rel].bytes == kept and 0 < rows[torn_rel].duration_ms < 4000
    # The index and the disk agree, as `vms recordings check` right after the restart sees them.
    report = check(db, volumes, settings.tz, SimulatedClock(now_ms), "node1")
    assert report.problems == 0, [(a.kind, a.path, a.detail) for a in report.actions]
    assert (report.files, report.rows) == (2, 2)
    # A second start finds nothing left to do.
    assert not recover_orphans(db, volumes, settings.tz, "node1", [STATION], now_ms)


def test_check_leaves_a_file_being_made_alone_while_the_recorder_runs_and_reports_it_once_it_died(env) -> None:
    """While a recorder runs, a file it made a moment ago has no row yet (the index writer commits once a
    second): `vms recordings check` on a recording station must not call that a problem; once no recorder
    of the node runs, the same file is one."""
    settings, db, volumes, clip = env
    now_ms = int(time.time() * 1000)
    rel, _path = _segment(volumes, settings, clip, now_ms - 2_000)
    data_dir = Path(settings.data_dir)
    lock = RecorderLock(data_dir, "node1")
    try:
        report = check(db, volumes, settings.tz, SimulatedClock(now_ms), "node1", data_dir=data_dir)
        assert report.problems == 0, [(a.kind, a.path) for a in report.actions]
    finally:
        lock.release()
    report = check(db, volumes, settings.tz, SimulatedClock(now_ms), "node1", data_dir=data_dir)
    assert [(a.kind, a.path) for a in report.actions] == [("file_without_row", rel)]
    # An old file without a row is a problem even while the recorder runs.
    lock = RecorderLock(data_dir, "node1")
    try:
        report = check(db, volumes, settings.tz, SimulatedClock(now_ms), "node1", data_dir=data_dir,
                       new_file_grace_s=0.0)
        assert [(a.kind, a.path) for a in report.actions] == [("file_without_row", rel)]
    finally:
        lock.release()


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), av.error.InvalidDataError(1094995529, "bad")])
def test_a_file_whose_fragments_cannot_be_read_is_kept_not_removed_as_empty(env, monkeypatch, error) -> None:
    """A read error (a failing disk) or a demuxer error while measuring an orphan, or a segment left growing,
    is not "no footage": the file stays, reported as unreadable, for a later run or for inspection."""
    settings, db, volumes, clip = env
    now_ms = int(time.time() * 1000)
    rel, path = _segment(volumes, settings, clip, now_ms - 20_000)
    grown_rel, grown = _segment(volumes, settings, clip, now_ms - 16_000)
    with db.session() as s:
        s.add(Segment(station_id=STATION, stream="main", node="node1", volume="main", path=grown_rel,
                      start_ms=now_ms - 16_000, end_ms=now_ms - 15_000, duration_ms=1000, bytes=0, frames=0,
                      keyframes=0, state="growing"))
    size = path.stat().st_size

    def failing_probe(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(repair_module, "probe_segment", failing_probe)
    actions = recover_orphans(db, volumes, settings.tz, "node1", [STATION], now_ms)
    actions += recover_growing(db, volumes, "node1", [STATION])
    assert {(a.kind, a.path) for a in actions} == {("unreadable", rel), ("unreadable", grown_rel)}
    assert path.exists() and path.stat().st_size == size and grown.exists()
    with db.session() as s:
        assert s.scalar(select(Segment.state).where(Segment.path == grown_rel)) == "growing"  # for a later run
