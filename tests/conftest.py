"""Shared fixtures: fresh databases (SQLite and a real PostgreSQL), settings in a temp dir, clocks, and
Chromium for the browser tests (tests/browser_support.py)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.browser_support import browser  # noqa: F401 - the fixture, for every test module
from vms.catalog.loader import load_catalog
from vms.catalog.store import import_catalog
from vms.core.clock import SimulatedClock
from vms.core.settings import Settings
from vms.db.engine import Database
from vms.db.migrate import upgrade

REPO = Path(__file__).resolve().parents[1]
STATIONS_YAML = REPO / "config" / "stations.yaml"


def _postgres_server_url() -> str:
    url = os.environ.get("VMS_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("VMS_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh, which starts PostgreSQL")
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database on the real server; dropped afterwards."""
    server = _postgres_server_url()
    name = f"vms_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server.replace("postgresql:", "postgresql+psycopg:", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.replace("/postgres?", f"/{name}?", 1)
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_url(request, tmp_path) -> str:
    """Runs a test once on SQLite and once on PostgreSQL: an empty database URL (not migrated)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vms.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def any_db(any_db_url) -> Iterator[Database]:
    """A migrated database on each backend."""
    url = Settings(database_url=any_db_url).db_url
    upgrade(url)
    db = Database(url)
    yield db
    db.dispose()


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Defaults with data, footage and database inside tmp_path."""
    return Settings.model_validate(
        {"data_dir": str(tmp_path / "data"),
         "storage": {"volumes": [{"name": "main", "path": str(tmp_path / "recordings")}]}}
    )


@pytest.fixture(scope="session")
def catalogue_db_template(tmp_path_factory) -> Path:
    """A migrated SQLite file with the shipped catalogue, made once per run: each test's `db` starts from a
    copy (migrating and importing the 139 stations for every test took ~0.5 s each, most of the fast tier)."""
    path = tmp_path_factory.mktemp("db-template") / "vms.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    database = Database(url)
    with database.session() as s:
        import_catalog(s, load_catalog(STATIONS_YAML))
    with database.engine.connect() as c:
        c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, which is copied
    database.dispose()
    return path


@pytest.fixture
def db(settings, catalogue_db_template) -> Iterator[Database]:
    """A migrated SQLite database with the full station catalogue imported."""
    path = Path(settings.db_url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(catalogue_db_template, path)
    database = Database(settings.db_url)
    yield database
    database.dispose()


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock()


@pytest.fixture(scope="session")
def simulator_cache(tmp_path_factory) -> Path:
    """The simulator's encoded clips, shared by the run's tests (its default, data/ under the working
    directory, is the repository)."""
    return tmp_path_factory.mktemp("simulate-cache")


@pytest.fixture(scope="session", autouse=True)
def _hypothesis_files_in_the_temp_dir(tmp_path_factory) -> None:
    """Hypothesis (under schemathesis) keeps caches in .hypothesis/ of the working directory, even with its
    example database off: tests write under the run's temporary directory, never into the repository."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))


# The full run spreads test files over a few workers (scripts/test.sh: pytest-xdist, --dist loadfile, one
# file per worker at a time, so a module's running `vms serve` is started once). Files are handed out in
# collection order, so the longest ones go first: the compressed soak alone takes five minutes, and
# started last it would be the whole run's tail.
LONGEST_FILES_FIRST = (
    "test_soak.py", "test_gb28181_serve.py", "test_outage_database.py", "test_ingest_health.py",
    "test_ingest_recording.py",
    "test_ingest_crash.py", "test_outage_clock.py", "test_api_limits_serve.py", "test_outage_volume.py",
    "test_ingest_reconnect_rtsp.py", "test_console_browser.py", "test_console_next_browser.py",
    "test_recording_audio.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


# The fast tier (scripts/test.sh --fast sets VMS_TEST_FAST) must stay under a minute: a test in it that
# takes longer than this is named at the end of the run, to be marked slow or made faster.
FAST_TIER_TEST_SECONDS = 5.0
_durations: dict[str, float] = {}


def pytest_runtest_logreport(report) -> None:
    if os.environ.get("VMS_TEST_FAST"):
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    slow = sorted(((t, n) for n, t in _durations.items() if t > FAST_TIER_TEST_SECONDS), reverse=True)
    if slow:
        terminalreporter.write_sep("=", f"fast tier: tests over {FAST_TIER_TEST_SECONDS:g} s (mark them slow?)")
        for t, nodeid in slow:
            terminalreporter.write_line(f"{t:6.1f} s  {nodeid}")


# Fixtures of the API tests (tests/test_api_*.py) live beside their helpers.
from test_api_helpers import api, clip  # noqa: E402, F401
