#!/usr/bin/env python
"""GB/T 28181 ingest benchmark: the same cameras recorded by vms over RTSP, over GB28181 with UDP media and
over GB28181 with TCP passive media, side by side in one run (issue 18).

    scripts/bench_gb28181.py --cameras 20 --seconds 60 --warmup 40                 # a quick look
    scripts/bench_gb28181.py --cameras 139 --seconds 180 --rounds 2 --settle 60    # the figure

Each contender is `vms ingest` as it runs in production (its main process: the ingest supervisor and, for
GB28181, the SIP server; its worker processes with the stream analysis and the live tap loaded), started
afresh on a fresh database and volume, its N stations bound to the cameras' URLs:

- rtsp: bench_ingest's simulated RTSP cameras (GStreamer, one process for the whole run), transport tcp;
- gb-udp / gb-tcp: N simulated GB28181 devices (vms.simulate.gb28181_device) in their own processes (their
  CPU is not vms's), registering to the contender's SIP server and pushing the same clip (1920x1080, 15 fps,
  2 Mbps, GOP 30, the same 14 s pattern) as MPEG-PS over RTP when invited; the stations are bound by
  gb28181:// URLs with transport udp (UDP media) or tcp (TCP passive: the device dials the platform).

Prints per contender: CPU ms per stream-second (user + system of vms's processes: the main process and
the workers), memory (PSS) per stream, segments expected vs written, packets lost (GB), and the ratios
GB/RTSP. Contenders alternate over --rounds. --thread-cpu adds where vms's CPU goes, by thread (a
sitecustomize names the OS threads after the Python ones; diagnostic). Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import psutil
import yaml
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import count_segments, cpu_seconds, pss_bytes  # noqa: E402

from vms.catalog.loader import load_catalog  # noqa: E402
from vms.catalog.store import import_catalog  # noqa: E402
from vms.core.settings import Settings  # noqa: E402
from vms.db.engine import Database  # noqa: E402
from vms.db.migrate import upgrade  # noqa: E402
from vms.db.models import CameraStatus, Gap, Segment, Station  # noqa: E402
from vms.simulate import Simulator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERVER_ID, DOMAIN, PASSWORD = "44132300002000000001", "4413230000", "bench-gb-pw1"
CONTENDERS = ("rtsp", "gb-udp", "gb-tcp")
LABELS = {"rtsp": "RTSP (tcp)", "gb-udp": "GB28181, UDP media", "gb-tcp": "GB28181, TCP passive media"}
VMS_MAIN = "import sys; from vms.cli import main; sys.exit(main())"
# Diagnostic (--thread-cpu): every vms process names its OS threads after its Python threads, so that
# /proc/<pid>/task/<tid>/comm tells a camera's thread from its GB receiver's.
THREAD_NAMES = """\
import ctypes, threading
_prctl = ctypes.CDLL(None).prctl
_inner = threading.Thread._bootstrap_inner
def _named(self):
    try:
        _prctl(15, self.name.encode()[:15], 0, 0, 0)
    except Exception:
        pass
    _inner(self)
threading.Thread._bootstrap_inner = _named
"""
THREAD_GROUPS = (("camera-", "camera sessions (demux, native copier, recorder)"),
                 ("gb-media-", "GB media receivers (RTP -> pipe)"), ("gb-control-", "GB control links"),
                 ("gb28181-sip", "SIP server"), ("live-taps", "live tap"), ("analysis-sink", "analysis"),
                 ("index-writer", "index writer"))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both UDP and TCP (the SIP server listens on both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


# -- the simulated GB28181 devices (a helper process each, outside vms) ---------------------------------

def gb_devices_process(server_port: int, first: int, count: int, clip: str, fps: int, keepalive: float) -> None:
    """Run devices first..first+count-1 until SIGTERM; print "ready" once each had its first answer, and
    at the end one JSON line of what the sessions sent."""
    from vms.simulate.gb28181_device import GbDeviceSpec, GbSimulator, default_channel_name, gb_ids

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    specs = []
    for n in range(first, first + count):
        device_id, channel_id = gb_ids(DOMAIN, n)
        specs.append(GbDeviceSpec(device_id, [(channel_id, default_channel_name(n))], PASSWORD, Path(clip), fps=fps))
    sim = GbSimulator(specs, ("127.0.0.1", server_port), SERVER_ID, DOMAIN, keepalive_seconds=keepalive)
    sim.start(timeout=60)
    print("ready", flush=True)
    stop.wait()
    totals: dict[str, int] = defaultdict(int)
    for device in sim.status().values():
        totals["registered"] += bool(device["registered"])
        for session in device["sessions"]:
            totals["sessions"] += 1
            for key in ("packets", "bytes", "frames", "reconnects"):
                totals[key] += int(session[key] or 0)
    sim.close()
    print(json.dumps(totals), flush=True)


class GbDevices:
    """N simulated devices in `processes` helper processes (one asyncio loop each)."""

    def __init__(self, cameras: int, processes: int, server_port: int, clip: Path, fps: int, keepalive: float) -> None:
        self.procs: list[subprocess.Popen] = []
        per = math.ceil(cameras / processes)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        for first in range(1, cameras + 1, per):
            count = min(per, cameras + 1 - first)
            self.procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--gb-devices", str(server_port), str(first),
                 str(count), str(clip), str(fps), str(keepalive)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True))
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                self.close()
                raise RuntimeError(f"a GB28181 simulator process did not start ({line!r})")

    def close(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                out, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            for line in (out or "").splitlines():
                if line.startswith("{"):
                    for key, value in json.loads(line).items():
                        totals[key] += value
        return dict(totals)


def gb_urls(cameras: int) -> list[str]:
    from vms.simulate.gb28181_device import gb_ids

    return [f"gb28181://{dev}/{ch}" for dev, ch in (gb_ids(DOMAIN, n) for n in range(1, cameras + 1))]


# -- per-thread CPU (diagnostic) --------------------------------------------------------------------------

def thread_ticks(procs: list[psutil.Process]) -> dict[tuple[int, int], tuple[str, int]]:
    """{(pid, tid): (thread name, utime + stime in clock ticks)}."""
    out = {}
    for p in procs:
        try:
            tids = os.listdir(f"/proc/{p.pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p.pid}/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            out[(p.pid, int(tid))] = (name, int(fields[11]) + int(fields[12]))
    return out


def thread_group(name: str) -> str:
    for prefix, label in THREAD_GROUPS:
        if name.startswith(prefix):
            return label
    return f"other ({name})" if name in ("python", "python3", "python3.11", "vms") else f"other: {name}"


# -- one contender ----------------------------------------------------------------------------------------

def index_check(settings: Settings, seg_len: float) -> dict:
    """What the index says of each camera's footage: segments that are not full although another
    follows them (each camera's last is cut by the stop), holes of over a second between consecutive
    segments, and the gaps that opened after a camera's first segment (their reasons)."""
    db = Database(settings.db_url)
    try:
        with db.session() as s:
            rows = s.execute(select(Segment.station_id, Segment.start_ms, Segment.end_ms, Segment.duration_ms)
                             .order_by(Segment.station_id, Segment.start_ms)).all()
            gaps = s.execute(select(Gap.station_id, Gap.start_ms, Gap.reason)).all()
    finally:
        db.dispose()
    by: dict[str, list] = defaultdict(list)
    for sid, start, end, duration in rows:
        by[sid].append((start, end, duration))
    short = holes = 0
    for segs in by.values():
        short += sum(1 for _start, _end, duration in segs[:-1] if duration < 0.9 * seg_len * 1000)
        holes += sum(1 for a, b in zip(segs, segs[1:], strict=False) if b[0] - a[1] > 1000)
    first = {sid: segs[0][0] for sid, segs in by.items()}
    reasons: dict[str, int] = defaultdict(int)
    for sid, start, reason in gaps:
        if sid in first and start > first[sid] and reason != "ingest_stopped":
            reasons[reason] += 1
    return {"cameras_recorded": len(by), "short_segments": short, "holes": holes, "gaps": dict(reasons)}


def wait_streaming(settings: Settings, cameras: int, main: subprocess.Popen, since: float,
                   timeout: float = 180) -> float:
    """Seconds from `since` until the workers report every camera streaming (or the timeout)."""
    db = Database(settings.db_url)
    try:
        while time.monotonic() - since < timeout and main.poll() is None:
            try:
                with db.session() as s:
                    streaming = s.scalar(select(func.count()).select_from(CameraStatus)
                                         .where(CameraStatus.state == "streaming"))
            except OperationalError:  # (the worker's first write may hold the lock)
                streaming = 0
            if streaming == cameras:
                return time.monotonic() - since
            time.sleep(1)
    finally:
        db.dispose()
    print(f"# not every camera streamed within {timeout:.0f} s", file=sys.stderr, flush=True)
    return time.monotonic() - since


def run_vms(contender: str, sim: Simulator, stations: list[str], work: Path, args) -> dict:
    """`vms ingest` recording the stations from `kind`'s cameras for warm-up + measured seconds; a
    contender "<kind>:other" runs the vms of --compare-repo."""
    kind, _, other = contender.partition(":")
    repo = args.compare_repo if other else REPO
    gb = kind.startswith("gb-")
    sip_port = free_port() if gb else 0
    config = {
        "data_dir": str(work / "data"),
        "stations_file": str(REPO / "config" / "stations.yaml"),
        "storage": {"volumes": [{"name": "main", "path": str(work / "vms")}]},
        "ingest": {"segment_seconds": args.segment_seconds, "workers": args.workers},
        "simulate": {"enabled": "never"},
        # Every simulated device sends from 127.0.0.1: the per-address rate limit (20 REGISTER and MESSAGE a
        # second, meant for one device or one NAT) would stretch 139 registrations over a minute.
        "gb28181": {"enabled": gb, "sip_host": "127.0.0.1", "sip_port": sip_port or 5060, "server_id": SERVER_ID,
                    "domain": DOMAIN, "password": PASSWORD, "media_bind": "127.0.0.1", "requests_per_second": 1000},
        "analysis": {"enabled": args.setup == "product"},
        "log_level": "INFO",
    }
    (work / "data").mkdir(parents=True)
    (work / "vms.yaml").write_text(yaml.safe_dump(config))
    settings = Settings.model_validate(config)
    upgrade(settings.db_url)
    db = Database(settings.db_url)
    urls = gb_urls(len(stations)) if gb else [sim.urls[sid] for sid in stations]
    with db.session() as s:
        import_catalog(s, load_catalog(REPO / "config" / "stations.yaml"))
        for row in s.query(Station).all():
            row.main_url, row.sub_url = None, None
        for sid, url in zip(stations, urls, strict=True):
            row = s.get(Station, sid)
            assert row is not None
            row.main_url, row.transport = url, "udp" if kind == "gb-udp" else "tcp"
    db.dispose()
    pythonpath = [str(repo)]
    if args.thread_cpu:
        diag = work / "diag"
        diag.mkdir()
        (diag / "sitecustomize.py").write_text(THREAD_NAMES)
        pythonpath.insert(0, str(diag))
    env = dict(os.environ, VMS_CONFIG=str(work / "vms.yaml"), PYTHONPATH=os.pathsep.join(pythonpath))
    log_path = work / "vms.log"
    devices: GbDevices | None = None
    sent: dict[str, int] = {}
    t_start = time.monotonic()
    with open(log_path, "w") as log:
        main = subprocess.Popen([sys.executable, "-c", VMS_MAIN, "ingest"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=work)
    try:
        if gb:
            deadline = time.monotonic() + 60
            while "gb28181: SIP on" not in log_path.read_text():
                if time.monotonic() > deadline or main.poll() is not None:
                    raise RuntimeError(f"vms ingest did not start its SIP server:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            devices = GbDevices(len(stations), args.sim_processes, sip_port, sim.clip_path, args.fps,
                                args.keepalive)
        # The warm-up starts when every camera streams: the same recorded time for every contender.
        streaming_after = wait_streaming(settings, len(stations), main, t_start)
        time.sleep(args.warmup)
        vms_procs = [psutil.Process(main.pid)] + psutil.Process(main.pid).children(recursive=True)
        sim_procs = [psutil.Process(p.pid) for p in devices.procs] if devices else \
            [psutil.Process(sim._proc.pid)] if sim._proc else []  # noqa: SLF001
        before = {p.pid: cpu_seconds([p]) for p in vms_procs}
        sim_before = cpu_seconds(sim_procs)
        threads_before = thread_ticks(vms_procs) if args.thread_cpu else {}
        load_before = os.getloadavg()
        machine_before = psutil.cpu_times()
        t0 = time.monotonic()
        pss = []
        while time.monotonic() - t0 < args.seconds:
            time.sleep(min(10.0, args.seconds - (time.monotonic() - t0)))
            pss.append(pss_bytes(vms_procs))
        elapsed = time.monotonic() - t0
        after = {p.pid: cpu_seconds([p]) for p in vms_procs}
        sim_cpu = (cpu_seconds(sim_procs) - sim_before) / elapsed
        threads_after = thread_ticks(vms_procs) if args.thread_cpu else {}
        machine_after = psutil.cpu_times()
        load_after = os.getloadavg()
    finally:
        main.send_signal(signal.SIGTERM)
        try:
            main.wait(60)
        except subprocess.TimeoutExpired:
            main.kill()
            main.wait()
        if devices is not None:
            sent = devices.close()
    busy = sum(getattr(machine_after, f) - getattr(machine_before, f) for f in ("user", "system", "nice", "irq",
                                                                                 "softirq", "steal"))
    per_proc = {pid: (after.get(pid, before[pid]) - before[pid]) / elapsed for pid in before}
    cpu = sum(per_proc.values())
    main_cpu = per_proc.get(main.pid, 0.0)
    threads: dict[str, float] = defaultdict(float)
    tick = os.sysconf("SC_CLK_TCK")
    for key, (name, ticks) in threads_after.items():
        threads[thread_group(name)] += (ticks - threads_before.get(key, (name, 0))[1]) / tick / elapsed
    full, total, seconds = count_segments(work / "vms", args.segment_seconds)
    index = index_check(settings, args.segment_seconds)
    text = log_path.read_text(errors="replace")
    received = defaultdict(int)
    for m in re.finditer(r"GB28181 media \S+ (?:stopped|ended: [^;]*); (.*)", text):
        for key, value in re.findall(r"(\w+) (\d+)", m.group(1)):
            received[key] += int(value)
    return {"cpu_cores": cpu, "main_cores": main_cpu, "pss": int(sum(pss) / max(1, len(pss))),
            "streaming_after_s": streaming_after, "full_segments": full, "files": total, "footage_s": seconds,
            "processes": len(vms_procs),
            "sim_cores": sim_cpu, "machine_cores": busy / elapsed, "load": [load_before, load_after],
            "threads": dict(threads), "received": dict(received), "sent": sent, "index": index,
            "errors": len(re.findall(r" (?:ERROR|CRITICAL) ", text))}


def main() -> None:
    if sys.argv[1:2] == ["--gb-devices"]:
        port, first, count, clip, fps, keepalive = sys.argv[2:8]
        gb_devices_process(int(port), int(first), int(count), clip, int(fps), float(keepalive))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=139)
    ap.add_argument("--seconds", type=float, default=180, help="measured recording time per contender")
    ap.add_argument("--warmup", type=float, default=140,
                    help="seconds recorded before measuring (as bench_ingest: past the connect and the analysis's "
                         "connect-time sampling)")
    ap.add_argument("--segment-seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=None, help="vms worker processes (default one per core)")
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--bitrate-kbps", type=int, default=2000)
    ap.add_argument("--gop", type=int, default=30)
    ap.add_argument("--pattern-seconds", type=float, default=14.0, help="length of the looped clip (see bench_ingest)")
    ap.add_argument("--setup", choices=("product", "tap"), default="product",
                    help="product: analysis and live tap, as `vms ingest` and `vms serve` run; tap: no analysis")
    ap.add_argument("--sim-processes", type=int, default=None,
                    help="processes the simulated GB devices run in (default one per 35 devices)")
    ap.add_argument("--keepalive", type=float, default=60, help="the devices' keepalive period (s)")
    ap.add_argument("--settle", type=float, default=0, help="seconds to wait after the RTSP simulator starts")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the contenders this many times, rotating who goes first; means are reported")
    ap.add_argument("--only", default=",".join(CONTENDERS), help=f"comma-separated contenders of {CONTENDERS}")
    ap.add_argument("--compare-repo", type=Path,
                    help="another vms checkout (e.g. `git archive` of an earlier commit, its native module built): "
                         "runs the contenders of --compare too, as <kind>:other, in the same rounds (A/B of a change)")
    ap.add_argument("--compare", default="gb-udp,gb-tcp", help="the contenders run with --compare-repo too")
    ap.add_argument("--thread-cpu", action="store_true", help="also report vms's CPU by thread (diagnostic)")
    ap.add_argument("--keep", type=Path, help="keep each contender's log here (not the recordings)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    contenders = [c for c in args.only.split(",") if c]
    if args.compare_repo:
        args.compare_repo = args.compare_repo.resolve()
        contenders += [f"{c}:other" for c in args.compare.split(",") if c]
    if unknown := [c for c in contenders if c.partition(":")[0] not in CONTENDERS]:
        ap.error(f"unknown contender {', '.join(unknown)}")
    args.sim_processes = args.sim_processes or max(1, math.ceil(args.cameras / 35))

    stations = [s.id for s in load_catalog(REPO / "config" / "stations.yaml")][: args.cameras]
    if len(stations) < args.cameras:
        sys.exit(f"the catalogue has only {len(stations)} stations")
    n = len(stations)
    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    started = datetime.now(UTC)
    load_at_start = os.getloadavg()
    with Simulator(cameras=n, names=stations, width=args.width, height=args.height, fps=args.fps,
                   bitrate_kbps=args.bitrate_kbps, gop=args.gop, content="pattern",
                   pattern_seconds=args.pattern_seconds, cache_dir=REPO / "data" / "cache" / "simulate",
                   ready_timeout=300) as sim:
        time.sleep(args.settle)
        for k in range(args.rounds):
            order = contenders[k % len(contenders):] + contenders[:k % len(contenders)]
            for kind in order:
                work = Path(tempfile.mkdtemp(prefix=f"bench-gb-{kind.replace(':', '-')}-"))
                try:
                    r = run_vms(kind, sim, stations, work, args)
                    if args.keep:
                        args.keep.mkdir(parents=True, exist_ok=True)
                        shutil.copy(work / "vms.log", args.keep / f"round{k + 1}-{kind}.log")
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                runs[kind].append(r)
                lost = r["received"].get("lost", 0)
                print(f"# round {k + 1} {kind}: streaming after {r['streaming_after_s']:.0f} s, "
                      f"{1000 * r['cpu_cores'] / n:.2f} ms/stream-s (main {1000 * r['main_cores'] / n:.2f}), "
                      f"{r['pss'] / n / 2**20:.1f} MB/stream, "
                      f"{r['full_segments']} full segments, simulator {r['sim_cores']:.2f} cores, machine "
                      f"{r['machine_cores']:.2f} cores busy, load {r['load'][1][0]:.1f}"
                      + (f", {r['received'].get('packets', 0)} packets received, {lost} lost" if "gb" in kind else "")
                      + (f", {r['errors']} errors logged" if r["errors"] else "")
                      + f"; index: {r['index']['cameras_recorded']} cameras, {r['index']['short_segments']} short "
                        f"segments, {r['index']['holes']} holes, gaps {r['index']['gaps'] or 'none'}",
                      file=sys.stderr, flush=True)
                if args.thread_cpu:
                    for group, cores in sorted(r["threads"].items(), key=lambda kv: -kv[1]):
                        if cores * 1000 / n >= 0.005:
                            print(f"#   {group}: {1000 * cores / n:.3f} ms/stream-s", file=sys.stderr, flush=True)

    def mean(kind: str) -> dict | None:
        rs = runs.get(kind)
        if not rs:
            return None
        avg = {key: sum(r[key] for r in rs) / len(rs) for key in ("cpu_cores", "main_cores", "pss", "sim_cores",
                                                                   "machine_cores")}
        threads: dict[str, float] = defaultdict(float)
        for r in rs:
            for group, cores in r["threads"].items():
                threads[group] += cores / len(rs)
        return {**avg, "full_segments": min(r["full_segments"] for r in rs), "files": min(r["files"] for r in rs),
                "footage_s": min(r["footage_s"] for r in rs), "processes": rs[0]["processes"],
                "rounds": [1000 * r["cpu_cores"] / n for r in rs], "threads": dict(threads),
                "lost": max(r["received"].get("lost", 0) for r in rs),
                "packets": min(r["received"].get("packets", 0) for r in rs),
                "errors": max(r["errors"] for r in rs),
                "missing": max(r["index"]["short_segments"] + r["index"]["holes"]
                               + n - r["index"]["cameras_recorded"] for r in rs),
                "gaps": {k: v for r in rs for k, v in r["index"]["gaps"].items()}}

    expected = n * math.floor((args.warmup + args.seconds) / args.segment_seconds)
    rows = []
    for kind in contenders:
        r = mean(kind)
        if r is None:
            continue
        rows.append({"contender": kind, "processes": r["processes"],
                     "cpu_ms_per_stream_s": 1000 * r["cpu_cores"] / n,
                     "cpu_ms_per_stream_s_rounds": r["rounds"],
                     "main_ms_per_stream_s": 1000 * r["main_cores"] / n,
                     "pss_mb_per_stream": r["pss"] / n / 2**20,
                     "expected_full_segments": expected, "full_segments": r["full_segments"], "files": r["files"],
                     "footage_s_per_camera": r["footage_s"] / n, "packets_lost": r["lost"],
                     "packets_received": r["packets"], "errors_logged": r["errors"], "missing": r["missing"],
                     "gaps": r["gaps"],
                     "simulator_cores": r["sim_cores"], "machine_busy_cores": r["machine_cores"],
                     "threads_ms_per_stream_s": {g: 1000 * c / n for g, c in r["threads"].items()}})
    by = {row["contender"]: row for row in rows}
    ratios = {}
    if "rtsp" in by:
        for kind in by:
            if kind != "rtsp":
                ratios[kind] = {"cpu": by[kind]["cpu_ms_per_stream_s"] / by["rtsp"]["cpu_ms_per_stream_s"],
                                "memory": by[kind]["pss_mb_per_stream"] / by["rtsp"]["pss_mb_per_stream"]}
    machine = f"{platform.node()} {os.cpu_count()} cores {psutil.virtual_memory().total / 2**30:.0f} GiB, " \
              f"{platform.processor() or platform.machine()}"
    print(f"# bench_gb28181 {started:%Y-%m-%d %H:%M} UTC, {machine}")
    print(f"# {n} cameras {args.width}x{args.height} {args.fps} fps {args.bitrate_kbps} kbps GOP {args.gop}; "
          f"{args.warmup:.0f} s warm-up + {args.seconds:.0f} s measured; segments of {args.segment_seconds:.0f} s; "
          f"mean of {args.rounds} round(s), full segments: the worst round (the warm-up starts once every camera "
          f"streams: early ones may record one more); missing: short segments before a camera's last, holes over "
          f"1 s between segments and cameras without footage, in the index, the worst round; "
          f"vms ingest, set-up {args.setup}; "
          f"GB devices in {args.sim_processes} process(es), keepalive {args.keepalive:g} s")
    print(f"# load average at the start {load_at_start[0]:.2f} / {load_at_start[1]:.2f} / {load_at_start[2]:.2f}")
    print("| contender | processes | CPU ms per stream-second (rounds) | of which main process | PSS MB per stream |"
          " full segments (expected at least) | missing | packets lost | simulator cores | machine busy cores |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        rounds = ", ".join(f"{x:.2f}" for x in row["cpu_ms_per_stream_s_rounds"])
        kind, _, other = row["contender"].partition(":")
        lost = "-" if kind == "rtsp" else f"{row['packets_lost']} of {row['packets_received']}"
        label = LABELS[kind] + (" (--compare-repo)" if other else "")
        print(f"| {label} | {row['processes']} | {row['cpu_ms_per_stream_s']:.2f} ({rounds}) |"
              f" {row['main_ms_per_stream_s']:.2f} | {row['pss_mb_per_stream']:.1f} |"
              f" {row['full_segments']} ({expected}) | {row['missing']} | {lost} | {row['simulator_cores']:.2f} |"
              f" {row['machine_busy_cores']:.2f} |")
    if args.compare_repo:
        print(f"# :other = vms of {args.compare_repo}")
    for kind, ratio in ratios.items():
        print(f"ratios {kind}/rtsp: CPU {ratio['cpu']:.2f}x (target <= 1.5x), memory {ratio['memory']:.2f}x")
    if args.thread_cpu:
        groups = sorted({g for row in rows for g in row["threads_ms_per_stream_s"]})
        print("| thread group | " + " | ".join(row["contender"] for row in rows) + " |")
        print("|---|" + "---|" * len(rows))
        for g in groups:
            print(f"| {g} | " + " | ".join(f"{row['threads_ms_per_stream_s'].get(g, 0):.3f}" for row in rows) + " |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios, "cameras": n, "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "machine": machine,
            "started": started.isoformat(), "load_at_start": load_at_start}, indent=2))


if __name__ == "__main__":
    main()
