"""Reading what survived of a fragmented MP4: the playable prefix, and what it holds."""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import av

from vms.recording.avtypes import time_base


def _boxes(data: bytes, start: int, end: int):
    """(type, payload start, box end) of the boxes in data[start:end]; stops at a malformed one."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1 and pos + 16 <= end:
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _fragment_bytes(moof: bytes) -> int | None:
    """Bytes of sample data a moof describes (sum over its track runs), or None if unreadable."""
    total = 0
    for kind, start, end in _boxes(moof, 0, len(moof)):
        if kind != b"traf":
            continue
        default_size = None
        for k2, s2, e2 in _boxes(moof, start, end):
            if k2 == b"tfhd" and e2 - s2 >= 8:
                flags = int.from_bytes(moof[s2 + 1:s2 + 4], "big")
                off = s2 + 8 + (8 if flags & 0x1 else 0) + (4 if flags & 0x2 else 0) + (4 if flags & 0x8 else 0)
                if flags & 0x10 and off + 4 <= e2:
                    default_size = struct.unpack(">I", moof[off:off + 4])[0]
            elif k2 == b"trun" and e2 - s2 >= 8:
                flags = int.from_bytes(moof[s2 + 1:s2 + 4], "big")
                count = struct.unpack(">I", moof[s2 + 4:s2 + 8])[0]
                off = s2 + 8 + (4 if flags & 0x1 else 0) + (4 if flags & 0x4 else 0)
                per_sample = sum(4 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
                if off + count * per_sample > e2:
                    return None
                if flags & 0x200:
                    size_at = 4 if flags & 0x100 else 0
                    total += sum(struct.unpack(">I", moof[off + i * per_sample + size_at:
                                                          off + i * per_sample + size_at + 4])[0]
                                 for i in range(count))
                elif default_size is not None:
                    total += default_size * count
                else:
                    return None
    return total


def playable_length(path: Path) -> int:
    """Bytes of the file up to the end of its last complete, consistent fragment (a moof whose track
    runs account for exactly the bytes of the mdat after it), or 0 if not even the header (ftyp +
    moov) is complete. A write error in the middle (a full disk) leaves misaligned boxes, which fail
    that check: the file is cut before them."""
    size = path.stat().st_size
    pos = 0
    good = 0
    seen_moov = False
    expected: int | None = None  # sample bytes the pending moof announced
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            header = f.read(16)
            box_size, kind = struct.unpack(">I4s", header[:8])
            header_len = 8
            if box_size == 1:
                if len(header) < 16:
                    break
                box_size, header_len = struct.unpack(">Q", header[8:16])[0], 16
            elif box_size == 0:
                box_size = size - pos
            if box_size < header_len or pos + box_size > size:
                break  # truncated or garbage: stop at the last good boundary
            if kind == b"moof":
                f.seek(pos + 8)
                expected = _fragment_bytes(f.read(box_size - 8))
                if expected is None:
                    break
            elif kind == b"mdat":
                if expected is None or box_size - header_len != expected:
                    break
                expected = None
                good = pos + box_size
            elif kind == b"moov":
                seen_moov = True
                good = pos + box_size
            elif kind in (b"ftyp", b"free", b"skip", b"styp", b"sidx", b"mfra", b"uuid"):
                if expected is not None:
                    break  # a moof must be followed by its mdat
                if seen_moov:
                    good = pos + box_size
            else:
                break
            pos += box_size
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


class _Prefix(io.RawIOBase):
    """The first `length` bytes of a file, read-only: a torn tail that cannot be cut off (the volume is
    read-only) is not read."""

    def __init__(self, path: Path, length: int) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._length - self._pos))
        self._file.seek(self._pos)
        data = self._file.read(n)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._file.close()
        super().close()


def probe_segment(path: Path, length: int | None = None) -> SegmentProbe:
    """Demux (no decode) a segment to measure it from its own timestamps; only its first `length` bytes
    if given (its playable prefix, when the tail cannot be trimmed)."""
    source = str(path) if length is None else _Prefix(path, length)
    with av.open(source, "r", format="mp4" if length is not None else None) as c:
        if not c.streams.video:
            raise ValueError(f"{path}: no video track")
        vs = c.streams.video[0]
        first: int | None = None
        last: int | None = None
        last_dur: float = 0
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
        tb = time_base(vs)
        if first is None or last is None:  # no frame
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
