#!/usr/bin/env python
"""Ingest benchmark: vms's recorder vs one `ffmpeg -c copy -f segment` process per camera (how
Frigate records), side by side in one run against the same simulated cameras.

    scripts/bench_ingest.py --cameras 139 --seconds 180 --rounds 2 --settle 60    # the headline figure

vms runs in the product's set-up by default: stream analysis and the live tap loaded, as `vms serve`
and `vms ingest` run (--setup record: recording only). Prints, for both: CPU milliseconds per
stream-second, memory (PSS) per stream, segments expected vs written, and the ratios. Run on an
otherwise idle machine; results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vms.catalog.loader import load_catalog  # noqa: E402
from vms.catalog.store import import_catalog  # noqa: E402
from vms.core.settings import Settings  # noqa: E402
from vms.db.engine import Database  # noqa: E402
from vms.db.migrate import upgrade  # noqa: E402
from vms.ingest.supervisor import IngestSupervisor  # noqa: E402
from vms.recording.fmp4 import probe_segment  # noqa: E402
from vms.server.recording import ANALYSIS_FACTORY, LIVE_TAP_FACTORY  # noqa: E402
from vms.simulate import Simulator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The observers vms loads in each set-up: `vms serve` and `vms ingest` load the live tap always and the
# stream analysis unless it is turned off ("product", the headline figure).
SETUPS = {
    "product": [LIVE_TAP_FACTORY, ANALYSIS_FACTORY],
    "record": [],
    "analysis": [ANALYSIS_FACTORY],
    "tap": [LIVE_TAP_FACTORY],
}
SETUP_NAMES = {"product": "analysis and live tap loaded, as vms serve runs", "record": "recording only",
               "analysis": "analysis loaded, no live tap", "tap": "live tap loaded, no analysis"}


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def pss_bytes(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(procs_fn, warmup: float, seconds: float) -> tuple[float, int]:
    time.sleep(warmup)
    procs = procs_fn()
    c0, t0 = cpu_seconds(procs), time.monotonic()
    pss = []
    while time.monotonic() - t0 < seconds:
        time.sleep(min(10.0, seconds - (time.monotonic() - t0)))
        pss.append(pss_bytes(procs))
    return (cpu_seconds(procs) - c0) / (time.monotonic() - t0), int(sum(pss) / max(1, len(pss)))


def count_segments(root: Path, seg_len: float, min_fraction: float = 0.9) -> tuple[int, int, float]:
    """(full-length segments, all segment files, seconds of footage) under root."""
    full = total = 0
    seconds = 0.0
    for f in root.rglob("*.mp4"):
        try:
            d = probe_segment(f).duration_ms / 1000
        except Exception:  # noqa: BLE001
            continue
        total += 1
        seconds += d
        full += d >= seg_len * min_fraction
    return full, total, seconds


def run_vms(sim: Simulator, stations: list[str], work: Path, args) -> dict:
    settings = Settings.model_validate({
        "data_dir": str(work / "data"),
        "storage": {"volumes": [{"name": "main", "path": str(work / "vms")}]},
        "ingest": {"segment_seconds": args.segment_seconds, "workers": args.workers},
        "analysis": getattr(args, "analysis_settings", None) or {},
    })
    upgrade(settings.db_url)
    db = Database(settings.db_url)
    with db.session() as s:
        import_catalog(s, load_catalog(REPO / "config" / "stations.yaml"))
    urls = {sid: sim.urls[sid] for sid in stations}
    factories = SETUPS[args.setup]
    sup = IngestSupervisor(settings, urls, factories, only_stations=set(stations), cameras=len(stations)).start()
    try:
        cpu, pss = measure(lambda: [psutil.Process(pid) for pid in sup.pids()], args.warmup, args.seconds)
    finally:
        sup.stop()
    full, total, seconds = count_segments(work / "vms", args.segment_seconds)
    return {"cpu_cores": cpu, "pss": pss, "full_segments": full, "files": total, "footage_s": seconds,
            "processes": len(sup.specs)}


def run_ffmpeg(sim: Simulator, stations: list[str], work: Path, args) -> dict:
    procs = []
    for sid in stations:
        out = work / "ffmpeg" / sid
        out.mkdir(parents=True)
        procs.append(subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp", "-i", sim.urls[sid],
             "-c", "copy", "-f", "segment", "-segment_time", str(int(args.segment_seconds)),
             "-reset_timestamps", "1", str(out / "%05d.mp4")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        cpu, pss = measure(lambda: [psutil.Process(p.pid) for p in procs], args.warmup, args.seconds)
    finally:
        for p in procs:
            p.send_signal(2)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    full, total, seconds = count_segments(work / "ffmpeg", args.segment_seconds)
    return {"cpu_cores": cpu, "pss": pss, "full_segments": full, "files": total, "footage_s": seconds,
            "processes": len(procs)}


def bare_pyav_worker(out_dir: Path, prefix: str, urls: list[str]) -> None:
    """The floor of vms's design: PyAV demux + fMP4 mux, one thread per camera, nothing else (no
    segments, index, health, observers). Runs until SIGTERM."""
    import signal
    import threading

    import av

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def record(i: int, url: str) -> None:
        with av.open(url, options={"rtsp_transport": "tcp", "analyzeduration": "1000000", "probesize": "500000",
                                   "fflags": "-genpts"}) as src:
            video = src.streams.video[0]
            with av.open(str(out_dir / f"{prefix}-{i}.mp4"), "w", format="mp4",
                         options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as dst:
                out = dst.add_stream_from_template(video)
                for pkt in src.demux(video):
                    if stop.is_set():
                        break
                    if pkt.dts is None:
                        continue
                    pkt.stream = out
                    dst.mux(pkt)

    threads = [threading.Thread(target=record, args=(i, u), daemon=True) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(10)


def run_pyav_bare(sim: Simulator, stations: list[str], work: Path, args) -> dict:
    """Diagnostic contender: bare PyAV in as many processes as vms uses (see bare_pyav_worker)."""
    from vms.ingest.supervisor import default_worker_count

    count = args.workers or default_worker_count(len(stations))
    urls = [sim.urls[sid] for sid in stations]
    (work / "pyav").mkdir(parents=True)
    procs = [subprocess.Popen([sys.executable, __file__, "--bare-worker", str(work / "pyav"), str(i),
                               *urls[i::count]]) for i in range(count)]
    try:
        cpu, pss = measure(lambda: [psutil.Process(p.pid) for p in procs], args.warmup, args.seconds)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    return {"cpu_cores": cpu, "pss": pss, "full_segments": 0, "files": len(list((work / "pyav").glob("*.mp4"))),
            "footage_s": 0.0, "processes": count}


def main() -> None:
    if sys.argv[1:2] == ["--bare-worker"]:
        bare_pyav_worker(Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=139)
    ap.add_argument("--seconds", type=float, default=180, help="measured recording time per contender")
    ap.add_argument("--warmup", type=float, default=300,
                    help="seconds recorded before measuring: the steady state a camera spends its days in starts "
                         "after the connect (the first 10 s go through Python; 139 cameras take up to ~40 s to "
                         "connect on 2 cores) and the analysis's first state confirmed (samples every 20 s for its "
                         "2-minute hysteresis, then every 60 s): 140 s still measured ~1 start-up sample a camera")
    ap.add_argument("--segment-seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=None, help="vms worker processes (default one per core)")
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--bitrate-kbps", type=int, default=2000)
    ap.add_argument("--gop", type=int, default=30)
    ap.add_argument("--pattern-seconds", type=float, default=14.0,
                    help="length of the looped test clip; for the analysis, not a divisor of its sample intervals "
                         "(a 4 s loop sampled every 20 or 60 s shows the same picture each time: a frozen camera, "
                         "which the analysis samples every 20 s for 5 minutes, 3x its steady cost)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--setup", choices=tuple(SETUPS), default="product",
                    help="vms's observers: product (stream analysis and live tap, no viewer: as `vms serve` runs; "
                         "the headline figure), record (recording only), analysis, tap")
    ap.add_argument("--settle", type=float, default=0, help="seconds to wait after the simulator starts")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the contenders this many times, alternating who goes first; means are reported")
    ap.add_argument("--bare-pyav", action="store_true",
                    help="also run bare PyAV demux+mux threads (vms's floor; diagnostic, no segments)")
    ap.add_argument("--only", choices=("vms", "ffmpeg", "pyav"), help="run one contender (while tuning; no ratios)")
    ap.add_argument("--analysis-cost", action="store_true",
                    help="instead of the peer: vms in the product set-up and recording only, alternating in one run")
    ap.add_argument("--previous-sampling", action="store_true",
                    help="with --analysis-cost: also the previous sampling (a keyframe every 30 s, fixed)")
    args = ap.parse_args()

    stations = [s.id for s in load_catalog(REPO / "config" / "stations.yaml")][: args.cameras]
    if len(stations) < args.cameras:
        sys.exit(f"the catalogue has only {len(stations)} stations")
    contenders = [("vms", run_vms), ("ffmpeg", run_ffmpeg)] + ([("pyav", run_pyav_bare)] if args.bare_pyav else [])
    contenders = [c for c in contenders if args.only in (None, c[0])]
    if args.analysis_cost:
        def vms_with(**overrides):
            return lambda sim, stations, work, args: run_vms(
                sim, stations, work, argparse.Namespace(**{**vars(args), **overrides}))

        fixed = {"sample_interval_seconds": 30, "sample_interval_changing_seconds": 30}
        contenders = [("vms+analysis", vms_with(setup="product")), ("vms", vms_with(setup="record"))]
        if args.previous_sampling:
            contenders.append(("vms+analysis fixed 30 s", vms_with(setup="product", analysis_settings=fixed)))
    runs: dict[str, list[dict]] = {name: [] for name, _ in contenders}
    with Simulator(cameras=len(stations), names=stations, width=args.width, height=args.height, fps=args.fps,
                   bitrate_kbps=args.bitrate_kbps, gop=args.gop, content="pattern",
                   pattern_seconds=args.pattern_seconds,
                   cache_dir=REPO / "data" / "cache" / "simulate", ready_timeout=300) as sim:
        # The simulator's start (139 GStreamer pipelines) keeps the machine busy for a while: the first
        # contender measured would pay for it.
        time.sleep(args.settle)
        for k in range(args.rounds):
            # Alternate who goes first: the first run after the simulator starts meets a busier machine.
            for name, run in contenders if k % 2 == 0 else contenders[::-1]:
                work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
                try:
                    r = run(sim, stations, work, args)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                runs[name].append(r)
                print(f"# round {k + 1} {name}: {1000 * r['cpu_cores'] / len(stations):.2f} ms/stream-s, "
                      f"{r['pss'] / len(stations) / 2**20:.1f} MB/stream, {r['full_segments']} full segments",
                      file=sys.stderr, flush=True)

    def mean_of(name: str) -> dict | None:
        rs = runs.get(name)
        if not rs:
            return None
        return {"cpu_cores": sum(r["cpu_cores"] for r in rs) / len(rs), "pss": sum(r["pss"] for r in rs) / len(rs),
                "full_segments": min(r["full_segments"] for r in rs), "files": min(r["files"] for r in rs),
                "footage_s": min(r["footage_s"] for r in rs), "processes": rs[0]["processes"]}

    vms, peer, bare = mean_of("vms"), mean_of("ffmpeg"), mean_of("pyav")
    if args.analysis_cost:
        n = len(stations)
        per = {name: 1000 * mean_of(name)["cpu_cores"] / n for name in runs}
        print(f"# bench_ingest --analysis-cost {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()} "
              f"{os.cpu_count()} cores; {n} cameras, {args.warmup:.0f} s warm-up + {args.seconds:.0f} s, "
              f"{args.rounds} round(s)")
        print("| run | CPU ms per stream-second (per round) | scaled to 139 cameras | PSS MB per stream |"
              " full segments |")
        print("|---|---|---|---|---|")
        labels = {"vms+analysis": "product set-up (analysis + live tap)", "vms": "record only",
                  "vms+analysis fixed 30 s": "product set-up, previous sampling (every 30 s)"}
        for key, name in labels.items():
            if key not in runs:
                continue
            r = mean_of(key)
            rounds = ", ".join(f"{1000 * x['cpu_cores'] / n:.2f}" for x in runs[key])
            print(f"| {name} | {per[key]:.2f} ({rounds}) | {per[key] * 139 / 1000:.2f} cores |"
                  f" {r['pss'] / n / 2**20:.1f} | {r['full_segments']} |")
        previous = (f" ({per['vms+analysis fixed 30 s'] - per['vms']:.2f} with the previous sampling)"
                    if args.previous_sampling else "")
        print(f"analysis and live tap add {per['vms+analysis'] - per['vms']:.2f} ms per stream-second{previous}")
        return

    n = len(stations)
    recorded = args.warmup + args.seconds
    expected = n * math.floor(recorded / args.segment_seconds)
    rows = []
    for name, r in (("vms", vms), ("ffmpeg -c copy -f segment", peer), ("bare PyAV threads (diagnostic)", bare)):
        if r is None:
            continue
        rows.append({
            "recorder": name, "processes": r["processes"],
            "cpu_ms_per_stream_s": 1000 * r["cpu_cores"] / n,
            "pss_mb_per_stream": r["pss"] / n / 2**20,
            "expected_full_segments": expected, "full_segments": r["full_segments"], "files": r["files"],
            "footage_s_per_camera": r["footage_s"] / n,
        })
    both = vms is not None and peer is not None
    ratio_cpu = rows[0]["cpu_ms_per_stream_s"] / rows[1]["cpu_ms_per_stream_s"] if both else None
    ratio_mem = rows[0]["pss_mb_per_stream"] / rows[1]["pss_mb_per_stream"] if both else None
    machine = f"{platform.node()} {os.cpu_count()} cores {psutil.virtual_memory().total / 2**30:.0f} GiB, " \
              f"{platform.processor() or platform.machine()}"
    print(f"# bench_ingest {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine}")
    print(f"# {n} cameras {args.width}x{args.height} {args.fps} fps {args.bitrate_kbps} kbps GOP {args.gop}; "
          f"{args.warmup:.0f} s warm-up + {args.seconds:.0f} s measured; segments of {args.segment_seconds:.0f} s; "
          f"mean of {args.rounds} round(s), full segments: the worst round"
          + f"; vms set-up: {args.setup} ({SETUP_NAMES[args.setup]})")
    if vms is not None:
        cores = rows[0]["cpu_ms_per_stream_s"] * 139 / 1000
        print(f"# vms at 139 cameras, scaled: {cores:.2f} cores")
    print("| recorder | processes | CPU ms per stream-second | PSS MB per stream | full segments (expected) |"
          " files | footage s per camera |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recorder']} | {r['processes']} | {r['cpu_ms_per_stream_s']:.2f} | {r['pss_mb_per_stream']:.1f} |"
              f" {r['full_segments']} ({r['expected_full_segments']}) | {r['files']} |"
              f" {r['footage_s_per_camera']:.1f} |")
    if both:
        print(f"ratios vms/ffmpeg: CPU {ratio_cpu:.2f}x, memory {ratio_mem:.2f}x")
    if bare is not None and peer is not None:
        print(f"ratio bare PyAV/ffmpeg: CPU {bare['cpu_cores'] / peer['cpu_cores']:.2f}x, "
              f"memory {bare['pss'] / peer['pss']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cpu_ratio": ratio_cpu, "mem_ratio": ratio_mem}, indent=2))


if __name__ == "__main__":
    main()
