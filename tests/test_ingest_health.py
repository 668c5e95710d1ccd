"""Health that cannot lie, and self-healing: a hung camera thread or a silent worker process is
restarted by the supervisor, the hole is an `ingest_hung` gap, and stops keep their deadline.
Real processes, real RTSP cameras (the simulator), real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.ingest_support import (
    HANG_DIR_ENV,
    HANGING_OBSERVER,
    assert_contiguous,
    gaps,
    ingest_settings,
    segments,
    wait_until,
)
from vms.core.clock import SystemClock
from vms.db.models import CameraStatus
from vms.ingest.health import CameraState, HealthEvidence, judge_state
from vms.ingest.supervisor import IngestSupervisor
from vms.recording.repair import check
from vms.recording.volumes import VolumeSet
from vms.simulate import Simulator

pytestmark = pytest.mark.slow  # ingest workers, the RTSP simulator, hangs and restarts: not in scripts/test.sh --fast

STATIONS = ["duozhu-town", "duozhu-v01", "duozhu-v02"]
S = CameraState


def test_judged_state_follows_evidence_not_the_threads_word():
    def judge(reported, progress, expected=None, now=100.0, loop_alive=0.0):
        return judge_state(HealthEvidence(reported, progress, expected, loop_alive), now, stall_s=10,
                           hung_grace_s=10)

    assert judge(S.STREAMING, progress=95) is S.STREAMING
    assert judge(S.STREAMING, progress=90) is S.STREAMING  # exactly stall_seconds
    assert judge(S.STREAMING, progress=89) is S.STALLED
    assert judge(S.STREAMING, progress=80) is S.STALLED
    assert judge(S.STREAMING, progress=79) is S.HUNG  # the watchdog acted 10 s ago: nothing moved
    # Nothing recorded for a minute, but the packet loop answered the watchdog 5 s ago (packets that
    # cannot be written, a full disk): not recording, yet not stuck; a restart would not help.
    assert judge(S.STREAMING, progress=40, loop_alive=95) is S.STALLED
    assert judge(S.STREAMING, progress=40, loop_alive=89) is S.HUNG
    # States that end by themselves are hung once past their deadline plus the grace.
    assert judge(S.CONNECTING, progress=0, expected=95) is S.CONNECTING
    assert judge(S.CONNECTING, progress=0, expected=89) is S.HUNG
    assert judge(S.BACKOFF, progress=0, expected=91) is S.BACKOFF
    assert judge(S.BACKOFF, progress=0, expected=85) is S.HUNG
    assert judge(S.STOPPED, progress=0) is S.STOPPED


@pytest.fixture(scope="module")
def sim(simulator_cache):
    with Simulator(cameras=3, names=STATIONS, width=320, height=240, fps=15, bitrate_kbps=300, gop=15,
                   cache_dir=simulator_cache) as s:
        yield s


def _status(db, sid: str) -> CameraStatus | None:
    with db.session() as s:
        return s.get(CameraStatus, sid)


def _recording_since(db, sid: str, t_ms: int) -> bool:
    return any(seg.start_ms >= t_ms and seg.frames > 0 or seg.start_ms >= t_ms and seg.end_ms > seg.start_ms
               for seg in segments(db, sid))


def test_a_hung_camera_thread_is_recovered_by_a_worker_restart_within_30_s(sim, tmp_path, db, monkeypatch):
    """One camera thread blocks for good (as the model-save deadlock did). Default stall and grace: it is
    declared hung 20 s after its last frame, its worker exits and is restarted, every camera of the
    worker records again, and the hole is an ingest_hung gap."""
    hang_dir = tmp_path / "hang"
    hang_dir.mkdir()
    monkeypatch.setenv(HANG_DIR_ENV, str(hang_dir))
    settings = ingest_settings(tmp_path, stall_seconds=10, hung_grace_seconds=10, status_interval_seconds=1,
                               segment_seconds=4, retry_initial_seconds=0.3)
    hung, others = STATIONS[0], STATIONS[1:]
    sup = IngestSupervisor(settings, dict(sim.urls), [HANGING_OBSERVER], workers=1, only_stations=set(STATIONS))
    sup.start()
    try:
        wait_until(lambda: all(len(segments(db, sid)) >= 3 for sid in STATIONS), 60, "3 segments per camera")
        first_pid = sup.pids()[0]
        hang_ms = SystemClock().now_ms()
        t_hang = time.monotonic()
        (hang_dir / hung).touch()
        wait_until(lambda: not (hang_dir / hung).exists(), 10, "the camera thread to hang")
        # Judged, not reported: the thread still says streaming, the status says otherwise.
        wait_until(lambda: (st := _status(db, hung)) is not None and st.state in ("stalled", "hung"), 20,
                   "the stuck camera published as stalled")
        wait_until(lambda: sup.restarts >= 1, 40, "the worker restart")
        restarted_after = time.monotonic() - t_hang
        assert sup.restart_log[-1][2].startswith("one of its camera threads hung")
        assert sup.pids() and sup.pids()[0] != first_pid
        wait_until(lambda: all(_recording_since(db, sid, hang_ms) for sid in STATIONS), 30,
                   "every camera of the worker recording again")
        resumed_after = time.monotonic() - t_hang
        time.sleep(2)
    finally:
        sup.stop()
    assert restarted_after <= 30, f"worker restarted {restarted_after:.1f} s after the hang"
    print(f"hang -> worker restarted in {restarted_after:.1f} s, all cameras recording in {resumed_after:.1f} s")
    for sid in STATIONS:
        segs = segments(db, sid)
        assert all(seg.state == "complete" for seg in segs), sid
        assert_contiguous(segs)
    hung_gap = next(g for g in gaps(db, hung) if g.reason == "ingest_hung")
    after = next(seg for seg in segments(db, hung) if seg.start_ms >= hung_gap.start_ms)
    before = [seg for seg in segments(db, hung) if seg.end_ms <= hung_gap.start_ms]
    assert hung_gap.end_ms == after.start_ms and before and before[-1].end_ms == hung_gap.start_ms
    # The camera was stuck for stall + grace (20 s) before anything could be done: that is the hole.
    assert 15_000 <= hung_gap.end_ms - hung_gap.start_ms <= 35_000
    for sid in others:  # stopped cleanly for the restart: a short gap of its own reason
        restart_gap = next(g for g in gaps(db, sid) if g.start_ms >= hang_ms and g.end_ms is not None)
        assert restart_gap.reason == "ingest_stopped" and restart_gap.end_ms - restart_gap.start_ms < 15_000
    volumes = VolumeSet.from_settings(settings)
    assert check(db, volumes, settings.tz, SystemClock(), settings.ingest.node, data_dir=settings.data_dir
                 ).problems == 0


def test_a_worker_that_stops_heartbeating_is_killed_and_restarted(sim, tmp_path, db):
    """SIGSTOP freezes the whole worker (as a GIL held forever would): no heartbeat, so the supervisor
    kills it and starts another; the hole of each of its cameras is an ingest_hung gap."""
    settings = ingest_settings(tmp_path, heartbeat_timeout_seconds=5, status_interval_seconds=1, segment_seconds=4)
    sup = IngestSupervisor(settings, dict(sim.urls), [], workers=1, only_stations=set(STATIONS))
    sup.start()
    try:
        wait_until(lambda: all(len(segments(db, sid)) >= 2 for sid in STATIONS), 60, "2 segments per camera")
        frozen = sup.pids()[0]
        frozen_ms = SystemClock().now_ms()
        os.kill(frozen, signal.SIGSTOP)
        t0 = time.monotonic()
        wait_until(lambda: sup.restarts >= 1, 30, "the silent worker restarted")
        assert time.monotonic() - t0 <= 5 + 3  # heartbeat_timeout plus a watch round or two
        assert sup.restart_log[-1][2].startswith("no heartbeat")
        with pytest.raises(ProcessLookupError):
            os.kill(frozen, 0)
        wait_until(lambda: all(_recording_since(db, sid, frozen_ms) for sid in STATIONS), 40,
                   "recording again after the restart")
        time.sleep(1)
    finally:
        sup.stop()
    for sid in STATIONS:
        hole = [g for g in gaps(db, sid) if g.start_ms >= frozen_ms - 10_000 and g.end_ms is not None]
        assert hole and hole[0].reason == "ingest_hung", [(g.reason, g.detail) for g in gaps(db, sid)]
        assert all(seg.state == "complete" for seg in segments(db, sid))
        assert_contiguous(segments(db, sid))


def test_stop_keeps_its_deadline_with_a_hung_camera_thread(sim, tmp_path, db, monkeypatch):
    hang_dir = tmp_path / "hang"
    hang_dir.mkdir()
    monkeypatch.setenv(HANG_DIR_ENV, str(hang_dir))
    # A long grace: the camera stays hung (not restarted) when the stop comes.
    settings = ingest_settings(tmp_path, hung_grace_seconds=300, stall_seconds=60, stop_seconds=4,
                               status_interval_seconds=1, segment_seconds=4)
    sup = IngestSupervisor(settings, dict(sim.urls), [HANGING_OBSERVER], workers=1, only_stations=set(STATIONS))
    sup.start()
    try:
        wait_until(lambda: all(len(segments(db, sid)) >= 2 for sid in STATIONS), 60, "2 segments per camera")
        (hang_dir / STATIONS[0]).touch()
        wait_until(lambda: not (hang_dir / STATIONS[0]).exists(), 10, "the camera thread to hang")
        time.sleep(1)
    finally:
        t0 = time.monotonic()
        sup.stop()
        took = time.monotonic() - t0
    assert not sup.pids()
    assert took <= 4 + 2 + 1, f"stop took {took:.1f} s"
    for sid in STATIONS[1:]:  # the healthy cameras finished their segments
        assert all(seg.state == "complete" for seg in segments(db, sid))


def _notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.5)
    return sock


def _messages(sock: socket.socket, seconds: float) -> list[str]:
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    return out


def test_vms_serve_tells_systemd_it_is_ready_feeds_the_watchdog_and_stops_in_time(tmp_path):
    """As under systemd (Type=notify, WatchdogSec): READY=1 once up, WATCHDOG=1 while recording is
    healthy, and SIGTERM ends it within 15 s even with a worker frozen (SIGSTOP) and never answering."""
    from tests.serve_support import REPO, free_port, run_vms

    port = free_port()
    config = tmp_path / "vms.yaml"
    config.write_text(f"""
data_dir: {tmp_path / 'data'}
storage: {{volumes: [{{name: main, path: {tmp_path / 'recordings'}}}]}}
ingest: {{segment_seconds: 4, status_interval_seconds: 1, heartbeat_timeout_seconds: 300}}
api: {{port: {port}}}
simulate: {{enabled: auto, max_cameras: 2, port: {free_port()}, width: 320, height: 240, content: pattern}}
log_level: WARNING
""")
    sock = _notify_socket(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VMS_")}, "VMS_CONFIG": str(config),
           "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    run_vms(env, "db", "upgrade")
    run_vms(env, "stations", "import", str(REPO / "config" / "stations.yaml"))
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(REPO / ".venv/bin/vms"), "serve", "--workers", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    import psutil

    try:
        messages = _messages(sock, 20)
        assert any(m.startswith("READY=1") for m in messages), messages
        assert messages.count("WATCHDOG=1") >= 5, messages  # every WatchdogSec/2 = 1 s
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "spawn" in " ".join(c.cmdline())]
        assert workers
        for w in workers:
            w.suspend()  # frozen: ignores SIGTERM until killed
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        took = time.monotonic() - t0
        during_stop = _messages(sock, 0.6)  # queued in the socket while it stopped
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        sock.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-2000:]
    assert took <= 15, f"vms serve took {took:.1f} s to stop"
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert "STOPPING=1" in during_stop, during_stop


def test_a_full_disk_is_not_a_hang(sim, tmp_path, db):
    """Packets keep coming but none can be written: the camera is not recording (published as
    stalled, reason disk_error), yet its loop turns, so its worker is not restarted for nothing."""
    from tests.ingest_support import RunningWorker
    from tests.test_recording_disk_full import fill

    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(done.stderr.decode())
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        settings = ingest_settings(tmp_path, stall_seconds=3, hung_grace_seconds=3, status_interval_seconds=1,
                                   segment_seconds=2)
        settings.storage.volumes[0].path = mount
        sid = STATIONS[1]
        with RunningWorker(settings, db, {sid: sim.urls[sid]}) as w:
            wait_until(lambda: len(segments(db, sid)) >= 2, 30, "recording")
            fill(mount / "filler.bin")
            wait_until(lambda: (st := _status(db, sid)) is not None and st.reason == "disk_error", 20,
                       "disk_error published")
            time.sleep(3 + 3 + 4)  # well past stall + grace
            st = _status(db, sid)
            assert st.state == "stalled" and st.fps is None
            assert w.worker.hung_station is None and w.worker.exit_code == 0 and not w.worker.stop_event.is_set()
            (mount / "filler.bin").unlink()
            freed_ms = SystemClock().now_ms()
            wait_until(lambda: any(seg.start_ms >= freed_ms for seg in segments(db, sid)), 30, "recording again")
            wait_until(lambda: _status(db, sid).state == "streaming", 10, "streaming again")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_the_start_up_counts_configured_cameras_when_nothing_is_simulated(db, settings):
    """`vms ingest` said "recording 0 cameras" with the simulator off, and sized its workers for none."""
    from vms.db.models import Station
    from vms.ingest.supervisor import default_worker_count
    from vms.server.recording import RecordingService

    with db.session() as s:
        stations = list(s.scalars(select(Station)))
        for i, st in enumerate(stations):
            st.main_url = f"rtsp://10.0.{i // 250}.{i % 250 + 1}/main" if i % 2 == 0 else None
        enabled_with_url = sum(1 for i, st in enumerate(stations) if st.enabled and i % 2 == 0)
        enabled = sum(1 for st in stations if st.enabled)
    never = RecordingService(settings, db, simulate="never")
    assert never._simulated_stations() == [] and never.camera_count == enabled_with_url > 0
    auto = RecordingService(settings, db, simulate="auto")
    simulated = auto._simulated_stations()
    assert len(simulated) == enabled - enabled_with_url and auto.camera_count == enabled
    assert default_worker_count(300) == max(os.cpu_count() or 1, 5)


class _ReleaseLog:
    """An observer factory that notes which stations the worker released."""

    def __init__(self) -> None:
        self.released: list[str] = []

    def __call__(self, station_id: str):
        return None

    def release(self, station_id: str) -> None:
        self.released.append(station_id)


def release_log_factory(settings, database, clock):
    return _ReleaseLog()


def test_a_station_disabled_while_recording_is_stopped_and_released(sim, tmp_path, db):
    from tests.ingest_support import RunningWorker
    from vms.db.models import Station

    settings = ingest_settings(tmp_path, status_interval_seconds=1, segment_seconds=2)
    urls = {sid: sim.urls[sid] for sid in STATIONS[:2]}
    with RunningWorker(settings, db, urls, ["tests.test_ingest_health:release_log_factory"]) as w:
        wait_until(lambda: all(len(segments(db, sid)) >= 1 for sid in urls), 30, "recording")
        with db.session() as s:
            s.get(Station, STATIONS[0]).enabled = False
        w.worker.reconcile()
        assert STATIONS[0] not in w.worker.sessions and STATIONS[1] in w.worker.sessions
        assert w.worker._factories[0].released == [STATIONS[0]]
    st = _status(db, STATIONS[0])
    assert st.state == "stopped" and st.fps is None


def test_a_camera_whose_video_stops_while_its_audio_goes_on_is_reconnected(tmp_path, db):
    """G.711 keeps the connection busy (~8 kB/s), so the watchdog finds no idle connection to shut;
    the camera must still be judged stalled (its file grows with audio alone) and reconnected."""
    from tests.ingest_support import RunningWorker

    sid = STATIONS[2]
    with Simulator(cameras=1, names=[sid], width=320, height=240, fps=15, bitrate_kbps=300, gop=15,
                   content="pattern", audio="pcma", cache_dir=tmp_path / "sim") as sim:
        settings = ingest_settings(tmp_path, stall_seconds=3, status_interval_seconds=1, segment_seconds=2)
        with RunningWorker(settings, db, {sid: sim.urls[sid]}) as w:
            wait_until(lambda: len(segments(db, sid)) >= 2, 30, "recording")
            stalled_ms = SystemClock().now_ms()
            sim.stall_video(sid)
            wait_until(lambda: any(g.reason == "stalled" and g.start_ms >= stalled_ms - 3000 for g in gaps(db, sid)),
                       20, "a stalled gap")
            wait_until(lambda: w.health(sid).reconnects >= 1, 10, "a reconnect")
            sim.resume(sid)
            resumed_ms = SystemClock().now_ms()
            wait_until(lambda: any(seg.start_ms >= resumed_ms for seg in segments(db, sid)), 30, "recording again")
    assert_contiguous(segments(db, sid))
