"""Engine and session factory. SQLite runs in WAL mode with a busy timeout so that the ingest
workers, the API and a cron job can share one file; PostgreSQL is used as is."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from vms.core.files import close_to_others
from vms.core.settings import Settings


def make_engine(url: str, **kwargs) -> Engine:
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[-1].split("?", 1)[0]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            _owner_only(Path(db_path))
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across a process crash in WAL mode (only an OS crash can lose the
            # last transactions); the footage file itself is fsynced before its row commits.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _owner_only(db_path: Path) -> None:
    """The catalogue holds camera credentials: only the service's user may read the SQLite file. It is
    created 0600 here (SQLite gives its -wal and -shm files the database file's mode), and an existing
    file open to group or others is closed."""
    try:
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError:
        return  # SQLite will say what is wrong with the path
    close_to_others(db_path, also_group=True)
    for suffix in ("-wal", "-shm", "-journal"):
        close_to_others(db_path.with_name(db_path.name + suffix), also_group=True)


class Database:
    """An engine plus its session factory, made once per process."""

    def __init__(self, url: str, **engine_kwargs) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.db_url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self.sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()


def rows_matched(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched (Session.execute is typed to return a Result; for such a
    statement it is a CursorResult, which counts them)."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"{type(result).__name__} of a statement that returns rows: no row count")
    return result.rowcount
