"""The segment and gap index, written by one background thread per process.

Camera threads never touch the database: they enqueue operations, which this thread applies in
order, batched into one short transaction about twice a second. Order matters and is kept: a
segment's file is fsynced by the camera thread *before* it enqueues `complete_segment`, so a row
marked complete always describes bytes on disk. If the database is briefly unavailable the queue
waits and retries; footage keeps going to disk, and crash repair reconciles the rest.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, case, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vms.db.engine import Database
from vms.db.models import CameraStatus, Fault, Gap, OnlineInterval, Segment

log = logging.getLogger(__name__)
SEGMENTS = Segment.__table__

GAP_REASONS = (
    "unreachable", "refused", "auth_failed", "stalled", "stream_ended", "unsupported_codec",
    "no_video", "bad_stream", "resolution_changed", "clock_jump", "disk_error", "ingest_stopped",
    "ingest_hung",  # a camera thread (or its worker) stopped making progress; the worker was restarted
)


@dataclass
class _Op:
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    token: int | None = None
    done: threading.Event | None = None


class IndexWriter:
    """Applies index operations in order on a background thread; tokens stand for rows not yet inserted."""

    def __init__(self, database: Database, node: str, flush_interval_s: float = 0.5) -> None:
        self.db = database
        self.node = node
        self.flush_interval_s = flush_interval_s
        self._queue: queue.Queue[_Op] = queue.Queue()
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
        self._queue.put(_Op("status", {"station_id": station_id, "values": values}))

    def call(self, fn: Callable[[Session], None]) -> None:
        """Run fn(session) in order with the other operations (for rare, custom writes)."""
        self._queue.put(_Op("call", {"fn": fn}))

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything enqueued so far is committed."""
        ev = threading.Event()
        self._queue.put(_Op("barrier", done=ev))
        return ev.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout)

    # --- the writer thread ---
    def _run(self) -> None:
        pending: list[_Op] = []
        while True:
            try:
                pending.append(self._queue.get(timeout=self.flush_interval_s))
                deadline_batch = 500
                while len(pending) < deadline_batch:
                    pending.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if pending:
                if self._apply(pending):
                    pending = []
                elif self.failures >= 3:
                    # Keep failing: find the operation that cannot apply (e.g. a row that an earlier,
                    # unacknowledged commit already inserted) so it does not block the others.
                    pending = self._apply_singly(pending)
                    if pending:
                        self._stop.wait(min(5.0, 0.2 * 2 ** min(self.failures, 5)))
                    continue
                else:
                    self._stop.wait(min(5.0, 0.2 * 2 ** min(self.failures, 5)))
                    continue
            if self._stop.is_set() and self._queue.empty():
                return

    def _apply(self, ops: list[_Op]) -> bool:
        barriers = [op for op in ops if op.kind == "barrier"]
        statuses: dict[str, dict] = {}
        new_ids: dict[int, int] = {}
        try:
            with self.db.session() as s:
                i = 0
                while i < len(ops):
                    op = ops[i]
                    if op.kind == "status":
                        statuses.setdefault(op.args["station_id"], {}).update(op.args["values"])
                    elif op.kind in ("open_segment", "update_segment"):
                        # Consecutive segment writes of the same shape go as one executemany: building
                        # and compiling a statement per row cost more CPU than the recording itself.
                        j = i + 1
                        while j < len(ops) and ops[j].kind == op.kind and _shape(ops[j]) == _shape(op):
                            j += 1
                        self._segment_batch(s, ops[i:j])
                        i = j
                        continue
                    elif op.kind != "barrier":
                        self._apply_one(s, op, new_ids)
                    i += 1
                self._upsert_statuses(s, statuses)
        except Exception as exc:  # noqa: BLE001 - keep the queue, retry: footage is on disk already
            self.last_error = exc
            self.failures += 1
            log.error("index write failed (%d ops, attempt %d), will retry: %s", len(ops), self.failures, exc)
            return False
        self.failures = 0
        self.last_error = None
        self._ids.update(new_ids)
        self._retire_tokens(ops)
        for op in barriers:
            op.done.set()
        return True

    def _retire_tokens(self, ops: list[_Op]) -> None:
        """Forget the row ids of tokens no operation can use any more (after their batch committed): an
        online interval once closed; a gap once its camera's next gap is opened (a recorder updates,
        closes or re-opens only its current gap and the one before its open segment, and opens a new
        gap only when no segment is open)."""
        for op in ops:
            if op.kind == "close_online":
                self._ids.pop(op.token, None)
            elif op.kind == "open_gap" and op.token is not None:
                key = (op.args["station_id"], op.args["stream"])
                previous = self._newest_gap.get(key)
                self._newest_gap[key] = op.token
                if previous is not None:
                    self._ids.pop(previous, None)

    def _apply_singly(self, ops: list[_Op]) -> list[_Op]:
        """Apply operations one by one; drop one the database rejects as invalid (logged), stop at the
        first that fails for another reason (the database is down) and return it with the rest."""
        for i, op in enumerate(ops):
            if self._apply([op]):
                continue
            if isinstance(self.last_error, IntegrityError):
                log.error("index operation %s dropped: %s", op.kind, self.last_error)
                continue
            return ops[i:]
        return []

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
            new_ids[op.token] = rid
        elif op.kind == "close_online":
            row_id = self._row_id(op.token, new_ids)
            if row_id is not None:
                s.execute(update(OnlineInterval).where(OnlineInterval.id == row_id).values(end_ms=a["end_ms"]))
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
                ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(CameraStatus.__table__)
                stmt = self._statements[("status", keys)] = ins.on_conflict_do_update(
                    index_elements=["station_id"], set_={k: ins.excluded[k] for k in keys if k != "station_id"})
            s.execute(stmt, rows)


def _shape(op: _Op) -> tuple:
    if op.kind == "open_segment":
        return (op.kind, tuple(sorted(op.args)))
    return (op.kind, tuple(sorted(op.args["values"])))
