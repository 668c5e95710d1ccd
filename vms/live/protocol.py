"""The wire format between a camera's live tap (ingest worker) and the relay (API process).

Every message is `<u32 big-endian length><u8 kind><payload>`; length counts kind + payload.
- kind b"I" (info): UTF-8 JSON {station, codec, extradata (hex, Annex B), width, height, time_base}.
- kind b"P" (packet): `>qqqB` pts, dts, received_ms, flags (1 = keyframe, 2 = replayed from the cached
  GOP), then the packet bytes (Annex B, as the RTSP demuxer gives them). pts/dts are in time_base
  (1/1000: wall ms of capture).
- kind b"E" (end): UTF-8 JSON {reason}: the camera connection ended; an "I" follows on reconnect.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

HEADER = struct.Struct(">IB")
PACKET_HEADER = struct.Struct(">qqqB")
KIND_INFO, KIND_PACKET, KIND_END = b"I"[0], b"P"[0], b"E"[0]
FLAG_KEYFRAME = 1
FLAG_REPLAY = 2  # from the GOP cached before the client connected
TIME_BASE = (1, 1000)
MAX_MESSAGE = 32 * 1024 * 1024  # a keyframe of a 4K camera is a few MB; anything bigger is corruption
# sun_path holds 108 bytes; longer data_dir paths fall back to an abstract socket name.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class StreamInfo:
    station: str
    codec: str  # "h264" | "hevc"
    extradata: bytes
    width: int | None
    height: int | None
    time_base: tuple[int, int] = TIME_BASE

    def encode(self) -> bytes:
        body = json.dumps(
            {
                "station": self.station,
                "codec": self.codec,
                "extradata": self.extradata.hex(),
                "width": self.width,
                "height": self.height,
                "time_base": list(self.time_base),
            }
        )
        return message(KIND_INFO, body.encode())

    @classmethod
    def decode(cls, payload: bytes) -> StreamInfo:
        d = json.loads(payload)
        return cls(
            d["station"],
            d["codec"],
            bytes.fromhex(d["extradata"]),
            d.get("width"),
            d.get("height"),
            tuple(d.get("time_base", TIME_BASE)),
        )


@dataclass(frozen=True)
class LivePacket:
    pts: int
    dts: int
    received_ms: int  # when the ingest got it from the camera (for latency figures)
    keyframe: bool
    data: bytes
    replay: bool = False

    @classmethod
    def decode(cls, payload: bytes) -> LivePacket:
        pts, dts, received, flags = PACKET_HEADER.unpack_from(payload)
        return cls(
            pts,
            dts,
            received,
            bool(flags & FLAG_KEYFRAME),
            payload[PACKET_HEADER.size :],
            bool(flags & FLAG_REPLAY),
        )


def message(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload) + 1, kind) + payload


def packet_message(
    pts: int, dts: int, received_ms: int, keyframe: bool, data: bytes, replay: bool = False
) -> bytes:
    flags = (FLAG_KEYFRAME if keyframe else 0) | (FLAG_REPLAY if replay else 0)
    head = PACKET_HEADER.pack(pts, dts, received_ms, flags)
    return HEADER.pack(len(head) + len(data) + 1, KIND_PACKET) + head + data


def end_message(reason: str) -> bytes:
    return message(KIND_END, json.dumps({"reason": reason}).encode())


def tap_address(data_dir: Path | str, station_id: str) -> str:
    """Where the tap of a station listens: `<data_dir>/run/live/<station>.sock`, or an abstract socket
    named after that path when the path is too long for sun_path. Both sides compute it the same way."""
    path = (Path(data_dir) / "run" / "live" / f"{station_id}.sock").resolve()
    text = str(path)
    if len(text.encode()) <= MAX_SOCKET_PATH:
        return text
    return "\0vms-live-" + hashlib.sha1(text.encode()).hexdigest()[:20]


def trusted_uids() -> set[int]:
    """Who may be at the other end of a tap connection: the service's own user (and root, who may read
    everything anyway)."""
    return {os.geteuid(), 0}


def peer_trusted(sock: socket.socket) -> bool:
    """Whether the process at the other end of a connected Unix socket runs as a trusted user.

    The tap's socket file is 0600, but an abstract socket (the fallback for a long data_dir) has no
    permissions: any local user could connect and watch every camera, or bind the name first and feed
    the relay a picture of their own. Both ends check the other's credentials (SO_PEERCRED, Linux)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True  # no abstract sockets there either: the socket file's mode protects it
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in trusted_uids()
