"""/api/health and the recording gauges of /metrics: counts judged from evidence, 503 only when the
recorder itself fails cameras (hung, or its node silent)."""

from __future__ import annotations

from sqlalchemy import select
from test_api_helpers import add_segments, login

from vms.db.models import CameraStatus, Station
from vms.recording.volumes import VolumeSet

A, B = "pingshan-town", "pingshan-v01"


def _set(db, sid: str, **values) -> None:
    with db.session() as s:
        row = s.get(CameraStatus, sid)
        for k, v in values.items():
            setattr(row, k, v)


def _health(api) -> tuple[int, dict]:
    cache = api.app.state.ctx.extras.get("status_cache")
    if cache is not None:
        cache.invalidate()
    r = api.get("/api/health")  # no login: a load balancer or `docker HEALTHCHECK` asks
    return r.status_code, r.json()


def test_health_is_ok_degraded_or_failing_by_what_the_evidence_says(api, db, clock, settings, clip):
    now = clock.now_ms()
    with db.session() as s:
        for st in s.scalars(select(Station)):
            st.enabled = st.id in (A, B)
        for sid in (A, B):
            s.add(CameraStatus(station_id=sid, node="n1", state="streaming", fps=15.0, updated_ms=now,
                               last_packet_ms=now - 1000))
    for sid in (A, B):
        add_segments(db, VolumeSet.from_settings(settings), clip, sid, now - 8_000, 2, settings.tz,
                     state_last="growing")
    code, body = _health(api)
    assert (code, body["status"]) == (200, "ok"), body
    assert body["cameras"]["enabled"] == 2 and body["cameras"]["recording"] == 2
    assert body["cameras"]["not_recording"] == 0 and body["cameras"]["stuck"] == 0
    assert A not in str(body)  # counts only

    # The background recompute hangs (a table lock, a half-open connection): the list it would
    # replace grows old, and health must not keep answering from it.
    cache = api.app.state.ctx.extras["status_cache"]
    with cache._lock:  # the refresh cannot run, as when its queries never return
        clock.advance(45)
        r = api.get("/api/health")
        assert r.status_code == 503 and r.json()["status_age_s"] >= 45, r.json()
    now = clock.now_ms()
    for sid in (A, B):
        _set(db, sid, updated_ms=now, last_packet_ms=now - 1000)
    add_segments(db, VolumeSet.from_settings(settings), clip, A, now - 4_000, 1, settings.tz, state_last="growing")
    add_segments(db, VolumeSet.from_settings(settings), clip, B, now - 4_000, 1, settings.tz, state_last="growing")
    code, body = _health(api)
    assert (code, body["status"]) == (200, "ok"), body

    _set(db, B, state="backoff", reason="auth_failed", last_packet_ms=now - 60_000)
    code, body = _health(api)
    assert (code, body["status"]) == (200, "degraded") and body["cameras"]["not_recording"] == 1
    assert body["cameras"]["by_state"] == {"backoff": 1, "streaming": 1}

    # The node says streaming, but nothing was recorded for 30 s: not recording (the watchdog's
    # business), not yet the recorder's failure.
    _set(db, B, state="streaming", reason=None, last_packet_ms=now - 30_000)
    code, body = _health(api)
    assert (code, body["status"]) == (200, "degraded") and body["cameras"]["by_state"]["stalled"] == 1

    _set(db, B, state="hung", reason="hung")
    code, body = _health(api)
    assert (code, body["status"]) == (503, "failing") and body["cameras"]["stuck"] == 1

    # Its recording node stopped reporting without saying it stopped the camera.
    _set(db, B, state="streaming", last_packet_ms=now - 100_000, updated_ms=now - 100_000)
    code, body = _health(api)
    assert (code, body["status"]) == (503, "failing") and body["cameras"]["by_state"]["offline"] == 1

    admin = login(api, "admin")
    metrics = api.get("/metrics", headers=admin).text
    assert "vms_cameras_stuck 1.0" in metrics and "vms_cameras_not_recording 1.0" in metrics
    assert "vms_cameras_enabled 2.0" in metrics

    # A stopped camera of a disabled station is neither.
    with db.session() as s:
        s.get(Station, B).enabled = False
    code, body = _health(api)
    assert (code, body["status"]) == (200, "ok") and body["cameras"]["enabled"] == 1


def test_a_camera_between_two_segments_is_still_recording(api, db, clock, settings, clip):
    """At a cut, the old segment's `complete` can commit before the new one's row: the streaming camera
    has no growing row for a moment, and must not flicker to "not recording" (seen by the soak)."""
    from test_api_helpers import CLIP_SECONDS

    now = clock.now_ms()
    with db.session() as s:
        for sid in (A, B):
            s.add(CameraStatus(station_id=sid, node="n1", state="streaming", updated_ms=now,
                               last_packet_ms=now - 500))
    for sid in (A, B):  # the last segment just completed, its successor not indexed yet
        add_segments(db, VolumeSet.from_settings(settings), clip, sid, now - 2 * CLIP_SECONDS * 1000 - 300, 2,
                     settings.tz)
    _set(db, B, state="backoff", reason="unreachable", last_packet_ms=now - 30_000)
    code, body = _health(api)
    stations = {st["id"]: st for st in api.get("/api/stations", headers=login(api, "admin")).json()["stations"]}
    assert stations[A]["recording"] and stations[A]["recorded_until_ms"] == now - 300
    assert not stations[B]["recording"]  # its camera is away: the completed segment is history
    assert body["cameras"]["recording"] >= 1
