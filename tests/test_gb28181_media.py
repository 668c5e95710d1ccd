"""GB/T 28181 media: RTP and its TCP framing, the PS muxer of the device simulator (proved by PyAV
demuxing and decoding what it writes), and the platform's MediaReceiver on real sockets, feeding a
real pipe that PyAV reads."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache

import av
import numpy as np
import pytest

from vms.gb28181 import media
from vms.gb28181.media import PIPE_SIZE, MediaReceiver, Transport, make_media_pipe, rtp_native
from vms.gb28181.ps import AudioCodec, PsMuxer, VideoCodec, crc32_mpeg2, split_for_rtp
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


def video_codec_of(encoder: str) -> VideoCodec:
    return "h264" if encoder == "libx264" else "hevc"


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


def mux(encoder: str, units: tuple[tuple[bytes, bool], ...], first_pts: int = 90000,
        audio: AudioCodec | None = None) -> tuple[bytes, list[int]]:
    """The clip as one PS byte string (40 ms of G.711 per frame when audio is asked) and its PTS list."""
    muxer = PsMuxer(video_codec_of(encoder), audio)
    out = bytearray()
    pts = [first_pts + i * FRAME_90K for i in range(len(units))]
    for (unit, key), stamp in zip(units, pts, strict=True):
        out += muxer.video(unit, stamp, key)
        if audio:
            out += muxer.audio(bytes((i * 7) & 0xFF for i in range(320)), stamp)
    return bytes(out), pts


@dataclass
class Demuxed:
    """What PyAV finds in a PS: codecs, video PTS (90 kHz), decoded video frames and audio samples."""

    codecs: list[str] = field(default_factory=list)
    sample_rate: int | None = None
    video_pts: list[int] = field(default_factory=list)
    frames: int = 0
    samples: int = 0


def demux(source: str | io.BytesIO, container_options: dict[str, str] | None = None) -> Demuxed:
    found = Demuxed()
    with av.open(source, "r", format="mpeg", container_options=container_options) as container:
        found.codecs = sorted(s.codec_context.name for s in container.streams)
        audio = container.streams.audio
        found.sample_rate = audio[0].codec_context.sample_rate if audio else None
        for packet in container.demux():
            if packet.stream.type == "video":
                if packet.pts is not None:
                    assert packet.time_base == Fraction(1, 90000)
                    found.video_pts.append(packet.pts)
                found.frames += len(packet.decode())
            elif packet.stream.type == "audio":
                for frame in packet.decode():
                    assert isinstance(frame, av.AudioFrame)
                    found.samples += frame.samples
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
    assert deframer.skipped_bytes == 0  # read as frames, not found again by resynchronising


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


def ps_units(ps: bytes) -> list[tuple[int, bytes]]:
    """Walk a PS by its own lengths: (start code byte, header or PES bytes after the length field)."""
    units: list[tuple[int, bytes]] = []
    at = 0
    while at < len(ps):
        assert ps[at:at + 3] == b"\x00\x00\x01", f"no start code at {at}"
        code = ps[at + 3]
        if code == 0xBA:
            end = at + 14 + (ps[at + 13] & 0x07)
        else:
            (length,) = struct.unpack_from("!H", ps, at + 4)
            end = at + 6 + length
        units.append((code, ps[at + 6:end] if code != 0xBA else ps[at:end]))
        at = end
    assert at == len(ps)
    return units


def pes_count(ps: bytes, stream_id: int) -> int:
    return sum(code == stream_id for code, _ in ps_units(ps))


@pytest.mark.parametrize("encoder", ["libx264", "libx265"])
def test_ps_video_is_demuxed_and_decoded_by_pyav(encoder: str) -> None:
    units = encoded_video(encoder, noise=True)
    assert len(units[0][0]) > 65400  # the first keyframe needs two PES packets
    ps, pts = mux(encoder, units)
    assert pes_count(ps, 0xE0) > len(units)
    assert pes_count(ps, 0xBC) == pes_count(ps, 0xBB) == sum(key for _, key in units) == 3  # on each keyframe
    # Every frame opens with a pack header; only a frame's first PES carries PTS and DTS (flags 11).
    video_flags = [body[1] >> 6 for code, body in ps_units(ps) if code == 0xE0]
    assert video_flags.count(0b11) == len(units) == pes_count(ps, 0xBA)
    assert set(video_flags) == {0b11, 0b00}
    found = demux(io.BytesIO(ps))
    assert found.codecs == ["h264" if encoder == "libx264" else "hevc"]
    assert found.frames == len(units)
    assert found.video_pts == pts


@pytest.mark.parametrize("encoder", ["libx264", "libx265"])
def test_ps_with_g711_alaw_audio(encoder: str) -> None:
    units = encoded_video(encoder)
    ps, pts = mux(encoder, units, first_pts=2**33 - 10 * FRAME_90K, audio="pcma")  # PTS wraps midway
    found = demux(io.BytesIO(ps))
    assert found.codecs == sorted(["pcm_alaw", "h264" if encoder == "libx264" else "hevc"])
    assert found.sample_rate == 8000
    assert found.samples == 320 * len(units)
    assert found.frames == len(units)
    assert [p % 2**33 for p in found.video_pts] == [p % 2**33 for p in pts]


def program_stream_map_of(ps: bytes) -> bytes:
    at = ps.index(b"\x00\x00\x01\xbc")
    (length,) = struct.unpack_from("!H", ps, at + 4)
    return ps[at:at + 6 + length]


@pytest.mark.parametrize(("video", "audio", "types"), [
    ("h264", None, [(0x1B, 0xE0)]),
    ("hevc", "pcma", [(0x24, 0xE0), (0x90, 0xC0)]),
    ("h264", "pcmu", [(0x1B, 0xE0), (0x91, 0xC0)]),  # FFmpeg 8.0.1 does not know 0x91 (it guesses mp2)
])
def test_program_stream_map_bytes(video: VideoCodec, audio: AudioCodec | None, types: list[tuple[int, int]]) -> None:
    psm = program_stream_map_of(PsMuxer(video, audio).video(b"\x00\x00\x00\x01\x65", 0, True))
    assert crc32_mpeg2(psm) == 0  # the CRC over the map and its own CRC leaves no remainder
    info_length, = struct.unpack_from("!H", psm, 8)
    es_length, = struct.unpack_from("!H", psm, 10 + info_length)
    entries = psm[12 + info_length:12 + info_length + es_length]
    assert [(entries[i], entries[i + 1]) for i in range(0, len(entries), 4)] == types
    assert PsMuxer(video, audio).video(b"\x00\x00\x00\x01\x41", 0, False).count(b"\x00\x00\x01\xbc") == 0


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


# -- MediaReceiver ----------------------------------------------------------------------------------

HOST = "127.0.0.1"
PORTS = (20000, 20999)  # below Linux's ephemeral range; the receiver takes the first free one
DEVICE_SSRC = 105004272
FIRST_SEQ = 65500  # every stream below wraps its sequence numbers


def ps_frames(encoder: str = "libx264") -> list[bytes]:
    muxer = PsMuxer(video_codec_of(encoder))
    return [muxer.video(unit, i * FRAME_90K, key) for i, (unit, key) in enumerate(encoded_video(encoder))]


CLIP_PTS = [i * FRAME_90K for i in range(30)]


def rtp_of(frames: list[bytes], ssrc: int = DEVICE_SSRC, first_seq: int = FIRST_SEQ) -> list[list[bytes]]:
    """RTP packets per frame, as a device sends them: one timestamp per frame, marker on its last."""
    out: list[list[bytes]] = []
    seq = first_seq
    for i, frame in enumerate(frames):
        parts = split_for_rtp(frame)
        out.append([build_rtp(part, 96, seq + j, i * FRAME_90K, ssrc, j == len(parts) - 1)
                    for j, part in enumerate(parts)])
        seq += len(parts)
    return out


def flat(groups: list[list[bytes]]) -> list[bytes]:
    return [packet for group in groups for packet in group]


class PipeReader:
    """PyAV reading the receiver's pipe from another thread, as the recorder will."""

    def __init__(self, read_fd: int) -> None:
        self.found: Demuxed | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(read_fd,), daemon=True)
        self._thread.start()

    def _run(self, read_fd: int) -> None:
        try:  # container_options, never options=: PyAV 16.1.0 segfaults on options= for PS input
            self.found = demux(f"pipe:{read_fd}", container_options={"probesize": "500000"})
        except BaseException as exc:
            self.error = exc
        finally:
            os.close(read_fd)  # FFmpeg's pipe: protocol leaves the fd open

    def result(self, timeout: float = 10.0) -> Demuxed:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the reader did not see the end of the pipe"
        if self.error is not None:
            raise self.error
        assert self.found is not None
        return self.found


def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(params=["native", "python"])
def native(request) -> bool:
    """Each receiver test runs with the C fast path (vms.gb28181.rtp_native) and without it."""
    if request.param == "native" and rtp_native is None:
        pytest.skip("vms/gb28181/rtp_native.pyx is not built (scripts/build_native.py)")
    return request.param == "native"


@pytest.fixture
def session(native: bool) -> Iterator[Callable[..., tuple[MediaReceiver, PipeReader]]]:
    """Makes started receivers, each with a media pipe and PyAV reading it; stops them all after."""
    made: list[MediaReceiver] = []

    def make(transport: Transport = "udp", no_media_seconds: float = 1.5,
             expected_ssrc: int | None = None) -> tuple[MediaReceiver, PipeReader]:
        read_fd, write_fd = make_media_pipe()
        rx = MediaReceiver(transport, HOST, PORTS, write_fd, expected_ssrc=expected_ssrc,
                           no_media_seconds=no_media_seconds, name=f"test-{len(made)}", native=native)
        assert rx.native == native
        made.append(rx)
        rx.start()
        return rx, PipeReader(read_fd)

    yield make
    for rx in made:
        rx.stop()


def udp_sender() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    return sock


def send_udp(sock: socket.socket, port: int, packets: list[bytes]) -> None:
    for i, packet in enumerate(packets):
        sock.sendto(packet, (HOST, port))
        if i % 50 == 49:
            time.sleep(0.002)  # a camera paces its packets; a burst of thousands could overrun loopback


def ended_without_media(rx: MediaReceiver) -> None:
    """The natural end of a UDP test stream: silence, then no_media (which first delivers the window)."""
    wait_until(lambda: rx.ended is not None)
    assert rx.ended is not None and rx.ended[0] == "no_media"


def test_media_pipe_is_enlarged() -> None:
    read_fd, write_fd = make_media_pipe()
    try:
        assert fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ) == PIPE_SIZE  # allowed on this machine
    finally:
        os.close(read_fd)
        os.close(write_fd)


@pytest.mark.parametrize("transport", ["udp", "tcp-passive"])
def test_port_is_the_first_free_one_of_the_range(transport: Transport) -> None:
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    taken = socket.socket(socket.AF_INET, kind)
    taken.bind((HOST, 0))
    if kind == socket.SOCK_STREAM:
        taken.listen()
    first = taken.getsockname()[1]
    read_fd, write_fd = make_media_pipe()
    rx = MediaReceiver(transport, HOST, (first, first + 20), write_fd)
    try:
        assert first < rx.port <= first + 20
        with pytest.raises(OSError, match="no free"):
            MediaReceiver(transport, HOST, (first, first), write_fd)
    finally:
        rx.stop()
        taken.close()
        os.set_blocking(read_fd, False)  # an open write end would raise BlockingIOError, not hang
        assert os.read(read_fd, 10) == b""  # stop() closed the sink even though it never started
        os.close(read_fd)
    active = MediaReceiver("tcp-active", HOST, (first, first), make_media_pipe()[1])
    assert active.port == 0
    active.stop()


def test_udp_stream_reaches_pyav_through_the_pipe(session) -> None:
    rx, reader = session("udp", expected_ssrc=DEVICE_SSRC)
    sender = udp_sender()
    packets = flat(rtp_of(ps_frames()))
    send_udp(sender, rx.port, packets[:1])
    assert rx.wait_first_packet(2.0)
    send_udp(sender, rx.port, packets[1:])
    ended_without_media(rx)
    found = reader.result()
    assert found.frames == 30 and found.video_pts == CLIP_PTS and found.codecs == ["h264"]
    assert rx.stats["packets"] == len(packets)
    assert rx.stats["bytes"] == sum(len(p) - 12 for p in packets)
    assert (rx.ssrc, rx.source) == (DEVICE_SSRC, sender.getsockname())
    assert rx.last_packet_mono is not None
    assert all(v == 0 for k, v in rx.stats.items() if k not in ("packets", "bytes"))
    # The first packet teaches the session its SSRC and source; in C the others need no Python, unless the
    # C path's buffer is full because the reader lags (then Python waits for room: 64 of 113 in C once in CI).
    if rx.native:
        assert 0 < rx.native_packets <= len(packets) - 1
    else:
        assert rx.native_packets == 0
    sender.close()


def test_hevc_over_udp(session) -> None:
    rx, reader = session("udp")
    sender = udp_sender()
    send_udp(sender, rx.port, flat(rtp_of(ps_frames("libx265"))))
    ended_without_media(rx)
    found = reader.result()
    assert found.codecs == ["hevc"] and found.frames == 30 and found.video_pts == CLIP_PTS
    sender.close()


def test_udp_reordering_loss_duplicates_and_late_packets(session) -> None:
    rx, reader = session("udp")
    groups = rtp_of(ps_frames())
    held_back = groups[15]  # a whole P-frame: arrives after its hole was given up
    packets = flat(groups[:15]) + flat(groups[16:])
    swapped = 0
    for i in range(3, len(packets) - 1, 9):  # neighbours swapped, as a multipath network does
        packets[i], packets[i + 1] = packets[i + 1], packets[i]
        swapped += 1
    packets.insert(20, packets[10])  # one packet twice, long after it was delivered
    after_hole = sum(map(len, groups[:15])) + 1
    packets.insert(after_hole + 1, packets[after_hole])  # and one twice while it waits behind the hole
    sender = udp_sender()
    send_udp(sender, rx.port, packets)
    time.sleep(0.4)  # > REORDER_SECONDS: the hole is given up
    send_udp(sender, rx.port, held_back)
    ended_without_media(rx)
    found = reader.result()
    assert found.video_pts == CLIP_PTS[:15] + CLIP_PTS[16:]
    assert rx.stats["reordered"] == swapped
    assert rx.stats["duplicates"] == 2
    assert rx.stats["lost"] == rx.stats["late"] == len(held_back)
    assert rx.stats["packets"] == len(packets) + len(held_back)
    sender.close()


def test_udp_window_gives_up_a_hole_after_64_packets(session, monkeypatch) -> None:
    monkeypatch.setattr(media, "REORDER_SECONDS", 60.0)  # only the count rule can act here
    rx, reader = session("udp", no_media_seconds=30.0)  # its end would give up the hole too
    packets = flat(rtp_of(ps_frames()))
    sender = udp_sender()
    send_udp(sender, rx.port, packets[:5] + packets[6:70])  # packet 5 never comes; 64 wait behind it
    wait_until(lambda: rx.stats["packets"] == 69)
    time.sleep(0.1)
    assert rx.stats["lost"] == 0
    send_udp(sender, rx.port, packets[70:71])
    wait_until(lambda: rx.stats["lost"] == 1, timeout=2.0)
    rx.stop()
    assert reader.result().frames > 0  # what waited was delivered
    sender.close()


@pytest.mark.parametrize("restart_at", [40000, 10000])  # far behind, far ahead of 65500 + 77 (wrapped)
def test_sequence_restart_is_followed(session, restart_at: int) -> None:
    rx, reader = session("udp")
    groups = rtp_of(ps_frames())
    restarted = rtp_of(ps_frames(), first_seq=restart_at)
    sender = udp_sender()
    send_udp(sender, rx.port, flat(groups[:20]) + flat(restarted[20:]))
    ended_without_media(rx)
    assert reader.result().video_pts == CLIP_PTS
    assert rx.stats["lost"] == 0
    sender.close()


def test_other_ssrc_is_dropped_and_an_unexpected_first_ssrc_accepted(session, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vms.gb28181.media")
    rx, reader = session("udp", expected_ssrc=1234)  # the device ignores y= and sends DEVICE_SSRC
    packets = flat(rtp_of(ps_frames()))
    intruder = [build_rtp(b"\x00\x00\x01\xe0 not this station's video" * 40, 96, FIRST_SEQ + 5 + i, 0, 1234, False)
                for i in range(30)]
    mixed = packets[:5] + [p for pair in zip(intruder, packets[5:35], strict=True) for p in pair] + packets[35:]
    sender = udp_sender()
    send_udp(sender, rx.port, mixed)
    ended_without_media(rx)
    assert reader.result().video_pts == CLIP_PTS
    assert rx.ssrc == DEVICE_SSRC
    assert rx.stats["unexpected_ssrc"] == 1
    assert rx.stats["dropped_ssrc"] == len(intruder)
    assert sum("not the offered 1234" in r.getMessage() for r in caplog.records) == 1
    assert sum("dropping packets of SSRC 1234" in r.getMessage() for r in caplog.records) == 1
    sender.close()


def test_a_stale_stream_to_a_reused_port_gives_way_to_the_offered_ssrc(session, caplog) -> None:
    """A device still sending an earlier session's stream (its BYE not yet acted on) to the port this session
    was given reached the receiver first: it locked onto that sender and dropped the device's real stream,
    which used the offered SSRC, as a foreign source until the session ended for "no RTP" (seen in CI,
    tests/test_gb28181_source.py, many reconnects over UDP). The offered SSRC from another address wins."""
    caplog.set_level(logging.INFO, logger="vms.gb28181.media")
    rx, reader = session("udp", expected_ssrc=DEVICE_SSRC)
    packets = flat(rtp_of(ps_frames()))
    # The middle of the earlier session's frames: slice data, no start code (the pipe's reader skips it).
    stale = [build_rtp(b"\xaa the last session's video" * 30, 96, 7000 + i, 0, 4321, False) for i in range(20)]
    old_session, device = udp_sender(), udp_sender()
    send_udp(old_session, rx.port, stale[:1])
    wait_until(lambda: rx.ssrc == 4321)  # locked onto the stale sender, as the first packet decides
    mixed = [p for pair in zip(packets[:19], stale[1:], strict=True) for p in pair] + packets[19:]
    for packet in mixed:
        (old_session if packet in stale else device).sendto(packet, ("127.0.0.1", rx.port))
        time.sleep(0.0005)
    ended_without_media(rx)
    assert reader.result().video_pts == CLIP_PTS
    assert rx.ssrc == DEVICE_SSRC and rx.source == device.getsockname()
    assert rx.stats["dropped_source"] == len(stale) - 1 and rx.stats["unexpected_ssrc"] == 0
    assert sum("a stale stream" in r.getMessage() for r in caplog.records) == 1
    old_session.close()
    device.close()


def test_other_source_is_dropped_until_the_first_falls_silent(session) -> None:
    rx, reader = session("udp", no_media_seconds=5.0)
    groups = rtp_of(ps_frames())
    first, second = flat(groups[:15]), flat(groups[15:])
    device, rebound = udp_sender(), udp_sender()  # the same device after a NAT rebinding: a new port
    send_udp(device, rx.port, first)
    wait_until(lambda: rx.stats["packets"] == len(first))
    # Right away another address sends the learned SSRC with the next numbers: a second sender, dropped.
    impostor = [build_rtp(b"garbage" * 100, 96, FIRST_SEQ + len(first) + i, 0, DEVICE_SSRC, False) for i in range(5)]
    send_udp(rebound, rx.port, impostor)
    wait_until(lambda: rx.stats["dropped_source"] == len(impostor))
    time.sleep(2.1)  # SOURCE_SILENCE_SECONDS
    send_udp(rebound, rx.port, second)
    wait_until(lambda: rx.stats["packets"] == len(first) + len(second))
    assert rx.source == rebound.getsockname() and rx.stats["source_changes"] == 1
    send_udp(device, rx.port, [build_rtp(b"late", 96, 1, 0, DEVICE_SSRC, False)])  # the old address: dropped
    wait_until(lambda: rx.stats["dropped_source"] == len(impostor) + 1)
    rx.stop()
    assert reader.result().video_pts == CLIP_PTS
    device.close()
    rebound.close()


def test_garbage_datagrams_are_counted_and_logged_once(session, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vms.gb28181.media")
    rx, reader = session("udp")
    rng = np.random.default_rng(5)
    garbage = [b"", b"\x80", bytes(11), b"\x40" + bytes(20), b"\x8f\x60" + bytes(30)]  # short, v1, CSRC cut
    for size in rng.integers(1, 1500, 100):
        data = bytearray(rng.integers(0, 256, int(size), dtype=np.uint8).tobytes())
        data[0] &= 0x7F  # version 0 or 1: random bytes never lock the session onto a random SSRC
        garbage.append(bytes(data))
    rtcp_sender_report = struct.pack("!BBHI", 0x80, 200, 6, DEVICE_SSRC) + bytes(20)
    packets = flat(rtp_of(ps_frames()))
    sender = udp_sender()
    send_udp(sender, rx.port, garbage[:50] + [rtcp_sender_report] + packets[:40] + garbage[50:] + packets[40:])
    ended_without_media(rx)
    assert reader.result().video_pts == CLIP_PTS
    assert rx.stats["malformed"] == len(garbage)
    assert rx.stats["rtcp"] == 1
    assert sum("not RTP" in r.getMessage() for r in caplog.records) == 1
    sender.close()


def framed(packets: list[bytes]) -> bytes:
    return b"".join(frame_rfc4571(p) for p in packets)


def test_tcp_passive_stream_reaches_pyav(session) -> None:
    rx, reader = session("tcp-passive")
    groups = rtp_of(ps_frames())
    skipped = groups.pop(10)  # the device's own encoder queue overflowed: a frame never sent
    intruder = [build_rtp(b"\x00\x00\x01\xba" + b"other" * 200, 96, i, 0, 7, False) for i in range(5)]
    packets = flat(groups)
    stream = framed(packets[:30] + intruder + packets[30:])
    with socket.create_connection((HOST, rx.port)) as device:
        for i in range(0, len(stream), 3000):  # chunks that cut frames anywhere
            device.sendall(stream[i:i + 3000])
        device_address = device.getsockname()
    wait_until(lambda: rx.ended is not None)
    assert rx.ended == ("media_closed", "the device closed the TCP connection")
    found = reader.result()
    assert found.video_pts == CLIP_PTS[:10] + CLIP_PTS[11:]
    assert found.frames >= 20  # the P-frames after the gap lack a reference up to the next keyframe
    assert rx.source == device_address and rx.ssrc == DEVICE_SSRC
    assert rx.stats["lost"] == len(skipped) and rx.stats["dropped_ssrc"] == len(intruder)
    assert rx.stats["packets"] == len(packets)


def test_tcp_framings_mixed_mid_stream(session) -> None:
    """RFC 4571 frames with another SSRC's among them, "$" frames, then RFC 4571 again with a vendor's
    zero-length keepalive frames, cut anywhere: everything in order, whether C or Python holds the
    stream's partial frame when it changes hands."""
    rx, reader = session("tcp-passive")
    packets = flat(rtp_of(ps_frames()))
    a, b, c = len(packets) // 3, len(packets) // 2, 2 * len(packets) // 3
    intruder = build_rtp(b"\x00\x00\x01\xba" + b"other" * 200, 96, 5, 0, 7, False)
    stream = (framed(packets[:a] + [intruder] + packets[a:b])
              + b"".join(b"$\x00" + struct.pack("!H", len(p)) + p for p in packets[b:c])
              + b"".join(frame_rfc4571(p) + b"\x00\x00" for p in packets[c:]))
    with socket.create_connection((HOST, rx.port)) as device:
        for i in range(0, len(stream), 1777):
            device.sendall(stream[i:i + 1777])
            if i == 0:
                assert rx.wait_first_packet(2.0)  # the SSRC learned: from here on C may take over
    wait_until(lambda: rx.ended is not None)
    assert rx.ended == ("media_closed", "the device closed the TCP connection")
    assert reader.result().video_pts == CLIP_PTS
    assert rx.stats["packets"] == len(packets) and rx.stats["lost"] == 0 and rx.stats["dropped_ssrc"] == 1
    if rx.native:  # (how many depends on how the kernel hands the stream over: C stops at the intruder)
        assert rx.native_packets > 0


def test_tcp_active_dials_the_device(session) -> None:
    rx, reader = session("tcp-active", no_media_seconds=5.0)
    assert rx.port == 0
    with socket.socket() as listener:  # the device's answered media address (a=setup:passive on its side)
        listener.bind((HOST, 0))
        listener.listen()
        rx.connect(*listener.getsockname())
        device, _ = listener.accept()
    with device:
        packets = flat(rtp_of(ps_frames()))
        # RTSP-interleaved "$" frames on this one: some vendors send them on GB28181 TCP too.
        device.sendall(b"".join(b"$\x00" + struct.pack("!H", len(p)) + p for p in packets))
    wait_until(lambda: rx.ended is not None)
    assert rx.ended is not None and rx.ended[0] == "media_closed"
    assert reader.result().video_pts == CLIP_PTS
    assert rx.stats["packets"] == len(packets) and rx.stats["malformed"] == 0
    with pytest.raises(RuntimeError):
        rx.connect(HOST, 9)


def test_second_tcp_connection_is_refused(session, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vms.gb28181.media")
    rx, reader = session("tcp-passive", no_media_seconds=5.0)
    stream = framed(flat(rtp_of(ps_frames())))
    half = len(stream) // 2
    with socket.create_connection((HOST, rx.port)) as device:
        device.sendall(stream[:half])
        assert rx.wait_first_packet(2.0)
        for _ in range(2):
            with socket.create_connection((HOST, rx.port)) as second:
                second.sendall(framed(flat(rtp_of(ps_frames()[:3], ssrc=DEVICE_SSRC))))
                second.settimeout(2.0)
                try:
                    assert second.recv(100) == b""  # closed by the receiver
                except ConnectionResetError:
                    pass  # or reset, as it closed with unread data
        device.sendall(stream[half:])
    wait_until(lambda: rx.ended is not None)
    assert rx.stats["refused_connections"] == 2
    assert sum("refused a second TCP connection" in r.getMessage() for r in caplog.records) == 1
    assert reader.result().video_pts == CLIP_PTS


def test_garbage_tcp_stream_ends_cleanly(session, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vms.gb28181.media")
    rx, reader = session("tcp-passive")
    rng = np.random.default_rng(9)
    with socket.create_connection((HOST, rx.port)) as device:
        device.sendall(framed([rng.integers(0, 256, 500, dtype=np.uint8).tobytes() for _ in range(100)]))
        device.sendall(rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    wait_until(lambda: rx.ended is not None)
    assert rx.ended is not None and rx.ended[0] in ("media_closed", "no_media")  # no RTP: either may come first
    assert rx.stats["malformed"] > 0
    with pytest.raises((av.error.EOFError, av.error.InvalidDataError)):
        reader.result()  # nothing or garbage in the pipe, and then its end
    for kind in ("not RTP", "framing"):
        assert sum(kind in r.getMessage() for r in caplog.records) <= 1


def test_no_media_ends_the_session_and_the_pipe(session) -> None:
    rx, reader = session("udp", no_media_seconds=0.5)
    began = time.monotonic()  # (after the receiver started: on a loaded machine its 0.5 s may be partly gone)
    assert not rx.wait_first_packet(3.0)  # returns when the receiver ends, not at the timeout
    assert 0.2 < time.monotonic() - began < 1.5
    assert rx.ended == ("no_media", "no RTP for 0.5 s")
    with pytest.raises(av.error.EOFError):
        reader.result()  # end of the pipe without any data
    rx.stop()  # after the end: harmless
    rx.stop()


def test_media_that_stops_ends_the_session(session) -> None:
    rx, reader = session("tcp-passive", no_media_seconds=0.6)
    with socket.create_connection((HOST, rx.port)) as device:
        device.sendall(framed(flat(rtp_of(ps_frames()))))
        wait_until(lambda: rx.ended is not None, timeout=3.0)  # the device keeps the connection open
        assert rx.ended == ("no_media", "no RTP for 0.6 s")
        assert reader.result().video_pts == CLIP_PTS


def test_reader_gone_ends_with_sink_closed(native: bool) -> None:
    read_fd, write_fd = make_media_pipe()
    os.close(read_fd)
    rx = MediaReceiver("udp", HOST, PORTS, write_fd, native=native)
    rx.start()
    sender = udp_sender()
    send_udp(sender, rx.port, flat(rtp_of(ps_frames()))[:10])
    wait_until(lambda: rx.ended is not None)
    assert rx.ended == ("sink_closed", "the reader of the media pipe is gone")
    rx.stop()
    sender.close()


def test_stop_unblocks_a_receiver_waiting_on_a_full_pipe(native: bool) -> None:
    read_fd, write_fd = os.pipe()  # 64 KiB, never read
    rx = MediaReceiver("tcp-passive", HOST, PORTS, write_fd, native=native)
    rx.start()
    with socket.create_connection((HOST, rx.port)) as device:
        device.sendall(framed(flat(rtp_of(ps_frames("libx264")))) * 8)
        wait_until(lambda: rx.stats["bytes"] > 100_000)
        began = time.monotonic()
        rx.stop()
        assert time.monotonic() - began < 1.0
    assert rx.ended is None  # stopped, not ended by itself
    while os.read(read_fd, 1 << 16):
        pass  # and then the end of the pipe
    os.close(read_fd)


def test_a_paused_reader_is_not_device_silence(native: bool) -> None:
    """The reader stops reading for longer than no_media_seconds while the device keeps sending: the
    receiver waits for room in the pipe and then delivers everything."""
    read_fd, write_fd = os.pipe()  # 64 KiB: fills at once
    rx = MediaReceiver("tcp-passive", HOST, PORTS, write_fd, no_media_seconds=0.5, native=native)
    rx.start()
    noise = PsMuxer("h264")
    packets = flat(rtp_of([noise.video(unit, i * FRAME_90K, key)
                           for i, (unit, key) in enumerate(encoded_video("libx264", noise=True))]))
    stream = framed(packets)  # ~1.5 MB
    done = threading.Event()

    def device() -> None:
        # Closes right after sending: the close waits in the socket behind the data, so the receiver sees
        # it only after delivering everything (holding the connection open until the test said so left a
        # moment of real silence, and a loaded machine turned it into no_media before media_closed).
        with socket.create_connection((HOST, rx.port)) as conn:
            conn.sendall(stream)

    sender = threading.Thread(target=device, daemon=True)
    sender.start()
    try:
        time.sleep(1.2)
        assert rx.ended is None and rx.stats["packets"] > 0
        reader = PipeReader(read_fd)
        wait_until(lambda: rx.stats["packets"] == len(packets))
        done.set()
        found = reader.result()
        assert found.video_pts == CLIP_PTS and found.frames == 30
        assert rx.ended is not None and rx.ended[0] == "media_closed"
    finally:
        done.set()
        rx.stop()
        sender.join(5)
