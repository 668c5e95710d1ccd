"""The retention sweep: delete footage past its retention period, and evict early under disk pressure.

Deletion is two-phase and crash-safe (after Moonfire NVR):
  1. one short transaction marks a batch of `complete` segments `deleting` (UPDATE ... RETURNING) and
     writes the purge log for exactly those rows; a `growing` segment is never selected;
  2. the files are unlinked (a missing file is fine), their folders fsynced, then the rows deleted.
A crash anywhere leaves rows in `deleting`; every run first finishes those (they are already logged).
Segments overlapping an active hold of their station are never selected, by any reason.
Only one run at a time, across processes and nodes: the `retention` lease in job_locks.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from vms.core.clock import Clock
from vms.core.settings import Settings, VolumeSettings
from vms.db.engine import Database
from vms.db.models import Hold, PurgeLog, Segment, SystemEvent, table_of
from vms.recording.volumes import VolumeSet, fsync_dir
from vms.retention import metrics
from vms.retention.locks import JobLease
from vms.retention.policy import DAY_MS, RetentionPolicy

log = logging.getLogger("vms.retention")

SEG = table_of(Segment)
HOLDS = table_of(Hold)
PURGE = table_of(PurgeLog)
LOCK_NAME = "retention"
BATCH_SEGMENTS = 2000  # rows per mark transaction: short enough not to stall the recorders' writes
DELETE_CHUNK = 500  # ids per DELETE statement
LEASE_MS = 300_000  # renewed every batch; a crashed run's lease lapses after this

# (volume name, volume root) -> (total bytes, free bytes); injectable so tests can fake a full disk.
DiskUsage = Callable[[str, Path], tuple[int, int]]
# (stage, done, total) for a progress bar
Progress = Callable[[str, int, int], None]


def real_disk_usage(_volume: str, root: Path) -> tuple[int, int]:
    root.mkdir(parents=True, exist_ok=True)
    du = shutil.disk_usage(root)
    return du.total, du.free


@dataclass
class Tally:
    segments: int = 0
    bytes: int = 0

    def add(self, segments: int, nbytes: int) -> None:
        self.segments += segments
        self.bytes += nbytes


@dataclass
class PurgeEntry:
    station_id: str
    volume: str
    reason: str
    start_ms: int
    end_ms: int
    segments: int
    bytes: int


@dataclass
class VolumeReport:
    name: str
    total_bytes: int
    free_bytes: int  # measured before the pressure stage
    footage_bytes: int  # segments indexed on the volume before the pressure stage
    limit_bytes: int | None  # the quota in bytes, if any
    need_bytes: int  # what the pressure stage had to free
    critical: bool
    state: str = "ok"  # ok | evicted | stuck
    held_bytes: int = 0
    message: str | None = None


@dataclass
class SweepResult:
    run_id: str
    now_ms: int
    dry_run: bool
    ran: bool = True  # False when another run held the lock
    message: str = ""
    by_reason: dict[str, Tally] = field(default_factory=dict)
    by_volume: dict[str, Tally] = field(default_factory=dict)
    recovered: Tally = field(default_factory=Tally)  # rows left 'deleting' by an interrupted run
    purge: list[PurgeEntry] = field(default_factory=list)
    volumes: list[VolumeReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step, for benchmarks

    @property
    def segments(self) -> int:
        return sum(t.segments for t in self.by_reason.values())

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.by_reason.values())

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        d = asdict(self)
        d["segments"] = self.segments
        d["bytes"] = self.bytes
        return d


@dataclass
class _Marked:
    """Rows of one mark transaction, to be unlinked and deleted."""

    rows: list[tuple[int, str, str]]  # id, volume, path
    bytes: int = 0


def held_clause(seg, now_ms: int) -> ColumnElement[bool]:
    """True for a segment row overlapping an active hold of its station."""
    return exists().where(
        HOLDS.c.station_id == seg.c.station_id,
        HOLDS.c.released_ms.is_(None),
        or_(HOLDS.c.expires_ms.is_(None), HOLDS.c.expires_ms > now_ms),
        HOLDS.c.start_ms < seg.c.end_ms,
        HOLDS.c.end_ms > seg.c.start_ms,
    )


class RetentionSweeper:
    def __init__(self, settings: Settings, database: Database, clock: Clock, *,
                 volumes: VolumeSet | None = None, disk_usage: DiskUsage | None = None,
                 batch_segments: int = BATCH_SEGMENTS, lease_ms: int = LEASE_MS) -> None:
        self.settings = settings
        self.database = database
        self.clock = clock
        self.volumes = volumes or VolumeSet.from_settings(settings)
        self.disk_usage = disk_usage or real_disk_usage
        self.batch_segments = batch_segments
        self.lease_ms = lease_ms

    # ------------------------------------------------------------------ entry point
    def run(self, now_ms: int | None = None, *, dry_run: bool = False, expire: bool = True,
            pressure: bool = True, progress: Progress | None = None) -> SweepResult:
        """One retention run. `now_ms` (default: the clock) decides what is past retention; a dry run
        changes nothing and takes no lock. Returns ran=False if another run holds the lock."""
        started = time.monotonic()
        now = self.clock.now_ms() if now_ms is None else now_ms
        run_id = f"{datetime.fromtimestamp(now / 1000, self.settings.tz):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        result = SweepResult(run_id=run_id, now_ms=now, dry_run=dry_run)
        lease = None
        if not dry_run:
            lease = JobLease(self.database, LOCK_NAME, self.clock, self.lease_ms)
            if not lease.acquire():
                info = lease.current()
                holder = f" (held by {info.holder})" if info else ""
                result.ran = False
                result.message = f"another retention run is in progress{holder}; nothing done"
                metrics.RUNS.labels("busy").inc()
                log.info(result.message)
                return result
        run = _Run(self, result, lease, progress)
        try:
            if not dry_run:
                run.finish_interrupted()
            if expire:
                run.expire()
            if pressure:
                run.relieve_pressure()
        except Exception as exc:
            log.exception("retention run %s failed", run_id)
            result.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            result.purge = sorted(run.entries(), key=lambda e: (e.reason, e.station_id, e.volume))
            if lease is not None:
                try:
                    lease.release()
                except Exception:  # the lease expires by itself; do not hide the run's own outcome
                    log.exception("could not release the retention lease")
        result.seconds = time.monotonic() - started
        if result.errors and not dry_run:
            self._record_failure(result)
        metrics.RUNS.labels("ok" if result.ok else "error").inc()
        if result.ok and not dry_run:
            metrics.LAST_SUCCESS.set(self.clock.now_ms() / 1000)
        return result


    def _record_failure(self, result: SweepResult) -> None:
        """A system event for the alert rules (retention_failed). The database may be why the run
        failed: then the log line and the metric stay the record."""
        try:
            with self.database.session() as s:
                s.add(SystemEvent(at_ms=self.clock.now_ms(), kind="retention_failed", subject=result.run_id[:64],
                                  detail=f"录像清理任务 {result.run_id} 出错：" + "；".join(result.errors)[:1000]))
        except Exception:  # noqa: BLE001
            log.exception("could not record the failure of retention run %s", result.run_id)


class _Run:
    """The state of one run: what was marked, logged and freed so far."""

    def __init__(self, sweeper: RetentionSweeper, result: SweepResult, lease: JobLease | None,
                 progress: Progress | None) -> None:
        self.s = sweeper
        self.db = sweeper.database
        self.result = result
        self.lease = lease
        self.progress = progress or (lambda stage, done, total: None)
        self.now = result.now_ms
        self.dry = result.dry_run
        self.configured = list(sweeper.volumes.volumes)
        self._purge_ids: dict[tuple[str, str, str], int] = {}
        self._entries: dict[tuple[str, str, str], PurgeEntry] = {}
        # bytes a dry run would have freed per volume, so its pressure stage sees the same disk
        self._planned_free: dict[str, int] = {}
        self._planned_ids: set[int] = set()
        self._folders: dict[tuple[str, str], str] = {}  # resolved folders, see _file_path
        # Folders of the last two local days are left alone even when empty: the recorder may be
        # about to create a file in them (rmdir would race its mkdir + open).
        wall = datetime.fromtimestamp(min(self.now, sweeper.clock.now_ms()) / 1000, sweeper.settings.tz)
        self._youngest_removable_day = (wall - timedelta(days=2)).strftime("%Y-%m-%d")

    def entries(self) -> list[PurgeEntry]:
        return list(self._entries.values())

    # ------------------------------------------------------------------ helpers
    def _renew(self) -> None:
        if self.lease is not None and not self.lease.renew():
            raise RuntimeError("the retention lease was lost (a run took longer than its lease); stopped")

    def _timed(self, step: str, started: float) -> None:
        self.result.timings[step] = round(self.result.timings.get(step, 0.0) + time.monotonic() - started, 3)

    def _count(self, reason: str, volume: str, segments: int, nbytes: int) -> None:
        self.result.by_reason.setdefault(reason, Tally()).add(segments, nbytes)
        self.result.by_volume.setdefault(volume, Tally()).add(segments, nbytes)

    def _mark(self, where: list[ColumnElement[bool]], reason_of: Callable[[int], str]) -> _Marked:
        """Phase 1: mark the chosen complete rows 'deleting' and log them, in one transaction."""
        stmt = (
            update(SEG)
            .where(SEG.c.state == "complete", *where)
            .values(state="deleting")
            .returning(SEG.c.id, SEG.c.station_id, SEG.c.volume, SEG.c.path, SEG.c.start_ms, SEG.c.end_ms,
                       SEG.c.bytes)
        )
        t0 = time.monotonic()
        with self.db.session() as s:
            rows = s.execute(stmt).all()
            groups: dict[tuple[str, str, str], list] = {}
            for r in rows:
                groups.setdefault((r.station_id, r.volume, reason_of(r.end_ms)), []).append(r)
            for key, grp in groups.items():
                self._log_purge(s, key, grp)
        self._timed("mark", t0)
        for (station, volume, reason), grp in groups.items():
            nbytes = sum(r.bytes for r in grp)
            self._count(reason, volume, len(grp), nbytes)
            metrics.DELETED_SEGMENTS.labels(reason, volume).inc(len(grp))
            metrics.DELETED_BYTES.labels(reason, volume).inc(nbytes)
            if reason != "expired":
                tz = self.s.settings.tz
                log.warning(
                    "retention: EARLY EVICTION (%s) on volume %s: station %s, %d segments, %d bytes, "
                    "footage %s to %s (retention not yet reached)", reason, volume, station, len(grp), nbytes,
                    datetime.fromtimestamp(min(r.start_ms for r in grp) / 1000, tz).isoformat(),
                    datetime.fromtimestamp(max(r.end_ms for r in grp) / 1000, tz).isoformat())
        return _Marked([(r.id, r.volume, r.path) for r in rows], sum(r.bytes for r in rows))

    def _log_purge(self, s, key: tuple[str, str, str], rows: list) -> None:
        station, volume, reason = key
        start = min(r.start_ms for r in rows)
        end = max(r.end_ms for r in rows)
        nbytes = sum(r.bytes for r in rows)
        entry = self._entries.get(key)
        if entry is None:
            entry = PurgeEntry(station, volume, reason, start, end, len(rows), nbytes)
        else:
            entry = PurgeEntry(station, volume, reason, min(entry.start_ms, start), max(entry.end_ms, end),
                               entry.segments + len(rows), entry.bytes + nbytes)
        if self.dry:
            self._entries[key] = entry
            return
        values = dict(start_ms=entry.start_ms, end_ms=entry.end_ms, segments=entry.segments, bytes=entry.bytes)
        if key in self._purge_ids:
            s.execute(update(PURGE).where(PURGE.c.id == self._purge_ids[key]).values(**values))
        else:
            pid = s.execute(insert(PURGE).values(at_ms=self.now, station_id=station, volume=volume,
                                                 reason=reason, run_id=self.result.run_id, **values)
                            .returning(PURGE.c.id)).scalar_one()
            self._purge_ids[key] = pid
        self._entries[key] = entry

    def _plan(self, rows: Iterable, reason_of: Callable[[int], str]) -> None:
        """Dry run: count and log in memory what _mark would have marked."""
        groups: dict[tuple[str, str, str], list] = {}
        for r in rows:
            groups.setdefault((r.station_id, r.volume, reason_of(r.end_ms)), []).append(r)
        for key, grp in groups.items():
            self._log_purge(None, key, grp)
            nbytes = sum(r.bytes for r in grp)
            self._count(key[2], key[1], len(grp), nbytes)
            self._planned_free[key[1]] = self._planned_free.get(key[1], 0) + nbytes
            self._planned_ids.update(r.id for r in grp)

    def _file_path(self, volume: str, rel: str) -> str:
        """VolumeSet.file_path, resolved once per folder: resolving each of 200,000 paths cost more than
        unlinking them. The file name must be a plain name; unlink never follows a final symlink, so
        checking the folder is enough to keep deletion inside the volume."""
        rel_dir, _, name = rel.rpartition("/")
        if name in ("", ".", "..") or "\0" in name:
            raise ValueError(f"segment path {rel!r} does not name a file")
        key = (volume, rel_dir)
        folder = self._folders.get(key)
        if folder is None:
            folder = self._folders[key] = str(self.s.volumes.file_path(volume, rel_dir))
        return os.path.join(folder, name)

    def _unlink_and_forget(self, marked: _Marked) -> int:
        """Phase 2: unlink the files, fsync their folders, delete the rows, remove emptied folders.
        Rows whose file could not be removed stay 'deleting' and are retried by the next run."""
        if not marked.rows:
            return 0
        t0 = time.monotonic()
        done: list[int] = []
        folders: set[tuple[str, str]] = set()  # (volume, relative hour folder)
        for seg_id, volume, rel in marked.rows:
            try:
                path = self._file_path(volume, rel)
            except (KeyError, ValueError) as exc:
                self.result.errors.append(f"segment {seg_id}: {exc}")
                log.error("retention: cannot resolve segment %s (%s/%s): %s", seg_id, volume, rel, exc)
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # already gone: an interrupted run or an operator removed it
            except OSError as exc:
                self.result.errors.append(f"cannot delete {path}: {exc.strerror}")
                log.error("retention: cannot delete %s: %s", path, exc)
                continue
            done.append(seg_id)
            folders.add((volume, rel.rsplit("/", 1)[0] if "/" in rel else ""))
        self._timed("unlink", t0)
        t0 = time.monotonic()
        # The unlinks must be durable before the rows go, or an OS crash could bring back files
        # that no row points to (never lost footage, but space nobody would reclaim).
        for volume, rel_dir in folders:
            try:
                fsync_dir(self.s.volumes.root(volume) / rel_dir)
            except FileNotFoundError:
                pass
        self._timed("fsync", t0)
        t0 = time.monotonic()
        for i in range(0, len(done), DELETE_CHUNK):
            chunk = done[i:i + DELETE_CHUNK]
            with self.db.session() as s:
                s.execute(delete(SEG).where(SEG.c.id.in_(chunk), SEG.c.state == "deleting"))
        self._timed("delete_rows", t0)
        t0 = time.monotonic()
        self._remove_empty_folders(folders)
        self._timed("rmdir", t0)
        return len(done)

    def _remove_empty_folders(self, folders: set[tuple[str, str]]) -> None:
        """rmdir hour, then day, then station folder while they are empty (rmdir itself refuses a
        folder that is not empty, so a file created meanwhile is never lost)."""
        levels: list[set[tuple[str, str]]] = [set(), set(), set()]  # hour, day, station folders
        for volume, rel_dir in folders:
            parts = rel_dir.split("/")
            if len(parts) != 3 or parts[1] > self._youngest_removable_day:
                continue
            for i, depth in enumerate((3, 2, 1)):
                levels[i].add((volume, "/".join(parts[:depth])))
        for level in levels:
            for volume, rel in sorted(level):
                path = self.s.volumes.root(volume) / rel
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        log.warning("retention: cannot remove empty folder %s: %s", path, exc)

    # ------------------------------------------------------------------ stages
    def finish_interrupted(self) -> None:
        """Complete the deletion of rows an interrupted run left 'deleting' (already in the purge log)."""
        while True:
            with self.db.session() as s:
                rows = s.execute(
                    select(SEG.c.id, SEG.c.volume, SEG.c.path, SEG.c.bytes)
                    .where(SEG.c.state == "deleting", SEG.c.volume.in_(self.configured))
                    .order_by(SEG.c.id).limit(self.s.batch_segments)
                ).all()
            if not rows:
                break
            n = self._unlink_and_forget(_Marked([(r.id, r.volume, r.path) for r in rows]))
            self.result.recovered.add(n, sum(r.bytes for r in rows))
            self._renew()
            if n < len(rows):  # some could not be removed: they stay for the next run, do not loop on them
                break
        if self.result.recovered.segments:
            log.warning("retention: finished deleting %d segments left by an interrupted run",
                        self.result.recovered.segments)

    def expire(self) -> None:
        """Delete, station by station, every complete unheld segment that ended at or before its
        station's cutoff (now - retention days)."""
        t0 = time.monotonic()
        with self.db.session() as s:
            policy = RetentionPolicy.load(s, self.s.settings.retention)
            seen_volumes = [v for (v,) in s.execute(select(SEG.c.volume).distinct())]
        self._timed("plan", t0)
        for w in policy.warnings:
            log.warning(w)
        self.result.warnings.extend(policy.warnings)
        unknown = sorted(set(seen_volumes) - set(self.configured))
        if unknown:
            msg = (f"segments on volumes that are not configured ({', '.join(unknown)}) are not deleted: "
                   "add the volume back to storage.volumes")
            log.error("retention: %s", msg)
            self.result.warnings.append(msg)
        stations = sorted(policy.station_days)
        for i, station in enumerate(stations):
            cutoff = policy.cutoff_ms(station, self.now)
            self._expire_station(station, cutoff)
            self.progress("expire", i + 1, len(stations))

    def _expire_station(self, station: str, cutoff: int) -> None:
        def where(seg) -> list[ColumnElement[bool]]:
            # start_ms <= cutoff is implied by end_ms <= cutoff; it lets the (station_id, start_ms)
            # index bound the scan to the old rows.
            return [seg.c.station_id == station, seg.c.state == "complete", seg.c.start_ms <= cutoff,
                    seg.c.end_ms <= cutoff, seg.c.volume.in_(self.configured), ~held_clause(seg, self.now)]

        if self.dry:
            with self.db.session() as s:
                rows = s.execute(select(SEG.c.id, SEG.c.station_id, SEG.c.volume, SEG.c.start_ms,
                                        SEG.c.end_ms, SEG.c.bytes).where(*where(SEG))).all()
            self._plan(rows, lambda _end: "expired")
            return
        inner = SEG.alias("candidate")
        while True:
            batch = (select(inner.c.id).where(*where(inner)).order_by(inner.c.start_ms)
                     .limit(self.s.batch_segments).scalar_subquery())
            marked = self._mark([SEG.c.id.in_(batch)], lambda _end: "expired")
            if not marked.rows:
                return
            self._unlink_and_forget(marked)
            t0 = time.monotonic()
            self._renew()
            self._timed("lease", t0)
            if len(marked.rows) < self.s.batch_segments:
                return

    def relieve_pressure(self) -> None:
        t0 = time.monotonic()
        for vol in self.s.volumes.volumes.values():
            self.result.volumes.append(self._relieve_volume(vol))
        self._timed("pressure", t0)

    def _footage_bytes(self, volume: str) -> int:
        with self.db.session() as s:
            return int(s.execute(select(func.coalesce(func.sum(SEG.c.bytes), 0))
                                 .where(SEG.c.volume == volume, SEG.c.state != "deleting")).scalar_one())

    def _relieve_volume(self, vol: VolumeSettings) -> VolumeReport:
        total, free = self.s.disk_usage(vol.name, self.s.volumes.root(vol.name))
        footage = self._footage_bytes(vol.name)
        planned = self._planned_free.get(vol.name, 0)
        free += planned
        footage -= planned
        limits = [q for q in (vol.quota_bytes, int(total * vol.quota_percent / 100) if vol.quota_percent else None)
                  if q is not None]
        limit = min(limits) if limits else None

        def need(freed: int) -> int:
            over_quota = footage - freed - limit if limit is not None else 0
            return max(0, over_quota, vol.min_free_bytes - (free + freed))

        def critical_need(freed: int) -> int:
            return max(0, vol.critical_free_bytes - (free + freed))

        report = VolumeReport(vol.name, total, free, footage, limit, need(0), critical_need(0) > 0)
        if report.need_bytes == 0:
            return report
        floor_cutoff = self.now - round(self.s.settings.retention.floor_days * DAY_MS)
        freed = self._evict(vol.name, need, newest_end=floor_cutoff, reason="pressure")
        if critical_need(freed) > 0:
            log.warning("retention: volume %s is critically full (%d bytes free, critical below %d): "
                        "evicting footage newer than the %s-day floor", vol.name, free + freed,
                        vol.critical_free_bytes, self.s.settings.retention.floor_days)
            freed += self._evict(vol.name, lambda f: critical_need(freed + f), newest_end=None,
                                 reason="critical")
        report.state = "evicted" if freed else "ok"
        remaining = need(freed)
        if remaining > 0:
            report.held_bytes = self._held_bytes(vol.name)
            stuck_critical = critical_need(freed) > 0
            report.state = "stuck"
            report.message = (
                f"volume {vol.name} still needs {remaining} bytes freed "
                f"({'critically full' if stuck_critical else 'over quota or below min free'}) but what is "
                f"left is held ({report.held_bytes} bytes under holds), still recording, "
                + ("or in use" if stuck_critical else
                   f"or newer than the {self.s.settings.retention.floor_days}-day floor")
            )
            if stuck_critical:
                log.error("retention: %s", report.message)
                self.result.errors.append(report.message)
                metrics.STUCK_VOLUMES.labels(vol.name).inc()
            else:
                log.warning("retention: %s", report.message)
                self.result.warnings.append(report.message)
        return report

    def _evict(self, volume: str, need: Callable[[int], int], newest_end: int | None, reason: str) -> int:
        """Oldest footage of the volume first, across stations, until need(freed) is 0. Returns bytes freed."""
        floor_cutoff = self.now - round(self.s.settings.retention.floor_days * DAY_MS)

        def reason_of(end_ms: int) -> str:
            return "critical" if end_ms > floor_cutoff else "pressure"

        freed = 0
        after: tuple[int, int] | None = None  # keyset (start_ms, id): a dry run marks nothing
        while need(freed) > 0:
            conds = [SEG.c.volume == volume, SEG.c.state == "complete", ~held_clause(SEG, self.now)]
            if newest_end is not None:
                conds.append(SEG.c.end_ms <= newest_end)
            if after is not None:
                conds.append(or_(SEG.c.start_ms > after[0], and_(SEG.c.start_ms == after[0], SEG.c.id > after[1])))
            with self.db.session() as s:
                rows = s.execute(select(SEG.c.id, SEG.c.station_id, SEG.c.volume, SEG.c.start_ms, SEG.c.end_ms,
                                        SEG.c.bytes).where(*conds).order_by(SEG.c.start_ms, SEG.c.id)
                                 .limit(self.s.batch_segments)).all()
            if not rows:
                break
            after = (rows[-1].start_ms, rows[-1].id)
            chosen = []
            pending = 0
            for r in rows:
                if need(freed + pending) <= 0:
                    break
                if r.id in self._planned_ids:
                    continue
                chosen.append(r)
                pending += r.bytes
            if self.dry:
                self._plan(chosen, reason_of)
                freed += pending
                continue
            marked = self._mark([SEG.c.id.in_([r.id for r in chosen])], reason_of)
            freed += marked.bytes
            self._unlink_and_forget(marked)
            self._renew()
        if freed:
            log.warning("retention: evicted %d bytes early on volume %s (%s)", freed, volume, reason)
        return freed

    def _held_bytes(self, volume: str) -> int:
        with self.db.session() as s:
            return int(s.execute(select(func.coalesce(func.sum(SEG.c.bytes), 0))
                                 .where(SEG.c.volume == volume, held_clause(SEG, self.now))).scalar_one())
