#!/usr/bin/env python
"""What an outage of every camera costs the recorder: 139 cameras that cannot be reached, one ingest
worker with the shipped settings (retry_max_seconds 5, rtsp_timeout_seconds 10), for --seconds.

    .venv/bin/python scripts/bench_reconnect.py [--seconds 120] [--cameras 139] [--mode refused|silent]

--mode refused: every camera refuses at once (a closed port: connection refused), the fastest failure
and so the most attempts; --mode silent: every camera accepts the TCP connection and never answers
(each attempt waits for the RTSP timeout). Reports connection attempts per second, the worker's CPU
(this process: the worker's threads and, in silent mode, the silent listener's one thread), index
operations per second by kind, and the log lines the outage wrote.
"""

from __future__ import annotations

import argparse
import collections
import logging
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class SilentCameras:
    """One listening port that accepts every connection and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if len(self.conns) > 2000:  # the clients gave up on these long ago
                for c in self.conns[:1000]:
                    c.close()
                del self.conns[:1000]

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


class LineCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--cameras", type=int, default=139)
    ap.add_argument("--mode", choices=("refused", "silent"), default="refused")
    args = ap.parse_args()

    from sqlalchemy import select

    from vms.catalog.loader import load_catalog
    from vms.catalog.store import import_catalog
    from vms.core.settings import Settings
    from vms.db.engine import Database
    from vms.db.migrate import upgrade
    from vms.db.models import Station
    from vms.ingest.worker import IngestWorker, WorkerSpec

    tmp = Path(tempfile.mkdtemp(prefix="vms-bench-reconnect-"))
    settings = Settings.model_validate({
        "data_dir": str(tmp / "data"), "storage": {"volumes": [{"name": "main", "path": str(tmp / "rec")}]},
        "ingest": {"node": "bench"}, "analysis": {"enabled": False}})
    upgrade(settings.db_url)
    db = Database(settings.db_url)
    with db.session() as s:
        import_catalog(s, load_catalog(REPO / "config" / "stations.yaml"))
        ids = list(s.scalars(select(Station.id).order_by(Station.id)))[: args.cameras]
    silent = SilentCameras() if args.mode == "silent" else None
    if silent is None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there any more: connection refused
    else:
        port = silent.port
    urls = {sid: f"rtsp://127.0.0.1:{port}/{sid}" for sid in ids}

    counter = LineCounter()
    logging.getLogger("vms").addHandler(counter)
    logging.getLogger("vms").setLevel(logging.DEBUG)
    worker = IngestWorker(WorkerSpec(settings, url_overrides=urls, only_stations=set(ids), reconcile_seconds=3600),
                          database=db)
    ops: collections.Counter[str] = collections.Counter()
    put = worker.index._queue.put

    def counting_put(op, *a, **kw):
        ops[op.kind] += 1
        return put(op, *a, **kw)

    worker.index._queue.put = counting_put
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(15)  # start-up and the first failures, not measured
    attempts0 = sum(sess.health.reconnects for _e, sess in worker.sessions.values())
    cpu0, wall0 = time.process_time(), time.monotonic()
    ops.clear()
    counter.counts.clear()
    time.sleep(args.seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    attempts = sum(sess.health.reconnects for _e, sess in worker.sessions.values()) - attempts0
    reasons = collections.Counter(sess.health.reason for _e, sess in worker.sessions.values())
    measured_ops, lines = collections.Counter(ops), collections.Counter(counter.counts)  # not the stop's
    worker.stop()
    thread.join(60)
    if silent is not None:
        silent.close()
    print(f"{args.cameras} cameras, mode {args.mode}, {wall:.0f} s measured (after 15 s of start-up)")
    per_hour = attempts / wall / args.cameras * 3600
    print(f"attempts: {attempts} = {attempts / wall:.1f}/s, {per_hour:.0f} per camera-hour")
    print(f"CPU: {cpu:.2f} s = {cpu / wall * 100:.1f} % of a core")
    print("index operations/s: " + ", ".join(f"{k} {v / wall:.1f}" for k, v in measured_ops.most_common()))
    print("log lines: " + ", ".join(f"{k} {v}" for k, v in lines.most_common()))
    print(f"reasons: {dict(reasons)}")


if __name__ == "__main__":
    main()
