#!/usr/bin/env python
"""Cost of the camera simulator: server CPU per stream-second and memory per stream, with every stream
read by a PyAV client (demux only) on loopback.

    .venv/bin/python scripts/bench_simulate.py --cameras 139 --width 1920 --height 1080 --bitrate 2000
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import av
import psutil

from vms.simulate import Simulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=139)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--bitrate", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--cache-dir", type=Path, default=Path("data/cache/simulate"))
    args = ap.parse_args()
    t = time.monotonic()
    with Simulator(cameras=args.cameras, width=args.width, height=args.height, fps=args.fps,
                   bitrate_kbps=args.bitrate, gop=30, content="pattern", cache_dir=args.cache_dir) as sim:
        print(f"ready in {time.monotonic() - t:.1f} s (clip {sim.clip_path.stat().st_size / 1e6:.2f} MB)")
        server = psutil.Process(sim._proc.pid)
        idle_rss = server.memory_info().rss
        stop = threading.Event()
        counts = dict.fromkeys(sim.urls, 0)
        bytes_read = dict.fromkeys(sim.urls, 0)

        failures: list[str] = []

        def read(name: str, url: str) -> None:
            opts = {"rtsp_transport": "tcp", "timeout": "10000000"}
            try:
                c = av.open(url, options=opts)
            except av.error.FFmpegError as exc:
                failures.append(f"{name}: {exc}")
                return
            with c:
                for p in c.demux(c.streams.video[0]):
                    counts[name] += 1
                    bytes_read[name] += p.size
                    if stop.is_set():
                        return

        readers = [threading.Thread(target=read, args=item, daemon=True) for item in sim.urls.items()]
        for r in readers:
            r.start()
        time.sleep(15)  # every client connected and past its first packets
        cpu0, c0, w0 = server.cpu_times(), sum(counts.values()), time.monotonic()
        time.sleep(args.seconds)
        cpu1, c1, w1 = server.cpu_times(), sum(counts.values()), time.monotonic()
        rss = server.memory_info().rss
        stop.set()
        for r in readers:
            r.join(10)
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    stream_seconds = args.cameras * (w1 - w0)
    print(f"{args.cameras} streams {args.width}x{args.height}@{args.fps} {args.bitrate} kbps, {w1 - w0:.1f} s")
    print(f"server CPU {cpu:.2f} s = {1000 * cpu / stream_seconds:.2f} ms per stream-second "
          f"({100 * cpu / (w1 - w0):.0f} % of a core)")
    print(f"server RSS {rss / 1e6:.0f} MB ({(rss - idle_rss) / 1e6 / args.cameras:.1f} MB per streaming camera)")
    live = sum(1 for n in counts if counts[n])
    print(f"{live} streams read, {len(failures)} failed to open {failures[:3]}")
    print(f"frames received {c1 - c0} = {(c1 - c0) / (live * (w1 - w0)):.2f} fps per read stream (asked {args.fps})")


if __name__ == "__main__":
    main()
