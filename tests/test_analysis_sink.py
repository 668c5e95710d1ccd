"""The analysis sink writes intervals and hourly activity on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from vms.analysis.detector import ActivityFound, FaultClosed, FaultOpened, FaultSeverity, Sampled, StateChanged
from vms.analysis.sink import AnalysisSink, Resumed
from vms.db.models import ActivityEpisode, ActivityHourly, Fault, Segment, Station, StationState

H = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, an hour boundary


def _station(db, sid="hd-test-1"):
    with db.session() as s:
        s.add(Station(id=sid, name="测试站", level="village", town="平山街道"))
    return sid


def test_sink_writes_states_faults_and_activity(any_db):
    sid = _station(any_db)
    sink = AnalysisSink(any_db)
    sink.submit(sid, [Sampled(T0, "closed", {}), StateChanged(T0, "closed"),
                      FaultOpened("covered", "major", T0 + 500, "scene match 0.1")])
    sink.submit(sid, [StateChanged(T0 + H // 2, "open"), FaultSeverity("covered", "critical"),
                      FaultClosed("covered", T0 + 900),
                      ActivityFound(T0 + H - 60_000, T0 + H + 30_000, 1.8),
                      ActivityFound(T0 + H + 100_000, T0 + H + 110_000, 1.4)])
    assert sink.pending() == 7  # samples are not stored
    assert sink.flush() == 7 and sink.pending() == 0
    with any_db.session() as s:
        states = [(r.state, r.start_ms - T0, r.end_ms and r.end_ms - T0)
                  for r in s.scalars(select(StationState).order_by(StationState.start_ms))]
        assert states == [("closed", 0, H // 2), ("open", H // 2, None)]
        faults = [(f.kind, f.severity, f.start_ms - T0, f.end_ms - T0) for f in s.scalars(select(Fault))]
        assert faults == [("covered", "critical", 500, 900)]
        assert s.query(ActivityEpisode).count() == 2
        hourly = {(r.hour_ms - T0) // H: (r.episodes, r.active_ms) for r in s.scalars(select(ActivityHourly))}
        # The first episode straddles the hour: counted once where it starts, time split across both.
        assert hourly == {0: (1, 60_000), 1: (1, 30_000 + 10_000)}


def test_sink_keeps_events_while_the_database_fails(any_db, tmp_path):
    sid = _station(any_db)
    sink = AnalysisSink(any_db)
    sink.submit("no-such-station", [StateChanged(T0, "open")])  # violates the foreign key
    assert sink.flush() == 0 and sink.failures == 1 and sink.pending() == 1
    sink._pending.clear()
    sink.submit(sid, [StateChanged(T0, "open")])
    assert sink.flush() == 1


def test_resume_closes_what_a_dead_process_left_open_at_its_last_footage(any_db):
    sid = _station(any_db)
    with any_db.session() as s:
        s.add(StationState(station_id=sid, state="open", start_ms=T0, end_ms=None))
        s.add(Fault(station_id=sid, kind="blurred", severity="minor", start_ms=T0 + 10, end_ms=None))
        # The ingest's own fault (refused credentials): not the analysis' to end.
        s.add(Fault(station_id=sid, kind="auth_failed", severity="critical", start_ms=T0 + 20, end_ms=None))
        s.add(Segment(station_id=sid, node="n1", volume="main", path="a.mp4", start_ms=T0, end_ms=T0 + 60_000))
    sink = AnalysisSink(any_db)
    sink.submit(sid, [Resumed(T0 + H)])
    sink.flush()
    with any_db.session() as s:
        assert [r.end_ms - T0 for r in s.scalars(select(StationState))] == [60_000]
        faults = {r.kind: r.end_ms and r.end_ms - T0 for r in s.scalars(select(Fault))}
        assert faults == {"blurred": 60_000, "auth_failed": None}
