"""A real `vms serve` process recording simulated cameras, for end-to-end tests (API and console)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "console secret 1"
USERS = (("wang-admin", "admin"), ("chen-viewer", "viewer"), ("li-operator", "operator"), ("zhao-auditor", "auditor"))


_PORTS = random.SystemRandom()  # not the seedable module state: workers must not pick alike


def free_port() -> int:
    """A free port for a server started seconds later, taken below the kernel's ephemeral range: a port
    from bind(0) is an ephemeral one, which the outgoing connections of the other pytest-xdist workers
    (cameras, API clients) may be given in between."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = _PORTS.randint(max(1024, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def run_vms(env, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv/bin/vms"), *args], env=env, input=stdin, text=True, check=True,
                          capture_output=True, timeout=120)


@contextmanager
def running_serve(root: Path, cameras: int = 2, footage_seconds: float = 10, api: dict | None = None,
                  settings: dict | None = None, stations_file: Path | None = None) -> Iterator[dict]:
    """`vms serve` with `cameras` simulated cameras (the first stations without camera URLs), users of
    every role (password PASSWORD), and `footage_seconds` of footage recorded before yielding. `api`:
    more settings of the api section; `settings`: more top-level sections (e.g. {"alerts": {...}});
    `stations_file`: another catalogue (its cameras with URLs are recorded too; `cameras` counts all)."""
    stations_file = stations_file or REPO / "config" / "stations.yaml"
    port = free_port()
    config = root / "vms.yaml"
    config.write_text(json.dumps({
        "data_dir": str(root / "data"),
        "stations_file": str(stations_file),
        "storage": {"volumes": [{"name": "main", "path": str(root / "recordings")}]},
        "ingest": {"segment_seconds": 4, "status_interval_seconds": 1},
        "api": {"port": port, "status_cache_seconds": 0.5, **(api or {})},
        "simulate": {"enabled": "auto", "max_cameras": cameras, "port": free_port(), "width": 320,
                     "height": 240, "fps": 15, "bitrate_kbps": 300, "content": "pattern"},
        "log_level": "WARNING",
        **(settings or {}),
    }))
    # PYTHONPATH: the server runs this checkout's code (the console's files too), not the checkout the
    # virtualenv's editable install points at (a git worktree shares the main checkout's .venv).
    env = {**os.environ, "VMS_CONFIG": str(config), "PYTHONPATH": str(REPO)}
    run_vms(env, "db", "upgrade")
    run_vms(env, "stations", "import", str(stations_file))
    for name, role in USERS:
        run_vms(env, "users", "create", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen([str(REPO / ".venv/bin/vms"), "serve", "--workers", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        token = None
        deadline = time.monotonic() + 90
        streaming: list[str] = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, (root / "serve.log").read_text()[-3000:]
            try:
                if token is None:
                    token = httpx.post(f"{base}/api/auth/login",
                                       json={"username": "wang-admin", "password": PASSWORD}).json()["token"]
                stations = httpx.get(f"{base}/api/stations", headers={"Authorization": f"Bearer {token}"}).json()
                streaming = [s["id"] for s in stations["stations"] if s["camera"]["state"] == "streaming"]
                if len(streaming) == cameras:
                    break
            except (httpx.HTTPError, KeyError):
                pass
            time.sleep(0.5)
        assert len(streaming) == cameras, "simulated cameras not streaming: " + (root / "serve.log").read_text()[-3000:]
        time.sleep(footage_seconds)
        yield {"base": base, "stations": streaming, "token": token, "root": root, "env": env, "proc": proc}
    finally:
        stop_serve(proc)
        log.close()


def stop_serve(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def gb28181_serve_config(root: Path, cameras: dict[str, dict], gb: dict, users: tuple = ()) -> dict:
    """The files for a `vms serve` with GB/T 28181 on loopback: a stations file holding only `cameras`
    (station id -> its camera section), a vms.yaml with short segments, no simulated RTSP camera and the
    gb28181 section `gb` (merged over enabled, 127.0.0.1, a free SIP port and 31 media ports), migrated,
    imported, and `users` ((name, role, password)...) created. Returns {"env", "sip_port", "base",
    "stations" (id -> name)}."""
    catalogue = yaml.safe_load((REPO / "config" / "stations.yaml").read_text())
    stations = [s for s in catalogue["stations"] if s["id"] in cameras]
    for station in stations:
        station["camera"] = cameras[station["id"]]
    catalogue["stations"] = stations
    stations_file = root / "stations.yaml"
    stations_file.write_text(yaml.safe_dump(catalogue, allow_unicode=True))
    sip_port, api_port, media = free_port(), free_port(), free_port()
    config = root / "vms.yaml"
    config.write_text(json.dumps({
        "data_dir": str(root / "data"),
        "stations_file": str(stations_file),
        "storage": {"volumes": [{"name": "main", "path": str(root / "recordings"), "min_free_bytes": 0,
                                 "critical_free_bytes": 0}]},
        "ingest": {"segment_seconds": 4, "status_interval_seconds": 1, "stall_seconds": 4},
        "api": {"port": api_port, "status_cache_seconds": 0.5},
        "simulate": {"enabled": "never"},
        "gb28181": {"enabled": True, "sip_host": "127.0.0.1", "sip_port": sip_port,
                    "media_ports": [media, media + 30], **gb},
        "log_level": "INFO",
    }))
    env = {**os.environ, "VMS_CONFIG": str(config), "PYTHONPATH": str(REPO)}
    run_vms(env, "db", "upgrade")
    run_vms(env, "stations", "import", str(stations_file))
    for name, role, password in users:
        run_vms(env, "users", "create", name, "--role", role, "--password-stdin", stdin=password + "\n")
    return {"env": env, "sip_port": sip_port, "base": f"http://127.0.0.1:{api_port}",
            "stations": {s["id"]: s["name"] for s in stations}}
