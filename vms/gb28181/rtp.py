"""RTP packets (RFC 3550) and their framing on a TCP stream (RFC 4571, or RTSP-interleaved `$` frames).

GB/T 28181 devices send MPEG-PS in RTP: one packet per datagram over UDP, or a byte stream of framed
packets over TCP. The header parse is split in two: `rtp_header` gives only numbers and the payload's
bounds, so the media receiver can copy a payload straight out of its receive buffer once; `parse_rtp`
builds on it for everyone else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_VERSION = 2
RTP_FIXED_HEADER = 12
# RFC 4571 frames carry a 16-bit length; RTSP-interleaved frames ("$", channel, 16-bit length) too.
MAX_FRAME = 0xFFFF
INTERLEAVED_MAGIC = 0x24  # "$"

_FIXED = struct.Struct("!BBHII")
_LENGTH = struct.Struct("!H")


class RtpError(ValueError):
    """Bytes that are not a well-formed RTP packet."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes


def rtp_header(data: bytes | bytearray | memoryview, length: int | None = None) -> tuple[int, int, int, int, int, int]:
    """Check the RTP packet in data[:length] and return (marker_and_payload_type, sequence, timestamp, ssrc,
    payload_start, payload_end): the second header byte as is (marker = 0x80, payload type = 0x7F), and
    the payload's bounds after the CSRC list and header extension, before the padding."""
    size = len(data) if length is None else length
    if size < RTP_FIXED_HEADER:
        raise RtpError(f"RTP packet too short: {size} bytes, the fixed header alone is {RTP_FIXED_HEADER}")
    first, second, sequence, timestamp, ssrc = _FIXED.unpack_from(data, 0)
    version = first >> 6
    if version != RTP_VERSION:
        raise RtpError(f"RTP version {version}, expected {RTP_VERSION}")
    start = RTP_FIXED_HEADER + 4 * (first & 0x0F)
    if start > size:
        raise RtpError(f"RTP packet of {size} bytes truncated in its CSRC list of {first & 0x0F} entries")
    if first & 0x10:
        if start + 4 > size:
            raise RtpError(f"RTP packet of {size} bytes truncated in its header extension")
        (words,) = _LENGTH.unpack_from(data, start + 2)
        start += 4 + 4 * words
        if start > size:
            raise RtpError(f"RTP header extension of {words} words runs past the packet's {size} bytes")
    end = size
    if first & 0x20:
        padding = data[size - 1]
        if padding == 0 or start + padding > size:
            raise RtpError(f"RTP padding count {padding} is impossible in a packet of {size} bytes "
                           f"whose headers take {start}")
        end = size - padding
    return second, sequence, timestamp, ssrc, start, end


def parse_rtp(data: bytes) -> RtpPacket:
    second, sequence, timestamp, ssrc, start, end = rtp_header(data)
    return RtpPacket(payload_type=second & 0x7F, sequence=sequence, timestamp=timestamp, ssrc=ssrc,
                     marker=bool(second & 0x80), payload=bytes(data[start:end]))


def build_rtp(payload: bytes, payload_type: int, sequence: int, timestamp: int, ssrc: int, marker: bool) -> bytes:
    """A plain RTP packet: no CSRC, no extension, no padding (what GB28181 devices send)."""
    if not 0 <= payload_type <= 0x7F:
        raise ValueError(f"RTP payload type must be 0-127, got {payload_type}")
    second = (0x80 if marker else 0) | payload_type
    return _FIXED.pack(RTP_VERSION << 6, second, sequence & 0xFFFF, timestamp & 0xFFFFFFFF,
                       ssrc & 0xFFFFFFFF) + payload


def frame_rfc4571(packet: bytes) -> bytes:
    if len(packet) > MAX_FRAME:
        raise ValueError(f"an RFC 4571 frame holds at most {MAX_FRAME} bytes, the packet has {len(packet)}")
    return _LENGTH.pack(len(packet)) + packet


def _looks_like_rtp(byte: int) -> bool:
    return byte >> 6 == RTP_VERSION


class Rfc4571Deframer:
    """Splits a TCP byte stream into the RTP packets it carries, however the stream is chunked.

    Frames are RFC 4571 (2-byte length) or RTSP-interleaved ("$", channel, 2-byte length), told apart
    per frame as ZLMediaKit does, since vendors send either. A "$" first byte is also the high byte of
    an RFC 4571 length of 9216-9471, so when both readings put an RTP version-2 byte after the header,
    the framing of the previous frame wins. A frame whose first byte cannot start an RTP packet means
    the stream lost its framing (a vendor's private header, garbage): the deframer then skips bytes until
    a plausible frame start and counts them in `skipped_bytes`. The buffer never holds more than one
    frame plus the last chunk fed.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._interleaved = False  # the framing of the last frame, for the ambiguous case
        self.skipped_bytes = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def interleaved(self) -> bool:
        """Whether the last frame was RTSP-interleaved ("$")."""
        return self._interleaved

    def take_buffer(self) -> bytes:
        """The bytes held (a partial frame, from its start), leaving none: for the receiver's C fast
        path, which goes on from them (vms.gb28181.rtp_native)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        pos = 0
        size = len(buf)
        skipped = 0
        while size - pos >= 2:
            if buf[pos] == INTERLEAVED_MAGIC:
                if size - pos < 5:
                    break  # the fifth byte decides between the two framings
                as_interleaved = _looks_like_rtp(buf[pos + 4])
                as_rfc4571 = _looks_like_rtp(buf[pos + 2])
                interleaved = as_interleaved and (self._interleaved or not as_rfc4571)
            else:
                interleaved = False
            if interleaved:
                header = 4
                (length,) = _LENGTH.unpack_from(buf, pos + 2)
            else:
                header = 2
                (length,) = _LENGTH.unpack_from(buf, pos)
                if length and size - pos >= 3 and not _looks_like_rtp(buf[pos + 2]):
                    pos += 1  # not a frame start: resynchronise one byte further
                    skipped += 1
                    continue
            if size - pos < header + length:
                break
            if length:  # zero-length frames (keepalives of some vendors) carry nothing
                frames.append(bytes(buf[pos + header:pos + header + length]))
            self._interleaved = interleaved
            pos += header + length
        if pos:
            del buf[:pos]
        self.skipped_bytes += skipped
        return frames
