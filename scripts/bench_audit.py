"""Benchmark: audit a 30-day month (2026-11) for the 139 stations of the catalogue.

Synthetic but realistic rows: one 60 s segment per camera per minute for the whole month (6.0 M
segments) with outages cut out of them, and at realistic densities: online intervals (broken by the
outages), gaps, open/closed states (about four changes a day), ~30 activity episodes a day and a
fault every few days, and a second node recording the same camera for 10 minutes on about 2 % of
days (overlapping segments). Loading the rows is not timed; the audit (`audit_month`, every day recomputed,
then the monthly decision) is.

    .venv/bin/python scripts/bench_audit.py                       # SQLite in a temp dir
    .venv/bin/python scripts/bench_audit.py --postgres 'postgresql:///postgres?host=/var/run/postgresql'
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
import uuid
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import create_engine, insert, text

from vms.audit.monthly import audit_month
from vms.audit.reports import monthly_report
from vms.catalog.loader import load_catalog
from vms.catalog.store import import_catalog
from vms.core.clock import SimulatedClock, to_ms
from vms.core.settings import Settings
from vms.db.engine import Database
from vms.db.migrate import upgrade
from vms.db.models import ActivityEpisode, Fault, Gap, OnlineInterval, Segment, StationState

REPO = Path(__file__).resolve().parents[1]
TZ = ZoneInfo("Asia/Shanghai")
MONTH = "2026-11"
DAYS = 30
MIN = 60_000
DAY = 86_400_000


def local(day: int, hour: float) -> int:
    return to_ms(datetime(2026, 11, 1, tzinfo=TZ)) + (day - 1) * DAY + int(hour * 3_600_000)


def station_rows(sid: str, rnd: random.Random):
    """All rows of one station for the month: (segments, online, gaps, states, episodes, faults)."""
    start, end = local(1, 0), local(DAYS + 1, 0)
    outages = []
    for d in range(1, DAYS + 1):
        if rnd.random() < 0.15:  # an outage on about one day in seven, 10 min to 6 h
            a = local(d, rnd.uniform(0, 20))
            outages.append((a, a + rnd.randint(10, 360) * MIN))
    if rnd.random() < 0.05:  # a few stations dark for days
        d = rnd.randint(1, DAYS - 5)
        outages.append((local(d, 0), local(d + rnd.randint(2, 5), 0)))
    outages.sort()
    up, t = [], start
    for a, b in outages:
        if a > t:
            up.append((t, a))
        t = max(t, b)
    if t < end:
        up.append((t, end))
    segs = []
    for a, b in up:
        s = a - a % MIN
        while s < b:
            e = min(s + MIN, b)
            if e > max(s, a):
                segs.append((max(s, a), e))
            s += MIN
    # Failover: on about 2 % of days a second node records the camera too for 10 minutes
    # (overlapping segments, which the audit must merge, not add up).
    failover = []
    for d in range(1, DAYS + 1):
        if rnd.random() < 0.02:
            a = local(d, rnd.uniform(8, 18)) // MIN * MIN
            failover += [(t, t + MIN) for t in range(a, a + 10 * MIN, MIN)]
    gaps = [(a, b) for a, b in outages]
    states, episodes, faults = [], [], []
    for d in range(1, DAYS + 1):
        if rnd.random() < 0.1:
            continue  # a closed day
        o, c = rnd.uniform(7.5, 10), rnd.uniform(15, 19.5)
        states.append(("closed", local(d, 0), local(d, o)))
        states.append(("open", local(d, o), local(d, 12)))
        states.append(("closed", local(d, 12), local(d, 13.5)))
        states.append(("open", local(d, 13.5), local(d, c)))
        states.append(("closed", local(d, c), local(d + 1, 0)))
        for _ in range(rnd.randint(15, 45)):
            a = local(d, rnd.uniform(o, c))
            episodes.append((a, a + rnd.randint(20, 600) * 1000))
        if rnd.random() < 0.2:
            a = local(d, rnd.uniform(0, 23))
            faults.append((rnd.choice(["covered", "blurred", "black", "frozen"]), a, a + rnd.randint(1, 120) * MIN))
    return segs, failover, up, gaps, states, episodes, faults


def _copy_segments(db: Database, sid: str, rows: list[tuple[int, int, str]]) -> None:
    """PostgreSQL: COPY is ~10x faster than INSERT for 6 M rows (loading is not what is measured)."""
    raw = db.engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy(
            "COPY segments (station_id, stream, node, volume, path, start_ms, end_ms, duration_ms, bytes, "
            "has_audio, frames, keyframes, state) FROM STDIN"
        ) as cp:
            for a, b, node in rows:
                cp.write_row((sid, "main", node, "main", f"{sid}/{node}-{a}.mp4", a, b, b - a, (b - a) * 250,
                              False, 0, 0, "complete"))
        raw.commit()
    finally:
        raw.close()


def load(db: Database, seed: int) -> int:
    rnd = random.Random(seed)
    specs = load_catalog(REPO / "config" / "stations.yaml")
    with db.session() as s:
        import_catalog(s, specs)
    ids = [spec.id for spec in specs]
    n_seg = 0
    for sid in ids:
        segs, failover, up, gaps, states, episodes, faults = station_rows(sid, rnd)
        seg_rows = [(a, b, "bench") for a, b in segs] + [(a, b, "bench2") for a, b in failover]
        if db.engine.dialect.name == "postgresql":
            _copy_segments(db, sid, seg_rows)
        with db.engine.begin() as c:
            if db.engine.dialect.name != "postgresql":
                c.execute(insert(Segment), [
                    dict(station_id=sid, stream="main", node=node, volume="main", path=f"{sid}/{node}-{a}.mp4",
                         start_ms=a, end_ms=b, duration_ms=b - a, bytes=(b - a) * 250, state="complete")
                    for a, b, node in seg_rows])
            c.execute(insert(OnlineInterval), [dict(station_id=sid, node="bench", start_ms=a, end_ms=b) for a, b in up])
            if gaps:
                c.execute(insert(Gap), [dict(station_id=sid, stream="main", node="bench", start_ms=a, end_ms=b,
                                             reason="offline") for a, b in gaps])
            c.execute(insert(StationState), [dict(station_id=sid, state=k, start_ms=a, end_ms=b)
                                             for k, a, b in states])
            c.execute(insert(ActivityEpisode), [dict(station_id=sid, start_ms=a, end_ms=b, peak=0.5)
                                                for a, b in episodes])
            if faults:
                c.execute(insert(Fault), [dict(station_id=sid, kind=k, severity="major", start_ms=a, end_ms=b)
                                          for k, a, b in faults])
        n_seg += len(segs) + len(failover)
    return n_seg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", help="server URL (…/postgres?host=…): bench on a new database there")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sqlite-file", type=Path, help="keep the SQLite database here; reuse it if it exists")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        admin = None
        if args.postgres:
            name = f"vms_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.postgres.replace("postgresql:", "postgresql+psycopg:", 1),
                                  isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}"'))
            url = args.postgres.replace("/postgres?", f"/{name}?", 1)
        else:
            url = f"sqlite:///{(args.sqlite_file or Path(tmp) / 'bench.db').resolve()}"
        reuse = args.sqlite_file is not None and args.sqlite_file.exists()
        settings = Settings.model_validate({"data_dir": tmp, "database_url": url})
        upgrade(settings.db_url)
        db = Database(settings.db_url)
        try:
            t0 = time.perf_counter()
            if reuse:
                with db.engine.connect() as c:
                    n_seg = c.execute(text("SELECT count(*) FROM segments")).scalar()
            else:
                n_seg = load(db, args.seed)
            if db.engine.dialect.name == "postgresql":
                with db.engine.begin() as c:
                    c.execute(text("ANALYZE"))
            load_s = time.perf_counter() - t0
            clock = SimulatedClock(local(DAYS + 1, 1))  # 2026-12-01 01:00 local
            t0, c0 = time.perf_counter(), time.process_time()
            with db.session() as s:
                res = audit_month(s, settings, clock, MONTH)
            audit_s, audit_cpu = time.perf_counter() - t0, time.process_time() - c0
            load_avg = os.getloadavg()[0]
            t0 = time.perf_counter()
            with db.session() as s:
                rep = monthly_report(s, MONTH)
            report_s = time.perf_counter() - t0
        finally:
            db.dispose()
            if admin is not None:
                with admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}")
    print(f"date: {date.today().isoformat()}, database: {db.engine.dialect.name}")
    print(f"rows: {n_seg:,} segments; load {load_s:.1f} s (not timed in the audit)")
    print(f"audit_month {MONTH} (30 days x 139 stations, recompute all): {audit_s:.2f} s "
          f"wall, {audit_cpu:.2f} s CPU of this process; load average {load_avg:.1f} "
          f"({res.passed} pass, {res.failed} fail, {res.exempt} exempt)")
    print(f"monthly_report: {report_s * 1000:.0f} ms; county pass rate {rep['county']['pass_percent']}%")


if __name__ == "__main__":
    main()
