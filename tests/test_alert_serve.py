"""Alerts end to end with real processes (issue 20): `vms serve` recording simulated cameras over RTSP,
its alert round, and a webhook receiver on 127.0.0.1 that checks the body's HMAC signature.

A camera stopped at the simulator -> one firing message after the grace; started again -> one recovery.
An ingest worker killed with SIGKILL -> restarted by the supervisor, and one "worker restarted" message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import yaml

from tests.serve_support import REPO, free_port, run_vms, stop_serve

pytestmark = [pytest.mark.slow, pytest.mark.rtsp]

SECRET = "hook-secret-for-the-test"
STATIONS = ("pingshan-town", "pingshan-v01", "pingshan-v02")


class WebhookReceiver:
    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ts = self.headers.get("X-VMS-Timestamp", "")
                want = "sha256=" + hmac.new(SECRET.encode(), f"{ts}.".encode() + raw, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(want, self.headers.get("X-VMS-Signature", "")):
                    receiver.bad_signatures += 1
                receiver.bodies.append(json.loads(raw))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[dict]:
        return [a for body in self.bodies for a in body["alerts"]]

    def wait_for(self, pred, timeout: float, what: str) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [a for a in self.alerts() if pred(a)]
            if found:
                return found
            time.sleep(0.25)
        raise AssertionError(f"no {what} within {timeout:.0f} s; received: {self.alerts()}")


@pytest.fixture
def serve_with_alerts(tmp_path: Path):
    receiver = WebhookReceiver()
    catalogue = yaml.safe_load((REPO / "config" / "stations.yaml").read_text())
    catalogue["stations"] = [s for s in catalogue["stations"] if s["id"] in STATIONS]
    stations_file = tmp_path / "stations.yaml"
    stations_file.write_text(yaml.safe_dump(catalogue, allow_unicode=True))
    control_port = free_port()
    config = tmp_path / "vms.yaml"
    config.write_text(json.dumps({
        "data_dir": str(tmp_path / "data"),
        "stations_file": str(stations_file),
        "storage": {"volumes": [{"name": "main", "path": str(tmp_path / "recordings"), "min_free_bytes": 0,
                                 "critical_free_bytes": 0}]},
        "ingest": {"segment_seconds": 4, "status_interval_seconds": 1, "stall_seconds": 4},
        "api": {"port": free_port()},
        "simulate": {"enabled": "auto", "port": free_port(), "control_port": control_port, "width": 320,
                     "height": 240, "fps": 15, "bitrate_kbps": 300, "content": "pattern"},
        "analysis": {"enabled": False},
        "alerts": {"webhook_url": receiver.url, "webhook_secret": SECRET, "offline_grace_seconds": 12,
                   "evaluate_seconds": 1, "reminder_minutes": [60], "disk_min_free_percent": 0},
        "log_level": "INFO",
    }))
    env = {**os.environ, "VMS_CONFIG": str(config)}
    run_vms(env, "db", "upgrade")
    run_vms(env, "stations", "import", str(stations_file))
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(REPO / ".venv/bin/vms"), "serve", "--workers", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        yield {"proc": proc, "receiver": receiver, "env": env, "control_port": control_port,
               "log": tmp_path / "serve.log"}
    finally:
        stop_serve(proc)
        log.close()
        receiver.server.shutdown()


def _fault(rig: dict, action: str, camera: str) -> None:
    run_vms(rig["env"], "simulate", "fault", action, camera, "--control-port", str(rig["control_port"]))


def test_a_stopped_camera_alerts_once_and_recovers_once_and_a_killed_worker_is_told(serve_with_alerts):
    rig = serve_with_alerts
    receiver: WebhookReceiver = rig["receiver"]
    # All three cameras record first (no alert while they connect: the grace covers the start).
    time.sleep(20)
    assert receiver.alerts() == [], receiver.alerts()
    target = STATIONS[1]
    _fault(rig, "stop", target)
    stopped_at = time.monotonic()
    [firing] = receiver.wait_for(lambda a: a["state"] == "firing", 60, "firing alert")
    waited = time.monotonic() - stopped_at
    assert firing["station_id"] == target and firing["rule"] == "camera_offline", firing
    assert waited >= 10, f"told after {waited:.1f} s, before the 12 s grace"
    assert firing["local_time"][:4] == time.strftime("%Y") and len(firing["local_time"]) == 19
    time.sleep(5)
    assert len([a for a in receiver.alerts() if a["state"] == "firing"]) == 1  # once, not every round
    _fault(rig, "start", target)
    [resolved] = receiver.wait_for(lambda a: a["state"] == "resolved", 60, "recovery")
    assert resolved["station_id"] == target and resolved["rule"] == "camera_offline"
    # The body of a single message carries the alert's fields at the top too, for simple scripts.
    single = next(b for b in receiver.bodies if b["alerts"][0]["state"] == "resolved")
    assert single["station_id"] == target and single["state"] == "resolved" and single["rule"] == "camera_offline"

    # SIGKILL the ingest worker: the supervisor restarts it, and that is told once.
    started = re.findall(r"ingest worker 0 started \(pid (\d+)\)", rig["log"].read_text())
    assert started, rig["log"].read_text()[-3000:]
    worker = psutil.Process(int(started[-1]))
    assert worker.ppid() == rig["proc"].pid
    os.kill(worker.pid, signal.SIGKILL)
    [restart] = receiver.wait_for(lambda a: a["rule"] == "worker_restarted", 60, "worker restart alert")
    assert restart["severity"] == "major"
    time.sleep(16)  # cameras are back within the grace: no offline alert for the restart
    states = [(a["rule"], a["state"], a["station_id"]) for a in receiver.alerts()]
    assert states.count(("camera_offline", "firing", target)) == 1, states
    assert sum(1 for r, _, _ in states if r == "worker_restarted") == 1, states
    assert receiver.bad_signatures == 0
    assert rig["proc"].poll() is None, rig["log"].read_text()[-3000:]
