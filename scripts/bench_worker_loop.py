#!/usr/bin/env python
"""Diagnostic benchmark of one ingest worker's packet loop: N simulated cameras recorded by one
`IngestWorker` in a process of its own, against the floor of the design (bare PyAV demux + fMP4 mux
threads, nothing else) in another, alternating over several rounds; optionally a second checkout of
vms (e.g. the previous commit, from `git worktree add`) as a third contender, to A/B a change.

    scripts/bench_worker_loop.py --cameras 46 --rounds 3 --seconds 30 [--compare-repo /tmp/old]
    scripts/bench_worker_loop.py --no-bare --setups record,tap,analysis,product   # what each observer costs

Prints user and system CPU per stream-second and PSS per stream of each contender, per round and
as means. `scripts/bench_ingest.py` is the benchmark against the peer; this one is for finding where
the recorder's CPU goes, with less noise than a 139-camera run (one process, no peer).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


# The observers a worker loads in each set-up (`vms serve` and `vms ingest` load both: "product").
SETUPS = {
    "record": [],
    "tap": ["vms.live.tap:make_live_tap_factory"],
    "analysis": ["vms.analysis.observer:make_analysis_observer_factory"],
    "product": ["vms.live.tap:make_live_tap_factory", "vms.analysis.observer:make_analysis_observer_factory"],
}


def run_child(contender: str, urls: dict[str, str], work: Path, setup: str = "record") -> None:
    """In the child process: record until SIGTERM."""
    from vms.ingest.worker import tune_malloc

    tune_malloc()
    if contender == "bare":
        sys.path.insert(0, str(REPO / "scripts"))
        from bench_ingest import bare_pyav_worker

        (work / "pyav").mkdir()
        bare_pyav_worker(work / "pyav", "0", list(urls.values()))
        return
    import signal

    from vms.catalog.loader import load_catalog
    from vms.catalog.store import import_catalog
    from vms.core.settings import Settings
    from vms.db.engine import Database
    from vms.db.migrate import upgrade
    from vms.ingest.worker import IngestWorker, WorkerSpec

    settings = Settings.model_validate({"data_dir": str(work / "data"),
                                        "storage": {"volumes": [{"name": "main", "path": str(work / "vms")}]}})
    upgrade(settings.db_url)
    db = Database(settings.db_url)
    with db.session() as s:
        import_catalog(s, load_catalog(REPO / "config" / "stations.yaml"))
    worker = IngestWorker(WorkerSpec(settings, url_overrides=urls, only_stations=set(urls),
                                     observer_factories=SETUPS[setup]), database=db)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.run()


def measure(contender: str, repo: Path, urls: dict[str, str], warmup: float, seconds: float,
            setup: str = "record") -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    env = dict(os.environ, PYTHONPATH=str(repo))
    # This script runs the child either way; PYTHONPATH decides which checkout's `vms` it imports.
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", contender,
                             json.dumps(urls), str(work), setup], env=env)
    try:
        time.sleep(warmup)
        p = psutil.Process(proc.pid)
        t0, w0 = p.cpu_times(), time.monotonic()
        time.sleep(seconds)
        t1, dt = p.cpu_times(), time.monotonic() - w0
        pss = p.memory_full_info().pss
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    n = len(urls)
    return {"user": (t1.user - t0.user) / dt / n * 1000, "system": (t1.system - t0.system) / dt / n * 1000,
            "pss_mb": pss / n / 2**20}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        run_child(sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=46, help="cameras in the one worker (46-70 in production)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30, help="measured seconds per contender and round")
    ap.add_argument("--warmup", type=float, default=12, help="seconds before measuring (connect, probe)")
    ap.add_argument("--compare-repo", type=Path, help="another vms checkout, run as contender 'other'")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare PyAV contender (A/B runs)")
    ap.add_argument("--pattern-seconds", type=float, default=14.0,
                    help="length of the looped test clip (a 4 s loop looks frozen to the analysis: see bench_ingest)")
    ap.add_argument("--setups", default="record",
                    help="comma-separated observer set-ups, each a contender (with --compare-repo, for both "
                         f"checkouts): {', '.join(SETUPS)} (record: none; product: live tap + analysis, as "
                         "`vms serve` runs)")
    args = ap.parse_args()
    setups = args.setups.split(",")
    if unknown := [s for s in setups if s not in SETUPS]:
        ap.error(f"unknown set-up {', '.join(unknown)}; choose from {', '.join(SETUPS)}")

    sys.path.insert(0, str(REPO))
    from vms.catalog.loader import load_catalog
    from vms.simulate import Simulator

    stations = [s.id for s in load_catalog(REPO / "config" / "stations.yaml")][: args.cameras]
    def named(prefix: str, setup: str) -> str:
        return prefix if setup == "record" and len(setups) == 1 else f"{prefix}:{setup}"

    contenders = ([] if args.no_bare else [("bare", "bare", REPO, "record")])
    contenders += [(named("vms", s), "vms", REPO, s) for s in setups]
    if args.compare_repo:
        contenders += [(named("other", s), "vms", args.compare_repo.resolve(), s) for s in setups]
    results: dict[str, list[dict]] = {name: [] for name, *_ in contenders}
    with Simulator(cameras=len(stations), names=stations, width=1920, height=1080, fps=15, bitrate_kbps=2000,
                   gop=30, content="pattern", pattern_seconds=args.pattern_seconds,
                   cache_dir=REPO / "data" / "cache" / "simulate",
                   ready_timeout=300) as sim:
        urls = {sid: sim.urls[sid] for sid in stations}
        for k in range(args.rounds):
            for name, contender, repo, setup in contenders if k % 2 == 0 else contenders[::-1]:
                r = measure(contender, repo, urls, args.warmup, args.seconds, setup)
                results[name].append(r)
                print(f"round {k + 1} {name:14s} user {r['user']:.2f} system {r['system']:.2f} "
                      f"total {r['user'] + r['system']:.2f} ms/stream-s, PSS {r['pss_mb']:.1f} MB/stream", flush=True)
    print(f"# {len(stations)} cameras 1920x1080 15 fps 2 Mbps in one process, {args.rounds} rounds of "
          f"{args.seconds:.0f} s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores")
    bare_total = None
    for name, rs in results.items():
        user = sum(r["user"] for r in rs) / len(rs)
        system = sum(r["system"] for r in rs) / len(rs)
        bare_total = bare_total or user + system
        print(f"mean {name:14s} user {user:.2f} system {system:.2f} total {user + system:.2f} ms/stream-s "
              f"({(user + system) / bare_total:.2f}x {next(iter(results))}), "
              f"PSS {sum(r['pss_mb'] for r in rs) / len(rs):.1f} MB")


if __name__ == "__main__":
    main()
