#!/usr/bin/env python
"""Benchmark GET /api/stations: 139 stations with live status, 20 concurrent clients, a real uvicorn
server in its own process, over SQLite (and PostgreSQL with --postgres URL).

    .venv/bin/python scripts/bench_api.py [--seconds 20] [--clients 20] [--cache 1.0] [--postgres URL] [--wrk]

The Python clients are 20 threads of httpx in one process: in a closed loop their own GIL queueing
shows in the latencies. --wrk adds the same closed loop from wrk, a C load generator.

The database gets a day of 60 s segments per station, 15 days of activity episodes and open/closed
intervals, camera status rows and some open faults, so the status queries meet realistic tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PASSWORD = "bench password 1"


def seed(settings, db) -> None:
    from sqlalchemy import insert, select

    from vms.api.accounts import create_user
    from vms.catalog.loader import load_catalog
    from vms.catalog.store import import_catalog
    from vms.core.clock import SystemClock
    from vms.db.models import ActivityEpisode, CameraStatus, Fault, Segment, Station, StationState

    now = SystemClock().now_ms()
    with db.session() as s:
        import_catalog(s, load_catalog(REPO / "config" / "stations.yaml"))
        create_user(s, "bench", PASSWORD, "admin", now)
        ids = list(s.scalars(select(Station.id)))
    day = 86_400_000
    with db.session() as s:
        for i, sid in enumerate(ids):
            segs = [{"station_id": sid, "stream": "main", "node": "n1", "volume": "main",
                     "path": f"{sid}/{k}.mp4", "start_ms": now - day + k * 60_000,
                     "end_ms": now - day + (k + 1) * 60_000, "duration_ms": 60_000, "bytes": 15_000_000,
                     "state": "growing" if k == 1439 else "complete"} for k in range(1440)]
            s.execute(insert(Segment), segs)
            eps = [{"station_id": sid, "start_ms": now - 15 * day + k * 1_200_000,
                    "end_ms": now - 15 * day + k * 1_200_000 + 60_000, "peak": 0.5} for k in range(0, 1080)]
            s.execute(insert(ActivityEpisode), eps)
            states = [{"station_id": sid, "state": "open" if k % 2 else "closed",
                       "start_ms": now - 15 * day + k * day // 2,
                       "end_ms": None if k == 29 else now - 15 * day + (k + 1) * day // 2} for k in range(30)]
            s.execute(insert(StationState), states)
            s.add(CameraStatus(station_id=sid, node="n1", state="streaming" if i % 10 else "backoff",
                               reason=None if i % 10 else "timeout", fps=15.0, bitrate_bps=2e6, codec="h264",
                               width=1920, height=1080, updated_ms=now + 3_600_000, reconnects=i % 3,
                               segments_written=1440, bytes_written=1440 * 15_000_000))
            if i % 7 == 0:
                s.add(Fault(station_id=sid, kind="blurred", severity="minor", start_ms=now - 3_600_000))
    # A long-running server has statistics (autovacuum); without them the first plans after a bulk
    # load are not what production sees.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql("ANALYZE")


def serve(data_dir: str, cache: float, port: int, db_url: str | None) -> None:
    from vms.api.app import create_app, serve_app
    from vms.core.clock import SystemClock
    from vms.core.settings import Settings
    from vms.db.engine import Database

    cfg = {"data_dir": data_dir, "api": {"status_cache_seconds": cache},
           "storage": {"volumes": [{"name": "main", "path": f"{data_dir}/rec"}]}}
    if db_url:
        cfg["database_url"] = db_url
    settings = Settings.model_validate(cfg)
    app = create_app(settings, Database(settings.db_url), SystemClock())
    serve_app(app, "127.0.0.1", port, "warning")


def run_clients(port: int, clients: int, seconds: float, interval: float) -> dict:
    """Each client asks, waits for the answer, then waits until `interval` has passed since it asked
    (0: closed loop, as fast as the server answers)."""
    base = f"http://127.0.0.1:{port}"
    token = httpx.post(f"{base}/api/auth/login", json={"username": "bench", "password": PASSWORD}).json()["token"]
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        mine = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = c.get("/api/stations")
                dt = time.perf_counter() - t
                if r.status_code != 200 or b"\"count\":139," not in r.content[:80]:
                    errors[0] += 1
                mine.append(dt * 1000)
                if interval > dt:
                    time.sleep(interval - dt)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
        time.sleep(interval / clients)  # spread the clients over the interval
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 1)

    return {"requests": len(lat), "errors": errors[0], "rps": round(len(lat) / wall, 1), "p50_ms": pct(50),
            "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": round(lat[-1], 1),
            "mean_ms": round(statistics.fmean(lat), 1)}


def run_wrk(port: int, clients: int, seconds: float) -> dict:
    """Closed loop from wrk (C, two threads): the latency measured is the server's, not the queueing of
    20 Python client threads on one GIL."""
    base = f"http://127.0.0.1:{port}"
    token = httpx.post(f"{base}/api/auth/login", json={"username": "bench", "password": PASSWORD}).json()["token"]
    out = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{int(seconds)}s", "--latency",
                          "-H", f"Authorization: Bearer {token}", f"{base}/api/stations"],
                         capture_output=True, text=True, check=True).stdout

    def ms(text: str) -> float:  # wrk prints 812.00us, 4.10ms or 1.02s
        for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if text.endswith(unit):
                return round(float(text[:-len(unit)]) * scale, 1)
        raise ValueError(f"wrk latency {text!r}")

    res: dict = {"client": "wrk"}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "90%", "99%"):
            res[f"p{parts[0][:-1]}_ms"] = ms(parts[1])
        elif parts[:1] == ["Latency"] and len(parts) >= 4:
            res["mean_ms"], res["max_ms"] = ms(parts[1]), ms(parts[3])
        elif parts[:1] == ["Requests/sec:"]:
            res["rps"] = float(parts[1])
        elif "requests in" in line:
            res["requests"] = int(parts[0])
        elif parts[:1] == ["Non-2xx"]:
            res["errors"] = int(parts[-1])
    res.setdefault("errors", 0)
    return res


def wait_up(port: int, proc: subprocess.Popen) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--cache", type=float, nargs="*", default=[1.0, 0.0], help="status cache seconds to try")
    ap.add_argument("--postgres", help="an empty PostgreSQL database URL to bench too")
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--intervals", type=float, nargs="*", default=[1.0, 0.0],
                    help="seconds between one client's requests; 0 = closed loop (saturation)")
    ap.add_argument("--wrk", action="store_true", help="also a closed loop from wrk (apt install wrk)")
    ap.add_argument("--serve", nargs=3, metavar=("DATA", "CACHE", "DBURL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], float(args.serve[1]), args.port, args.serve[2] if args.serve[2] != "-" else None)
        return
    from vms.core.settings import Settings
    from vms.db.engine import Database
    from vms.db.migrate import upgrade

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("sqlite", None)] + ([("postgresql", args.postgres)] if args.postgres else [])
        for name, url in backends:
            settings = Settings.model_validate({"data_dir": tmp, "database_url": url} if url else {"data_dir": tmp})
            upgrade(settings.db_url)
            db = Database(settings.db_url)
            t = time.monotonic()
            seed(settings, db)
            db.dispose()
            print(f"{name}: seeded in {time.monotonic() - t:.1f} s", file=sys.stderr)
            for cache in args.cache:
                proc = subprocess.Popen([sys.executable, __file__, "--port", str(args.port), "--serve", tmp,
                                         str(cache), url or "-"], env={**os.environ, "PYTHONPATH": str(REPO)})
                try:
                    wait_up(args.port, proc)
                    runs = [(None, i) for i in args.intervals] + ([("wrk", 0.0)] if args.wrk else [])
                    for client, interval in runs:
                        if client == "wrk":
                            res = run_wrk(args.port, args.clients, args.seconds)
                        else:
                            res = run_clients(args.port, args.clients, args.seconds, interval)
                            res["client"] = "python"
                        res.update(backend=name, cache_s=cache, clients=args.clients, interval_s=interval)
                        print(json.dumps(res), flush=True)
                        results.append(res)
                finally:
                    proc.terminate()
                    proc.wait(30)
    print(json.dumps({"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
