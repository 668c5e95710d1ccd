"""The retention sweep on real small files and a real index (SQLite and PostgreSQL for the core cases)."""

from __future__ import annotations

import os
import threading
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, insert, select, update

from vms.catalog.loader import load_catalog
from vms.catalog.store import import_catalog
from vms.core.clock import SimulatedClock
from vms.core.settings import Settings
from vms.db.engine import Database
from vms.db.models import Hold, JobLock, PurgeLog, Segment
from vms.retention import sweeper as sweeper_module
from vms.retention.holds import add_hold, release_hold
from vms.retention.locks import JobLease
from vms.retention.sweeper import RetentionSweeper

REPO = Path(__file__).resolve().parents[1]
TZ = ZoneInfo("Asia/Shanghai")
DAY = 86_400_000
MIN = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
NOW = T0 + 16 * DAY  # after 16 days of footage
A, B, C = "pingshan-town", "pingshan-v01", "baihua-town"  # C is in another town (白花镇)


def rel_path(station: str, start_ms: int) -> str:
    local = datetime.fromtimestamp(start_ms / 1000, TZ)
    return f"{station}/{local:%Y-%m-%d}/{local:%H}/{local:%Y%m%dT%H%M%S}.{start_ms % 1000:03d}.mp4"


class Footage:
    """Real tiny segment files at the right paths, with their rows in the index."""

    def __init__(self, db: Database, roots: dict[str, Path]) -> None:
        self.db = db
        self.roots = roots

    def add_many(self, specs: list[tuple[str, int, int]], volume: str = "main", state: str = "complete",
                 nbytes: int = 100) -> list[int]:
        rows = []
        for station, start, dur in specs:
            rel = rel_path(station, start)
            p = self.roots[volume] / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"\0" * nbytes)
            rows.append(dict(station_id=station, stream="main", node="test", volume=volume, path=rel,
                             start_ms=start, end_ms=start + dur, duration_ms=dur, bytes=nbytes,
                             has_audio=False, frames=0, keyframes=0, state=state))
        with self.db.session() as s:
            s.execute(insert(Segment.__table__), rows)
            ids = s.execute(select(Segment.id).where(Segment.path.in_([r["path"] for r in rows]))
                            .order_by(Segment.start_ms)).scalars().all()
        return list(ids)

    def every(self, station: str, start: int, end: int, step: int, dur: int | None = None, **kw) -> list[int]:
        return self.add_many([(station, t, dur or step) for t in range(start, end, step)], **kw)

    def remaining(self) -> dict[int, tuple[str, int, int, str]]:
        with self.db.session() as s:
            return {r.id: (r.station_id, r.start_ms, r.end_ms, r.state) for r in s.execute(
                select(Segment.id, Segment.station_id, Segment.start_ms, Segment.end_ms, Segment.state))}

    def files(self, volume: str = "main") -> set[str]:
        root = self.roots[volume]
        return {str(p.relative_to(root)) for p in root.rglob("*.mp4")}

    def paths(self) -> set[str]:
        with self.db.session() as s:
            return set(s.execute(select(Segment.path)).scalars())


def make_settings(tmp_path: Path, **retention) -> Settings:
    return Settings.model_validate({
        "data_dir": str(tmp_path / "data"),
        "storage": {"volumes": [{"name": "main", "path": str(tmp_path / "recordings"), "min_free_bytes": 0,
                                 "critical_free_bytes": 0}]},
        "retention": retention,
    })


def roomy_disk(_volume: str, _root: Path) -> tuple[int, int]:
    return 10**12, 10**12 // 2


def import_stations(db: Database) -> None:
    with db.session() as s:
        import_catalog(s, load_catalog(REPO / "config" / "stations.yaml"))


@pytest.fixture
def sixteen_days(any_db, tmp_path):
    """16 days of footage of three stations, one 1-hour segment every hour."""
    import_stations(any_db)
    footage = Footage(any_db, {"main": tmp_path / "recordings"})
    for st in (A, B, C):
        footage.every(st, T0, NOW, 60 * MIN)
    return footage


def sweep(settings, db, now=NOW, disk=roomy_disk, batch_segments=2000, **run_kw):
    sweeper = RetentionSweeper(settings, db, SimulatedClock(now), disk_usage=disk, batch_segments=batch_segments)
    return sweeper.run(now, **run_kw)


def test_expiry_deletes_exactly_what_is_past_retention(sixteen_days, any_db, tmp_path):
    footage = sixteen_days
    settings = make_settings(tmp_path)
    cutoff = NOW - 15 * DAY
    # A growing segment from long ago (a recorder that died) is never deleted; neither is footage
    # ending one millisecond after the cutoff.
    growing = footage.add_many([(A, T0 + 5 * MIN, 10 * MIN)], state="growing")[0]
    straddling = footage.add_many([(B, cutoff - 10 * MIN + 7, 10 * MIN - 6)])[0]
    before = footage.remaining()
    expected_gone = {i for i, (_st, _s, end, state) in before.items() if state == "complete" and end <= cutoff}
    assert len(expected_gone) == 3 * 24  # one day of each of the three stations, boundary segment included
    assert any(before[i][2] == cutoff for i in expected_gone)

    result = sweep(settings, any_db)

    assert result.ok and result.ran, result.errors
    after = footage.remaining()
    assert set(after) == set(before) - expected_gone
    assert growing in after and straddling in after
    assert result.by_reason["expired"].segments == len(expected_gone)
    assert result.by_reason["expired"].bytes == 100 * len(expected_gone)
    # files went with their rows; nothing else was touched
    assert footage.files() == footage.paths()
    # the first local day's folders are gone for B and C; A keeps the one with the growing segment
    first_day = datetime.fromtimestamp(T0 / 1000, TZ).strftime("%Y-%m-%d")
    root = tmp_path / "recordings"
    assert not (root / C / first_day).exists()
    assert (root / A / first_day).exists()
    assert sorted(p.name for p in (root / A / first_day).iterdir()) == ["08"]
    assert (root / C).is_dir()  # still has newer footage
    # purge log: one row per station, reason expired, exact range and totals, one run id
    with any_db.session() as s:
        log = s.execute(select(PurgeLog).order_by(PurgeLog.station_id)).scalars().all()
        assert [r.station_id for r in log] == sorted([A, B, C])
        assert {r.run_id for r in log} == {result.run_id}
        for r in log:
            mine = [before[i] for i in expected_gone if before[i][0] == r.station_id]
            assert (r.reason, r.volume, r.segments, r.bytes) == ("expired", "main", len(mine), 100 * len(mine))
            assert (r.start_ms, r.end_ms) == (min(m[1] for m in mine), max(m[2] for m in mine))
            assert r.at_ms == NOW
        assert s.scalar(select(func.count()).select_from(JobLock)) == 0  # the lease was released
    # a second run at the same time finds nothing to do
    again = sweep(settings, any_db)
    assert again.segments == 0 and footage.remaining() == after


@pytest.mark.parametrize("days", [15, 30])
def test_station_and_town_overrides(db, tmp_path, days):
    footage = Footage(db, {"main": tmp_path / "recordings"})
    now = T0 + 40 * DAY
    for st in (A, B, C):
        footage.every(st, T0, now, 6 * 60 * MIN)  # one 6-hour segment every 6 hours, 40 days
    # town of C (白花镇) keeps 10 days, station B keeps 20; A and the rest use the global value
    settings = make_settings(tmp_path, days=days, per_town={"白花镇": 10}, per_station={B: 20})
    result = sweep(settings, db, now=now)
    assert result.ok
    for station, keep in ((A, days), (B, 20), (C, 10)):
        starts = [s for (st, s, _e, _state) in footage.remaining().values() if st == station]
        assert min(starts) == now - keep * DAY, station  # the segment ending exactly at the cutoff went


def test_unknown_override_names_warn_but_expiry_still_runs(db, tmp_path):
    footage = Footage(db, {"main": tmp_path / "recordings"})
    footage.every(A, T0, NOW, 60 * MIN)
    settings = make_settings(tmp_path, per_town={"不存在镇": 30}, per_station={"no-such-station": 30})
    result = sweep(settings, db)
    assert result.ok and result.segments == 24
    assert any("不存在镇" in w for w in result.warnings)
    assert any("no-such-station" in w for w in result.warnings)


def test_holds_protect_and_lapse(sixteen_days, any_db, tmp_path):
    footage = sixteen_days
    settings = make_settings(tmp_path)
    with any_db.session() as s:
        # active: A's footage 02:10-03:00 UTC on day 0 -> keeps the 02:00-03:00 segment
        add_hold(s, station_id=A, start_ms=T0 + 130 * MIN, end_ms=T0 + 180 * MIN, reason="投诉 2026-001",
                 created_by="tester", now_ms=NOW - DAY)
        # active with a future expiry: B's whole first day
        add_hold(s, station_id=B, start_ms=T0, end_ms=T0 + DAY, reason="case 7", created_by="t",
                 now_ms=NOW - DAY, expires_ms=NOW + 1)
        # expired and released holds no longer protect C
        add_hold(s, station_id=C, start_ms=T0, end_ms=T0 + DAY, reason="old", created_by="t",
                 now_ms=NOW - 2 * DAY, expires_ms=NOW - DAY)
        released = add_hold(s, station_id=C, start_ms=T0, end_ms=T0 + DAY, reason="done", created_by="t",
                            now_ms=NOW - 2 * DAY)
        release_hold(s, released.id, by="t", now_ms=NOW - DAY)
    result = sweep(settings, any_db)
    assert result.ok
    left_old = sorted((st, start) for st, start, end, _ in footage.remaining().values() if end <= NOW - 15 * DAY)
    assert left_old == [(A, T0 + 120 * MIN)] + [(B, T0 + i * 60 * MIN) for i in range(24)]
    assert result.by_reason["expired"].segments == 23 + 24
    # once B's hold expires, the next sweep removes that day too
    later = sweep(settings, any_db, now=NOW + 1)
    assert later.by_reason["expired"].segments == 24


def test_dry_run_changes_nothing_and_predicts_the_real_run(sixteen_days, any_db, tmp_path):
    footage = sixteen_days
    settings = make_settings(tmp_path)
    before_rows, before_files = footage.remaining(), footage.files()
    dry = sweep(settings, any_db, dry_run=True)
    assert dry.ok and dry.dry_run and dry.segments == 3 * 24
    assert footage.remaining() == before_rows and footage.files() == before_files
    with any_db.session() as s:
        assert s.scalar(select(func.count()).select_from(PurgeLog)) == 0
    real = sweep(settings, any_db)
    assert real.segments == dry.segments and real.bytes == dry.bytes
    assert [(e.station_id, e.segments, e.start_ms, e.end_ms) for e in dry.purge] == \
        [(e.station_id, e.segments, e.start_ms, e.end_ms) for e in real.purge]


class SimulatedCrash(BaseException):
    """Stands for kill -9 / power loss: not an Exception, so nothing in the sweeper catches it."""


def test_crash_between_phases_is_completed_by_the_next_run(sixteen_days, any_db, tmp_path, monkeypatch):
    footage = sixteen_days
    settings = make_settings(tmp_path)
    before = footage.remaining()
    expected_gone = {i for i, (_st, _s, end, _state) in before.items() if end <= NOW - 15 * DAY}
    real_unlink = os.unlink
    calls = {"n": 0}

    def dying_unlink(path):
        calls["n"] += 1
        if calls["n"] > 15:  # the first batch of 10 completes, the second dies after 5 unlinks
            raise SimulatedCrash()
        real_unlink(path)

    monkeypatch.setattr(sweeper_module.os, "unlink", dying_unlink)
    with pytest.raises(SimulatedCrash):
        sweep(settings, any_db, batch_segments=10)
    monkeypatch.setattr(sweeper_module.os, "unlink", real_unlink)
    with any_db.session() as s:
        deleting = set(s.scalars(select(Segment.id).where(Segment.state == "deleting")))
        # the crashed process's lease is still there (a real crash runs no cleanup) but has lapsed
        s.execute(insert(JobLock.__table__).values(name="retention", holder="dead:1:x", acquired_ms=NOW - 10 * MIN,
                                                   expires_ms=NOW - MIN))
    assert len(deleting) == 10  # the second batch was marked (and logged) when the crash came
    assert {before[i][3] for i in deleting} == {"complete"}
    on_disk = footage.files()
    assert sum(1 for i in deleting if rel_path(before[i][0], before[i][1]) in on_disk) == 5  # 5 unlinked

    result = sweep(settings, any_db, batch_segments=10)

    assert result.ok, result.errors
    assert result.recovered.segments == 10
    assert set(footage.remaining()) == set(before) - expected_gone
    assert footage.files() == footage.paths()
    with any_db.session() as s:
        logged = s.scalar(select(func.sum(PurgeLog.segments)))
        runs = set(s.scalars(select(PurgeLog.run_id)))
    assert logged == len(expected_gone)  # every segment logged exactly once across both runs
    assert len(runs) == 2


def test_concurrent_runs_never_double_delete(sixteen_days, any_db, tmp_path):
    """A run started while another is in progress finds the lease taken and does nothing. The second run
    starts once the first is inside its work (held there until the second has returned): with both let
    loose at once, the first could finish before the second looked, and the row updates alone already
    keep two overlapping runs from deleting a segment twice, so the test passed without the lease."""
    footage = sixteen_days
    settings = make_settings(tmp_path)
    before = footage.remaining()
    expected_gone = {i for i, (_st, _s, end, _state) in before.items() if end <= NOW - 15 * DAY}
    first_inside, second_done = threading.Event(), threading.Event()
    results, failures = {}, []

    def hold_first_run(stage: str, done: int, total: int) -> None:
        if not first_inside.is_set():  # after the first station's expiry: the run holds the lease
            first_inside.set()
            second_done.wait(60)

    def worker(name: str, progress=None):
        db = Database(any_db.url)  # its own engine and connections, like a second process
        try:
            if name == "second":
                assert first_inside.wait(60), "the first run never started"
            results[name] = RetentionSweeper(settings, db, SimulatedClock(NOW), disk_usage=roomy_disk,
                                             batch_segments=10).run(NOW, progress=progress)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            if name == "second":
                second_done.set()
            db.dispose()

    threads = [threading.Thread(target=worker, args=("first", hold_first_run)),
               threading.Thread(target=worker, args=("second",))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    first, second = results["first"], results["second"]
    assert first.ran and first.ok, first.errors
    assert not second.ran and "another retention run is in progress" in second.message, second.message
    assert second.segments == 0 and first.segments == len(expected_gone)
    assert set(footage.remaining()) == set(before) - expected_gone
    with any_db.session() as s:
        assert s.scalar(select(func.sum(PurgeLog.segments))) == len(expected_gone)


def test_lease_is_exclusive_until_it_lapses(any_db):
    clock = SimulatedClock(NOW)
    first = JobLease(any_db, "retention", clock, lease_ms=60_000)
    second = JobLease(any_db, "retention", clock, lease_ms=60_000)
    assert first.acquire()
    assert not second.acquire()
    assert first.acquire()  # re-entrant for the holder
    clock.advance(59)
    assert first.renew()
    clock.advance(59)
    assert not second.acquire()  # renewed: still first's
    clock.advance(2)
    assert second.acquire()  # lapsed: taken over
    assert not first.renew()
    first.release()  # releasing a lease that is no longer ours does not touch the new holder's
    assert second.current().holder == second.holder
    second.release()
    assert second.current() is None


def test_held_footage_is_never_deleted_even_when_asked_to_expire_everything(db, tmp_path):
    footage = Footage(db, {"main": tmp_path / "recordings"})
    footage.every(A, T0, T0 + DAY, 60 * MIN)
    with db.session() as s:
        add_hold(s, station_id=A, start_ms=T0, end_ms=T0 + DAY, reason="r", created_by="t", now_ms=T0)
        s.execute(update(Hold).values(expires_ms=None))
    result = sweep(make_settings(tmp_path, days=1), db, now=T0 + 100 * DAY)
    assert result.ok and result.segments == 0 and len(footage.remaining()) == 24
