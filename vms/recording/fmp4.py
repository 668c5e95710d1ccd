"""Reading what survived of a fragmented MP4: the playable prefix, and what it holds."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import av


def playable_length(path: Path) -> int:
    """Bytes of the file up to the end of its last complete fragment (moof + mdat), or 0 if not
    even the header (ftyp + moov) is complete. Walks top-level boxes only: cheap on any size."""
    size = path.stat().st_size
    pos = 0
    good = 0
    seen_moov = False
    pending_moof = False
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            header = f.read(16)
            box_size, kind = struct.unpack(">I4s", header[:8])
            if box_size == 1:
                if len(header) < 16:
                    break
                box_size = struct.unpack(">Q", header[8:16])[0]
            elif box_size == 0:
                box_size = size - pos
            if box_size < 8 or pos + box_size > size:
                break  # truncated or garbage: stop at the last good boundary
            pos += box_size
            if kind == b"moov":
                seen_moov = True
                good = pos
            elif kind == b"moof":
                pending_moof = True
            elif kind == b"mdat" and pending_moof:
                pending_moof = False
                good = pos
            elif kind in (b"ftyp", b"free", b"skip", b"styp", b"sidx", b"mfra"):
                if not pending_moof and seen_moov:
                    good = pos
    return good if seen_moov else 0


@dataclass(frozen=True)
class SegmentProbe:
    duration_ms: int
    frames: int
    keyframes: int
    codec: str | None
    width: int | None
    height: int | None
    has_audio: bool


def probe_segment(path: Path) -> SegmentProbe:
    """Demux (no decode) a segment to measure it from its own timestamps."""
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise ValueError(f"{path}: no video track")
        vs = c.streams.video[0]
        first = last = None
        last_dur = 0
        frames = keys = 0
        for pkt in c.demux(vs):
            if pkt.dts is None:
                continue
            t = pkt.pts if pkt.pts is not None else pkt.dts
            first = t if first is None else min(first, t)
            if last is None or t >= last:
                last = t
                last_dur = pkt.duration or 0
            frames += 1
            keys += bool(pkt.is_keyframe)
        tb = vs.time_base
        if frames == 0:
            duration_ms = 0
        else:
            if not last_dur and frames > 1:
                last_dur = (last - first) / (frames - 1)
            duration_ms = round(float((last - first + last_dur) * tb) * 1000)
        return SegmentProbe(
            duration_ms=duration_ms, frames=frames, keyframes=keys,
            codec=vs.codec_context.name, width=vs.codec_context.width or None,
            height=vs.codec_context.height or None, has_audio=bool(c.streams.audio),
        )
