"""A named lease in the job_locks table, so two processes (or nodes) never run one job at once.

Taking the lease is one atomic statement on both SQLite and PostgreSQL: an INSERT of the row (the
primary key makes a second INSERT fail), else an UPDATE that only succeeds when the lease has expired
or is already ours. A holder that dies leaves a lease that expires after `lease_ms`; a long job
renews its lease between batches.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from vms.core.clock import Clock
from vms.db.engine import Database, rows_matched
from vms.db.models import JobLock, table_of

LOCKS = table_of(JobLock)


@dataclass(frozen=True)
class LeaseInfo:
    holder: str
    acquired_ms: int
    expires_ms: int


def make_holder() -> str:
    """host:pid:random, unique per lease attempt, readable in `job_locks` when something is stuck."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobLease:
    def __init__(self, database: Database, name: str, clock: Clock, lease_ms: int = 300_000,
                 holder: str | None = None) -> None:
        self.database = database
        self.name = name
        self.clock = clock
        self.lease_ms = lease_ms
        self.holder = holder or make_holder()

    def acquire(self) -> bool:
        now = self.clock.now_ms()
        try:
            with self.database.session() as s:
                s.execute(insert(LOCKS).values(name=self.name, holder=self.holder, acquired_ms=now,
                                               expires_ms=now + self.lease_ms))
            return True
        except IntegrityError:
            pass
        with self.database.session() as s:
            res = s.execute(
                update(LOCKS)
                .where(LOCKS.c.name == self.name, or_(LOCKS.c.expires_ms <= now, LOCKS.c.holder == self.holder))
                .values(holder=self.holder, acquired_ms=now, expires_ms=now + self.lease_ms)
            )
            return rows_matched(res) == 1

    def renew(self) -> bool:
        """Extend our lease; False if it is no longer ours (it expired and someone else took it)."""
        now = self.clock.now_ms()
        with self.database.session() as s:
            res = s.execute(
                update(LOCKS)
                .where(LOCKS.c.name == self.name, LOCKS.c.holder == self.holder)
                .values(expires_ms=now + self.lease_ms)
            )
            return rows_matched(res) == 1

    def release(self) -> None:
        with self.database.session() as s:
            s.execute(delete(LOCKS).where(LOCKS.c.name == self.name, LOCKS.c.holder == self.holder))

    def current(self) -> LeaseInfo | None:
        with self.database.session() as s:
            row = s.execute(select(LOCKS.c.holder, LOCKS.c.acquired_ms, LOCKS.c.expires_ms)
                            .where(LOCKS.c.name == self.name)).first()
        return LeaseInfo(*row) if row else None
