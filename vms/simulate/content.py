"""Simulated camera content, encoded once with PyAV and cached as raw Annex-B streams.

Clips loop on the RTSP server (multifilesrc loads a whole clip into memory per mount), so they are
kept short where they can be and always hold a whole number of GOPs, each opening with SPS/PPS and
an IDR frame. The cache key covers every content parameter; files are written to a temporary name
and renamed, under a lock, so parallel users of one cache never see half a clip.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from vms.recording.avtypes import video_codec

# Bump when the rendering or encoding changes, so old cached clips are not reused.
CONTENT_VERSION = 2  # 2: the station day's sensor noise is drawn anew for every frame
CONTENT_KINDS = ("pattern", "station-day")


@dataclass(frozen=True)
class VideoFormat:
    width: int
    height: int
    fps: int
    bitrate_kbps: int
    gop: int

    def check(self) -> None:
        problems = []
        if not (64 <= self.width <= 3840 and self.width % 2 == 0):
            problems.append(f"width must be an even number from 64 to 3840, got {self.width}")
        if not (64 <= self.height <= 2160 and self.height % 2 == 0):
            problems.append(f"height must be an even number from 64 to 2160, got {self.height}")
        if not 1 <= self.fps <= 60:
            problems.append(f"fps must be from 1 to 60, got {self.fps}")
        if not 32 <= self.bitrate_kbps <= 50_000:
            problems.append(f"bitrate_kbps must be from 32 to 50000, got {self.bitrate_kbps}")
        if not 1 <= self.gop <= 600:
            problems.append(f"gop must be from 1 to 600 frames, got {self.gop}")
        if problems:
            raise ValueError("; ".join(problems))


def cache_key(**params) -> str:
    raw = json.dumps({"version": CONTENT_VERSION, **params}, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached(path: Path, build: Callable[[Path], object]) -> Path:
    """Return path, building it first (atomically, once across processes) when it is missing."""
    if path.exists():
        return path
    with _locked(path):
        if path.exists():
            return path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            build(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


# -- encoding ---------------------------------------------------------------------------------------

def _encoder(codec: str, fmt: VideoFormat, width: int | None = None, height: int | None = None,
             capped: bool = False):
    """capped=False: average bitrate (a CBR-like camera); True: constant quality with the bitrate as a
    ceiling, like a camera in VBR mode: dark, still scenes then cost far less (and less server memory)."""
    cc = video_codec(codec, "w")
    cc.width = width or fmt.width
    cc.height = height or fmt.height
    cc.pix_fmt = "yuv420p"
    cc.time_base = Fraction(1, fmt.fps)
    cc.framerate = Fraction(fmt.fps, 1)
    if not capped:
        cc.bit_rate = fmt.bitrate_kbps * 1000
    cc.gop_size = fmt.gop
    cc.max_b_frames = 0
    # Frame threads, not slices: sliced keyframes carry equal DTS and players complain (measured).
    cc.thread_type = "FRAME"
    g, rate = fmt.gop, fmt.bitrate_kbps
    if codec == "libx264":
        cc.options = {
            **({"crf": "20"} if capped else {}),
            "preset": "veryfast", "bf": "0",
            "x264-params": f"keyint={g}:min-keyint={g}:scenecut=0:sliced-threads=0:"
                           f"vbv-maxrate={rate}:vbv-bufsize={rate * 2}",
        }
    else:
        cc.options = {
            "preset": "ultrafast",
            "x265-params": f"keyint={g}:min-keyint={g}:scenecut=0:bframes=0:repeat-headers=1:"
                           f"vbv-maxrate={rate}:vbv-bufsize={rate * 2}:log-level=error",
        }
    return cc


def encode_frames(frames: Iterator[np.ndarray], out: Path, fmt: VideoFormat, codec: str = "libx264",
                  width: int | None = None, height: int | None = None, capped: bool = False) -> int:
    """Encode I420 frames (shape h*3/2 x w) into a raw Annex-B file; return the frame count."""
    cc = _encoder(codec, fmt, width, height, capped)
    count = 0
    with open(out, "wb") as f:
        for i, yuv in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            frame.time_base = cc.time_base
            for packet in cc.encode(frame):
                f.write(bytes(packet))
            count += 1
        for packet in cc.encode(None):
            f.write(bytes(packet))
    return count


def _whole_gops(seconds: float, fmt: VideoFormat) -> int:
    return max(1, math.ceil(seconds * fmt.fps / fmt.gop)) * fmt.gop


# -- pattern ----------------------------------------------------------------------------------------

def pattern_frames(fmt: VideoFormat, frames: int, width: int | None = None,
                   height: int | None = None, label: str = "") -> Iterator[np.ndarray]:
    """Moving colour bars, a bouncing box, grain and a burned-in frame counter."""
    w, h = width or fmt.width, height or fmt.height
    x = np.arange(w, dtype=np.float32)
    rng = np.random.default_rng(7)
    # Grain costs bits like a real sensor does, so the encoder reaches the asked bitrate.
    grain = rng.integers(0, 24, size=(h, w + 64, 1), dtype=np.uint8)
    scale = max(h / 360, 0.4)
    for i in range(frames):
        phase = 2 * np.pi * i / frames
        row = np.stack([
            127 + 100 * np.sin(2 * np.pi * x / w * 2 + phase),
            127 + 100 * np.sin(2 * np.pi * x / w * 3 - phase + 2),
            127 + 100 * np.sin(2 * np.pi * x / w + phase + 4),
        ], axis=-1).astype(np.uint8)
        img: np.ndarray = np.ascontiguousarray(np.broadcast_to(row, (h, w, 3)))
        shift = (i * 7) % 64
        img = cv2.add(img, np.ascontiguousarray(np.repeat(grain[:, shift:shift + w], 3, axis=2)))
        bx = int((w - h // 4) * (0.5 + 0.5 * math.sin(phase)))
        by = int((h - h // 4) * (0.5 + 0.5 * math.cos(phase)))
        cv2.rectangle(img, (bx, by), (bx + h // 4, by + h // 4), (255, 255, 255), -1)
        text = f"{label} {i:05d}/{frames:05d}".strip()
        org = (int(10 * scale), int(40 * scale))
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(1, int(6 * scale)))
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, int(2 * scale)))
        yield cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420)


def pattern_clip(cache_dir: Path, fmt: VideoFormat, seconds: float = 4.0, codec: str = "libx264") -> Path:
    frames = _whole_gops(seconds, fmt)
    ext = "h264" if codec == "libx264" else "h265"
    key = cache_key(kind="pattern", codec=codec, frames=frames, **asdict(fmt))
    name = f"pattern-{fmt.width}x{fmt.height}-{fmt.fps}fps-{fmt.bitrate_kbps}k-g{fmt.gop}-{key}.{ext}"
    return _cached(cache_dir / name, lambda out: encode_frames(pattern_frames(fmt, frames), out, fmt, codec))


def resolution_change_clip(cache_dir: Path, fmt: VideoFormat, seconds_each: float = 2.0) -> Path:
    """640x360 then 320x240, each a whole number of GOPs with its own SPS: the resolution changes."""
    small = VideoFormat(640, 360, fmt.fps, min(fmt.bitrate_kbps, 512), fmt.gop)
    frames = _whole_gops(seconds_each, small)
    key = cache_key(kind="res-change", frames=frames, **asdict(small))
    path = cache_dir / f"res-change-{small.fps}fps-g{small.gop}-{key}.h264"

    def build(out: Path) -> None:
        first, second = out.with_suffix(".a"), out.with_suffix(".b")
        try:
            encode_frames(pattern_frames(small, frames, label="640x360"), first, small)
            encode_frames(pattern_frames(small, frames, 320, 240, label="320x240"), second, small, width=320,
                          height=240)
            with open(out, "wb") as f:
                for part in (first, second):
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, f)
        finally:
            first.unlink(missing_ok=True)
            second.unlink(missing_ok=True)

    return _cached(path, build)


# -- station day --------------------------------------------------------------------------------------

def station_day_timeline(day_seconds: float) -> dict:
    """Ground truth of the compressed day: every change, in seconds from the start of the clip."""
    d = float(day_seconds)
    roll = round(min(6.0, 0.02 * d), 3)
    t = lambda fraction: round(fraction * d, 3)  # noqa: E731
    episodes = [
        {"enter": t(0.22), "leave": t(0.30), "people": 1},
        {"enter": t(0.34), "leave": t(0.40), "people": 1},  # back within 2 min at 600 s: one visit
        {"enter": t(0.62), "leave": t(0.72), "people": 1},  # > 2 min after the last one left
        {"enter": t(0.65), "leave": t(0.69), "people": 1},  # a second person during the third visit
    ]
    events = [
        {"t": t(0.10), "event": "lights_on"},
        {"t": t(0.13), "event": "shutter_up", "duration": roll},
    ]
    for e in episodes:
        events.append({"t": e["enter"], "event": "person_enter"})
        events.append({"t": e["leave"], "event": "person_leave"})
    events += [
        {"t": t(0.84), "event": "shutter_down", "duration": roll},
        {"t": t(0.88), "event": "lights_off"},
    ]
    events.sort(key=lambda e: e["t"])
    present: list[list[float]] = []
    for e in sorted(episodes, key=lambda e: e["enter"]):
        if present and e["enter"] <= present[-1][1]:
            present[-1][1] = max(present[-1][1], e["leave"])
        else:
            present.append([e["enter"], e["leave"]])
    return {
        "kind": "station-day",
        "day_seconds": d,
        "events": events,
        "person_episodes": episodes,
        "person_present_intervals": present,
        "lit_intervals": [[t(0.10), t(0.88)]],
        # Open: from the shutter starting up to it being fully down again.
        "open_intervals": [[t(0.13), round(t(0.84) + roll, 3)]],
        "closed_intervals": [[0.0, t(0.13)], [round(t(0.84) + roll, 3), d]],
        "notes": "times in seconds from the start of the clip; the clip loops, so add k*day_seconds",
    }


class StationScene:
    """Draws one frame of a small village shop at a given moment of the timeline."""

    def __init__(self, width: int, height: int, timeline: dict) -> None:
        self.w, self.h, self.tl = width, height, timeline
        ev = {e["event"]: e for e in timeline["events"] if e["event"] not in ("person_enter", "person_leave")}
        self.lights_on, self.lights_off = ev["lights_on"]["t"], ev["lights_off"]["t"]
        self.up, self.down = ev["shutter_up"], ev["shutter_down"]
        w, h = width, height
        self.door = (int(0.56 * w), int(0.14 * h), int(0.82 * w), int(0.80 * h))
        room = np.empty((h, w, 3), np.uint8)
        room[:] = (168, 190, 205)                      # wall (BGR)
        room[int(0.78 * h):] = (92, 104, 118)          # floor
        for k in range(4):                             # shelves with goods
            y = int((0.25 + 0.14 * k) * h)
            cv2.rectangle(room, (int(0.04 * w), y), (int(0.34 * w), y + max(2, h // 90)), (60, 70, 90), -1)
            for j in range(6):
                colour = [(40, 40, 200), (40, 160, 40), (200, 120, 30), (30, 180, 220)][(j + k) % 4]
                x0 = int((0.05 + 0.048 * j) * w)
                cv2.rectangle(room, (x0, y - int(0.09 * h)), (x0 + int(0.038 * w), y), colour, -1)
        cv2.rectangle(room, (int(0.30 * w), int(0.60 * h)), (int(0.52 * w), int(0.82 * h)), (50, 80, 120), -1)
        cv2.putText(room, "E-COMMERCE", (int(0.36 * w), int(0.10 * h)), cv2.FONT_HERSHEY_SIMPLEX,
                    h / 720, (30, 30, 160), max(1, h // 180))
        self.room = room
        x0, y0, x1, y1 = self.door
        outside = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        outside[:] = (225, 225, 215)                   # daylight street
        outside[int(0.7 * (y1 - y0)):] = (150, 160, 160)
        self.outside = outside
        shutter = np.empty_like(outside)
        shutter[:] = (150, 150, 155)
        shutter[:: max(3, h // 60)] = (95, 95, 100)   # slats
        self.shutter = shutter
        # People: a fixed look per episode so detectors can follow one figure.
        self.people = [(e, [(40, 40, 160), (140, 60, 30), (30, 120, 30), (90, 30, 120)][i % 4])
                       for i, e in enumerate(timeline["person_episodes"])]

    def shutter_closed_fraction(self, t: float) -> float:
        for ev, opening in ((self.up, True), (self.down, False)):
            if ev["t"] <= t < ev["t"] + ev["duration"]:
                p = (t - ev["t"]) / ev["duration"]
                return 1 - p if opening else p
        return 0.0 if self.up["t"] + self.up["duration"] <= t < self.down["t"] else 1.0

    def _person_x(self, ep: dict, t: float) -> float | None:
        enter, leave = ep["enter"], ep["leave"]
        if not enter <= t < leave:
            return None
        walk = min(4.0, (leave - enter) / 4)
        door_x, counter_x = 0.69, 0.42 + 0.05 * (hash(enter) % 3)
        if t < enter + walk:
            return door_x + (counter_x - door_x) * (t - enter) / walk
        if t > leave - walk:
            return counter_x + (door_x - counter_x) * (t - (leave - walk)) / walk
        return counter_x + 0.01 * math.sin(t * 2)      # standing, shifting weight

    def render(self, t: float, index: int) -> np.ndarray:
        w, h = self.w, self.h
        img: np.ndarray = self.room.copy()
        x0, y0, x1, y1 = self.door
        img[y0:y1, x0:x1] = self.outside
        closed = self.shutter_closed_fraction(t)
        if closed > 0:
            rows = int(round(closed * (y1 - y0)))
            if rows:
                img[y0:y0 + rows, x0:x1] = self.shutter[-rows:]
        for ep, colour in self.people:
            px = self._person_x(ep, t)
            if px is None:
                continue
            cx, feet = int(px * w), int(0.86 * h)
            bh, bw = int(0.42 * h), int(0.07 * w)
            swing = int(0.02 * w * math.sin(t * 6))
            cv2.line(img, (cx, feet - bh // 3), (cx - swing, feet), (40, 40, 40), max(2, w // 120))
            cv2.line(img, (cx, feet - bh // 3), (cx + swing, feet), (40, 40, 40), max(2, w // 120))
            cv2.rectangle(img, (cx - bw // 2, feet - bh), (cx + bw // 2, feet - bh // 3), colour, -1)
            cv2.circle(img, (cx, feet - bh - int(0.05 * h)), int(0.045 * h), (150, 180, 220), -1)
        if not self.lights_on <= t < self.lights_off:
            # Lights off: a dark room, the closed shutter faintly lit by a street lamp.
            img = cv2.convertScaleAbs(img, alpha=0.07)
        img = cv2.add(img, self.sensor_noise(index))
        return cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420)

    def sensor_noise(self, index: int) -> np.ndarray:
        """Frame `index`'s sensor noise: drawn anew for every frame, as a real sensor's never repeats.
        It once cycled through 4 fixed patterns; keyframes a multiple of 4 frames apart (every 20 or 60 s
        sample at 15 fps) then decoded identically while nobody moved, and the analysis rightly called
        such a camera frozen (issue 19). Seeded by the index: a clip is the same every time it is built."""
        rng = np.random.default_rng((11, index))
        return rng.integers(0, 7, size=(self.h, self.w, 3), dtype=np.uint8)


def station_day_clip(cache_dir: Path, fmt: VideoFormat, day_seconds: float = 600.0) -> tuple[Path, dict]:
    """The compressed station day and its ground truth (also written as JSON beside the clip)."""
    if not 10 <= day_seconds <= 86400:
        raise ValueError(f"day_seconds must be from 10 to 86400, got {day_seconds}")
    frames = _whole_gops(day_seconds, fmt)
    real_seconds = frames / fmt.fps
    timeline = station_day_timeline(real_seconds)
    key = cache_key(kind="station-day", frames=frames, **asdict(fmt))
    stem = f"station-day-{fmt.width}x{fmt.height}-{fmt.fps}fps-{fmt.bitrate_kbps}k-g{fmt.gop}"
    path = cache_dir / f"{stem}-{key}.h264"
    truth = {**timeline, "fps": fmt.fps, "frames": frames, "width": fmt.width, "height": fmt.height,
             "clip": path.name}
    truth_path = path.with_suffix(".json")

    def build(out: Path) -> None:
        scene = StationScene(fmt.width, fmt.height, timeline)
        encode_frames((scene.render(i / fmt.fps, i) for i in range(frames)), out, fmt, capped=True)
        tmp = truth_path.with_name(f".{truth_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, truth_path)

    _cached(path, build)
    if not truth_path.exists():
        truth_path.write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    return path, json.loads(truth_path.read_text(encoding="utf-8"))


def frozen_clip(cache_dir: Path, fmt: VideoFormat) -> Path:
    """A camera whose picture froze (a hung image processor that keeps sending its last frame): the lit,
    empty shop of the station day as one still frame, one GOP long, so every keyframe it sends is the same
    picture bit for bit, as the analysis sees such a camera (`frozen`)."""
    frames = fmt.gop
    key = cache_key(kind="frozen", frames=frames, **asdict(fmt))
    path = cache_dir / f"frozen-{fmt.width}x{fmt.height}-{fmt.fps}fps-{fmt.bitrate_kbps}k-g{fmt.gop}-{key}.h264"

    def build(out: Path) -> None:
        timeline = station_day_timeline(600)
        scene = StationScene(fmt.width, fmt.height, timeline)
        still = scene.render(0.5 * 600, 0)  # lights on, shutter up, nobody in the shop
        encode_frames((still for _ in range(frames)), out, fmt, capped=True)

    return _cached(path, build)


# -- a given file -----------------------------------------------------------------------------------

def source_clip(cache_dir: Path, source: Path, fmt: VideoFormat) -> Path:
    """Turn a file into the raw H.264 the server loops: raw .h264 is copied from its first keyframe,
    H.264 in a container is remuxed, anything else is encoded with the given format."""
    source = Path(source)
    if not source.is_file():
        raise ValueError(f"source file {source} does not exist")
    st = source.stat()
    key = cache_key(kind="source", path=str(source.resolve()), size=st.st_size, mtime=st.st_mtime_ns,
                    **asdict(fmt))
    path = cache_dir / f"source-{source.stem[:40]}-{key}.h264"

    def build(out: Path) -> None:
        try:
            raw = source.suffix.lower() in (".h264", ".264")
            container = av.open(str(source), format="h264" if raw else None)
        except av.error.FFmpegError as exc:
            raise ValueError(f"cannot read source file {source}: {exc}") from None
        with container:
            if not container.streams.video:
                raise ValueError(f"source file {source} has no video stream")
            stream = container.streams.video[0]
            if stream.codec_context.name == "h264" and _h264_without_b_frames(stream):
                _copy_annexb(container, stream, out)
            else:
                _transcode(container, stream, out, fmt)
        if out.stat().st_size == 0:
            raise ValueError(f"source file {source} gave no usable H.264 frames")

    return _cached(path, build)


def _h264_without_b_frames(stream) -> bool:
    # B-frames would break the server's pts = dts rule; such sources are re-encoded.
    return not getattr(stream.codec_context, "has_b_frames", 0)


def _copy_annexb(container, stream, out: Path) -> None:
    bsf = None
    extradata = stream.codec_context.extradata or b""
    if extradata[:1] == b"\x01":                      # avcC (MP4/MKV): convert to Annex B
        bsf = av.BitStreamFilterContext("h264_mp4toannexb", stream)
    started = False
    with open(out, "wb") as f:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if not started and not packet.is_keyframe:
                continue                              # a loop must open on a keyframe
            started = True
            for p in (bsf.filter(packet) if bsf else [packet]):
                f.write(bytes(p))


def _transcode(container, stream, out: Path, fmt: VideoFormat) -> None:
    def frames() -> Iterator[np.ndarray]:
        for frame in container.decode(stream):
            yield frame.reformat(width=fmt.width, height=fmt.height, format="yuv420p").to_ndarray()

    encode_frames(frames(), out, fmt)
