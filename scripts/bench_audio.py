#!/usr/bin/env python
"""Audio benchmark: what keeping a camera's G.711 audio costs (transcoded to AAC, mono, 8 kHz).

    scripts/bench_audio.py                                   # the transcoder alone (a minute)
    scripts/bench_audio.py --cameras 20 --seconds 60 --rounds 2   # and recording real RTSP cameras

1. The transcoder alone (vms.recording.audio.G711ToAac) on G.711 A-law in 20 ms packets, as cameras
   send it: 60 s of each kind of sound (room noise, speech-like bursts over it, a steady tone, digital
   silence), CPU ms per stream-second, with the encoder's "fast" coder (vms's) and its default
   "twoloop". The encoder's cost depends on the sound: a real camera hears a room.
2. With --cameras N: N simulated cameras sending H.264 + PCMA (`vms simulate --audio pcma`), recorded
   by vms's supervisor with ingest.audio keep and drop, in turns on the same cameras: the difference
   per camera is what keeping the audio costs in the product (handing its packets to Python, the
   transcoding, muxing; with drop, the audio is not read into Python at all). For reference, one
   ffmpeg per camera with `-c:v copy -c:a aac -ar 8000 -ac 1` against `-c:v copy -an` (what a recorder
   transcoding with ffmpeg pays; Debian's ffmpeg, its default AAC coder).
Figures are per camera; "x 139" is the projection for the county's 139 cameras.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import measure  # noqa: E402

from vms.catalog.loader import load_catalog  # noqa: E402
from vms.catalog.store import import_catalog  # noqa: E402
from vms.core.settings import Settings  # noqa: E402
from vms.db.engine import Database  # noqa: E402
from vms.db.migrate import upgrade  # noqa: E402
from vms.ingest.supervisor import IngestSupervisor  # noqa: E402
from vms.recording import audio as audio_mod  # noqa: E402
from vms.simulate import Simulator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RATE = 8000
PACKET = 160  # 20 ms


def sounds(seconds: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Camera-like sound, float -1..1 at 8 kHz."""
    rng = np.random.default_rng(seed)
    n = seconds * RATE
    t = np.arange(n) / RATE
    spectrum = np.fft.rfft(rng.normal(0, 1, n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))  # pink: -3 dB per octave
    pink = np.fft.irfft(spectrum, n)
    room = pink / np.abs(pink).max() * 0.01  # about -40 dBFS
    # Syllables at ~4 Hz, voiced (a 120-220 Hz pitch and its harmonics), words and pauses.
    pitch = 170 + 50 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (np.sin(2 * np.pi * 0.2 * t) > -0.3)
    speech = room + 0.15 * voiced * syllables
    return {
        "room noise": room,
        "speech over room noise": speech,
        "440 Hz tone": 0.1 * np.sin(2 * np.pi * 440 * t),  # the hardest for the fast coder
        "digital silence": np.zeros(n),
    }


def g711_packets(signal: np.ndarray, codec: str = "pcm_alaw") -> tuple[av.audio.stream.AudioStream, list]:
    """Encode to G.711 with FFmpeg and return (a stream to build the transcoder from, its 20 ms packets)."""
    path = Path(tempfile.mkdtemp(prefix="bench-audio-")) / "g711.nut"
    pcm = (np.clip(signal, -1, 1) * 32767).astype(np.int16)
    with av.open(str(path), "w", format="nut") as out:
        stream = out.add_stream(codec, rate=RATE, layout="mono")
        for start in range(0, len(pcm) - PACKET + 1, PACKET):
            frame = av.AudioFrame.from_ndarray(pcm[None, start:start + PACKET].copy(), format="s16", layout="mono")
            frame.sample_rate, frame.pts = RATE, start
            for p in stream.encode(frame):
                out.mux(p)
    container = av.open(str(path))
    packets = [p for p in container.demux(container.streams.audio[0]) if p.size]
    shutil.rmtree(path.parent, ignore_errors=True)
    return container.streams.audio[0], packets


def transcoder_cost(stream, packets: list, coder: str, repeats: int) -> float:
    """Best of `repeats`: CPU ms per stream-second of G711ToAac.push (and the final flush)."""
    seconds = len(packets) * PACKET / RATE
    best = float("inf")
    saved = dict(audio_mod.AAC_OPTIONS)
    audio_mod.AAC_OPTIONS["aac_coder"] = coder
    try:
        for _ in range(repeats):
            tr = audio_mod.G711ToAac(stream)
            c0 = time.process_time()
            for p in packets:
                tr.push(p)
            tr.flush()
            best = min(best, (time.process_time() - c0) * 1000 / seconds)
    finally:
        audio_mod.AAC_OPTIONS.clear()
        audio_mod.AAC_OPTIONS.update(saved)
    return best


def run_vms(sim: Simulator, stations: list[str], audio: str, args) -> float:
    work = Path(tempfile.mkdtemp(prefix="bench-audio-"))
    try:
        settings = Settings.model_validate({
            "data_dir": str(work / "data"), "storage": {"volumes": [{"name": "main", "path": str(work / "vms")}]},
            "ingest": {"segment_seconds": 60, "workers": args.workers, "audio": audio}})
        upgrade(settings.db_url)
        db = Database(settings.db_url)
        with db.session() as s:
            import_catalog(s, load_catalog(REPO / "config" / "stations.yaml"))
        urls = {sid: sim.urls[sid] for sid in stations}
        sup = IngestSupervisor(settings, urls, [], only_stations=set(stations), cameras=len(stations)).start()
        try:
            cpu, _pss = measure(lambda: [psutil.Process(pid) for pid in sup.pids()], args.warmup, args.seconds)
        finally:
            sup.stop()
        db.dispose()
        return cpu
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_ffmpeg(sim: Simulator, stations: list[str], audio: str, args) -> float:
    work = Path(tempfile.mkdtemp(prefix="bench-audio-"))
    codec = ["-c:a", "aac", "-ar", str(RATE), "-ac", "1"] if audio == "keep" else ["-an"]
    procs = [subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp", "-i", sim.urls[sid], "-c:v", "copy",
         *codec, "-f", "segment", "-segment_time", "60", "-reset_timestamps", "1", str(work / f"{sid}-%05d.mp4")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for sid in stations]
    try:
        cpu, _pss = measure(lambda: [psutil.Process(p.pid) for p in procs], args.warmup, args.seconds)
    finally:
        for p in procs:
            p.send_signal(2)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="transcoder runs per sound (the best counts)")
    ap.add_argument("--cameras", type=int, default=0, help="also record this many simulated cameras (0: skip)")
    ap.add_argument("--seconds", type=float, default=60, help="measured recording time per run")
    ap.add_argument("--warmup", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2, help="keep/drop runs alternate who goes first")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-ffmpeg", action="store_true", help="skip the ffmpeg reference runs")
    args = ap.parse_args()

    machine = (f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
               f"load {os.getloadavg()[0]:.1f}")
    print(f"# bench_audio {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine}; PyAV {av.__version__}")
    print("| sound | fast coder (vms) ms/stream-s | x 139 cameras | twoloop coder ms/stream-s |")
    print("|---|---|---|---|")
    for name, signal in sounds(60).items():
        stream, packets = g711_packets(signal)
        fast = transcoder_cost(stream, packets, "fast", args.repeats)
        twoloop = transcoder_cost(stream, packets, "twoloop", args.repeats)
        print(f"| {name} | {fast:.2f} | {fast * 139 / 1000:.2f} cores | {twoloop:.2f} |", flush=True)
    if not args.cameras:
        return

    stations = [s.id for s in load_catalog(REPO / "config" / "stations.yaml")][: args.cameras]
    contenders = [("vms keep", run_vms, "keep"), ("vms drop", run_vms, "drop")]
    if not args.no_ffmpeg:
        contenders += [("ffmpeg aac", run_ffmpeg, "keep"), ("ffmpeg -an", run_ffmpeg, "drop")]
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
    with Simulator(cameras=len(stations), names=stations, width=640, height=360, fps=15, bitrate_kbps=512,
                   gop=30, content="pattern", audio="pcma", cache_dir=REPO / "data" / "cache" / "simulate",
                   ready_timeout=300) as sim:
        time.sleep(5)
        for k in range(args.rounds):
            for name, run, audio in contenders if k % 2 == 0 else contenders[::-1]:
                cores = run(sim, stations, audio, args)
                cpu[name].append(cores)
                print(f"# round {k + 1} {name}: {1000 * cores / len(stations):.2f} ms/stream-s", file=sys.stderr,
                      flush=True)
    n = len(stations)

    def per_camera(name: str) -> float:
        return 1000 * sum(cpu[name]) / len(cpu[name]) / n

    print(f"\n# {n} cameras 640x360 15 fps 512 kbps + PCMA 20 ms packets, {args.warmup:.0f} s warm-up + "
          f"{args.seconds:.0f} s measured, {args.rounds} round(s) (means)")
    print("| recorder | audio kept ms/stream-s | audio dropped ms/stream-s | audio costs ms/stream-s | x 139 cameras |")
    print("|---|---|---|---|---|")
    for label, keep, drop in (("vms (AAC, fast coder)", "vms keep", "vms drop"),
                              ("ffmpeg -c:a aac (reference)", "ffmpeg aac", "ffmpeg -an")):
        if keep not in cpu:
            continue
        cost = per_camera(keep) - per_camera(drop)
        print(f"| {label} | {per_camera(keep):.2f} | {per_camera(drop):.2f} | {cost:.2f} |"
              f" {cost * 139 / 1000:.2f} cores |")


if __name__ == "__main__":
    main()
