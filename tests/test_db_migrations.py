"""Migrations run on SQLite and on a real PostgreSQL server, up and down, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from vms.core.settings import Settings
from vms.db.engine import make_engine
from vms.db.migrate import current_revision, downgrade, head_revision, upgrade
from vms.db.models import Base


def test_upgrade_creates_the_schema_the_models_describe(any_db_url):
    url = Settings(database_url=any_db_url).db_url
    assert current_revision(url) is None
    upgrade(url)
    assert current_revision(url) == head_revision()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"
    assert {"stations", "segments", "gaps", "holds", "purge_log", "access_log", "users"} <= tables
    upgrade(url)  # idempotent
    downgrade(url, "base")
    assert current_revision(url) is None


def test_sqlite_runs_in_wal_mode(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
