"""The database goes away while cameras record: PostgreSQL restarted, killed -9 or down for a minute,
and the SQLite file locked by another process. Recording never stops, index writes wait and catch up,
and at the end the index and the disk agree and every camera's footage is continuous."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc

import pytest
from sqlalchemy import select, text

from tests.conftest import STATIONS_YAML
from tests.ingest_support import RunningWorker, gaps, ingest_settings, segments, wait_until
from tests.private_postgres import PrivatePostgres
from vms.analysis.sink import Resumed
from vms.catalog.loader import load_catalog
from vms.catalog.store import import_catalog
from vms.core.clock import SystemClock
from vms.core.settings import Settings
from vms.db.engine import Database
from vms.db.migrate import upgrade
from vms.db.models import CameraStatus, Gap, Segment
from vms.recording.index import IndexWriter
from vms.recording.repair import check
from vms.recording.volumes import VolumeSet
from vms.simulate import Simulator

pytestmark = pytest.mark.slow  # real processes (simulator, vms serve, PostgreSQL): not for --fast

STATIONS = ["duozhu-town", "duozhu-v01"]
ANALYSIS = ["vms.analysis.observer:make_analysis_observer_factory"]


@pytest.fixture(scope="module")
def sim():
    with Simulator(cameras=2, names=STATIONS, width=320, height=240, fps=15, bitrate_kbps=300, gop=15) as s:
        yield s


@pytest.fixture
def private_pg():
    pg = PrivatePostgres()
    try:
        pg.init()
        url = Settings(database_url=pg.url).db_url
        upgrade(url)
        database = Database(url)
        with database.session() as s:
            import_catalog(s, load_catalog(STATIONS_YAML))
        yield pg, database
        database.dispose()
    finally:
        pg.close()


def files_on_disk(settings: Settings) -> set[str]:
    root = VolumeSet.from_settings(settings).root("main")
    return {p.relative_to(root).as_posix() for p in root.rglob("*.mp4")}


def outage_settings(tmp_path) -> Settings:
    settings = ingest_settings(tmp_path, segment_seconds=3)
    return settings.model_copy(update={"analysis": settings.analysis.model_copy(update={"sink_flush_seconds": 1})})


def status_updated(database: Database) -> dict[str, int]:
    with database.session() as s:
        return {c.station_id: c.updated_ms for c in s.scalars(select(CameraStatus))}


def assert_recorded_through(database: Database, settings: Settings, started: float, stopped: float) -> None:
    """Index == disk, and each camera's footage is one continuous run from start to stop."""
    report = check(database, VolumeSet.from_settings(settings), settings.tz, SystemClock(), "test-node")
    assert report.problems == 0, [(a.kind, a.path, a.detail) for a in report.actions]
    assert report.files == report.rows
    for sid in STATIONS:
        segs = segments(database, sid)
        assert all(s.state == "complete" for s in segs)
        holes = [(a.path, b.start_ms - a.end_ms) for a, b in zip(segs, segs[1:], strict=False)
                 if b.start_ms != a.end_ms]
        assert not holes, f"{sid}: footage is not continuous: {holes}"
        # The one connection lasted from start to stop (less the connect), whatever the database did.
        assert segs[-1].end_ms - segs[0].start_ms >= (stopped - started) * 1000 - 5000
        assert [g.reason for g in gaps(database, sid)] == ["ingest_stopped"]


def test_postgres_restarts_crash_and_a_minute_down_cost_no_footage(sim, tmp_path, private_pg):
    pg, database = private_pg
    settings = outage_settings(tmp_path)
    urls = {sid: sim.urls[sid] for sid in STATIONS}
    started = time.time()
    with RunningWorker(settings, database, urls, ANALYSIS) as w:
        worker, index = w.worker, w.worker.index
        wait_until(lambda: all(len(segments(database, sid)) >= 2 for sid in STATIONS), 30, "recording")

        # 1. A fast restart, then a crash (kill -9 of the postmaster) and a start 3 s later.
        idle = Database(database.url)  # a pool whose connection waits, unused, through the restarts
        with idle.session() as s:
            s.execute(text("select 1"))
        pg.restart()
        time.sleep(2)
        pg.kill9()
        time.sleep(3)
        pg.start()
        # The pool never hands out a connection that died with the server.
        with idle.session() as s:
            assert s.execute(text("select 1")).scalar() == 1
        idle.dispose()

        # 2. Down across a segment cut: the cut's writes (complete + the next segment) wait.
        before = files_on_disk(settings)
        pg.stop()
        wait_until(lambda: len(files_on_disk(settings) - before) >= len(STATIONS), 20, "a cut while down")
        pg.start()

        # 3. Down for a minute: cameras keep recording; the status and the analysis wait.
        assert index.flush(30)
        before, sink = files_on_disk(settings), worker._factories[0].sink
        written_before = sink.written
        pg.stop()
        down = time.monotonic()
        sink.submit(STATIONS[0], [Resumed(SystemClock().now_ms())])  # as a camera's (re)start does
        while time.monotonic() - down < 60:
            time.sleep(5)
            # The worker's own periodic database users must survive this.
            worker.reconcile()
            assert all(w.health(sid).state == "streaming" for sid in STATIONS)
            assert set(worker.sessions) == set(STATIONS)
        assert len(files_on_disk(settings) - before) >= 15 * len(STATIONS), "recording went on"
        assert sink.failures > 0
        # Waiting writes stay bounded: status rows coalesce to one per station, a growing segment's
        # progress to one update; what is left is the segments themselves.
        assert index.backlog()["status"] <= len(STATIONS)
        assert index.backlog()["ops"] <= 3 * len(files_on_disk(settings) - before) + 20, index.backlog()
        pg.start()
        caught_up = time.monotonic()
        assert index.flush(60), "the index caught up"
        catch_up_s = time.monotonic() - caught_up
        after = status_updated(database)
        wait_until(lambda: all(status_updated(database)[sid] > after[sid] for sid in STATIONS), 10,
                   "status published again")
        wait_until(lambda: sink.pending() == 0 and sink.written > written_before, 15, "analysis events written")
        worker.reconcile()
        assert set(worker.sessions) == set(STATIONS)
        time.sleep(2)
    stopped = time.time()
    assert catch_up_s < 10
    assert_recorded_through(database, settings, started, stopped)


def _hold_sqlite_lock(path: str, seconds: float) -> subprocess.Popen:
    """Another process takes the database's write lock (BEGIN EXCLUSIVE and a write) and keeps it."""
    code = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "c.execute(\"UPDATE camera_status SET detail = 'locked' WHERE 0\")\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "c.execute('COMMIT')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, path, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_sqlite_file_locked_by_another_process(sim, tmp_path, settings, db):
    settings = outage_settings(tmp_path)
    urls = {sid: sim.urls[sid] for sid in STATIONS}
    db_path = settings.db_url.split("///", 1)[1]
    started = time.time()
    with RunningWorker(settings, db, urls, ANALYSIS) as w:
        worker, index = w.worker, w.worker.index
        wait_until(lambda: all(len(segments(db, sid)) >= 2 for sid in STATIONS), 30, "recording")
        before = files_on_disk(settings)
        locker = _hold_sqlite_lock(db_path, 10)
        locked = time.monotonic()
        while locker.poll() is None:
            time.sleep(1)
            assert all(w.health(sid).state == "streaming" for sid in STATIONS)
        assert time.monotonic() - locked >= 9
        assert len(files_on_disk(settings) - before) >= 2 * len(STATIONS), "recording went on"
        assert index.flush(30), "the index caught up"
        after = status_updated(db)
        wait_until(lambda: all(status_updated(db)[sid] > after[sid] for sid in STATIONS), 10, "status published")
        worker.reconcile()
        assert set(worker.sessions) == set(STATIONS)
        time.sleep(2)
    stopped = time.time()
    assert_recorded_through(db, settings, started, stopped)


def test_index_writes_wait_compacted_while_postgres_is_down(private_pg):
    """Memory grows with the segments written while the database is down, not with time: a day of
    status updates and progress reports costs what their last values cost."""
    pg, database = private_pg
    index = IndexWriter(database, "outage-node", flush_interval_s=0.1).start()
    pg.stop()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        gap = index.open_gap("duozhu-town", 1_000, "refused", "connection refused")
        for i in range(1, 501):
            index.update_gap(gap, detail=f"connection refused, attempt {i}")
        for k in range(10):
            path = f"duozhu-town/2026-01-01/08/seg{k:03d}.mp4"
            index.open_segment(station_id="duozhu-town", stream="main", volume="main", path=path,
                               start_ms=10_000 * k, end_ms=10_000 * k, duration_ms=0, bytes=0, codec="h264",
                               width=320, height=240, has_audio=False, state="growing")
            for p in range(1, 501):
                index.update_segment("main", path, start_ms=10_000 * k, end_ms=10_000 * k + p * 20,
                                     duration_ms=p * 20, bytes=p * 1000, frames=p, keyframes=p // 15)
            index.update_segment("main", path, start_ms=10_000 * k, end_ms=10_000 * (k + 1), duration_ms=10_000,
                                 bytes=600_000, frames=150, keyframes=10, state="complete")
        for i in range(5000):
            for sid in STATIONS:
                index.put_status(sid, state="streaming", fps=15.0, last_packet_ms=i, updated_ms=i)
        index.close_gap(gap, 2_000)
        # 10,000 status updates and 5,500 row updates: what waits is about one operation per row.
        wait_until(lambda: index.backlog()["ops"] <= 12, 30, "the waiting operations to be compacted")
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert index.backlog()["status"] == len(STATIONS)
    assert grown < 1_000_000, f"{grown} bytes held for 16,000 waiting operations"
    pg.start()
    assert index.flush(30), "written once the database is back"
    index.stop()
    with database.session() as s:
        segs = list(s.scalars(select(Segment).where(Segment.station_id == "duozhu-town").order_by(Segment.start_ms)))
        gap_row = s.scalars(select(Gap).where(Gap.station_id == "duozhu-town")).one()
    assert [(x.state, x.frames, x.bytes, x.end_ms) for x in segs] == [
        ("complete", 150, 600_000, 10_000 * (k + 1)) for k in range(10)]
    assert (gap_row.end_ms, gap_row.detail) == (2_000, "connection refused, attempt 500")
    assert {sid: (t, t) for sid, t in status_updated(database).items()} == {sid: (4999, 4999) for sid in STATIONS}


def test_an_operation_the_database_refuses_does_not_block_the_others(db):
    index = IndexWriter(db, "n").start()
    row = dict(station_id="duozhu-town", stream="main", volume="main", path="duozhu-town/a.mp4", start_ms=0,
               end_ms=1000, duration_ms=1000, bytes=10, codec="h264", width=320, height=240, has_audio=False,
               state="complete")
    index.open_segment(**row)
    assert index.flush(10)
    index.open_segment(**row)  # the same file again: the database refuses it (unique volume + path)
    index.add_closed_gap("duozhu-town", 1000, 2000, "refused")
    index.put_status("duozhu-town", state="backoff", updated_ms=7)
    assert index.flush(10)
    index.stop()
    assert [g.reason for g in gaps(db, "duozhu-town")] == ["refused"]
    assert len(segments(db, "duozhu-town")) == 1
    assert status_updated(db) == {"duozhu-town": 7}
