"""The segment and gap index, written by one background thread per process.

Camera threads never touch the database: they enqueue operations, which this thread applies in
order, batched into at most one short transaction a second (`commit_interval_s`) unless someone waits for
them (flush). Order matters and is kept: a
segment's file is fsynced by the camera thread *before* it enqueues `complete_segment`, so a row
marked complete always describes bytes on disk.

If the database is unavailable (PostgreSQL restarting or down, the SQLite file locked past its busy
timeout) the operations wait in memory and are retried with backoff; footage keeps going to disk, and
when the database answers again the backlog is written in order, in transactions of at most BATCH
operations. While they wait, they are compacted so that memory grows with the footage written, not with
time: status rows keep only the latest values per station (they never queue at all), and the progress
updates of a segment fold into its one waiting insert or update (about 1 KB per segment written while
the database is down). A killed process loses what was waiting; crash repair (repair.py) indexes those
files on the next start. An operation the database *refuses* (not an outage) is isolated and dropped
with a logged error, so that it cannot block the ones after it forever.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, case, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from vms.db.engine import Database
from vms.db.models import CameraStatus, Fault, Gap, OnlineInterval, Segment, table_of

log = logging.getLogger(__name__)
SEGMENTS = table_of(Segment)

GAP_REASONS = (
    "unreachable", "refused", "auth_failed", "stalled", "stream_ended", "unsupported_codec",
    "no_video", "bad_stream", "resolution_changed", "clock_jump", "disk_error", "ingest_stopped",
    "ingest_hung",  # a camera thread (or its worker) stopped making progress; the worker was restarted
)
BATCH = 500  # operations per transaction
OUTAGE_LOG_S = 60.0  # while the database stays away, one log line this often


@dataclass
class _Op:
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    token: int | None = None
    done: threading.Event | None = None


class IndexWriter:
    """Applies index operations in order on a background thread; tokens stand for rows not yet inserted."""

    def __init__(self, database: Database, node: str, flush_interval_s: float = 0.5,
                 commit_interval_s: float = 1.0) -> None:
        self.db = database
        self.node = node
        self.flush_interval_s = flush_interval_s
        # Operations come one by one from ~70 camera threads (a segment's progress every few seconds
        # each): committed as they came, that was ~15 transactions a second per worker, and the
        # session, statement and commit around each cost a fifth of the worker's Python time (py-spy at
        # 139 cameras). Gathered for up to a second, they are one transaction with a few executemany.
        # A flush() does not wait.
        self.commit_interval_s = commit_interval_s
        self._urgent = threading.Event()  # a flush() waits: commit without pacing
        self._last_commit = 0.0  # monotonic
        self._queue: queue.Queue[_Op] = queue.Queue()
        # Camera status: only the newest values per station matter, so they never queue.
        self._status_lock = threading.Lock()
        self._statuses: dict[str, dict[str, Any]] = {}
        self._backlog: list[_Op] = []  # taken from the queue, not yet committed (writer thread only)
        self._failing_since: float | None = None
        self._last_outage_log = 0.0
        self._tokens = itertools.count(1)
        self._ids: dict[int, int] = {}  # token -> row id (gaps and online intervals still in use)
        # (station, stream) -> token of its newest gap, kept by the writer thread: opening a camera's next
        # gap retires the previous token (see _retire_tokens), else _ids grew by two ids per reconnect for
        # the life of the worker (months).
        self._newest_gap: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self.failures = 0
        self.last_error: Exception | None = None
        self._statements: dict[tuple, Any] = {}  # compiled once per shape

    def start(self) -> IndexWriter:
        self._thread.start()
        return self

    # --- operations (thread-safe, non-blocking) ---
    def open_segment(self, **row: Any) -> None:
        self._queue.put(_Op("open_segment", row))

    def update_segment(self, volume: str, path: str, **values: Any) -> None:
        self._queue.put(_Op("update_segment", {"volume": volume, "path": path, "values": values}))

    def open_gap(self, station_id: str, start_ms: int, reason: str, detail: str | None = None,
                 stream: str = "main") -> int:
        token = next(self._tokens)
        self._queue.put(_Op("open_gap", dict(station_id=station_id, stream=stream, start_ms=start_ms,
                                              reason=reason, detail=detail), token))
        return token

    def adopt_row(self, row_id: int) -> int:
        """A token for a row that already exists (a gap left open by a previous run)."""
        token = next(self._tokens)
        self._ids[token] = row_id
        return token

    def update_gap(self, token: int, **values: Any) -> None:
        self._queue.put(_Op("update_gap", {"values": values}, token))

    def close_gap(self, token: int, end_ms: int) -> None:
        self._queue.put(_Op("update_gap", {"values": {"end_ms": end_ms}}, token))

    def add_closed_gap(self, station_id: str, start_ms: int, end_ms: int, reason: str,
                       detail: str | None = None, stream: str = "main") -> None:
        self._queue.put(_Op("open_gap", dict(station_id=station_id, stream=stream, start_ms=start_ms,
                                              end_ms=end_ms, reason=reason, detail=detail)))

    def open_online(self, station_id: str, start_ms: int) -> int:
        token = next(self._tokens)
        self._queue.put(_Op("open_online", dict(station_id=station_id, start_ms=start_ms), token))
        return token

    def close_online(self, token: int, end_ms: int) -> None:
        self._queue.put(_Op("close_online", {"end_ms": end_ms}, token))

    def open_fault(self, station_id: str, kind: str, severity: str, start_ms: int, detail: str | None = None) -> None:
        """A camera fault of this kind holds: a new open row, unless one of the kind is already open for
        the station (left by an earlier run or session), which then only gets the new detail. Kinds
        written here must differ from the analysis' (vms.analysis.sink owns those rows)."""
        self._queue.put(_Op("open_fault", dict(station_id=station_id, kind=kind, severity=severity,
                                               start_ms=start_ms, detail=detail)))

    def close_fault(self, station_id: str, kind: str, end_ms: int) -> None:
        """The fault of this kind has ended: close the station's open rows of the kind (none is fine)."""
        self._queue.put(_Op("close_fault", dict(station_id=station_id, kind=kind, end_ms=end_ms)))

    def put_status(self, station_id: str, **values: Any) -> None:
        with self._status_lock:
            self._statuses.setdefault(station_id, {}).update(values)

    def call(self, fn: Callable[[Session], None]) -> None:
        """Run fn(session) in order with the other operations (for rare, custom writes)."""
        self._queue.put(_Op("call", {"fn": fn}))

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything enqueued so far is committed."""
        ev = threading.Event()
        self._queue.put(_Op("barrier", done=ev))
        self._urgent.set()  # after the put: the writer clears it before it takes from the queue
        return ev.wait(timeout)

    def backlog(self) -> dict[str, int]:
        """What waits to be written: operations (queued and taken) and stations with a status."""
        with self._status_lock:
            statuses = len(self._statuses)
        return {"ops": self._queue.qsize() + len(self._backlog), "status": statuses}

    def stop(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout)

    # --- the writer thread ---
    def _run(self) -> None:
        while True:
            self._take()
            if (self._backlog or self._statuses) and self._failing_since is None:
                self._pace()
            if self._backlog or self._statuses:
                if not self._write_backlog():
                    if self._failing_since is not None:
                        self._compact()
                    self._stop.wait(min(5.0, 0.2 * 2 ** min(self.failures, 5)))
                    continue
            if self._stop.is_set() and self._queue.empty() and not self._backlog and not self._statuses:
                return

    def _pace(self) -> None:
        """Wait until commit_interval_s has passed since the last commit, gathering what comes meanwhile;
        not when a flush() waits (a barrier taken, or asked for during the wait), nor when stopping."""
        wait = self._last_commit + self.commit_interval_s - time.monotonic()
        if wait <= 0 or self._stop.is_set() or any(op.kind == "barrier" for op in self._backlog):
            return
        self._urgent.wait(wait)
        self._urgent.clear()  # before the take: a flush() that sets it later is seen by the next round
        self._take()

    def _take(self) -> None:
        """Move queued operations to the backlog: wait up to flush_interval_s for the first one when
        there is nothing to do; take up to BATCH of them normally, and all of them during an outage."""
        try:
            if not self._backlog:
                self._backlog.append(self._queue.get(timeout=self.flush_interval_s))
            limit = BATCH if self._failing_since is None else None
            while limit is None or len(self._backlog) < limit:
                self._backlog.append(self._queue.get_nowait())
        except queue.Empty:
            pass

    def _write_backlog(self) -> bool:
        """Commit the backlog in order, BATCH operations per transaction; False if the database is
        unavailable (what is left waits)."""
        while self._backlog or self._statuses:
            chunk = self._backlog[:BATCH]
            with self._status_lock:
                statuses, self._statuses = self._statuses, {}
            if self._apply(chunk, statuses):
                del self._backlog[:len(chunk)]
                self._last_commit = time.monotonic()
                continue
            unavailable = _unavailable(self.last_error)
            if unavailable or chunk:
                with self._status_lock:  # newer values, put meanwhile, win
                    for station_id, values in statuses.items():
                        self._statuses[station_id] = {**values, **self._statuses.get(station_id, {})}
            else:
                log.error("camera status of %d stations dropped, the database refuses it: %s", len(statuses),
                          self.last_error)
            if unavailable:
                self._note_outage()
                return False
            # The database answered and refused an operation (e.g. a row that an earlier commit, whose
            # answer was lost, already inserted): find it, so that it does not block the others.
            if not self._apply_singly(len(chunk)):
                self._note_outage()
                return False
        if self._failing_since is not None:
            log.warning("index: database available again after %.0f s; the waiting operations are written",
                        time.monotonic() - self._failing_since)
            self._failing_since = None
        return True

    def _note_outage(self) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = self._last_outage_log = now
            log.error("index write failed, will retry (footage keeps being recorded): %s", self.last_error)
        elif now - self._last_outage_log >= OUTAGE_LOG_S:
            self._last_outage_log = now
            log.error("index: database unavailable for %.0f s, %d operations waiting: %s",
                      now - self._failing_since, len(self._backlog), self.last_error)

    def _compact(self) -> None:
        """Fold the waiting updates of a row into the waiting operation that inserts or updates it first:
        later values move earlier, never the other way, so a barrier (flush) still waits for everything
        enqueued before it. Nothing is folded across a custom call, which may touch any row."""
        kept: list[_Op] = []
        first: dict[tuple, _Op] = {}  # row key -> the first waiting operation that writes that row
        for op in self._backlog:
            key = _row_key(op)
            if key is None:
                if op.kind == "call":
                    first.clear()
                kept.append(op)
                continue
            target = first.get(key)
            if target is not None and op.kind in ("update_segment", "update_gap"):
                values = op.args["values"]
                if target.kind in ("open_segment", "open_gap"):
                    target.args.update(values)
                else:
                    target.args["values"] = {**target.args["values"], **values}
                continue
            first[key] = op
            kept.append(op)
        self._backlog = kept

    def _apply(self, ops: list[_Op], statuses: dict[str, dict] | None = None) -> bool:
        new_ids: dict[int, int] = {}
        try:
            with self.db.session() as s:
                i = 0
                while i < len(ops):
                    op = ops[i]
                    if op.kind in ("open_segment", "update_segment"):
                        # Consecutive segment writes of the same shape go as one executemany: building
                        # and compiling a statement per row cost more CPU than the recording itself.
                        j = i + 1
                        while j < len(ops) and ops[j].kind == op.kind and _shape(ops[j]) == _shape(op):
                            j += 1
                        self._segment_batch(s, ops[i:j])
                        i = j
                        continue
                    if op.kind != "barrier":
                        self._apply_one(s, op, new_ids)
                    i += 1
                if statuses:
                    self._upsert_statuses(s, statuses)
        except Exception as exc:  # noqa: BLE001 - keep the operations, retry: footage is on disk already
            self.last_error = exc
            self.failures += 1
            return False
        self.failures = 0
        self.last_error = None
        self._ids.update(new_ids)
        self._retire_tokens(ops)
        for op in ops:
            if op.kind == "barrier" and op.done is not None:
                op.done.set()
        return True

    def _retire_tokens(self, ops: list[_Op]) -> None:
        """Forget the row ids of tokens no operation can use any more (after their batch committed): an
        online interval once closed; a gap once its camera's next gap is opened (a recorder updates,
        closes or re-opens only its current gap and the one before its open segment, and opens a new
        gap only when no segment is open)."""
        for op in ops:
            if op.kind == "close_online" and op.token is not None:
                self._ids.pop(op.token, None)
            elif op.kind == "open_gap" and op.token is not None:
                key = (op.args["station_id"], op.args["stream"])
                previous = self._newest_gap.get(key)
                self._newest_gap[key] = op.token
                if previous is not None:
                    self._ids.pop(previous, None)

    def _apply_singly(self, count: int) -> bool:
        """Apply the first `count` waiting operations one by one; drop (logged) one the database refuses;
        False, with the rest still waiting, at the first that fails because the database went away."""
        for _ in range(count):
            op = self._backlog[0]
            if not self._apply([op]) and _unavailable(self.last_error):
                return False
            if self.last_error is not None:
                log.error("index operation %s dropped, the database refuses it: %s", op.kind, self.last_error)
            del self._backlog[0]
        return True

    def _row_id(self, token: int | None, new_ids: dict[int, int]) -> int | None:
        if token is None:
            return None
        return new_ids.get(token, self._ids.get(token))

    def _segment_batch(self, s: Session, ops: list[_Op]) -> None:
        shape = _shape(ops[0])
        stmt = self._statements.get(shape)
        if ops[0].kind == "open_segment":
            if stmt is None:
                stmt = self._statements[shape] = insert(SEGMENTS)
            s.execute(stmt, [{"node": self.node, **op.args} for op in ops])
            return
        if stmt is None:
            stmt = self._statements[shape] = (
                update(SEGMENTS).where(SEGMENTS.c.volume == bindparam("_volume"), SEGMENTS.c.path == bindparam("_path"))
                .values({k: bindparam(k) for k in shape[1]}))
        s.execute(stmt, [{"_volume": op.args["volume"], "_path": op.args["path"], **op.args["values"]} for op in ops])

    def _apply_one(self, s: Session, op: _Op, new_ids: dict[int, int]) -> None:
        a = op.args
        if op.kind == "open_gap":
            new_ids_val = s.execute(insert(Gap).values(node=self.node, **a).returning(Gap.id)).scalar_one()
            if op.token is not None:
                new_ids[op.token] = new_ids_val
        elif op.kind == "update_gap":
            row_id = self._row_id(op.token, new_ids)
            if row_id is not None:
                s.execute(update(Gap).where(Gap.id == row_id).values(**a["values"]))
        elif op.kind == "open_online":
            rid = s.execute(insert(OnlineInterval).values(node=self.node, **a)
                            .returning(OnlineInterval.id)).scalar_one()
            if op.token is not None:  # (open_online always has one)
                new_ids[op.token] = rid
        elif op.kind == "close_online":
            row_id = self._row_id(op.token, new_ids)
            if row_id is not None:
                # Never before its start: the clock may have stepped back while the camera was online.
                end = case((OnlineInterval.start_ms > a["end_ms"], OnlineInterval.start_ms), else_=a["end_ms"])
                s.execute(update(OnlineInterval).where(OnlineInterval.id == row_id).values(end_ms=end))
        elif op.kind == "open_fault":
            open_row = s.scalar(select(Fault.id).where(
                Fault.station_id == a["station_id"], Fault.kind == a["kind"], Fault.end_ms.is_(None)).limit(1))
            if open_row is None:
                s.execute(insert(Fault).values(**a))
            elif a["detail"] is not None:
                s.execute(update(Fault).where(Fault.id == open_row).values(detail=a["detail"]))
        elif op.kind == "close_fault":
            # Never before the row's start (a clock step back, or a start dated to the first refusal).
            s.execute(update(Fault).where(Fault.station_id == a["station_id"], Fault.kind == a["kind"],
                                          Fault.end_ms.is_(None))
                      .values(end_ms=case((Fault.start_ms > a["end_ms"], Fault.start_ms), else_=a["end_ms"])))
        elif op.kind == "call":
            a["fn"](s)

    def _upsert_statuses(self, s: Session, statuses: dict[str, dict]) -> None:
        by_shape: dict[tuple[str, ...], list[dict]] = {}
        for station_id, values in statuses.items():
            row = {**values, "node": self.node, "station_id": station_id}
            by_shape.setdefault(tuple(sorted(row)), []).append(row)
        for keys, rows in by_shape.items():
            stmt = self._statements.get(("status", keys))
            if stmt is None:
                dialect = s.get_bind().dialect.name
                ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(table_of(CameraStatus))
                stmt = self._statements[("status", keys)] = ins.on_conflict_do_update(
                    index_elements=["station_id"], set_={k: ins.excluded[k] for k in keys if k != "station_id"})
            s.execute(stmt, rows)


def _unavailable(exc: BaseException | None) -> bool:
    """Whether an error means the database cannot be reached or used right now (down, restarting,
    connection lost, SQLite file locked) rather than that it refused the statement."""
    if isinstance(exc, (OperationalError, PoolTimeoutError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _row_key(op: _Op) -> tuple | None:
    """The row an operation writes, for operations that may be folded together while they wait."""
    if op.kind == "open_segment":
        return ("segment", op.args["volume"], op.args["path"])
    if op.kind == "update_segment":
        return ("segment", op.args["volume"], op.args["path"])
    if op.kind in ("open_gap", "update_gap") and op.token is not None:
        return ("gap", op.token)
    return None


def _shape(op: _Op) -> tuple:
    if op.kind == "open_segment":
        return (op.kind, tuple(sorted(op.args)))
    return (op.kind, tuple(sorted(op.args["values"])))
