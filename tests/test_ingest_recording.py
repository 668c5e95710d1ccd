"""The recorder against real RTSP cameras (the GStreamer simulator on loopback)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from tests.ingest_support import (
    PACKET_LOG_FACTORIES,
    PACKET_LOGS,
    RunningWorker,
    assert_contiguous,
    decode_all,
    gaps,
    ingest_settings,
    segments,
    wait_until,
)
from vms.core.clock import SystemClock
from vms.db.models import CameraStatus, OnlineInterval
from vms.ingest.stall import StallWatchdog
from vms.recording.repair import check
from vms.recording.volumes import VolumeSet
from vms.simulate import Simulator

pytestmark = pytest.mark.slow  # real ingest workers recording the RTSP simulator: not in scripts/test.sh --fast

STATIONS = ["baihua-town", "baihua-v01", "baihua-v02"]


@pytest.fixture(scope="module")
def sim(simulator_cache):
    with Simulator(cameras=3, names=STATIONS, width=320, height=240, fps=15, bitrate_kbps=300, gop=15,
                   cache_dir=simulator_cache) as s:
        yield s


@pytest.fixture(params=[True, False], ids=["native-copy", "python-copy"])
def native(request) -> bool:
    """A recording test runs with the native copier (which records all but the first segment of a
    connection) and with `ingest.native_copy: false`: every packet through PyAV, as on a machine where
    the module is not built, or while a viewer watches live."""
    return request.param


def past_first_segment(worker: RunningWorker, db, sid: str, native: bool) -> bool:
    """The session streams past the first segment of its connection (where the copier takes over), on
    the path asked for."""
    session = worker.worker.sessions.get(sid)
    return session is not None and session[1].health.state == "streaming" and len(segments(db, sid)) >= 2 and (
        session[1].native_frames > 0 if native else session[1].native_frames == 0)


def test_published_rates_stay_true_while_the_native_copier_credits_frames_in_batches(sim, tmp_path, db):
    """The native copier credits a camera's frames a batch (up to a GOP, with pauses between reads) at a
    time; rates taken between status writes 1 s apart saw 0, 1 or 2 batches and published 2 fps (seen
    in CI) or 30 for a 15 fps camera. Every figure published while it streams must be near 15."""
    settings = ingest_settings(tmp_path, segment_seconds=3, native_copy=True)
    sid = STATIONS[0]
    readings: list[float] = []
    with RunningWorker(settings, db, {sid: sim.urls[sid]}) as w:
        wait_until(lambda: past_first_segment(w, db, sid, True), 40, "the native copier recording")
        deadline = time.monotonic() + 12
        last_update = None
        while time.monotonic() < deadline:
            with db.session() as s:
                st = s.get(CameraStatus, sid)
                if st is not None and st.state == "streaming" and st.fps is not None and st.updated_ms != last_update:
                    last_update = st.updated_ms
                    readings.append(st.fps)
            time.sleep(0.2)
    assert len(readings) >= 8, readings
    assert all(12 <= fps <= 18 for fps in readings), readings


def test_three_cameras_record_playable_contiguous_indexed_segments(sim, tmp_path, db, native):
    settings = ingest_settings(tmp_path, segment_seconds=3, native_copy=native)
    started = time.time()
    with RunningWorker(settings, db, sim.urls) as w:
        wait_until(lambda: all(len(segments(db, sid)) >= 5 for sid in STATIONS), 40, "5 segments per camera")
        time.sleep(1.5)  # let the status publisher run at least once more
        # A segment being written is indexed as growing and can already be played.
        growing = [seg for seg in segments(db, STATIONS[0]) if seg.state == "growing"]
        assert len(growing) == 1 and growing[0].end_ms > growing[0].start_ms
        live_path = VolumeSet.from_settings(settings).file_path(growing[0].volume, growing[0].path)
        assert decode_all(live_path)[0] >= 15
        with db.session() as s:
            statuses = {c.station_id: c for c in s.scalars(select(CameraStatus))}
        assert {sid: w.health(sid).state for sid in STATIONS} == dict.fromkeys(STATIONS, "streaming")
        # Past the first 10 s of a connection, the native copier records all but the keyframes.
        copied = {sid: w.worker.sessions[sid][1].native_frames for sid in STATIONS}
        assert all((n > 0) == native for n in copied.values()), copied
    stopped = time.time()
    volumes = VolumeSet.from_settings(settings)
    for sid in STATIONS:
        segs = segments(db, sid)
        assert all(seg.state == "complete" for seg in segs)
        assert_contiguous(segs)
        for seg in segs[:-1]:
            # Cut at the first keyframe past the boundary: one GOP (1 s here) at most past 3 s.
            assert 3000 <= seg.duration_ms <= 4100, seg.duration_ms
        total_media = sum(seg.duration_ms for seg in segs)
        span = segs[-1].end_ms - segs[0].start_ms
        assert abs(total_media - span) <= 0.01 * span, (total_media, span)
        # The wall time recorded is the wall time that passed (less the connect at the start).
        assert (stopped - started) * 1000 - 4000 <= span <= (stopped - started) * 1000 + 200
        for seg in segs:
            path = volumes.file_path(seg.volume, seg.path)
            assert path.stat().st_size == seg.bytes
            frames, seconds = decode_all(path)
            assert frames == seg.frames
            assert abs(seconds * 1000 + 1000 / 15 - seg.duration_ms) <= 80
            assert (seg.codec, seg.width, seg.height) == ("h264", 320, 240)
            assert seg.keyframes >= 1
        st = statuses[sid]
        assert st.state == "streaming" and st.node == "test-node"
        assert 12 <= st.fps <= 18 and st.bitrate_bps > 50_000 and (st.width, st.height) == (320, 240)
        # A clean stop leaves one open gap saying why footage ends here.
        g = gaps(db, sid)
        assert [(x.reason, x.end_ms) for x in g] == [("ingest_stopped", None)]
        assert g[0].start_ms == segs[-1].end_ms
    report = check(db, volumes, settings.tz, SystemClock(), "test-node")
    assert report.problems == 0 and report.files == report.rows >= 15
    with db.session() as s:
        online = list(s.scalars(select(OnlineInterval)))
    assert {o.station_id for o in online} == set(STATIONS) and all(o.end_ms for o in online)


def test_camera_clock_set_and_reset_over_rtsp_on_both_paths(sim, tmp_path, db):
    """A camera's timestamps jump an hour forward, then back to 0, mid-GOP while the native copier
    records it; a second worker with `ingest.native_copy: false` records the same stream (the
    simulator's media is shared). Each jump costs one frame: no hole, no overlap, no hour-long or
    negative segment, on either path."""
    url = sim.urls[STATIONS[0]]
    paths = {"baihua-town": True, "pingshan-town": False}  # station -> native copy
    workers = {sid: RunningWorker(ingest_settings(tmp_path / sid, segment_seconds=3, native_copy=native), db,
                                  {sid: url}) for sid, native in paths.items()}
    started = time.time()
    with workers["baihua-town"], workers["pingshan-town"]:
        def session(sid):
            return workers[sid].worker.sessions[sid][1]

        hour = 3600 * 90000
        wait_until(lambda: all(sid in workers[sid].worker.sessions for sid in paths), 10, "the sessions")
        wait_until(lambda: session("baihua-town").native_frames > 0 and len(segments(db, "pingshan-town")) >= 1,
                   30, "the copier recording")
        sim.jump(STATIONS[0], 3600)
        wait_until(lambda: all(session(sid).recorder._last_dts > hour for sid in paths), 15, "the jump forward")
        sim.jump(STATIONS[0], -1e9)  # back to 0
        wait_until(lambda: all(session(sid).recorder._last_dts < hour for sid in paths), 15, "the reset")
        copied = session("baihua-town").native_frames
        before = {sid: len(segments(db, sid)) for sid in paths}
        wait_until(lambda: all(len(segments(db, sid)) >= before[sid] + 2 for sid in paths), 30, "two more segments")
        assert session("baihua-town").native_frames > copied, "the copier went on after the jumps"
        assert session("pingshan-town").native_frames == 0
        assert {sid: workers[sid].health(sid).state for sid in paths} == dict.fromkeys(paths, "streaming")
    stopped = time.time()
    for sid in paths:
        segs = segments(db, sid)
        volumes = VolumeSet.from_settings(ingest_settings(tmp_path / sid))
        assert_contiguous(segs)
        assert all(b.start_ms == a.end_ms for a, b in zip(segs, segs[1:], strict=False)), sid
        assert [g.reason for g in gaps(db, sid)] == ["ingest_stopped"], sid
        for seg in segs[:-1]:
            assert 3000 <= seg.duration_ms <= 4100, (sid, seg.duration_ms)
        span = segs[-1].end_ms - segs[0].start_ms
        assert abs(sum(seg.duration_ms for seg in segs) - span) <= 0.01 * span, sid
        assert span <= (stopped - started) * 1000 + 200
        for seg in segs:
            assert decode_all(volumes.file_path(seg.volume, seg.path))[0] == seg.frames, (sid, seg.path)


def test_observers_get_every_packet_or_only_keyframes(sim, tmp_path, db):
    settings = ingest_settings(tmp_path, segment_seconds=3)
    sid = STATIONS[1]
    PACKET_LOGS.clear()
    with RunningWorker(settings, db, {sid: sim.urls[sid]}, PACKET_LOG_FACTORIES):
        wait_until(lambda: (sid, "every") in PACKET_LOGS and len(PACKET_LOGS[sid, "every"].packets) >= 75, 20,
                   "5 s of packets")
    every, keyframes = PACKET_LOGS[sid, "every"].packets, PACKET_LOGS[sid, "keyframes"].packets
    # 15 fps, a keyframe every 15 frames: the plain observer sees both kinds, in capture order.
    assert sum(1 for key, _ in every if not key) >= 60
    assert [wall for _, wall in every] == sorted(wall for _, wall in every)
    # A keyframes_only observer is given exactly the keyframes, with the same wall times.
    assert len(keyframes) >= 4 and keyframes == [p for p in every if p[0]]


def test_stopped_camera_leaves_explained_gap_and_recording_resumes(sim, tmp_path, db, native):
    settings = ingest_settings(tmp_path, segment_seconds=3, native_copy=native)
    sid = "baihua-v01"
    with RunningWorker(settings, db, {sid: sim.urls[sid]}) as w:
        wait_until(lambda: past_first_segment(w, db, sid, native), 20, "streaming")
        sim.stop_camera(sid)
        wait_until(lambda: w.health(sid).reason in ("refused", "stream_ended")
                   and w.health(sid).state != "streaming", 20, "the loss to be noticed")
        time.sleep(2.5)  # a few refused reconnects
        assert w.health(sid).reason == "refused"
        before = len(segments(db, sid))
        restarted = time.time()
        sim.start_camera(sid)
        wait_until(lambda: w.health(sid).state == "streaming", 15, "recording to resume")
        resumed_after = time.time() - restarted
        wait_until(lambda: len(segments(db, sid)) > before, 10, "a new segment")
        assert (w.worker.sessions[sid][1].native_frames > 0) == native
    # Backoff is capped at 2 s here: recording resumes within one backoff step plus a connect.
    assert resumed_after <= 2 + 3
    segs = segments(db, sid)
    assert_contiguous(segs)
    holes = [(a.end_ms, b.start_ms) for a, b in zip(segs, segs[1:], strict=False) if b.start_ms - a.end_ms > 0]
    assert len(holes) == 1
    hole_start, hole_end = holes[0]
    g = [x for x in gaps(db, sid) if x.end_ms is not None]
    # The gap rows tile the hole exactly, with the reasons seen: the stream ended, then refused.
    assert g[0].start_ms == hole_start and g[-1].end_ms == hole_end
    assert all(a.end_ms == b.start_ms for a, b in zip(g, g[1:], strict=False))
    assert g[0].reason == "stream_ended" and "refused" in [x.reason for x in g]
    assert hole_end - hole_start >= 2500


def test_stalled_camera_is_detected_and_recording_resumes(sim, tmp_path, db, native):
    # The socket timeout (10 s) is longer than the RTCP interval: only the stall watchdog can notice.
    settings = ingest_settings(tmp_path, segment_seconds=3, stall_seconds=2, rtsp_timeout_seconds=10,
                               native_copy=native)
    sid = "baihua-v02"
    with RunningWorker(settings, db, {sid: sim.urls[sid]}) as w:
        wait_until(lambda: past_first_segment(w, db, sid, native), 20, "streaming")
        sim.stall(sid)
        # The connection stays open (RTCP keeps flowing) but no media comes: noticed by the stall
        # timeout, counted from the last packet received (the server may flush a few buffered ones).
        wait_until(lambda: w.health(sid).reason == "stalled", 15, "the stall to be detected")
        detected_after = time.time() - w.health(sid).last_packet_ms / 1000
        sim.resume(sid)
        wait_until(lambda: w.health(sid).state == "streaming" and w.health(sid).frames > 0, 20, "resume")
        before = len(segments(db, sid))
        wait_until(lambda: len(segments(db, sid)) > before, 10, "a new segment after the stall")
        assert (w.worker.sessions[sid][1].native_frames > 0) == native
    assert detected_after <= settings.ingest.stall_seconds + 1.5
    segs = segments(db, sid)
    assert_contiguous(segs)
    g = [x for x in gaps(db, sid) if x.end_ms is not None]
    assert g and g[0].reason == "stalled"
    hole = next((a.end_ms, b.start_ms) for a, b in zip(segs, segs[1:], strict=False) if b.start_ms > a.end_ms)
    assert g[0].start_ms == hole[0] and g[-1].end_ms == hole[1]


def test_watchdog_keeps_ticking_every_session_when_one_fails():
    class Session:
        station_id, url = "x", "rtsp://127.0.0.1:9/x"

        def __init__(self, fails: bool) -> None:
            self.fails, self.ticks = fails, 0

        def tick(self, mono: float, now_ms: int) -> None:
            self.ticks += 1
            if self.fails:
                raise RuntimeError("a bug in one session")

        def is_stalled(self, now: float, stall_seconds: float) -> bool:
            if self.fails:
                raise RuntimeError("another bug")
            return False

    bad, good = Session(True), Session(False)
    stop = threading.Event()
    watchdog = StallWatchdog(lambda: [bad, good], 10.0, stop, SystemClock())
    watchdog.start()
    try:
        wait_until(lambda: good.ticks >= 3, 10, "three ticks of the healthy session")
    finally:
        stop.set()
        watchdog.join(5)
    assert bad.ticks >= 3  # the failing session is still ticked every second, not dropped



def test_native_copier_pauses_between_reads_but_reads_keyframes_on_time(sim, tmp_path, db):
    """The copier lets packets gather in the socket between reads (fewer wake-ups), but wakes up before
    each keyframe is due: keyframes, where the recorder reads the receive clock, are not delayed."""
    settings = ingest_settings(tmp_path, segment_seconds=3, receive_pause_seconds=0.5)
    sid = STATIONS[2]
    PACKET_LOGS.clear()
    # (A keyframes-only observer: one that wants every packet would turn the copier off.)
    with RunningWorker(settings, db, {sid: sim.urls[sid]}, ["tests.ingest_support:keyframe_packet_log"]) as w:
        wait_until(lambda: len(segments(db, sid)) >= 5, 30, "5 segments")
        arrivals = list(PACKET_LOGS[sid, "keyframes"].arrivals)
        session = w.worker.sessions[sid][1]
    assert session.native_frames > 100
    assert session.native_pauses >= 5, session.native_pauses
    # Past the first segment (recorded in Python, no pauses), each keyframe reaches the session as
    # long after its capture as the others: the lag varies by far less than a pause.
    lags = [mono - wall_s for mono, wall_s in arrivals[5:]]
    assert len(lags) >= 6
    assert max(lags) - min(lags) < 0.25, [round(x - min(lags), 3) for x in lags]
    segs = segments(db, sid)
    assert_contiguous(segs)
    for seg in segs[1:-1]:
        assert 3000 <= seg.duration_ms <= 4100, seg.duration_ms
