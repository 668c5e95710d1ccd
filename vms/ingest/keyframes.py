"""The latest keyframe of each camera, kept on disk for snapshots without a camera connection.

The session's observer writes one small file per station (atomic rename); any process (the API)
decodes it on demand. Decoding costs ~10 ms per request instead of decoding every camera
continuously. Nobody looks at most cameras most of the time, so the file is rewritten every
`idle_interval_s` (30 s) by default, and at every keyframe (at most every 2 s) for a minute after
someone asked for a fresh one (`request_keyframe`, a marker file's mtime). Rewriting 139 files of
~130 KB every 2 s cost ~4 % of the recorder's CPU (create, write, rename).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import av

from vms.ingest.observers import StreamObserver
from vms.recording.avtypes import video_codec

log = logging.getLogger(__name__)

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
        ctx = video_codec(self.codec, "r")
        frames = ctx.decode(av.Packet(self.data))
        frames += ctx.decode(None)
        if not frames:
            raise ValueError(f"keyframe of {self.station_id} did not decode")
        return frames[0]


def keyframe_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "run" / "keyframes"


def keyframe_path(data_dir: Path, station_id: str) -> Path:
    return keyframe_dir(data_dir) / f"{station_id}.kf"


def _request_path(data_dir: Path, station_id: str) -> Path:
    return keyframe_dir(data_dir) / f"{station_id}.want"


WANTED_FOR_S = 60.0


def request_keyframe(data_dir: Path, station_id: str) -> None:
    """Ask the recording session for fresh keyframes (every keyframe for the next minute)."""
    path = _request_path(data_dir, station_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def latest_keyframe(data_dir: Path, station_id: str) -> LatestKeyframe | None:
    try:
        raw = keyframe_path(data_dir, station_id).read_bytes()
    except FileNotFoundError:
        return None
    header, _, data = raw.partition(b"\n")
    meta = json.loads(header)
    return LatestKeyframe(station_id, meta["wall_ms"], meta["codec"], meta.get("width"), meta.get("height"), data)


class KeyframeCacheObserver(StreamObserver):
    """A StreamObserver that keeps a recent keyframe of a station on disk: at most every
    `interval_s` while someone asked for it in the last minute, else every `idle_interval_s`."""

    keyframes_only = True  # the session calls on_packet for keyframes only

    def __init__(self, data_dir: Path, station_id: str, interval_s: float = 2.0,
                 idle_interval_s: float = 30.0) -> None:
        self.path = keyframe_path(data_dir, station_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._request = _request_path(data_dir, station_id)
        self.interval_ms = int(interval_s * 1000)
        self.idle_interval_ms = int(idle_interval_s * 1000)
        self._last_ms = -(10**15)
        self._prefix = b""
        self._codec = "h264"
        self._size: tuple[int | None, int | None] = (None, None)
        self._failures = 0  # writes failed in a row

    def on_connect(self, stream, wall_ms: int) -> None:
        ctx = stream.codec_context
        extradata = ctx.extradata or b""
        # Only Annex B parameter sets can be prepended as is; RTSP demuxing gives them in that form.
        self._prefix = extradata if extradata.startswith(ANNEXB_START) else b""
        self._codec = "hevc" if ctx.name in ("hevc", "h265") else "h264"
        self._size = (ctx.width or None, ctx.height or None)
        self._last_ms = -(10**15)

    def on_packet(self, packet, wall_ms: int) -> None:
        if not packet.is_keyframe:
            return
        age = wall_ms - self._last_ms
        if age < self.interval_ms or age < self.idle_interval_ms and not self._wanted():
            return
        self._last_ms = wall_ms
        header = json.dumps({"wall_ms": wall_ms, "codec": self._codec,
                             "width": self._size[0], "height": self._size[1]}).encode()
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(header + b"\n" + self._prefix + bytes(packet))
            os.replace(tmp, self.path)
        except OSError as exc:
            # Never raise into the camera thread: the session would drop this observer for good and
            # snapshots would stay stale after one full disk. Tried again at the next due keyframe.
            self._failures += 1
            if self._failures == 1 or self._failures % 100 == 0:
                log.warning("%s: cannot keep the snapshot keyframe (%d failures in a row): %s",
                            self.path.stem, self._failures, exc)
            return
        if self._failures:
            log.info("%s: snapshot keyframe written again after %d failures", self.path.stem, self._failures)
            self._failures = 0

    def _wanted(self) -> bool:
        try:
            return time.time() - self._request.stat().st_mtime < WANTED_FOR_S
        except OSError:  # no request (or unreadable): the idle interval applies
            return False

    def on_disconnect(self, wall_ms: int, reason: str) -> None:
        pass
