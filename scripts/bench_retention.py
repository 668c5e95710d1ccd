"""Benchmark: expire one day of a 15-day, 139-camera index (~3.0 million rows, ~200,000 expired) while
20 simulated cameras are being recorded by `vms ingest`; compare with `find -mmin +N -delete`.

    .venv/bin/python scripts/bench_retention.py                      # the full run (~3.0 M rows)
    .venv/bin/python scripts/bench_retention.py --stations 20 --days 3 --ingest-cameras 4   # a quick try

Files are real but empty (their index rows say 15 MB, a 2 Mbps minute) so two trees of 3 million
files fit on the disk; the folder layout and names are the recorder's. Both trees get the same
mtimes (each segment's end), so `find` selects exactly the day the sweep expires.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vms.catalog.loader import load_catalog  # noqa: E402
from vms.catalog.store import import_catalog  # noqa: E402
from vms.core.settings import load_settings  # noqa: E402
from vms.db.engine import Database  # noqa: E402
from vms.db.migrate import upgrade  # noqa: E402
from vms.db.models import Gap, PurgeLog, Segment  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
MIN_MS = 60_000
DAY_MS = 86_400_000
SEGMENT_BYTES = 15_000_000  # what a 2 Mbps camera writes in a minute (the row says so; the file is empty)
COLUMNS = ("station_id", "stream", "node", "volume", "path", "start_ms", "end_ms", "duration_ms", "bytes",
           "has_audio", "frames", "keyframes", "state")


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
               if ln.startswith("MemTotal"))
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": round(mem / 1024**2, 1),
            "date": datetime.now(TZ).isoformat(timespec="seconds"), "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version}


def build_tree(db: Database, stations: list[str], start_ms: int, minutes: int, roots: list[Path]) -> int:
    """Rows in the index and one empty file per row in each root; mtime = the segment's end."""
    is_sqlite = db.url.startswith("sqlite")
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        if is_sqlite:
            cur.execute("PRAGMA synchronous=OFF")  # the build only; the sweep runs with the normal settings
        placeholders = ",".join("?" if is_sqlite else "%s" for _ in COLUMNS)
        sql = f"INSERT INTO segments ({','.join(COLUMNS)}) VALUES ({placeholders})"
        total = 0
        flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
        for n, station in enumerate(stations):
            rows = []
            hour_fds: list[int] = []
            current_hour = None
            for k in range(minutes):
                s = start_ms + k * MIN_MS
                e = s + MIN_MS
                local = datetime.fromtimestamp(s / 1000, TZ)
                hour = (local.year, local.month, local.day, local.hour)
                if hour != current_hour:
                    for fd in hour_fds:
                        os.close(fd)
                    current_hour = hour
                    rel_dir = f"{station}/{local:%Y-%m-%d}/{local:%H}"
                    hour_fds = []
                    for root in roots:
                        (root / rel_dir).mkdir(parents=True, exist_ok=True)
                        hour_fds.append(os.open(root / rel_dir, os.O_RDONLY | os.O_DIRECTORY))
                    prefix = f"{local:%Y%m%dT%H}"
                name = f"{prefix}{local.minute:02d}{local.second:02d}.{s % 1000:03d}.mp4"
                for dfd in hour_fds:
                    fd = os.open(name, flags, 0o644, dir_fd=dfd)
                    os.utime(fd, ns=(e * 1_000_000, e * 1_000_000))
                    os.close(fd)
                rows.append((station, "main", "bench", "main", f"{rel_dir}/{name}", s, e, MIN_MS, SEGMENT_BYTES,
                             False, 600, 60, "complete"))
            for fd in hour_fds:
                os.close(fd)
            cur.executemany(sql, rows)
            raw.commit()
            total += len(rows)
            if (n + 1) % 10 == 0 or n + 1 == len(stations):
                print(f"  built {n + 1}/{len(stations)} stations, {total} rows", flush=True)
        if is_sqlite:
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("ANALYZE")
        else:
            cur.execute("ANALYZE segments")
        raw.commit()
        return total
    finally:
        raw.close()


def count_files(root: Path) -> int:
    return sum(len(files) for _d, _s, files in os.walk(root))


def start_ingest(env: dict, cwd: Path, log_path: Path) -> subprocess.Popen:
    return subprocess.Popen([str(REPO / ".venv/bin/vms"), "ingest", "--workers", "1", "--no-analysis"], cwd=cwd,
                            env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_ingest(proc: subprocess.Popen) -> None:
    """SIGTERM to `vms ingest` itself (it stops its workers); SIGKILL to its whole group if it hangs."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        print("vms ingest did not stop within 60 s of SIGTERM; killing its process group", flush=True)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def ingest_exists() -> bool:
    out = subprocess.run([str(REPO / ".venv/bin/vms"), "--help"], capture_output=True, text=True).stdout
    return " ingest " in out


def ingest_continuity(db: Database, stations: list[str], since_ms: int, window: tuple[int, int],
                      segment_s: float) -> dict:
    """Per camera, over the sweep's window: segments written vs what an uninterrupted recorder writes,
    and any hole between consecutive segments."""
    w0, w1 = window
    per = {}
    with db.session() as s:
        for st in stations:
            segs = s.execute(select(Segment.start_ms, Segment.end_ms).where(
                Segment.station_id == st, Segment.start_ms >= since_ms).order_by(Segment.start_ms)).all()
            inside = [(a, b) for a, b in segs if b > w0 and a < w1]
            holes = 0
            for (_a0, b0), (a1, _b1) in zip(segs, segs[1:], strict=False):
                if a1 - b0 > 500 and b0 < w1 and a1 > w0:
                    holes += min(a1, w1) - max(b0, w0)
            expected = (w1 - w0) / (segment_s * 1000)
            per[st] = {"written": len(inside), "expected_about": round(expected, 1), "hole_ms": holes}
        gaps = s.scalar(select(func.count()).select_from(Gap).where(Gap.start_ms >= w0, Gap.start_ms <= w1,
                                                                    Gap.station_id.in_(stations)))
    return {"cameras": per, "written": sum(p["written"] for p in per.values()),
            "expected_about": round(sum(p["expected_about"] for p in per.values()), 1),
            "hole_ms": sum(p["hole_ms"] for p in per.values()), "gaps_opened": gaps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stations", type=int, default=139, help="cameras in the index (max 139)")
    ap.add_argument("--days", type=int, default=15, help="days of 60-second segments in the index")
    ap.add_argument("--ingest-cameras", type=int, default=20, help="cameras recorded during the sweep (0: none)")
    ap.add_argument("--ingest-segment-seconds", type=float, default=10)
    ap.add_argument("--database-url", default=None, help="default: SQLite in the work folder")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new folder under /tmp")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="vms-bench-retention-"))
    work.mkdir(parents=True, exist_ok=True)
    recordings, peer = work / "recordings", work / "peer"
    db_url = args.database_url or f"sqlite:///{work / 'vms.db'}"
    config = {"data_dir": str(work / "data"), "database_url": db_url, "log_level": "WARNING",
              "storage": {"volumes": [{"name": "main", "path": str(recordings), "min_free_bytes": 0,
                                       "critical_free_bytes": 0}]},
              "retention": {"days": args.days}, "ingest": {"segment_seconds": args.ingest_segment_seconds}}
    (work / "vms.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMS_")}
    env.update(VMS_CONFIG=str(work / "vms.yaml"), PYTHONPATH=str(REPO))
    settings = load_settings(work / "vms.yaml", env={})
    results: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                     "database": "sqlite" if db_url.startswith("sqlite") else "postgresql"}
    sim = ingest = None
    try:
        upgrade(settings.db_url)
        db = Database(settings.db_url)
        specs = load_catalog(REPO / "config" / "stations.yaml")
        index_stations = [s.id for s in specs][: args.stations]
        cams = index_stations[: args.ingest_cameras] if ingest_exists() else []
        results["ingest_available"] = bool(cams) or args.ingest_cameras == 0
        if cams:
            from vms.simulate.simulator import Simulator

            sim = Simulator(cameras=len(cams), names=cams, width=320, height=180, fps=10, bitrate_kbps=256,
                            gop=20, cache_dir=work / "simcache")
            sim.start()
        urls = sim.urls if sim else {}
        specs = [s.model_copy(update={"enabled": s.id in urls,
                                      "camera": s.camera.model_copy(update={"main_url": urls.get(s.id)})})
                 for s in specs]
        with db.session() as s:
            import_catalog(s, specs)

        # The index ends one day before "now" so that the recorder's live footage never mixes with it;
        # "now" is 30 s past a minute so no segment ends exactly at the cutoff (find works in seconds).
        floor_min = (int(time.time() * 1000) // MIN_MS) * MIN_MS
        now_ms = floor_min + 30_000
        index_start = floor_min - (args.days + 1) * DAY_MS
        minutes = args.days * 1440
        cutoff = now_ms - args.days * DAY_MS
        expected_expired = len(index_stations) * ((cutoff - index_start) // MIN_MS)
        print(f"building {len(index_stations)} stations x {minutes} segments, two trees, in {work}", flush=True)
        t = time.monotonic()
        rows = build_tree(db, index_stations, index_start, minutes, [recordings, peer])
        results["build"] = {"rows": rows, "files_per_tree": rows, "seconds": round(time.monotonic() - t, 1)}
        results["expected_expired"] = expected_expired
        print(f"built {rows} rows and 2 x {rows} files in {results['build']['seconds']} s", flush=True)

        if cams:
            ingest_started = int(time.time() * 1000)
            ingest = start_ingest(env, work, work / "ingest.log")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with db.session() as s:
                    recording = s.scalar(select(func.count(func.distinct(Segment.station_id))).where(
                        Segment.station_id.in_(cams), Segment.start_ms >= ingest_started))
                if recording == len(cams):
                    break
                if ingest.poll() is not None:
                    raise SystemExit(f"vms ingest exited early; see {work / 'ingest.log'}")
                time.sleep(1)
            else:
                raise SystemExit(f"not every camera recorded within 120 s; see {work / 'ingest.log'}")
            print(f"ingest is recording {len(cams)} cameras", flush=True)
            time.sleep(args.ingest_segment_seconds)

        now_iso = datetime.fromtimestamp(now_ms / 1000, TZ).isoformat()
        t0 = time.monotonic()
        w0 = int(time.time() * 1000)
        proc = subprocess.run([str(REPO / ".venv/bin/vms"), "retention", "run", "--now", now_iso, "--format", "json"],
                              cwd=work, env=env, capture_output=True, text=True)
        w1 = int(time.time() * 1000)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"vms retention run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        sweep = json.loads(proc.stdout)
        results["sweep"] = {"wall_seconds": round(wall, 2), "run_seconds": round(sweep["seconds"], 2),
                            "segments": sweep["segments"], "errors": sweep["errors"],
                            "timings": sweep.get("timings", {})}
        print(f"sweep: {sweep['segments']} segments in {sweep['seconds']:.1f} s (process wall {wall:.1f} s)",
              flush=True)

        if cams:
            time.sleep(2 * args.ingest_segment_seconds + 2)  # let the segments spanning the window finish
            stop_ingest(ingest)
            ingest = None
            results["ingest"] = ingest_continuity(db, cams, ingest_started, (w0, w1), args.ingest_segment_seconds)
            results["ingest"]["cameras_recorded"] = len(cams)
            ing = results["ingest"]
            print(f"ingest during the sweep: {ing['written']} segments written, about {ing['expected_about']} "
                  f"expected, holes {ing['hole_ms']} ms, gaps opened {ing['gaps_opened']}", flush=True)

        with db.session() as s:
            left = s.scalar(select(func.count()).select_from(Segment).where(
                Segment.station_id.in_(index_stations), Segment.end_ms <= cutoff, Segment.node == "bench"))
            logged = s.scalar(select(func.coalesce(func.sum(PurgeLog.segments), 0)))
            recorded = s.scalar(select(func.count()).select_from(Segment).where(Segment.node != "bench"))
        files_left = count_files(recordings)
        results["check"] = {"expired_rows_left": left, "purge_logged": logged, "files_left": files_left,
                            "files_expected_left": rows - expected_expired + recorded}

        # The peer: find on the copy, selecting by age the same day.
        age_s = time.time() - cutoff / 1000
        n_min = round(age_s / 60)
        t = time.monotonic()
        subprocess.run(["find", str(peer), "-type", "f", "-mmin", f"+{n_min}", "-delete"], check=True)
        find_s = time.monotonic() - t
        peer_left = count_files(peer)
        results["find"] = {"seconds": round(find_s, 2), "mmin": n_min, "deleted": rows - peer_left}
        results["ratio_sweep_over_find"] = round(sweep["seconds"] / find_s, 2) if find_s else None
        print(f"find -mmin +{n_min} -delete: {rows - peer_left} files in {find_s:.1f} s; "
              f"sweep/find = {results['ratio_sweep_over_find']}", flush=True)
        print(json.dumps(results, indent=2, ensure_ascii=False))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False))
        db.dispose()
    finally:
        if ingest is not None:
            stop_ingest(ingest)
        if sim is not None:
            sim.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
