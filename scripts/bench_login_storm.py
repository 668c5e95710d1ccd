#!/usr/bin/env python
"""Benchmark a burst of concurrent logins against a real `vms serve` (2 simulated cameras): the API
process's memory (argon2id needs 64 MiB per password check) and the latency of a plain GET meanwhile.

    .venv/bin/python scripts/bench_login_storm.py [--logins 40] [--wrong] [--rounds 3]

Every login of the burst starts at once (a barrier of threads, each with its own connection); with
--wrong they use a wrong password, each from its own forwarded address (127.0.0.1 is made a trusted
proxy), so the failure limits do not stop them before the password check. Meanwhile one client GETs
/api/stations every 50 ms and a sampler reads the server's VmRSS every 20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "bench password 1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_serve(root: Path) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(REPO))
    from vms.core.settings import ApiSettings

    port = free_port()
    api: dict = {"port": port}
    if "trusted_proxies" in ApiSettings.model_fields:  # (before it existed, uvicorn trusted 127.0.0.1 anyway)
        api["trusted_proxies"] = ["127.0.0.1"]
    config = root / "vms.yaml"
    config.write_text(json.dumps({
        "data_dir": str(root / "data"), "stations_file": str(REPO / "config" / "stations.yaml"),
        "storage": {"volumes": [{"name": "main", "path": str(root / "recordings")}]},
        "api": api,
        "simulate": {"max_cameras": 2, "port": free_port(), "width": 320, "height": 240, "content": "pattern"},
        "log_level": "WARNING",
    }))
    env = {**os.environ, "VMS_CONFIG": str(config)}
    vms = str(REPO / ".venv/bin/vms")
    for args, stdin in ((["db", "upgrade"], None), (["stations", "import", str(REPO / "config/stations.yaml")], None),
                        (["users", "create", "bench", "--role", "admin", "--password-stdin"], PASSWORD + "\n")):
        subprocess.run([vms, *args], env=env, input=stdin, text=True, check=True, capture_output=True)
    proc = subprocess.Popen([vms, "serve", "--workers", "1"], env=env, stdout=open(root / "serve.log", "w"),
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code in (200, 503):
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("vms serve did not start: " + (root / "serve.log").read_text()[-2000:])


def storm(base: str, pid: int, token: str, logins: int, wrong: bool, round_no: int) -> dict:
    barrier = threading.Barrier(logins + 1)
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def login(i: int) -> None:
        headers = {"X-Forwarded-For": f"10.{round_no}.{i // 250}.{i % 250 + 1}"} if wrong else {}
        body = {"username": "bench", "password": "wrong password!" if wrong else PASSWORD}
        with httpx.Client(base_url=base, timeout=120) as c:
            barrier.wait()
            t = time.perf_counter()
            r = c.post("/api/auth/login", json=body, headers=headers)
            with lock:
                results.append((r.status_code, time.perf_counter() - t))

    done = threading.Event()
    rss: list[float] = []
    gets: list[float] = []
    errors: list[str] = []

    def sample() -> None:
        while not done.is_set():
            rss.append(rss_mib(pid))
            time.sleep(0.02)

    def get() -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
            while not done.is_set():
                t = time.perf_counter()
                r = c.get("/api/stations")
                if r.status_code != 200:
                    errors.append(f"GET /api/stations: {r.status_code} {r.text[:200]}")
                gets.append(time.perf_counter() - t)
                time.sleep(0.05)

    idle_gets = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        for _ in range(20):
            t = time.perf_counter()
            c.get("/api/stations").raise_for_status()
            idle_gets.append(time.perf_counter() - t)
            time.sleep(0.05)
    rss_before = rss_mib(pid)
    threads = [threading.Thread(target=login, args=(i,)) for i in range(logins)]
    for t in threads:
        t.start()
    helpers = [threading.Thread(target=sample), threading.Thread(target=get)]
    for t in helpers:
        t.start()
    time.sleep(0.2)  # the GET loop and the sampler run before the burst
    t0 = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    burst_s = time.perf_counter() - t0
    time.sleep(0.5)
    done.set()
    for t in helpers:
        t.join()
    return {
        "statuses": dict(Counter(code for code, _ in results)),
        "burst_seconds": round(burst_s, 2),
        "login_p50_s": round(statistics.median(d for _, d in results), 2),
        "login_max_s": round(max(d for _, d in results), 2),
        "rss_before_mib": round(rss_before, 1),
        "rss_peak_mib": round(max(rss), 1),
        "rss_after_mib": round(rss_mib(pid), 1),
        "get_idle_p50_ms": round(statistics.median(idle_gets) * 1000, 1),
        "get_during_p50_ms": round(statistics.median(gets) * 1000, 1),
        "get_during_max_ms": round(max(gets) * 1000, 1),
        "gets_during": len(gets),
        "errors": errors[:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logins", type=int, default=40)
    ap.add_argument("--wrong", action="store_true", help="wrong passwords, each from its own forwarded address")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vms-login-storm-") as tmp:
        proc, base = start_serve(Path(tmp))
        try:
            token = httpx.post(f"{base}/api/auth/login", json={"username": "bench", "password": PASSWORD},
                               timeout=30).json()["token"]
            time.sleep(3)  # the recorder settles
            rounds = []
            for n in range(args.rounds):
                rounds.append(storm(base, proc.pid, token, args.logins, args.wrong, n))
                print(json.dumps(rounds[-1]), flush=True)
                time.sleep(2)
            print(json.dumps({"logins": args.logins, "wrong": args.wrong, "load": os.getloadavg(),
                              "vm_hwm_mib": round(rss_mib(proc.pid, "VmHWM"), 1)}))
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
