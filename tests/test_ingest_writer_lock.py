"""The station writer lock (vms.recording.liveness.StationWriterLock) as the ingest worker uses it: taken
before a station's crash repair and session, never kept with no session behind it, and never a reason
to stop recording when the data directory cannot hold it."""

from __future__ import annotations

import logging

import pytest

from tests.ingest_support import one_station_database
from vms.ingest.worker import IngestWorker, WorkerSpec
from vms.recording.liveness import StationWriterLock, station_lock_path

STATION = "lock-station"
URL = "rtsp://127.0.0.1:9/none"  # nothing answers: the session starts and retries, which is all we need


@pytest.fixture
def worker(tmp_path):
    settings, db = one_station_database(tmp_path, STATION, "writer lock test")
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(
        update={"node": "lock-node", "retry_initial_seconds": 5, "stop_seconds": 3})})
    made = IngestWorker(WorkerSpec(settings, url_overrides={STATION: URL}, only_stations={STATION}), database=db)
    made.index.start()
    try:
        yield made
    finally:
        made._stop_sessions(list(made.sessions))
        made.index.stop(5)
        db.dispose()


def test_a_station_is_recorded_once_its_lock_is_free_and_the_lock_is_held_while_it_is(worker) -> None:
    data_dir = worker.settings.data_dir
    other = StationWriterLock.try_take(data_dir, "lock-node", STATION)
    assert other is not None
    worker.reconcile(initial=True)
    assert STATION not in worker.sessions  # another process writes it
    other.release()
    worker.reconcile()
    assert STATION in worker.sessions
    assert StationWriterLock.try_take(data_dir, "lock-node", STATION) is None  # held by the worker
    worker._stop_sessions([STATION])
    taken = StationWriterLock.try_take(data_dir, "lock-node", STATION)  # released once the session ended
    assert taken is not None
    taken.release()


def test_a_lock_taken_for_a_station_that_did_not_start_is_released(worker, monkeypatch) -> None:
    def broken(*_args, **_kwargs):
        raise RuntimeError("preparing the session failed")

    monkeypatch.setattr(worker, "_make_session", broken)
    with pytest.raises(RuntimeError):
        worker.reconcile(initial=True)
    assert STATION not in worker.sessions
    taken = StationWriterLock.try_take(worker.settings.data_dir, "lock-node", STATION)
    assert taken is not None, "the lock stayed taken with no session behind it"
    taken.release()


def test_a_data_directory_that_cannot_hold_the_lock_does_not_stop_the_recording(worker, caplog) -> None:
    stations_dir = station_lock_path(worker.settings.data_dir, "lock-node", STATION).parent.parent
    stations_dir.parent.mkdir(parents=True, exist_ok=True)
    stations_dir.write_text("not a directory")  # mkdir of the lock's folder fails
    with caplog.at_level(logging.ERROR):
        worker.reconcile(initial=True)
    assert STATION in worker.sessions
    assert "cannot take its writer lock" in caplog.text


def test_lock_files_of_different_nodes_and_stations_never_coincide(tmp_path) -> None:
    pairs = [("a", "b--c"), ("a--b", "c"), ("a b", "c"), ("a_b", "c"), ("节点" * 40, "站点" * 60), ("", "x")]
    paths = [station_lock_path(tmp_path, node, sid) for node, sid in pairs]
    assert len(set(paths)) == len(pairs)
    held = [StationWriterLock.try_take(tmp_path, node, sid) for node, sid in pairs]  # long names included
    assert all(h is not None for h in held)
    for h in held:
        h.release()


def test_a_stopping_worker_keeps_its_stations_until_its_last_writes_are_committed(worker, monkeypatch) -> None:
    """Another worker taking a station before this one's last segment and gap are committed would repair a
    stale row and open a second gap: the locks go only after the index writer has stopped."""
    data_dir = worker.settings.data_dir
    worker.reconcile(initial=True)
    assert STATION in worker.sessions
    seen: list[bool] = []
    real_stop = worker.index.stop

    def stop(timeout: float = 30.0) -> None:
        taken = StationWriterLock.try_take(data_dir, "lock-node", STATION)
        seen.append(taken is None)
        if taken is not None:
            taken.release()
        real_stop(timeout)

    monkeypatch.setattr(worker.index, "stop", stop)
    worker._close()
    assert seen == [True], "the station's lock was free before the index writer had committed"
