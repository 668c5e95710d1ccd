"""CPU of H.264 playback of H.265 footage (vms/api/playback_transcode.py): CPU seconds per second of
footage, and so what one viewer at 1x costs while a range is transcoded.

Makes an H.265 fMP4 segment like the recorder's (hvc1, no B-frames, a keyframe every 2 s; the simulator's
moving pattern with grain, or --noise for fresh sensor noise on every frame, which costs the encoder
more), remuxes a range as playback does, then transcodes it as playback does and prints one JSON line.

    .venv/bin/python scripts/bench_playback_transcode.py --size 1920x1080 --fps 25 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vms.api.playback_transcode import transcode_to_h264
from vms.api.remux import SourceSegment, remux_range
from vms.simulate.content import VideoFormat, pattern_frames

REPO = Path(__file__).resolve().parents[1]


def make_segment(path: Path, fmt: VideoFormat, frames: int, noise: bool) -> None:
    out = av.open(str(path), "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
    v = out.add_stream("libx265", rate=fmt.fps)
    v.codec_context.codec_tag = "hvc1"
    v.width, v.height, v.pix_fmt = fmt.width, fmt.height, "yuv420p"
    v.bit_rate = fmt.bitrate_kbps * 1000
    v.options = {"preset": "ultrafast",
                 "x265-params": f"keyint={fmt.gop}:min-keyint={fmt.gop}:scenecut=0:bframes=0:log-level=error"}
    v.codec_context.time_base = Fraction(1, fmt.fps)
    rng = np.random.default_rng(3)
    for i, yuv in enumerate(pattern_frames(fmt, frames)):
        if noise:
            yuv = np.clip(yuv.astype(np.int16) + rng.integers(-6, 7, size=yuv.shape), 0, 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts, frame.time_base = i, Fraction(1, fmt.fps)
        for p in v.encode(frame):
            out.mux(p)
    for p in v.encode(None):
        out.mux(p)
    out.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--bitrate-kbps", type=int, default=4000)
    ap.add_argument("--seconds", type=int, default=30, help="footage transcoded")
    ap.add_argument("--max-height", type=int, default=720, help="live.transcode_max_height")
    ap.add_argument("--noise", action="store_true", help="fresh noise on every frame (a busier scene)")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    fmt = VideoFormat(width, height, args.fps, args.bitrate_kbps, 2 * args.fps)
    with tempfile.TemporaryDirectory(prefix="bench-pbt-") as tmp:
        seg = Path(tmp) / "segment.mp4"
        make_segment(seg, fmt, args.seconds * args.fps, args.noise)
        remuxed = Path(tmp) / "remuxed.mp4"
        result = remux_range([SourceSegment(1, seg, 0, args.seconds * 1000, "complete")], 0,
                             args.seconds * 1000, remuxed)
        stats = transcode_to_h264(remuxed, Path(tmp) / "h264.mp4", args.max_height)
    footage_s = result.duration_ms / 1000
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    print(json.dumps({
        "source": f"{args.size} {args.fps} fps H.265 {args.bitrate_kbps} kbps{' +noise' if args.noise else ''}",
        "output": f"{stats.width}x{stats.height} H.264", "footage_s": footage_s, "frames": stats.frames,
        "cpu_s": round(stats.cpu_s, 2), "wall_s": round(stats.wall_s, 2),
        "cpu_s_per_footage_s": round(stats.cpu_s / footage_s, 3),
        "speed_x_realtime": round(footage_s / stats.wall_s, 2),
        "machine": model, "date": time.strftime("%Y-%m-%d"), "commit": sha,
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
