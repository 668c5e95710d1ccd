"""The compressed soak: a real `vms serve` with 10 simulated cameras for about five minutes, with every
periodic interval shortened so that each periodic path runs at least ten times, and camera faults injected
along the way.

Why: `vms serve` once recorded every camera for 10 minutes and then stopped them all silently (a lock
taken twice on a path that only ran after analysis.model_save_minutes; issue 16). Every test was shorter
than that. The rule since: a periodic path is exercised by shortening its interval, many cycles over,
and this test proves each one ran (from the server's log, its API and its files), not just that its
interval was set. The inventory of periodic paths is docs/design/periodic.md.

What must hold throughout (checked at the end, every problem listed at once):
- healthy cameras' footage is continuous: no hole over 2 s, from the index (every row seen during the
  run, also those retention deleted) and from the files on disk (start from the name, length measured);
  faulted cameras have holes only inside their fault windows (plus the time to reconnect);
- at every poll of GET /api/stations, `streaming` implies a packet within ingest.stall_seconds;
- the API answers every poll within a few seconds; GET /api/health follows its contract;
- held footage survives a retention that really deletes the rest;
- SIGTERM stops the server within 15 s with exit 0 and no `growing` rows; `vms recordings check` is clean.

Set VMS_TEST_SOAK_SECONDS to run longer (or shorter, while working on it: the >= 10 runs then may fail).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from sqlalchemy import func, select
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.serve_support import free_port
from tests.soak_support import (
    CAMERA_STATES,
    HEALTH_STATES,
    ApiClient,
    Poller,
    SegmentLedger,
    disk_intervals,
    distinct_values,
    holes,
    now_ms,
    read_keyframe_time,
    run_vms,
    silent_stalls,
    start_serve,
)

pytestmark = [pytest.mark.soak, pytest.mark.rtsp]

SOAK_S = float(os.environ.get("VMS_TEST_SOAK_SECONDS", "300"))
CAMERAS = 10
STALL_S = 5
RETENTION_S = 120
MIN_RUNS = 10  # every periodic path must have run at least this often
RECONNECT_S = 15  # after a fault ends, footage must resume within this
API_SLOW_S = 5.0  # "answers": every poll within this
REPORT_DIR = Path(__file__).resolve().parents[1] / "artifacts" / "soak"


def soak_station_ids() -> list[str]:
    """The stations the soak records: the catalogue's first CAMERAS (soak_support.write_catalogue)."""
    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "stations.yaml").read_text("utf-8"))
    return [st["id"] for st in doc["stations"][:CAMERAS]]


def soak_settings(root: Path) -> dict:
    """Every periodic interval shortened (docs/design/periodic.md lists them and their defaults)."""
    return {
        "data_dir": str(root / "data"),
        "storage": {"volumes": [{"name": "main", "path": str(root / "recordings")}]},
        "log_level": "DEBUG",  # the periodic paths say at DEBUG that they ran
        # Status every 2 s: the API calls a camera offline after 3 intervals without status, and 3 s proved
        # too tight for a loaded 2-core machine (one false "offline" in five minutes); 5 s is the default.
        "ingest": {"segment_seconds": 10, "status_interval_seconds": 2, "stall_seconds": STALL_S,
                   "rtsp_timeout_seconds": 5, "backoff_initial_seconds": 0.5, "backoff_max_seconds": 2,
                   "stable_seconds": 10, "reconcile_seconds": 5, "snapshot_keyframe_seconds": 5},
        "api": {"port": free_port(), "status_cache_seconds": 0.5, "session_hours": 20 / 3600,
                "maintenance_interval_seconds": 5, "playback_keep_minutes": 0.3, "export_keep_hours": 20 / 3600},
        "analysis": {"sample_interval_seconds": 5, "sample_interval_changing_seconds": 2, "model_save_minutes": 0.1,
                     "sink_flush_seconds": 1, "calibration_reload_seconds": 10, "learn_min_samples": 10,
                     "hysteresis_seconds": 10, "fault_min_seconds": 5, "fault_clear_seconds": 5,
                     "frozen_seconds": 15, "scene_changed_seconds": 30, "cast_min_seconds": 30,
                     "hidden_unknown_seconds": 30, "activity_baseline_seconds": 30},
        "audit": {"daily_every_minutes": 0.25},
        "retention": {"days": RETENTION_S / 86400, "floor_days": 0, "sweep_minutes": 0.25,
                      "pressure_check_seconds": 5},
        "live": {"relay_linger_seconds": 1},
        # Alert rounds every 2 s; a 30 s offline grace, longer than any fault the plan injects: no camera may
        # raise an alert (false alarms are worse than silence) -- except the one whose 20 s outage
        # (stop/start) meets its own 8 s grace, which must raise one and resolve it.
        "alerts": {"evaluate_seconds": 2, "offline_grace_seconds": 30,
                   "per_station": {soak_station_ids()[-2]: {"offline_grace_seconds": 8}}},
        "simulate": {"enabled": "auto", "port": free_port(), "control_port": free_port(), "max_cameras": CAMERAS,
                     "width": 320, "height": 240, "fps": 15, "bitrate_kbps": 300, "content": "station-day",
                     "day_seconds": 60},
    }


def simulator_command(port: int, line: str) -> str:
    """One fault command to the simulator `vms serve` runs (docs/simulator.md, control protocol)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall((line + "\n").encode())
        reply = sock.makefile("rb").readline().decode().strip()
    assert reply.startswith("ok"), f"simulator: {line!r} -> {reply!r}"
    return reply


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


class ClientActivity(threading.Thread):
    """What operators do meanwhile, on healthy cameras: playbacks, exports, live views, snapshots, a hold
    on early footage and a calibration edit. Failures are noted, not raised."""

    def __init__(self, base: str, data_dir: Path, stations: list[str], start_ms: int, soak_s: float) -> None:
        super().__init__(name="soak-activity", daemon=True)
        self.client = ApiClient(base, keepalive=False)
        self.base, self.data_dir, self.stations, self.start_ms = base, data_dir, stations, start_ms
        self.problems: list[str] = []
        self.playbacks: list[tuple[str, int]] = []  # (id, made at ms)
        self.exports: list[str] = []
        self.live_views = self.snapshots = 0
        self.held: dict | None = None
        self._halt = threading.Event()
        plan = [(t, "playback") for t in range(15, int(soak_s) - 30, 20)]
        plan += [(t, "export") for t in range(20, int(soak_s) - 30, 25)]
        plan += [(t, "live") for t in range(10, int(soak_s) - 10, 15)]
        plan += [(t, "snapshot") for t in range(30, int(soak_s) - 10, 30)]
        plan += [(40, "hold"), (int(soak_s * 0.4), "calibration")]
        self.plan = sorted(plan)

    def run(self) -> None:
        for i, (t, action) in enumerate(self.plan):
            if self._halt.wait(max(0.0, self.start_ms / 1000 + t - time.time())):
                return
            station = self.stations[i % len(self.stations)]
            try:
                getattr(self, action)(station)
            except Exception as exc:  # noqa: BLE001 - noted and reported with the other problems
                self.problems.append(f"{action} {station} at t={t}: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(60)
        self.client.close()

    def _range(self, back_s: float, length_s: float) -> dict:
        end = now_ms() - int(back_s * 1000)
        return {"start": iso(end - int(length_s * 1000)), "end": iso(end), "reason": "soak test"}

    def playback(self, station: str) -> None:
        r = self.client.post(f"/api/stations/{station}/playback", json=self._range(8, 15))
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        f = self.client.get(f"/api/playback/{pid}.mp4", headers={"Range": "bytes=0-1023"})
        assert f.status_code == 206 and f.content[4:8] == b"ftyp", (f.status_code, f.content[:16])
        self.playbacks.append((pid, now_ms()))

    def export(self, station: str) -> None:
        r = self.client.post("/api/exports", json={"station_id": station, **self._range(8, 15)})
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and r.json()["state"] in ("queued", "running"):
            time.sleep(0.5)
            r = self.client.get(f"/api/exports/{job}")
        assert r.json()["state"] == "done", r.text
        d = self.client.get(f"/api/exports/{job}/download")
        assert d.status_code == 200 and d.content[4:8] == b"ftyp", d.status_code
        self.exports.append(job)

    def live(self, station: str) -> None:
        """The fMP4-over-WebSocket live view for ~2 s: the relay connects to the worker's tap, and after
        live.relay_linger_seconds without viewers lets it go."""
        uri = self.base.replace("http://", "ws://") + f"/api/stations/{station}/live/mse"
        for attempt in (1, 2):
            self.client.get("/api/auth/me")  # a session that has not expired (20 s sessions in this soak)
            try:
                with ws_connect(uri, additional_headers={"Authorization": f"Bearer {self.client.token}"},
                                open_timeout=10) as ws:
                    header = json.loads(ws.recv(timeout=10))
                    assert "mime" in header, header
                    got, deadline = 0, time.monotonic() + 2
                    while time.monotonic() < deadline or not got:
                        got += len(ws.recv(timeout=10))
                self.live_views += 1
                return
            except (ConnectionClosed, InvalidStatus) as exc:
                if attempt == 2 or "4401" not in str(exc):
                    raise

    def snapshot(self, station: str) -> None:
        r = self.client.get(f"/api/stations/{station}/snapshot.jpg")
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8", (r.status_code, r.text[:200])
        self.snapshots += 1

    def hold(self, _station: str) -> None:
        """A hold on the first station's footage from 5 s to 35 s after the start: retention (2 min here)
        must keep it to the end while it deletes everything around it."""
        station = self.stations[0]
        start, end = self.start_ms + 5_000, self.start_ms + 35_000
        r = self.client.post("/api/holds", json={"station_id": station, "start": iso(start), "end": iso(end),
                                                 "reason": "soak: evidence that must survive"})
        assert r.status_code == 201, r.text
        self.held = {"station": station, "start_ms": start, "end_ms": end}

    def calibration(self, station: str) -> None:
        """An edit the workers' calibration reload must pick up (seen in their log)."""
        mask = {"privacy_masks": [{"points": [[0, 0], [0.2, 0], [0.2, 0.2]], "name": "soak"}]}
        r = self.client.request("PATCH", f"/api/stations/{station}", json={"calibration": mask})
        assert r.status_code == 200, r.text


def log_counts(log: str) -> dict[str, Counter]:
    """Lines of each periodic path in the serve log, by process (or station)."""
    patterns = {
        "reconcile": r"(ingest-worker-\d+) vms\.ingest\.worker: reconcile:",
        "analysis_tick": r"(ingest-worker-\d+) vms\.analysis\.observer: analysis tick:",
        "calibration_reload": r"(ingest-worker-\d+) vms\.analysis\.observer: analysis: calibration reloaded",
        "calibration_changed": r"(ingest-worker-\d+) vms\.analysis\.observer: analysis: calibration reloaded "
                               r"for \d+ stations, [1-9]",
        "model_save": r"vms\.analysis\.observer: analysis ([a-z0-9-]+): learned look saved",
        "api_maintenance": r"(MainProcess) vms\.api\.maintenance: API maintenance:",
        "retention_sweep": r"(MainProcess) apscheduler\.executors\.default: Job \"retention sweep .* executed succ",
        "pressure_check": r"(MainProcess) apscheduler\.executors\.default: Job \"retention pressure check .* "
                          r"executed succ",
        "daily_audit": r"(MainProcess) vms\.audit\.jobs: audit of \d{4}-\d\d-\d\d:",
        "relay_linger": r"(MainProcess) vms\.live\.relay: ([a-z0-9-]+): live relay connected to the tap",
        "relay_released": r"(ingest-worker-\d+) vms\.live\.tap: ([a-z0-9-]+): live relay disconnected",
        "stall_watchdog_acted": r"vms\.ingest\.stall: ([a-z0-9-]+): no packet for",
        "alert_round": r"(MainProcess) vms\.alerts: alert round:",
    }
    return {name: Counter(m.group(1) for m in re.finditer(p, log)) for name, p in patterns.items()}


@pytest.mark.timeout(int(SOAK_S) + 600)
def test_compressed_soak(tmp_path):
    settings = soak_settings(tmp_path)
    control = settings["simulate"]["control_port"]
    run = start_serve(tmp_path, settings, CAMERAS)
    stations = run.stations
    stall_cam, stop_cam, drop_cam = stations[-3:]
    assert stations == soak_station_ids(), (stations, soak_station_ids())  # the alert grace override's station
    healthy = stations[:-3]
    t0 = run.ready_ms
    at = SOAK_S / 300  # the fault plan scales with the soak's length
    plan = [(40, "stall", stall_cam), (60, "resume", stall_cam), (70, "stop", stop_cam), (90, "start", stop_cam),
            (100, "drop", drop_cam), (150, "drop", drop_cam), (170, "stall", stall_cam), (185, "resume", stall_cam),
            (200, "restart", stop_cam), (230, "drop", drop_cam)]
    plan = [(t * at, what, cam) for t, what, cam in plan]
    windows: dict[str, list[list[int]]] = {s: [] for s in stations}  # station -> [start_ms, end_ms] of faults
    poller = Poller(run.base, interval=1.0)
    activity = ClientActivity(run.base, Path(settings["data_dir"]), healthy, t0, SOAK_S)
    ledger = SegmentLedger(run.db_url)
    keyframe_times: dict[str, set[int]] = {s: set() for s in stations}
    report: dict = {"soak_seconds": SOAK_S, "cameras": CAMERAS, "faults": []}
    try:
        poller.start()
        activity.start()
        pending = list(plan)
        next_ledger = 0.0
        while time.time() * 1000 < t0 + SOAK_S * 1000:
            assert run.proc.poll() is None, "vms serve exited during the soak:\n" + run.log_text()[-4000:]
            elapsed = time.time() - t0 / 1000
            while pending and pending[0][0] <= elapsed:
                _t, what, cam = pending.pop(0)
                simulator_command(control, f"{what} {cam}")
                report["faults"].append((now_ms(), what, cam))
                if what in ("stall", "stop"):
                    windows[cam].append([now_ms(), None])
                elif what in ("resume", "start"):
                    windows[cam][-1][1] = now_ms()
                else:  # drop, restart: connections closed at once, the camera stays (or is back) up
                    windows[cam].append([now_ms(), now_ms()])
            for s in stations:
                kf = read_keyframe_time(Path(settings["data_dir"]), s)
                if kf is not None:
                    keyframe_times[s].add(kf)
            if time.monotonic() >= next_ledger:
                ledger.refresh()
                next_ledger = time.monotonic() + 5
            time.sleep(0.5)
        poller.stop()
        activity.stop()
        stop_ms = now_ms()
        run.stop(timeout=60)
        ledger.refresh()  # the rows as the stop left them
    finally:
        for cleanup in (run.kill, poller.stop, activity.stop, ledger.close):
            with contextlib.suppress(Exception):  # a failed clean-up must not hide the failure
                cleanup()

    problems: list[str] = []
    log = run.log_text()
    polls = poller.polls
    tz = ZoneInfo("Asia/Shanghai")

    def faulted(station: str, a: int, b: int) -> bool:
        """A hole [a, b) explained by an injected fault: it starts after the fault began (less a second)
        and ends within RECONNECT_S of the fault's end."""
        return any(a >= w0 - 1000 and b <= (w1 or stop_ms) + RECONNECT_S * 1000 for w0, w1 in windows[station])

    # 1. Footage continuity, from the index: every row seen during the run (retention deleted the old ones).
    window_end = stop_ms - 1000
    for s in stations:
        for a, b in holes(ledger.intervals(s), t0, window_end):
            if not faulted(s, a, b):
                problems.append(f"index: {s} has no footage for {(b - a) / 1000:.1f} s from {iso(a)}")
    # ... and from the files on disk (what retention left: the last two minutes, and the held footage).
    disk = {s: disk_intervals(run.footage_root, s, tz) for s in stations}
    for s in stations:
        files = disk[s]
        if not files:
            problems.append(f"disk: {s} has no footage left")
            continue
        recent = [(a, b) for a, b, _f in files if b >= window_end - RETENTION_S * 1000 + 30_000]
        if recent:
            for a, b in holes(recent, max(recent[0][0], t0), window_end):
                if not faulted(s, a, b):
                    problems.append(f"disk: {s} has no footage for {(b - a) / 1000:.1f} s from {iso(a)}")
    # Each file against its row: same length within half a second.
    rows = {(r[4], r[5]): r for r in ledger.rows.values()}
    for s in stations:
        for a, b, rel in disk[s]:
            row = rows.get(("main", rel))
            if row is None:
                problems.append(f"disk: {rel} has no index row")
            elif abs((row[2] - row[1]) - (b - a)) > 500:
                problems.append(f"disk: {rel} lasts {(b - a)} ms, its row {row[2] - row[1]} ms")

    # 2. Held footage survives; the rest really was deleted.
    hold = activity.held
    if hold is None:
        problems.append("the hold could not be placed")
    else:
        held = [(a, b) for a, b, _f in disk[hold["station"]] if b > hold["start_ms"] and a < hold["end_ms"]]
        gaps = holes(held, hold["start_ms"], hold["end_ms"])
        if not held or gaps:
            problems.append(f"held footage of {hold['station']} lost: {len(held)} files left, holes {gaps}")
    from vms.db.engine import Database
    from vms.db.models import Alert, PurgeLog, Segment

    db = Database(run.db_url)
    try:
        with db.session() as s:
            expired = dict(s.execute(select(PurgeLog.station_id, func.sum(PurgeLog.segments))
                                     .where(PurgeLog.reason == "expired").group_by(PurgeLog.station_id)).all())
            growing = s.scalar(select(func.count()).select_from(Segment).where(Segment.state == "growing"))
            offline_alerts = [(a.station_id, a.state) for a in
                              s.scalars(select(Alert).where(Alert.rule == "camera_offline"))]
    finally:
        db.dispose()
    false_alarms = sorted(sid for sid, _state in offline_alerts if sid != stop_cam)
    if false_alarms:
        problems.append(f"camera_offline alerts for cameras whose faults were all shorter than the 30 s grace: "
                        f"{false_alarms}")
    if [state for sid, state in offline_alerts if sid == stop_cam] != ["resolved"]:
        problems.append(f"{stop_cam}'s 20 s outage (grace 8 s) should have raised one alert, since resolved: "
                        f"{offline_alerts}")
    report["alerts"] = {"camera_offline": offline_alerts}
    for s in stations:
        if not expired.get(s):
            problems.append(f"retention deleted nothing of {s} (retention {RETENTION_S} s)")
        elif s != (hold or {}).get("station") and min(a for a, _b, _f in disk[s]) < t0 + 30_000:
            problems.append(f"{s}: footage from the first 30 s is still on disk after {SOAK_S:g} s")

    # 3. What the API said, poll by poll.
    stall_ms = STALL_S * 1000
    stalls = silent_stalls(polls, stall_ms)
    if stalls:
        problems.append(f"{len(stalls)} answers say streaming without a recent packet, e.g. {stalls[:5]}")
    answered = [p for p in polls if p.status == 200 and p.latency_s is not None]
    slow = [p for p in polls if p.status != 200 or p.latency_s is None or p.latency_s > API_SLOW_S
            or p.health_latency_s is None or p.health_latency_s > API_SLOW_S]
    if slow:
        problems.append(f"{len(slow)} of {len(polls)} polls unanswered or slower than {API_SLOW_S:g} s, e.g. "
                        + "; ".join(f"{iso(p.sent_ms)} {p.status} {p.latency_s} {p.health_latency_s} {p.error}"
                                    for p in slow[:5]))
    sent = [p.sent_ms for p in polls]
    longest = max((b - a for a, b in zip(sent, sent[1:], strict=False)), default=0)
    if len(polls) < SOAK_S * 0.8 or longest > API_SLOW_S * 1000 + 1000:
        problems.append(f"{len(polls)} polls in {SOAK_S:g} s, longest interval {longest} ms")
    for p in answered:
        stale = p.sent_ms - p.generated_ms
        if stale > settings["api"]["status_cache_seconds"] * 1000 + 3000:
            problems.append(f"status answered at {iso(p.sent_ms)} describes {stale} ms before")
        odd = {c["state"] for c in p.cameras.values()} - CAMERA_STATES
        if odd:
            problems.append(f"camera states outside the contract: {odd}")
    # /api/health: {"status": ok|degraded|failing, "cameras": {enabled, recording, not_recording, stuck}},
    # 503 only when failing.
    for p in polls:
        h = p.health or {}
        cams = h.get("cameras") or {}
        if (h.get("status") not in HEALTH_STATES or (p.health_status == 503) != (h.get("status") == "failing")
                or cams.get("enabled") != CAMERAS
                or cams.get("recording", -1) + cams.get("not_recording", -1) != CAMERAS):
            problems.append(f"/api/health at {iso(p.sent_ms)} broke its contract: {p.health_status} {h}")
            break
    # With no fault near, every camera streams and records, and health says ok.
    quiet_from = max(w[1] or stop_ms for ws in windows.values() for w in ws) + RECONNECT_S * 1000
    assert stop_ms - quiet_from >= 15_000, "the fault plan leaves no quiet end"
    for p in polls:
        if p.sent_ms < quiet_from or p.status != 200:
            continue
        down = {s: c for s, c in p.cameras.items() if c["state"] != "streaming" or not c["recording"]}
        if down or (p.health or {}).get("status") != "ok":
            problems.append(f"at {iso(p.sent_ms)} (answer of {p.generated_ms}), with no fault left: not recording "
                            f"{down}, health {p.health}")
            break

    # 4. Operators' calls during the soak, and the clean-up of what they left.
    problems += activity.problems
    leftover = [pid for pid, made in activity.playbacks if made < stop_ms - 60_000
                and (Path(settings["data_dir"]) / "cache" / "api" / "playback" / f"{pid}.mp4").exists()]
    if len(activity.playbacks) < MIN_RUNS or leftover:
        problems.append(f"{len(activity.playbacks)} playbacks; files older than their 18 s kept: {leftover}")
    export_files = list((Path(settings["data_dir"]) / "exports").glob("*.mp4"))
    if len(activity.exports) < MIN_RUNS // 2 or len(export_files) > 3:
        problems.append(f"{len(activity.exports)} exports, {len(export_files)} files left (they expire after 20 s)")

    # 5. Each periodic path ran at least MIN_RUNS times: the server's own evidence.
    counts = log_counts(log)
    workers = sorted({w for w in counts["reconcile"]} | {w for w in counts["analysis_tick"]})
    evidence = {
        "segment cut (complete segments per camera, min)": min(ledger.completed(s) for s in stations),
        "status publishing (distinct camera updated_ms per camera, min)":
            min(distinct_values(polls, s, "updated_ms") for s in stations),
        "stall watchdog tick (distinct last_packet_ms per camera, min)":
            min(distinct_values(polls, s, "last_packet_ms") for s in stations),
        "index writer (distinct recorded_until_ms per camera, min)":
            min(distinct_values(polls, s, "recorded_until_ms") for s in stations),
        "keyframe cache rewrite (distinct keyframe times per camera, min)":
            min(len(keyframe_times[s]) for s in stations),
        "worker reconcile (per worker, min)": min((counts["reconcile"][w] for w in workers), default=0),
        "analysis sink flush (per worker, min)": min((counts["analysis_tick"][w] for w in workers), default=0),
        "calibration reload (per worker, min)": min((counts["calibration_reload"][w] for w in workers), default=0),
        "analysis model save (per healthy camera, min)": min(counts["model_save"][s] for s in healthy),
        "retention sweep": counts["retention_sweep"]["MainProcess"],
        "retention pressure check": counts["pressure_check"]["MainProcess"],
        "daily audit": counts["daily_audit"]["MainProcess"],
        "alert round": counts["alert_round"]["MainProcess"],
        "API maintenance (exports, playback files)": counts["api_maintenance"]["MainProcess"],
        "API status cache (distinct generated_ms)": len({p.generated_ms for p in answered}),
        "login expiry (sessions expired and renewed)": poller.client.expired + activity.client.expired,
        "live relay connected, then let go after the linger": min(counts["relay_linger"]["MainProcess"],
                                                                  sum(counts["relay_released"].values())),
    }
    short = {k: v for k, v in evidence.items() if v < MIN_RUNS}
    if short or len(workers) < 2:
        problems.append(f"periodic paths that ran fewer than {MIN_RUNS} times: {short} (workers {workers})")
    if not counts["calibration_changed"]:
        problems.append("no worker picked up the calibration edit")
    if not counts["stall_watchdog_acted"][stall_cam]:
        problems.append(f"the stall watchdog never acted on {stall_cam}")
    report["evidence"] = evidence

    # 6. Nothing failed behind the scenes, and the stop is clean.
    errors = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    if errors:
        problems.append(f"{len(errors)} ERROR lines in the log, e.g. {errors[:5]}")
    if run.exit_code != 0 or run.stop_seconds is None or run.stop_seconds > 15:
        problems.append(f"SIGTERM: exit code {run.exit_code} after {run.stop_seconds} s (want 0 within 15 s)")
    if growing:
        problems.append(f"{growing} segments left growing after the stop")
    check = run_vms(run.env, "recordings", "check", check=False)
    if check.returncode != 0:
        problems.append(f"vms recordings check exit {check.returncode}: {check.stdout[-2000:]}")

    report["problems"] = problems
    report["polls"] = len(polls)
    report["stop_seconds"] = run.stop_seconds
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (REPORT_DIR / "serve.log").write_text(log)
    (REPORT_DIR / "polls.json").write_text(json.dumps([p.__dict__ for p in polls], default=str))
    assert not problems, f"{len(problems)} problems (artifacts/soak/):\n" + "\n".join(problems)
