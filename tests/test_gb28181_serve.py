"""GB/T 28181 cameras recorded by a real `vms serve` (issue 18), end to end on loopback.

Simulated devices (vms.simulate.gb28181_device, in this process) register over SIP to the server's
GbServer; stations bound to their channels are recorded through the same path as RTSP cameras (segments,
index, snapshots from the keyframe cache, analysis). Along the way: an unknown device is refused and
listed until accepted, a wrong password is refused, the device's BYE and its lost keepalives end the
recording with their own gap reasons and it comes back, and a worker killed with SIGKILL is restarted
and its GB cameras record again.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import av
import httpx
import psutil
import pytest
import websockets
from sqlalchemy import select

from tests.serve_support import REPO, gb28181_serve_config, run_vms, stop_serve
from vms.db.engine import Database
from vms.db.models import Gap, Segment, StationState
from vms.simulate.content import VideoFormat, pattern_clip
from vms.simulate.gb28181_device import GbDeviceSpec, GbSimulator, gb_ids

pytestmark = [pytest.mark.slow]

SERVER_ID, DOMAIN, PASSWORD = "44132300002000000001", "4413230000", "gb-test-pw1"
STATIONS = ("pingshan-town", "pingshan-v01", "pingshan-v02")
ADMIN, ADMIN_PASSWORD = "gb-admin", "Gb-admin-test-password-1"


def _devices(clip: Path) -> list[GbDeviceSpec]:
    specs = []
    for n in (1, 2, 3):
        device_id, channel_id = gb_ids(DOMAIN, n)
        name = ("萳村服务站", "龍山镇服务点", "未登记设备")[n - 1]
        specs.append(GbDeviceSpec(device_id, [(channel_id, name)], PASSWORD if n != 3 else "other-pw-3", clip,
                                  fps=15, audio="pcma" if n == 1 else None))
    return specs


def _wait(pred, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.5)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"not within {timeout:.0f} s: {what}\n{tail}")


@pytest.fixture
def rig(tmp_path: Path, request):
    gb_extra = getattr(request, "param", {"backfill": False})
    clip = pattern_clip(tmp_path / "cache", VideoFormat(320, 240, 15, 300, 15), 4.0)
    specs = _devices(clip)
    (dev1, ch1), (dev2, ch2) = (specs[0].device_id, specs[0].channels[0][0]), (specs[1].device_id,
                                                                              specs[1].channels[0][0])
    cameras = {STATIONS[0]: {"main_url": f"gb28181://{dev1}/{ch1}"},  # TCP passive: the device dials out
               STATIONS[1]: {"main_url": f"gb28181://{dev2}/{ch2}", "transport": "udp"},
               STATIONS[2]: {"main_url": None}}
    made = gb28181_serve_config(tmp_path, cameras, {
        "server_id": SERVER_ID, "domain": DOMAIN, "password": PASSWORD, "keepalive_interval_seconds": 2,
        "keepalive_missed": 3, "no_media_seconds": 6, "invite_timeout_seconds": 4, **gb_extra},
        users=((ADMIN, "admin", ADMIN_PASSWORD),))
    env, sip_port = made["env"], made["sip_port"]
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([str(REPO / ".venv/bin/vms"), "serve", "--workers", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    sim = GbSimulator(specs, ("127.0.0.1", sip_port), SERVER_ID, DOMAIN, keepalive_seconds=2)
    db = Database(f"sqlite:///{tmp_path / 'data' / 'vms.db'}")
    try:
        _wait(lambda: "gb28181: SIP on" in log_path.read_text(), 60, "the SIP server started", log_path)
        sim.start()
        yield {"proc": proc, "env": env, "sim": sim, "db": db, "log": log_path, "specs": specs,
               "base": made["base"], "root": tmp_path}
    finally:
        sim.close()
        stop_serve(proc)
        log.close()
        db.dispose()


async def _watch_mse(base: str, token: str, station: str) -> tuple[dict, bytes]:
    uri = base.replace("http://", "ws://") + f"/api/stations/{station}/live/mse"
    async with websockets.connect(uri, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        header = json.loads(await asyncio.wait_for(ws.recv(), 10))
        data = b""
        while len(data) < 60_000:
            data += await asyncio.wait_for(ws.recv(), 10)
    return header, data


def _segments(db: Database, station: str) -> list[tuple[int, int, str, str]]:
    with db.session() as s:
        return [tuple(r) for r in s.execute(
            select(Segment.start_ms, Segment.end_ms, Segment.state, Segment.path)
            .where(Segment.station_id == station).order_by(Segment.start_ms)).all()]


def _states(db: Database, station: str) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(StationState.state).where(StationState.station_id == station)))


def _gaps(db: Database, station: str) -> list[tuple[str, int, int | None]]:
    with db.session() as s:
        return [tuple(r) for r in s.execute(select(Gap.reason, Gap.start_ms, Gap.end_ms)
                                            .where(Gap.station_id == station).order_by(Gap.start_ms)).all()]


def _complete_after(db: Database, station: str, after_ms: int) -> int:
    return sum(1 for start, _end, state, _ in _segments(db, station) if state == "complete" and start >= after_ms)


def _devices_json(env) -> dict[str, dict]:
    rows = json.loads(run_vms(env, "gb28181", "devices", "--format", "json").stdout)
    return {d["device_id"]: d for d in rows}


def test_gb28181_cameras_are_recorded_like_rtsp_ones_through_faults_and_a_worker_kill(rig):
    db, env, sim, log = rig["db"], rig["env"], rig["sim"], rig["log"]
    tcp_station, udp_station = STATIONS[0], STATIONS[1]
    dev1, dev2, dev3 = (s.device_id for s in rig["specs"])
    # Both bound cameras record: complete segments, over TCP passive and over UDP.
    _wait(lambda: _complete_after(db, tcp_station, 0) >= 2 and _complete_after(db, udp_station, 0) >= 2, 90,
          "two complete segments from each GB28181 camera", log)
    path = rig["root"] / "recordings" / _segments(db, tcp_station)[0][3]
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264" and video.codec_context.width == 320
        assert container.streams.audio and container.streams.audio[0].codec_context.name == "aac"  # G.711 kept
        frames = sum(1 for p in container.demux(video) if p.size)
    assert 45 <= frames <= 75, frames  # ~4 s at 15 fps

    # The registry: two devices online with their catalog (GB18030 names with a rare character), the
    # unknown one refused and listed, not recorded.
    devices = _wait(lambda: (d := _devices_json(env)) and d.get(dev1, {}).get("channels") and d, 30,
                    "the catalog stored", log)
    assert devices[dev1]["state"] == "online" and devices[dev1]["transport"] == "UDP"
    assert devices[dev1]["channels"][0]["name"] == "萳村服务站"
    assert devices[dev1]["channels"][0]["station_id"] == tcp_station
    assert devices[dev3]["state"] == "refused" and not devices[dev3]["accepted"]
    assert "password" in (devices[dev3]["problem"] or "")  # its password is not ours: refused before asked
    # The API shows the same to an admin; a snapshot comes from the GB camera's keyframes.
    token = httpx.post(f"{rig['base']}/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD}
                       ).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    api_devices = httpx.get(f"{rig['base']}/api/gb28181/devices", headers=headers).json()
    assert {d["device_id"] for d in api_devices} == {dev1, dev2, dev3}
    snap = httpx.get(f"{rig['base']}/api/stations/{tcp_station}/snapshot.jpg", headers=headers, timeout=20)
    assert snap.status_code == 200 and snap.content[:2] == b"\xff\xd8"
    stations = httpx.get(f"{rig['base']}/api/stations", headers=headers).json()["stations"]
    assert {s["id"]: s["camera"]["state"] for s in stations}[tcp_station] == "streaming"
    # Live view: the same tap as an RTSP camera's, here over the MSE fallback (fMP4 over a WebSocket).
    header, data = asyncio.run(_watch_mse(rig["base"], token, tcp_station))
    assert header["mime"].startswith('video/mp4; codecs="avc1.') and header["width"] == 320
    with av.open(io.BytesIO(data)) as live:
        assert sum(1 for _ in live.decode(video=0)) >= 15

    # The device hangs up: a gap says so, and the camera records again.
    before = int(time.time() * 1000)
    sim.fault(dev1, "bye")
    _wait(lambda: any(r == "device_bye" and start >= before - 2000 for r, start, _ in _gaps(db, tcp_station)),
          30, "a device_bye gap", log)
    _wait(lambda: _complete_after(db, tcp_station, before) >= 1, 40, "recording again after the BYE", log)

    # Keepalives stop: offline after 3 missed (2 s each), gap keepalive_lost; they resume: the device is
    # refused as unregistered, registers again, and records.
    before = int(time.time() * 1000)
    sim.fault(dev2, "stop-keepalive")
    _wait(lambda: any(r == "keepalive_lost" and start >= before for r, start, _ in _gaps(db, udp_station)), 30,
          "a keepalive_lost gap", log)
    assert _devices_json(env)[dev2]["state"] == "offline"
    sim.fault(dev2, "resume-keepalive")
    resumed = int(time.time() * 1000)
    _wait(lambda: _complete_after(db, udp_station, resumed) >= 1, 60,
          "recording again after the keepalives came back", log)

    # SIGKILL the ingest worker: the supervisor restarts it; the SIP server hangs up the dead worker's
    # streams and the new worker invites again.
    started = re.findall(r"ingest worker 0 started \(pid (\d+)\)", log.read_text())
    assert started, log.read_text()[-3000:]
    worker = psutil.Process(int(started[-1]))
    assert worker.ppid() == rig["proc"].pid
    killed_ms = int(time.time() * 1000)
    os.kill(worker.pid, signal.SIGKILL)
    _wait(lambda: _complete_after(db, tcp_station, killed_ms) >= 1 and _complete_after(db, udp_station, killed_ms)
          >= 1, 60, "both GB cameras recording again after the worker was killed", log)
    for station in (tcp_station, udp_station):
        segs = [s for s in _segments(db, station) if s[0] >= killed_ms - 10_000]
        first_after = min(s[0] for s in segs if s[0] >= killed_ms)
        last_before = max((s[1] for s in segs if s[0] < killed_ms), default=killed_ms)
        assert first_after - last_before <= 30_000, (station, first_after - last_before)

    # The analysis runs on GB cameras as on any: a state decided from their keyframes (the pattern clip
    # shows no station, so "unknown"; the first decision takes its early samples, ~70 s).
    _wait(lambda: _states(db, tcp_station) and _states(db, udp_station), 90, "states from the analysis", log)

    # The unknown device, once accepted, registers at its next try (the simulator retries every 10 s).
    run_vms(env, "gb28181", "accept", dev3, "--password", "other-pw-3")
    _wait(lambda: _devices_json(env)[dev3]["state"] == "online", 30, "the accepted device online", log)
    assert rig["proc"].poll() is None, log.read_text()[-3000:]
    stop_serve(rig["proc"])
    assert rig["proc"].returncode == 0, log.read_text()[-3000:]
    check = subprocess.run([str(REPO / ".venv/bin/vms"), "recordings", "check"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("rig", [{"backfill": True, "backfill_scan_seconds": 2, "backfill_delay_seconds": 1}],
                         indirect=True)
def test_a_link_outage_is_filled_from_the_cameras_card(rig):
    """The camera's media stops for ~15 s (the link, not the camera: it records on its card); once it is
    back the gap is filled from the card (RecordInfo, then a Download faster than real time) with
    segments inside the gap, and the gap row says so."""
    db, sim, log = rig["db"], rig["sim"], rig["log"]
    station = STATIONS[0]
    dev1 = rig["specs"][0].device_id
    _wait(lambda: _complete_after(db, station, 0) >= 2, 90, "recording", log)
    dropped_ms = int(time.time() * 1000)
    sim.fault(dev1, "drop-media")
    time.sleep(15)
    sim.fault(dev1, "resume-media")
    resumed_ms = int(time.time() * 1000)
    _wait(lambda: _complete_after(db, station, resumed_ms) >= 1, 60, "recording again", log)
    # The outage is one gap or several (the reason changes as the session retries: stalled, no_media...;
    # bad_stream once in CI, the media resuming mid-stream on a loaded machine).
    gaps = [g for g in _gap_rows(db, station) if g["end_ms"] and g["end_ms"] > dropped_ms]
    assert gaps and {g["reason"] for g in gaps} <= {"no_media", "stalled", "stream_ended", "bad_stream"}, gaps
    outage = (gaps[0]["start_ms"], gaps[-1]["end_ms"])
    assert outage[1] - outage[0] >= 12_000, gaps
    ids = {g["id"] for g in gaps if g["end_ms"] - g["start_ms"] >= 2000}
    done = _wait(lambda: (rows := [g for g in _gap_rows(db, station) if g["id"] in ids]) and all(
        g["backfill"] not in (None, "running") for g in rows) and rows, 90, "every gap of the outage backfilled", log)
    for g in done:
        assert g["backfill"] == "filled" and g["filled_by"] == "camera_card", done
    inside = [s for s in _segments(db, station) if outage[0] <= s[0] and s[1] <= outage[1]]
    covered = sum(b - a for a, b, _, _ in inside)
    # All of it but up to a GOP (1 s here) at the start of each gap's piece: a piece starts on a keyframe.
    assert covered >= outage[1] - outage[0] - 1100 * len(done), (covered, outage, inside)
    assert abs(covered - sum(g["filled_ms"] for g in done)) <= 10 * len(done)
    # Segments of one camera never overlap, the filled ones included.
    segs = _segments(db, station)
    for (_a1, b1, _, p1), (a2, _b2, _, p2) in zip(segs, segs[1:], strict=False):
        assert b1 <= a2, (p1, p2)
    # Playback of the hole, through the API as an operator would: the card's footage plays.
    token = httpx.post(f"{rig['base']}/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD}
                       ).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    answer = httpx.post(f"{rig['base']}/api/stations/{station}/playback", headers=headers, timeout=30,
                        json={"start": str(outage[0] + 1500), "end": str(outage[1]), "reason": "核查断网时段"})
    assert answer.status_code == 201, answer.text
    video = httpx.get(rig["base"] + answer.json()["url"], headers=headers, timeout=30)
    with av.open(io.BytesIO(video.content)) as played:
        assert sum(1 for _ in played.decode(video=0)) >= 0.8 * (outage[1] - outage[0] - 1500) / 1000 * 15
    frames = 0
    for _a, _b, _, rel in inside:
        with av.open(str(rig["root"] / "recordings" / rel)) as container:
            frames += sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    assert frames >= 0.9 * covered / 1000 * 15, (frames, covered)  # the footage is there, at 15 fps


def _gap_rows(db: Database, station: str) -> list[dict]:
    with db.session() as s:
        return [{"id": g.id, "reason": g.reason, "start_ms": g.start_ms, "end_ms": g.end_ms, "backfill": g.backfill,
                 "filled_by": g.filled_by, "filled_ms": g.filled_ms}
                for g in s.execute(select(Gap).where(Gap.station_id == station).order_by(Gap.start_ms)).scalars()]


def test_kill_9_of_vms_ingest_loses_at_most_the_last_fragment_and_gb_cameras_come_back(tmp_path):
    """The RTSP crash test's bound (test_ingest_crash.py) for GB cameras, over TCP passive and UDP: a
    SIGKILL of the whole `vms ingest` (the SIP server with it) mid-segment loses at most the last
    fragment, plus what the media pipe and the receiver held; started again, it restores the UDP
    device's registration from the database, the TCP device registers again, and both record."""
    clip = pattern_clip(tmp_path / "cache", VideoFormat(320, 240, 15, 300, 15), 4.0)
    specs = _devices(clip)[:2]
    cameras = {STATIONS[0]: {"main_url": f"gb28181://{specs[0].device_id}/{specs[0].channels[0][0]}"},
               STATIONS[1]: {"main_url": f"gb28181://{specs[1].device_id}/{specs[1].channels[0][0]}",
                             "transport": "udp"}}
    made = gb28181_serve_config(tmp_path, cameras, {
        "server_id": SERVER_ID, "domain": DOMAIN, "password": PASSWORD, "keepalive_interval_seconds": 2,
        "keepalive_missed": 3, "no_media_seconds": 6, "invite_timeout_seconds": 4, "backfill": False})
    env = made["env"]
    db = Database(f"sqlite:///{tmp_path / 'data' / 'vms.db'}")
    vms = str(REPO / ".venv/bin/vms")
    sim = GbSimulator(specs, ("127.0.0.1", made["sip_port"]), SERVER_ID, DOMAIN, keepalive_seconds=2)
    stations = STATIONS[:2]
    try:
        log1 = open(tmp_path / "ingest1.log", "w")
        proc = subprocess.Popen([vms, "ingest", "--no-analysis"], env=env, stdout=log1, stderr=log1,
                                start_new_session=True)
        try:
            _wait(lambda: "gb28181: SIP on" in (tmp_path / "ingest1.log").read_text(), 60, "the SIP server")
            sim.start()
            _wait(lambda: all(_complete_after(db, sid, 0) >= 1 for sid in stations), 60, "recording",
                  tmp_path / "ingest1.log")
            time.sleep(2.5)  # mid-segment (4 s segments): several fragments written
        finally:
            killed_ms = int(time.time() * 1000)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log1.close()
        last_before = {sid: _segments(db, sid)[-1] for sid in stations}
        log2 = open(tmp_path / "ingest2.log", "w")
        proc = subprocess.Popen([vms, "ingest", "--no-analysis"], env=env, stdout=log2, stderr=log2,
                                start_new_session=True)
        try:
            _wait(lambda: all(_complete_after(db, sid, killed_ms) >= 1 for sid in stations), 60,
                  "both GB cameras recording after the restart", tmp_path / "ingest2.log")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, (tmp_path / "ingest2.log").read_text()[-3000:]
            log2.close()
    finally:
        sim.close()
    for sid in stations:
        segs = _segments(db, sid)
        crashed = next(s for s in segs if s[3] == last_before[sid][3])
        assert crashed[2] == "complete"  # repaired at the restart: what reached the disk is kept
        # One fragment (0.5 s), the copier's pause (0.5 s), a frame, what the pipe and the receiver's 20 ms
        # batches held, and the kill's timing slack.
        lost_ms = killed_ms - crashed[1]
        assert lost_ms <= 500 + 500 + 1000 / 15 + 100 + 600, f"{sid}: lost {lost_ms} ms at the kill"
        for (_a1, b1, _, p1), (a2, _b2, _, p2) in zip(segs, segs[1:], strict=False):
            assert b1 <= a2, (p1, p2)
    check = subprocess.run([vms, "recordings", "check"], env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    db.dispose()
