"""GB/T 28181 media: RTP and its TCP framing, the PS muxer of the device simulator (proved by PyAV
demuxing and decoding what it writes), and the platform's MediaReceiver on real sockets, feeding a
real pipe that PyAV reads."""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from functools import cache

import av
import numpy as np
import pytest

from vms.gb28181.ps import PsMuxer, crc32_mpeg2, split_for_rtp
from vms.gb28181.rtp import (
    Rfc4571Deframer,
    RtpError,
    build_rtp,
    frame_rfc4571,
    parse_rtp,
)

FPS = 25
FRAME_90K = 90000 // FPS

# -- content ----------------------------------------------------------------------------------------


@cache
def encoded_video(encoder: str, frames: int = 30, noise: bool = False) -> tuple[tuple[bytes, bool], ...]:
    """(Annex-B access unit, keyframe) of a 320x240 clip: an encoder without GLOBAL_HEADER writes its
    parameter sets in band, as a camera does. noise=True makes frames of ~50-100 KB (the first keyframe
    needs more than one PES packet)."""
    cc = av.CodecContext.create(encoder, "w")
    assert isinstance(cc, av.VideoCodecContext)
    cc.width, cc.height, cc.pix_fmt = 320, 240, "yuv420p"
    cc.time_base = Fraction(1, FPS)
    cc.framerate = Fraction(FPS)
    cc.gop_size = 10
    cc.max_b_frames = 0
    quality = ":qp=12" if noise else ""
    if encoder == "libx265":
        cc.options = {"preset": "ultrafast",
                      "x265-params": f"keyint=10:min-keyint=10:bframes=0:log-level=error{quality}"}
    else:
        cc.options = {"preset": "ultrafast", "bf": "0", "x264-params": f"keyint=10:min-keyint=10:scenecut=0{quality}"}
    rng = np.random.default_rng(28181)
    ramp = np.add.outer(np.arange(360), np.arange(320)).astype(np.uint8)
    out: list[tuple[bytes, bool]] = []
    for i in range(frames):
        if noise:
            yuv = rng.integers(0, 256, size=(360, 320), dtype=np.uint8)
        else:
            yuv = np.roll(ramp, 4 * i, axis=1)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = i
        out += [(bytes(p), p.is_keyframe) for p in cc.encode(frame)]
    out += [(bytes(p), p.is_keyframe) for p in cc.encode(None)]
    assert len(out) == frames
    return tuple(out)


def mux(codec: str, units: tuple[tuple[bytes, bool], ...], first_pts: int = 90000,
        audio: str | None = None) -> tuple[bytes, list[int]]:
    """The clip as one PS byte string (40 ms of G.711 per frame when audio is asked) and its PTS list."""
    muxer = PsMuxer("h264" if codec == "libx264" else "hevc", audio)  # type: ignore[arg-type]
    out = bytearray()
    pts = [first_pts + i * FRAME_90K for i in range(len(units))]
    for (unit, key), stamp in zip(units, pts, strict=True):
        out += muxer.video(unit, stamp, key)
        if audio:
            out += muxer.audio(bytes((i * 7) & 0xFF for i in range(320)), stamp)
    return bytes(out), pts


def demux(source: object, **open_args: object) -> dict[str, object]:
    """What PyAV finds in a PS: codecs, video PTS (90 kHz), decoded video frames and audio samples."""
    found: dict[str, object] = {"video_pts": [], "frames": 0, "samples": 0}
    with av.open(source, format="mpeg", **open_args) as container:  # type: ignore[call-overload]
        found["codecs"] = sorted(s.codec_context.name for s in container.streams)
        audio = container.streams.audio
        found["sample_rate"] = audio[0].codec_context.sample_rate if audio else None
        for packet in container.demux():
            if packet.stream.type == "video":
                if packet.pts is not None:
                    assert packet.time_base == Fraction(1, 90000)
                    found["video_pts"].append(packet.pts)  # type: ignore[attr-defined]
                found["frames"] += len(packet.decode())  # type: ignore[operator]
            elif packet.stream.type == "audio":
                found["samples"] += sum(f.samples for f in packet.decode())  # type: ignore[operator, union-attr]
    return found


# -- RTP --------------------------------------------------------------------------------------------


def test_rtp_round_trip_and_wrapping_fields() -> None:
    data = build_rtp(b"payload", 96, 70000, 2**32 + 5, 105004272, True)  # the SSRC of y=0105004272
    assert len(data) == 12 + 7
    packet = parse_rtp(data)
    assert (packet.payload_type, packet.sequence, packet.timestamp, packet.marker, packet.payload) == (
        96, 70000 & 0xFFFF, 5, True, b"payload")
    assert packet.ssrc == 105004272
    assert parse_rtp(build_rtp(b"", 0, 1, 2, 3, False)).payload == b""
    with pytest.raises(ValueError):
        build_rtp(b"", 128, 0, 0, 0, False)


def complex_rtp(payload: bytes = b"PS-bytes") -> bytes:
    """Two CSRCs, a 2-word header extension and 3 bytes of padding around the payload."""
    first = 0x80 | 0x20 | 0x10 | 2
    header = struct.pack("!BBHII", first, 0x80 | 96, 513, 90000, 1234) + struct.pack("!II", 11, 22)
    extension = struct.pack("!HH", 0xBEDE, 2) + b"\x01\x02\x03\x04\x05\x06\x07\x08"
    return header + extension + payload + b"\x00\x00\x03"


def test_rtp_with_csrc_extension_and_padding() -> None:
    packet = parse_rtp(complex_rtp())
    assert (packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc, packet.marker) == (
        96, 513, 90000, 1234, True)
    assert packet.payload == b"PS-bytes"


@pytest.mark.parametrize(("data", "complaint"), [
    (b"", "too short"),
    (b"\x80\x60" + bytes(9), "too short"),
    (b"\x40\x60" + bytes(10), "version 1"),
    (b"\x00\x60" + bytes(10), "version 0"),
    (complex_rtp()[:12 + 4], "CSRC"),  # one of the two CSRCs
    (complex_rtp()[:12 + 8 + 2], "header extension"),  # half of the extension's own header
    (complex_rtp()[:12 + 8 + 4 + 4], "header extension of 2 words"),  # half of its body
    (bytes((0xA0,)) + b"\x60" + bytes(10) + b"ab\x00", "padding count 0"),
    (bytes((0xA0,)) + b"\x60" + bytes(10) + b"ab\x04", "padding count 4"),
])
def test_rtp_refuses_truncated_and_inconsistent_packets(data: bytes, complaint: str) -> None:
    with pytest.raises(RtpError, match=complaint):
        parse_rtp(data)


# -- TCP framing ------------------------------------------------------------------------------------


def rtp_stream(count: int, first_seq: int = 0, size: int = 1400) -> list[bytes]:
    return [build_rtp(bytes([i & 0xFF]) * (size - 12 - i % 5), 96, first_seq + i, i * 3600, 42, i % 3 == 2)
            for i in range(count)]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1401, 5000, 10**6])
def test_rfc4571_deframer_any_chunking(chunk: int) -> None:
    packets = rtp_stream(20)
    frames_out = [frame_rfc4571(p) for p in packets]
    # Zero-length frames (vendors' keepalives): some at the start, one between two packets.
    stream = b"\x00\x00" * 5 + b"".join(frames_out[:4]) + b"\x00\x00" + b"".join(frames_out[4:])
    deframer = Rfc4571Deframer()
    frames: list[bytes] = []
    for i in range(0, len(stream), chunk):
        frames += deframer.feed(stream[i:i + chunk])
    assert frames == packets
    assert deframer.buffered == 0 and deframer.skipped_bytes == 0


def test_frame_rfc4571_limit() -> None:
    assert frame_rfc4571(b"x" * 65535)[:2] == b"\xff\xff"
    with pytest.raises(ValueError):
        frame_rfc4571(b"x" * 65536)


def test_interleaved_dollar_framing_mixed_with_rfc4571() -> None:
    packets = rtp_stream(6)
    stream = b""
    for i, packet in enumerate(packets):
        if i % 2:
            stream += b"$" + bytes((i % 2,)) + struct.pack("!H", len(packet)) + packet
        else:
            stream += frame_rfc4571(packet)
    deframer = Rfc4571Deframer()
    assert [f for i in range(0, len(stream), 333) for f in deframer.feed(stream[i:i + 333])] == packets


def test_rfc4571_length_that_starts_with_a_dollar_byte() -> None:
    """A 9300-byte packet's RFC 4571 length starts with 0x24 ("$"); with sequence 0x8000 its 5th byte
    also looks like RTP, so both readings are plausible: the framing of the last frame decides."""
    big = build_rtp(b"\x11" * 9288, 96, 0x8000, 0, 42, True)
    assert frame_rfc4571(big)[:1] == b"$"
    small = rtp_stream(2, first_seq=0x8001)
    deframer = Rfc4571Deframer()
    assert deframer.feed(frame_rfc4571(small[0]) + frame_rfc4571(big) + frame_rfc4571(small[1])) == [
        small[0], big, small[1]]


def test_deframer_skips_garbage_to_the_next_frame_and_stays_bounded() -> None:
    packets = rtp_stream(3)
    deframer = Rfc4571Deframer()
    frames = deframer.feed(b"EHOME private header of some vendor, not RTP at all" + b"".join(
        frame_rfc4571(p) for p in packets))
    assert frames == packets and deframer.skipped_bytes > 0
    rng = np.random.default_rng(1)
    for _ in range(200):
        deframer.feed(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        assert deframer.buffered <= 65535 + 4


# -- PS muxer ---------------------------------------------------------------------------------------


def test_crc32_mpeg2_check_value() -> None:
    assert crc32_mpeg2(b"123456789") == 0x0376E6E7


def pes_count(ps: bytes, stream_id: int) -> int:
    return ps.count(b"\x00\x00\x01" + bytes((stream_id,)))


@pytest.mark.parametrize("encoder", ["libx264", "libx265"])
def test_ps_video_is_demuxed_and_decoded_by_pyav(encoder: str) -> None:
    units = encoded_video(encoder, noise=True)
    assert len(units[0][0]) > 65400  # the first keyframe needs two PES packets
    ps, pts = mux(encoder, units)
    assert pes_count(ps, 0xE0) > len(units)
    assert pes_count(ps, 0xBC) == sum(key for _, key in units) == 3  # a PSM before each keyframe
    found = demux(io.BytesIO(ps))
    assert found["codecs"] == ["h264" if encoder == "libx264" else "hevc"]
    assert found["frames"] == len(units)
    assert found["video_pts"] == pts


@pytest.mark.parametrize("encoder", ["libx264", "libx265"])
def test_ps_with_g711_alaw_audio(encoder: str) -> None:
    units = encoded_video(encoder)
    ps, pts = mux(encoder, units, first_pts=2**33 - 10 * FRAME_90K, audio="pcma")  # PTS wraps midway
    found = demux(io.BytesIO(ps))
    assert found["codecs"] == sorted(["pcm_alaw", "h264" if encoder == "libx264" else "hevc"])
    assert found["sample_rate"] == 8000
    assert found["samples"] == 320 * len(units)
    assert found["frames"] == len(units)
    assert [p % 2**33 for p in found["video_pts"]] == [p % 2**33 for p in pts]  # type: ignore[attr-defined]


def program_stream_map_of(ps: bytes) -> bytes:
    at = ps.index(b"\x00\x00\x01\xbc")
    (length,) = struct.unpack_from("!H", ps, at + 4)
    return ps[at:at + 6 + length]


@pytest.mark.parametrize(("video", "audio", "types"), [
    ("h264", None, [(0x1B, 0xE0)]),
    ("hevc", "pcma", [(0x24, 0xE0), (0x90, 0xC0)]),
    ("h264", "pcmu", [(0x1B, 0xE0), (0x91, 0xC0)]),  # FFmpeg 8.0.1 does not know 0x91 (it guesses mp2)
])
def test_program_stream_map_bytes(video: str, audio: str | None, types: list[tuple[int, int]]) -> None:
    psm = program_stream_map_of(PsMuxer(video, audio).video(b"\x00\x00\x00\x01\x65", 0, True))  # type: ignore[arg-type]
    assert crc32_mpeg2(psm) == 0  # the CRC over the map and its own CRC leaves no remainder
    info_length, = struct.unpack_from("!H", psm, 8)
    es_length, = struct.unpack_from("!H", psm, 10 + info_length)
    entries = psm[12 + info_length:12 + info_length + es_length]
    assert [(entries[i], entries[i + 1]) for i in range(0, len(entries), 4)] == types
    assert PsMuxer(video, audio).video(b"\x00\x00\x00\x01\x41", 0, False).count(b"\x00\x00\x01\xbc") == 0  # type: ignore[arg-type]


def scr_of(pack: bytes) -> int:
    """The SCR base of a pack header, read bit by bit as ISO/IEC 13818-1 2.5.3.3 lays it out."""
    bits = "".join(f"{b:08b}" for b in pack[4:10])
    assert bits[:2] == "01" and bits[5] == bits[21] == bits[37] == "1"
    return int(bits[2:5] + bits[6:21] + bits[22:37], 2)


@pytest.mark.parametrize("scr", [0, 1, 90000, 2**32 + 12345, 2**33 - 1])
def test_pack_header_scr(scr: int) -> None:
    assert scr_of(PsMuxer("h264").video(b"", scr, False)) == scr


def test_split_for_rtp() -> None:
    ps = bytes(range(256)) * 20
    parts = split_for_rtp(ps, 1400)
    assert [len(p) for p in parts] == [1400, 1400, 1400, 920]
    assert b"".join(parts) == ps
