#!/usr/bin/env python
"""Offline, repeatable cost of one camera's packet loop: a clip (the simulator's 1080p pattern, looped)
recorded as fast as it can be read by one real CameraSession with the observers of a set-up, the
native copier on, on a clock that follows the stream. No network, no other threads competing: run
it under callgrind to count instructions, which do not depend on the machine's load.

    valgrind --tool=callgrind --callgrind-out-file=cg.out scripts/bench_loop_offline.py --setup product --seconds 120

The steady state per stream-second is the difference between two lengths, e.g. (Ir(120 s) -
Ir(60 s)) / 60: it leaves out the start-up (imports, the first PULLBACK_S through Python) and counts
the decodes the analysis schedules in that minute. Also prints the process CPU time and what the
observers did (samples decoded, packets the tap kept).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vms.catalog.loader import load_catalog  # noqa: E402
from vms.catalog.store import import_catalog  # noqa: E402
from vms.core.clock import SimulatedClock  # noqa: E402
from vms.core.settings import Settings  # noqa: E402
from vms.db.engine import Database  # noqa: E402
from vms.db.migrate import upgrade  # noqa: E402
from vms.ingest.keyframes import KeyframeCacheObserver  # noqa: E402
from vms.ingest.session import CameraSession  # noqa: E402
from vms.recording.index import IndexWriter  # noqa: E402
from vms.recording.recorder import StreamRecorder  # noqa: E402
from vms.recording.volumes import VolumeSet  # noqa: E402
from vms.simulate.content import VideoFormat, pattern_clip  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STATION = "pingshan-town"
SETUPS = ("record", "tap", "analysis", "product")


class StreamClock(SimulatedClock):
    """Wall time = a start plus the recorder's stream position (the clip is read faster than real time)."""

    def __init__(self) -> None:
        super().__init__()
        self.base_ms = self._now_ms
        self.recorder: StreamRecorder | None = None

    def now_ms(self) -> int:
        rec = self.recorder
        return self._now_ms if rec is None else self.base_ms + rec._ticks_to_ms(rec._pos)

    def monotonic(self) -> float:
        return self.now_ms() / 1000


def make_clip(seconds: float, fmt: VideoFormat, pattern_seconds: float) -> Path:
    """The simulator's pattern clip looped for `seconds`, in MPEG-TS with 90 kHz timestamps (as RTSP);
    cached, so that a measured run does not count making it."""
    cache = REPO / "data" / "cache" / "simulate"
    source = pattern_clip(cache, fmt, pattern_seconds)
    out = cache / f"offline-{source.stem}-{seconds:g}s.ts"
    if out.exists():
        return out
    step = 90000 // fmt.fps
    n = 0
    tmp = out.with_suffix(".tmp")
    with av.open(str(tmp), "w", format="mpegts") as dst:
        stream = None
        while n < seconds * fmt.fps:
            with av.open(str(source), format="h264") as src:
                if stream is None:
                    stream = dst.add_stream_from_template(src.streams.video[0])
                    stream.time_base = Fraction(1, 90000)
                for pkt in src.demux(src.streams.video[0]):
                    if not pkt.size or n >= seconds * fmt.fps:
                        continue
                    pkt.stream = stream
                    pkt.pts = pkt.dts = 90000 + n * step
                    pkt.time_base = Fraction(1, 90000)
                    dst.mux(pkt)
                    n += 1
    tmp.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", choices=SETUPS, default="product",
                    help="observers: record (the keyframe cache only), tap, analysis, product (tap + analysis)")
    ap.add_argument("--seconds", type=float, default=60, help="length of the recorded clip")
    ap.add_argument("--segment-seconds", type=float, default=60)
    ap.add_argument("--python-path", action="store_true", help="without the native copier")
    ap.add_argument("--pattern-seconds", type=float, default=14,
                    help="length of the looped pattern; not a divisor of the analysis's sample intervals (a 4 s "
                         "loop sampled every 20 or 60 s shows the same picture: a frozen camera, sampled every 20 s)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-offline-"))
    try:
        fmt = VideoFormat(1920, 1080, 15, 2000, 30)
        clip = make_clip(args.seconds, fmt, args.pattern_seconds)
        settings = Settings.model_validate({
            "data_dir": str(work / "data"), "storage": {"volumes": [{"name": "main", "path": str(work / "vms")}]},
            "ingest": {"segment_seconds": args.segment_seconds, "native_copy": not args.python_path}})
        upgrade(settings.db_url)
        db = Database(settings.db_url)
        with db.session() as s:
            import_catalog(s, load_catalog(REPO / "config" / "stations.yaml"))
        clock = StreamClock()
        index = IndexWriter(db, "bench").start()
        recorder = StreamRecorder(STATION, VolumeSet.from_settings(settings), settings.tz, index, clock,
                                  settings.ingest.segment_seconds)
        recorder.start_run(None)
        clock.recorder = recorder
        observers: list = [KeyframeCacheObserver(settings.data_dir, STATION)]
        factories = []
        if args.setup in ("tap", "product"):
            from vms.live.tap import LiveTapServer

            factories.append(LiveTapServer(settings.data_dir, clock))
        if args.setup in ("analysis", "product"):
            from vms.analysis.observer import AnalysisObserverFactory

            factories.append(AnalysisObserverFactory(settings, db, clock, start_thread=False))
        observers += [f(STATION) for f in factories]
        session = CameraSession(STATION, str(clip), "tcp", recorder, observers, settings.ingest, clock, index)
        t0 = time.process_time()
        reason, detail = session._connect_and_record()
        cpu = time.process_time() - t0
        for f in factories:
            f.close()
        index.stop()
        analysis = [o for o in observers if hasattr(o, "samples")]
        print(f"{args.setup}: {args.seconds:.0f} s clip, ended {reason}; {session.health.frames} frames, "
              f"{session.native_frames} by the copier; CPU {cpu:.3f} s = {1000 * cpu / args.seconds:.3f} ms/stream-s"
              + (f"; {analysis[0].samples} samples ({analysis[0].schedule.early} early), "
                 f"{1000 * analysis[0].decode_seconds / max(1, analysis[0].samples):.1f} ms each" if analysis else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
