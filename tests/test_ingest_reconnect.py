"""The reconnect policy (vms/ingest/backoff.py): fast after network failures, slow after refused
credentials. Unit tests with a seeded random source, its settings, and the index writer's fault rows;
the real-camera tests are in tests/test_ingest_reconnect_rtsp.py."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from vms.core.errors import ConfigError
from vms.core.settings import IngestSettings, load_settings
from vms.db.models import Fault, Gap, Station
from vms.ingest.backoff import ReconnectPolicy
from vms.recording.index import IndexWriter
from vms.recording.recorder import StreamRecorder
from vms.recording.volumes import VolumeSet

NETWORK_REASONS = ("unreachable", "refused", "stalled", "stream_ended", "bad_stream")


def policy(seed: int = 7, **kw) -> ReconnectPolicy:
    return ReconnectPolicy.from_settings(IngestSettings(**kw), rng=random.Random(seed))


def test_defaults_are_the_camera_friendly_ones():
    s = IngestSettings()
    assert (s.retry_initial_seconds, s.retry_max_seconds) == (1, 5)
    assert (s.auth_quick_tries, s.auth_backoff_seconds, s.auth_backoff_max_seconds) == (3, 600, 3600)


@pytest.mark.parametrize("reason", NETWORK_REASONS)
def test_network_waits_double_from_one_second_to_five_with_jitter(reason):
    p = policy()
    waits = [p.failed(reason).delay_s for _ in range(12)]
    for i, w in enumerate(waits):
        step = min(5.0, 2.0**i)
        assert step / 2 <= w <= step, (i, w)
    assert max(waits) <= 5.0 and min(waits[4:]) >= 2.5


def test_network_waits_stay_capped_for_a_camera_away_for_months():
    # 2.0 ** 1024 overflows a float: the first policy crashed the camera's thread after ~1024 failures.
    p = policy()
    for _ in range(5000):
        assert p.failed("unreachable").delay_s <= 5.0


def test_a_three_hour_outage_is_retried_every_few_seconds_never_more_than_five():
    p = policy()
    t, attempts, longest = 0.0, 0, 0.0
    while t < 3 * 3600:
        wait = p.failed("unreachable").delay_s
        longest = max(longest, wait)
        t += wait
        attempts += 1
    # About one attempt per 3.75 s (the mean of 2.5-5 s): 139 cameras make ~37 connects a second.
    assert longest <= 5.0
    assert 3 * 3600 / 5.0 <= attempts <= 3 * 3600 / 2.5 + 10


def test_time_an_attempt_spent_waiting_counts_towards_the_wait():
    a, b = policy(seed=3), policy(seed=3)
    for _ in range(5):
        a.failed("unreachable")
        b.failed("unreachable")
    full = a.failed("unreachable").delay_s
    assert b.failed("unreachable", waited_s=1.0).delay_s == pytest.approx(full - 1.0)
    # A connect that timed out after 10 s is followed by the next at once.
    assert b.failed("unreachable", waited_s=10.0).delay_s == 0.0


def test_cameras_failing_together_do_not_retry_together():
    policies = [policy(seed=i) for i in range(139)]
    for _ in range(6):
        waits = [p.failed("unreachable").delay_s for p in policies]
    assert len({round(w, 2) for w in waits}) > 100
    assert max(waits) - min(waits) >= 2.0  # spread over 2.5-5 s


def test_a_stable_connection_starts_the_network_schedule_over():
    p = policy()
    for _ in range(8):
        p.failed("stalled")
    p.connection_lasted(30)  # shorter than stable_seconds: no reset
    assert p.failed("stalled").delay_s >= 2.5
    p.connection_lasted(61)
    assert p.failed("stalled").delay_s <= 1.0


def test_refused_credentials_get_quick_tries_then_long_growing_capped_waits():
    p = policy()
    first, second = p.failed("auth_failed"), p.failed("auth_failed")
    assert not first.auth_backoff and not second.auth_backoff
    assert first.delay_s <= 1.0 and second.delay_s <= 2.0  # the quick tries are on the network schedule
    longs = [p.failed("auth_failed") for _ in range(8)]
    assert all(r.auth_backoff for r in longs)
    # Never sooner than the step (a lock-out window must pass), at most 20 % later (spread).
    for r, step in zip(longs, [600, 1200, 2400, 3600, 3600, 3600, 3600, 3600], strict=True):
        assert step <= r.delay_s <= step * 1.2, (step, r.delay_s)
    for _ in range(3000):  # a typo nobody fixes for months: still capped, no overflow
        assert p.failed("auth_failed").delay_s <= 3600 * 1.2


@pytest.mark.parametrize("tries", [1, 3, 5])
def test_quick_tries_setting_is_the_number_of_refusals_before_the_long_wait(tries):
    p = policy(auth_quick_tries=tries)
    answers = [p.failed("auth_failed").auth_backoff for _ in range(tries + 1)]
    assert answers == [False] * (tries - 1) + [True, True]


def test_accepted_credentials_give_quick_tries_again_and_network_failures_do_not():
    p = policy()
    for _ in range(3):
        p.failed("auth_failed")
    # The camera went away meanwhile: that says nothing about its credentials.
    assert not p.failed("unreachable").auth_backoff
    assert p.failed("auth_failed").auth_backoff
    p.accepted()  # e.g. the camera's password was reset to what the URL says
    assert not p.failed("auth_failed").auth_backoff


def test_reconnect_settings_old_names_still_read_and_bad_values_named(tmp_path):
    cfg = tmp_path / "vms.yaml"
    cfg.write_text("ingest:\n  backoff_initial_seconds: 0.5\n  backoff_max_seconds: 4\n")
    s = load_settings(cfg, env={})
    assert (s.ingest.retry_initial_seconds, s.ingest.retry_max_seconds) == (0.5, 4)
    with pytest.raises(ConfigError, match="backoff_max_seconds is the old name of retry_max_seconds"):
        load_settings(cfg, env={"VMS_INGEST__RETRY_MAX_SECONDS": "3"})
    cfg.write_text("ingest:\n  auth_backoff_seconds: 600\n  auth_backoff_max_seconds: 60\n  auth_quick_tries: 0\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env={})
    text = "\n".join(e.value.problems)
    assert "vms.yaml:4: ingest.auth_quick_tries" in text
    cfg.write_text("ingest:\n  auth_backoff_seconds: 600\n  auth_backoff_max_seconds: 60\n")
    with pytest.raises(ConfigError, match="auth_backoff_max_seconds .60. is below auth_backoff_seconds .600."):
        load_settings(cfg, env={})


def test_index_writer_keeps_one_open_fault_per_kind_and_closes_only_that_kind(any_db):
    db = any_db
    with db.session() as s:
        for sid in ("baihua-v01", "baihua-v02"):
            s.add(Station(id=sid, name=sid, level="village", town="白花镇"))
    index = IndexWriter(db, "t").start()
    try:
        index.open_fault("baihua-v01", "auth_failed", "critical", 1000, "refused (401)")
        # A second run (or session) raising it again: the open row continues, with the newer detail.
        index.open_fault("baihua-v01", "auth_failed", "critical", 5000, "refused (403)")
        index.open_fault("baihua-v02", "auth_failed", "critical", 2000, "refused (401)")
        with db.session() as s:
            s.add(Fault(station_id="baihua-v01", kind="covered", severity="major", start_ms=900))
        index.flush()
        index.close_fault("baihua-v01", "auth_failed", 500)  # a clock step back: never before the start
        index.close_fault("baihua-v03", "auth_failed", 9000)  # nothing open: nothing happens
        index.flush()
        with db.session() as s:
            rows = [(f.station_id, f.kind, f.start_ms, f.end_ms, f.detail)
                    for f in s.scalars(select(Fault).order_by(Fault.station_id, Fault.kind))]
    finally:
        index.stop()
    assert rows == [("baihua-v01", "auth_failed", 1000, 1000, "refused (403)"),
                    ("baihua-v01", "covered", 900, None, None),
                    ("baihua-v02", "auth_failed", 2000, None, "refused (401)")]


class CountingIndex(IndexWriter):
    """The real index writer, counting the gap updates it is asked for."""

    updates = 0

    def update_gap(self, token: int, **values) -> None:
        self.updates += 1
        super().update_gap(token, **values)


def test_a_camera_failing_the_same_way_for_hours_writes_its_gap_once(db, settings, clock):
    index = CountingIndex(db, "t").start()
    try:
        rec = StreamRecorder("baihua-v01", VolumeSet.from_settings(settings), settings.tz, index, clock)
        for _ in range(1000):  # ~1 hour of attempts every 3.75 s
            rec.note_failure("refused", "connection refused")
            clock.advance(3.75)
        rec.note_failure("refused", "the camera has no such stream (404)")
        rec.note_failure("unreachable", "timed out")
        index.flush()
        with db.session() as s:
            rows = [(g.reason, g.detail, g.end_ms is None) for g in s.scalars(select(Gap).order_by(Gap.id))]
    finally:
        index.stop()
    assert index.updates == 1  # the changed detail only
    assert rows == [("refused", "the camera has no such stream (404)", False), ("unreachable", "timed out", True)]
