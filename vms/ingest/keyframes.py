"""The latest keyframe of each camera, kept on disk for snapshots without a camera connection.

The session's observer writes one small file per station every few seconds (atomic rename);
any process (the API) decodes it on demand. Decoding costs ~10 ms per request instead of
decoding every camera continuously.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import av

ANNEXB_START = (b"\x00\x00\x00\x01", b"\x00\x00\x01")


@dataclass(frozen=True)
class LatestKeyframe:
    station_id: str
    wall_ms: int
    codec: str  # "h264" | "hevc"
    width: int | None
    height: int | None
    data: bytes  # Annex B, parameter sets included

    def decode(self) -> av.VideoFrame:
        ctx = av.CodecContext.create(self.codec, "r")
        frames = ctx.decode(av.Packet(self.data))
        frames += ctx.decode(None)
        if not frames:
            raise ValueError(f"keyframe of {self.station_id} did not decode")
        return frames[0]


def keyframe_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "run" / "keyframes"


def keyframe_path(data_dir: Path, station_id: str) -> Path:
    return keyframe_dir(data_dir) / f"{station_id}.kf"


def latest_keyframe(data_dir: Path, station_id: str) -> LatestKeyframe | None:
    try:
        raw = keyframe_path(data_dir, station_id).read_bytes()
    except FileNotFoundError:
        return None
    header, _, data = raw.partition(b"\n")
    meta = json.loads(header)
    return LatestKeyframe(station_id, meta["wall_ms"], meta["codec"], meta.get("width"), meta.get("height"), data)


class KeyframeCacheObserver:
    """A StreamObserver that keeps the newest keyframe of a station on disk, at most every interval."""

    def __init__(self, data_dir: Path, station_id: str, interval_s: float = 2.0) -> None:
        self.path = keyframe_path(data_dir, station_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.interval_ms = int(interval_s * 1000)
        self._last_ms = -(10**15)
        self._prefix = b""
        self._codec = "h264"
        self._size: tuple[int | None, int | None] = (None, None)

    def on_connect(self, stream, wall_ms: int) -> None:
        ctx = stream.codec_context
        extradata = ctx.extradata or b""
        # Only Annex B parameter sets can be prepended as is; RTSP demuxing gives them in that form.
        self._prefix = extradata if extradata.startswith(ANNEXB_START) else b""
        self._codec = "hevc" if ctx.name in ("hevc", "h265") else "h264"
        self._size = (ctx.width or None, ctx.height or None)
        self._last_ms = -(10**15)

    def on_packet(self, packet, wall_ms: int) -> None:
        if not packet.is_keyframe or wall_ms - self._last_ms < self.interval_ms:
            return
        self._last_ms = wall_ms
        header = json.dumps({"wall_ms": wall_ms, "codec": self._codec,
                             "width": self._size[0], "height": self._size[1]}).encode()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(header + b"\n" + self._prefix + bytes(packet))
        os.replace(tmp, self.path)

    def on_disconnect(self, wall_ms: int, reason: str) -> None:
        pass
