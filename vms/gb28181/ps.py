"""An MPEG-2 Program Stream muxer shaped like what GB/T 28181 devices send, for the device simulator.

FFmpeg's own PS muxer writes no program stream map (PSM) and one system header only, while devices
write a pack header before every frame and a system header plus PSM before every keyframe: a platform
that joins a stream late (or after loss) learns the stream types from the next keyframe. The platform
side does not use this module: it demuxes with PyAV (`av.open(..., format="mpeg")`).

ISO/IEC 13818-1 2.5.3 (pack and system headers), 2.5.4 (PSM), 2.4.3.6 (PES); stream types as GB/T
28181 annex C lists them.
"""

from __future__ import annotations

import struct
from typing import Literal

VideoCodec = Literal["h264", "hevc"]
AudioCodec = Literal["pcma", "pcmu"]

VIDEO_STREAM_TYPE: dict[str, int] = {"h264": 0x1B, "hevc": 0x24}
AUDIO_STREAM_TYPE: dict[str, int] = {"pcma": 0x90, "pcmu": 0x91}
VIDEO_STREAM_ID = 0xE0
AUDIO_STREAM_ID = 0xC0

# PES_packet_length is 16 bits and counts the flag bytes and the PTS/DTS too; devices split frames
# at about this size, below the limit.
MAX_PES_PAYLOAD = 65400
# program_mux_rate and rate_bound, in units of 50 bytes/s: a nominal 20 Mbit/s (demuxers ignore them).
MUX_RATE = 20_000_000 // 8 // 50
TIMESTAMP_MODULO = 1 << 33  # PTS, DTS and SCR are 33-bit 90 kHz counters

_U16 = struct.Struct("!H")


def _crc32_mpeg2_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc32_mpeg2_table()


def crc32_mpeg2(data: bytes) -> int:
    """CRC-32/MPEG-2 (poly 0x04C11DB7, init 0xFFFFFFFF, not reflected, no final xor): the PSM's CRC."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def pack_header(scr: int, mux_rate: int = MUX_RATE) -> bytes:
    """MPEG-2 pack header, 14 bytes: SCR base in 90 kHz units (extension 0), no stuffing."""
    scr %= TIMESTAMP_MODULO
    return b"\x00\x00\x01\xba" + bytes((
        0x44 | ((scr >> 27) & 0x38) | ((scr >> 28) & 0x03),  # '01', SCR 32..30, marker, SCR 29..28
        (scr >> 20) & 0xFF,
        0x04 | ((scr >> 12) & 0xF8) | ((scr >> 13) & 0x03),  # SCR 19..15, marker, SCR 14..13
        (scr >> 5) & 0xFF,
        0x04 | ((scr << 3) & 0xF8),  # SCR 4..0, marker, SCR extension 8..7 = 0
        0x01,  # SCR extension 6..0 = 0, marker
        (mux_rate >> 14) & 0xFF,
        (mux_rate >> 6) & 0xFF,
        0x03 | ((mux_rate << 2) & 0xFC),  # mux rate, two markers
        0xF8,  # reserved, pack_stuffing_length 0
    ))


def system_header(stream_ids: list[int], rate_bound: int = MUX_RATE) -> bytes:
    audio = sum(1 for sid in stream_ids if 0xC0 <= sid <= 0xDF)
    video = sum(1 for sid in stream_ids if 0xE0 <= sid <= 0xEF)
    body = bytearray((
        0x80 | ((rate_bound >> 15) & 0x7F),  # marker, rate_bound 21..15
        (rate_bound >> 7) & 0xFF,
        0x01 | ((rate_bound << 1) & 0xFE),  # rate_bound 6..0, marker
        audio << 2,  # audio_bound, fixed_flag 0, CSPS_flag 0
        0xE0 | video,  # audio and video lock flags, marker, video_bound
        0xFF,  # packet_rate_restriction_flag, reserved
    ))
    for sid in stream_ids:
        if sid >= 0xE0:  # P-STD buffer bound: video in 1024-byte units (1 MiB), audio in 128 (4 KiB)
            body += bytes((sid, 0xE0 | (1024 >> 8), 1024 & 0xFF))
        else:
            body += bytes((sid, 0xC0 | (32 >> 8), 32 & 0xFF))
    return b"\x00\x00\x01\xbb" + _U16.pack(len(body)) + bytes(body)


def program_stream_map(streams: list[tuple[int, int]], version: int = 0) -> bytes:
    """PSM for (stream_type, stream_id) pairs, with its CRC."""
    es_map = b"".join(bytes((stream_type, sid, 0, 0)) for stream_type, sid in streams)
    body = bytes((0x80 | 0x60 | (version & 0x1F), 0xFF)) + _U16.pack(0) + _U16.pack(len(es_map)) + es_map
    head = b"\x00\x00\x01\xbc" + _U16.pack(len(body) + 4)
    return head + body + crc32_mpeg2(head + body).to_bytes(4, "big")


def _timestamp(prefix: int, ts: int) -> bytes:
    ts %= TIMESTAMP_MODULO
    return bytes((
        (prefix << 4) | ((ts >> 29) & 0x0E) | 0x01,
        (ts >> 22) & 0xFF,
        ((ts >> 14) & 0xFE) | 0x01,
        (ts >> 7) & 0xFF,
        ((ts << 1) & 0xFE) | 0x01,
    ))


def pes_packets(stream_id: int, payload: bytes, pts: int, dts: int | None = None,
                max_payload: int = MAX_PES_PAYLOAD) -> bytes:
    """One access unit as PES packets: the first carries PTS (and DTS), the rest continue it."""
    if dts is not None:
        first_header = bytes((0x84, 0xC0, 10)) + _timestamp(0x3, pts) + _timestamp(0x1, dts)
    else:
        first_header = bytes((0x84, 0x80, 5)) + _timestamp(0x2, pts)
    continuation_header = bytes((0x80, 0x00, 0))
    out = bytearray()
    start_code = b"\x00\x00\x01" + bytes((stream_id,))
    for offset in range(0, max(len(payload), 1), max_payload):
        header = first_header if offset == 0 else continuation_header
        chunk = payload[offset:offset + max_payload]
        out += start_code + _U16.pack(len(header) + len(chunk)) + header + chunk
    return bytes(out)


class PsMuxer:
    """Program stream of one video (Annex-B H.264 or H.265) and optionally one G.711 audio stream."""

    def __init__(self, video_codec: VideoCodec, audio_codec: AudioCodec | None = None) -> None:
        if video_codec not in VIDEO_STREAM_TYPE:
            raise ValueError(f"video codec must be one of {sorted(VIDEO_STREAM_TYPE)}, got {video_codec!r}")
        if audio_codec is not None and audio_codec not in AUDIO_STREAM_TYPE:
            raise ValueError(f"audio codec must be one of {sorted(AUDIO_STREAM_TYPE)}, got {audio_codec!r}")
        streams = [(VIDEO_STREAM_TYPE[video_codec], VIDEO_STREAM_ID)]
        if audio_codec is not None:
            streams.append((AUDIO_STREAM_TYPE[audio_codec], AUDIO_STREAM_ID))
        self.video_codec = video_codec
        self.audio_codec = audio_codec
        # Both never change in a session, so they are built once and repeated before every keyframe.
        self._keyframe_headers = system_header([sid for _, sid in streams]) + program_stream_map(streams)

    def video(self, access_unit: bytes, pts_90k: int, keyframe: bool) -> bytes:
        """One video frame (Annex-B, with its parameter sets on keyframes) as a pack. DTS = PTS: devices
        send no B-frames."""
        head = pack_header(pts_90k)
        if keyframe:
            head += self._keyframe_headers
        return head + pes_packets(VIDEO_STREAM_ID, access_unit, pts_90k, pts_90k)

    def audio(self, data: bytes, pts_90k: int) -> bytes:
        if self.audio_codec is None:
            raise ValueError("this muxer was made without an audio stream")
        return pack_header(pts_90k) + pes_packets(AUDIO_STREAM_ID, data, pts_90k)


def split_for_rtp(ps: bytes, max_payload: int = 1400) -> list[bytes]:
    """Cut a PS chunk (one frame) into RTP payloads; PS needs no alignment to RTP packet boundaries."""
    if max_payload < 1:
        raise ValueError(f"max_payload must be positive, got {max_payload}")
    return [ps[i:i + max_payload] for i in range(0, len(ps), max_payload)]
