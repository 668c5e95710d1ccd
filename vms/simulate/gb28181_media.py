"""The media side of a simulated GB/T 28181 camera: the clip, G.711 sound, and one RTP/PS session.

A session sends what a camera sends after the platform's ACK: the clip's access units (Annex-B, looped)
paced at the clip's frame rate, muxed into MPEG-PS (vms.gb28181.ps), cut into RTP packets of payload
type 96 (vms.gb28181.rtp) with 90 kHz timestamps, the marker on the last packet of each frame and
sequence numbers continuous for the whole session (across a rebinding too); G.711 frames of 20 ms
interleaved when the camera has audio. Over UDP one packet per datagram, from the session's own socket;
over TCP RFC 4571 framing, on a connection the camera opens (the platform offered setup:passive) or
accepts (setup:active).

Live sessions start at the keyframe before the clip position of the wall clock and run until stopped;
playback and download sessions send the recorded pieces of their t= range (the gaps of the simulated
SD card skipped, the timestamps jumping over them) and then report the end (MediaStatus 121).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import av
import numpy as np

from vms.gb28181.ps import AudioCodec, PsMuxer, VideoCodec, split_for_rtp
from vms.gb28181.rtp import build_rtp, frame_rfc4571

log = logging.getLogger("vms.simulate.gb28181")

PS_PAYLOAD_TYPE = 96
MAX_RTP_PAYLOAD = 1400
AUDIO_FRAME_S = 0.02  # G.711 at 8 kHz: 160 bytes every 20 ms
AUDIO_FRAME_BYTES = 160
TCP_CONNECT_TIMEOUT_S = 5.0
TCP_RECONNECTS = 3  # GB 2022 Annex D: the front end reconnects at least 3 times, at least 1 s apart
TCP_RECONNECT_GAP_S = 1.0
TCP_ACCEPT_TIMEOUT_S = 15.0


# -- the clip -----------------------------------------------------------------------------------------

@dataclass
class Clip:
    """A raw Annex-B file split into access units (kept in Annex-B), looped from its first keyframe."""

    path: Path
    codec: str
    frames: list[bytes]
    keyframe: list[bool]

    def keyframe_at_or_before(self, index: int) -> int:
        index %= len(self.frames)
        while index > 0 and not self.keyframe[index]:
            index -= 1
        return index


def load_clip(path: Path, codec: str) -> Clip:
    """Demux the raw file with PyAV's parser (one packet per access unit); start at the first keyframe."""
    if codec not in ("h264", "hevc"):
        raise ValueError(f"codec must be h264 or hevc, got {codec!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"clip {path} does not exist")
    frames: list[bytes] = []
    keys: list[bool] = []
    try:
        with av.open(str(path), format=codec) as container:
            if not container.streams.video:
                raise ValueError(f"clip {path} has no {codec} video")
            for packet in container.demux(container.streams.video[0]):
                if not packet.size:
                    continue
                if not frames and not packet.is_keyframe:
                    continue  # a loop must open on a keyframe
                frames.append(bytes(packet))
                keys.append(bool(packet.is_keyframe))
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot read clip {path} as raw {codec}: {exc}") from None
    if not frames:
        raise ValueError(f"clip {path} has no {codec} keyframe")
    return Clip(path, codec, frames, keys)


# -- G.711 ----------------------------------------------------------------------------------------------

_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def alaw_encode(samples: np.ndarray) -> bytes:
    """16-bit linear PCM -> G.711 A-law (ITU-T G.711, as in Sun's g711.c)."""
    pcm = samples.astype(np.int32) >> 3
    positive = pcm >= 0
    mask = np.where(positive, 0xD5, 0x55)
    pcm = np.where(positive, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, pcm)
    shift = np.where(seg < 2, 1, seg)
    aval = (np.minimum(seg, 7) << 4) | ((pcm >> shift) & 0x0F)
    aval = np.where(seg >= 8, 0x7F, aval)
    return (aval ^ mask).astype(np.uint8).tobytes()


def ulaw_encode(samples: np.ndarray) -> bytes:
    """16-bit linear PCM -> G.711 mu-law."""
    pcm = samples.astype(np.int32) >> 2
    negative = pcm < 0
    mask = np.where(negative, 0x7F, 0xFF)
    pcm = np.minimum(np.abs(pcm), 8159) + (0x84 >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, pcm)
    uval = (np.minimum(seg, 7) << 4) | ((pcm >> (np.minimum(seg, 7) + 1)) & 0x0F)
    uval = np.where(seg >= 8, 0x7F, uval)
    return (uval ^ mask).astype(np.uint8).tobytes()


def g711_tone(kind: str, hz: float = 440.0, level: float = 0.1) -> bytes:
    """One second of a quiet tone (a whole number of periods, so it loops without a click)."""
    t = np.arange(8000) / 8000.0
    samples = (level * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return alaw_encode(samples) if kind == "pcma" else ulaw_encode(samples)


# -- the timeline of a session ----------------------------------------------------------------------------

@dataclass
class MediaEvent:
    t: float  # seconds (Unix time for playback, session time for live)
    video: bool
    data: bytes
    keyframe: bool
    piece_start: bool  # the first event of a recorded piece: no pacing across the gap before it


def timeline(clip: Clip, fps: int, audio: bytes | None, pieces: list[tuple[float, float]]) -> Iterator[MediaEvent]:
    """Video frames every 1/fps and audio frames every 20 ms over each piece [a, b); each piece opens
    with the keyframe before the clip position of `a` (a recording file starts on a keyframe)."""
    n = len(clip.frames)
    for a, b in pieces:
        first = clip.keyframe_at_or_before(int(a * fps))
        vi = ai = 0
        start = True
        while True:
            tv = a + vi / fps
            ta = a + ai * AUDIO_FRAME_S if audio is not None else math.inf
            t = min(tv, ta)
            if t >= b:
                break
            if tv <= ta:
                k = (first + vi) % n
                yield MediaEvent(t, True, clip.frames[k], clip.keyframe[k], start)
                vi += 1
            else:
                assert audio is not None
                off = (ai % int(1 / AUDIO_FRAME_S)) * AUDIO_FRAME_BYTES
                yield MediaEvent(t, False, audio[off:off + AUDIO_FRAME_BYTES], True, start)
                ai += 1
            start = False


# -- one session's sender ---------------------------------------------------------------------------------

@dataclass
class MediaTarget:
    transport: str  # "udp", "tcp-passive" (the platform listens: we connect), "tcp-active" (we listen)
    remote: tuple[str, int]  # the platform's c= and m= port (not used for tcp-active)
    ssrc: int


@dataclass
class MediaStats:
    packets: int = 0
    bytes: int = 0
    frames: int = 0
    audio_frames: int = 0
    send_errors: int = 0
    local_port: int = 0
    remote: tuple[str, int] | None = None
    reconnects: int = 0
    finished: bool = False  # a playback sent its whole range
    first_ssrc: int = 0


class MediaSender:
    """Sends one session's media; `run()` is its task. Faults are flags read at each frame."""

    def __init__(self, host: str, target: MediaTarget, clip: Clip, fps: int, audio: str | None,
                 pieces: list[tuple[float, float]] | None, *, live: bool, speed: float = 1.0,
                 time_origin: float = 0.0, dropped: Callable[[], bool] = lambda: False) -> None:
        self.host = host
        self.target = target
        self.clip = clip
        self.fps = fps
        self.audio = audio
        self.live = live
        self.speed = speed
        self.scale = 1.0  # MANSRTSP Scale
        self.paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._seek_to: float | None = None
        self.time_origin = time_origin  # pts 0 (playback: the t= start)
        self.pieces = pieces
        self._dropped = dropped
        self._was_dropped = False
        self.stats = MediaStats(first_ssrc=target.ssrc)
        self.muxer = PsMuxer(video_codec=cast(VideoCodec, clip.codec), audio_codec=cast("AudioCodec | None", audio))
        self.seq = secrets.randbelow(1 << 16)
        self.pts_base = secrets.randbelow(1 << 32) if live else 0
        self._udp: socket.socket | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._bound: socket.socket | None = None  # tcp-passive: bound now (its port is in the answer)
        self._accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
        self._server: asyncio.base_events.Server | None = None
        self._rebinding = False

    # -- sockets ----------------------------------------------------------------------------------------
    async def prepare(self) -> int:
        """Open the local side before the answer; return the port to put in the answer's m= line."""
        if self.target.transport == "udp":
            self._udp = _udp_socket(self.host)
            self.stats.local_port = self._udp.getsockname()[1]
        elif self.target.transport == "tcp-passive":
            self._bound = _tcp_socket(self.host)
            self.stats.local_port = self._bound.getsockname()[1]
        else:
            loop = asyncio.get_running_loop()
            self._accepted = loop.create_future()

            def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                if self._accepted is not None and not self._accepted.done():
                    self._accepted.set_result((reader, writer))
                else:
                    writer.close()  # one media connection per session

            self._server = await asyncio.start_server(accepted, self.host, 0)
            self.stats.local_port = self._server.sockets[0].getsockname()[1]
        return self.stats.local_port

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if self.target.transport == "tcp-passive":
            sock = self._bound or _tcp_socket(self.host)
            self._bound = None
            sock.setblocking(False)
            try:
                async with asyncio.timeout(TCP_CONNECT_TIMEOUT_S):  # not wait_for (3.11 drops cancellations)
                    await loop.sock_connect(sock, self.target.remote)
            except BaseException:
                sock.close()
                raise
            _, self._writer = await asyncio.open_connection(sock=sock)
            self.stats.local_port = sock.getsockname()[1]
            self.stats.remote = self.target.remote
        elif self.target.transport == "tcp-active":
            assert self._accepted is not None
            async with asyncio.timeout(TCP_ACCEPT_TIMEOUT_S):
                _, writer = await asyncio.shield(self._accepted)
            self._writer = writer
            peer = writer.get_extra_info("peername")
            self.stats.remote = (peer[0], peer[1]) if peer else None
        else:
            self.stats.remote = self.target.remote

    def rebind(self) -> None:
        """A NAT rebinding: UDP media leaves from a new port; a TCP connection we opened is lost and
        opened again (from a new port). An accepted connection (tcp-active) cannot move."""
        if self.target.transport == "udp" and self._udp is not None:
            old, self._udp = self._udp, _udp_socket(self.host)
            old.close()
            self.stats.local_port = self._udp.getsockname()[1]
        elif self.target.transport == "tcp-passive" and self._writer is not None:
            self._rebinding = True
            self._writer.close()

    def pause(self) -> None:
        self.paused = True
        self._resumed.clear()

    def play(self, scale: float | None = None, seek_s: float | None = None) -> None:
        if scale is not None and scale > 0:
            self.scale = scale
        if seek_s is not None and not self.live:
            self._seek_to = seek_s
        self.paused = False
        self._resumed.set()

    def close(self) -> None:
        for sock in (self._udp, self._bound):
            if sock is not None:
                sock.close()
        self._udp = self._bound = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._accepted is not None and not self._accepted.done():
            self._accepted.cancel()

    # -- sending ----------------------------------------------------------------------------------------
    def _events(self, from_rel: float | None) -> Iterator[MediaEvent]:
        audio = g711_tone(self.audio) if self.audio else None
        if self.live:
            now = time.time()
            return timeline(self.clip, self.fps, audio, [(now, math.inf)])
        pieces = self.pieces or []
        if from_rel is not None:
            at = self.time_origin + from_rel
            pieces = [(max(a, at), b) for a, b in pieces if b > at]
        return timeline(self.clip, self.fps, audio, pieces)

    async def run(self) -> None:
        """Send until the range ends (playback) or the task is cancelled (live, BYE)."""
        loop = asyncio.get_running_loop()
        for attempt in range(TCP_RECONNECTS + 1):
            try:
                await self._connect()
                break
            except (OSError, TimeoutError) as exc:
                if self.target.transport != "tcp-passive" or attempt == TCP_RECONNECTS:
                    raise
                log.info("RTP connection to %s failed (%s); trying again", self.target.remote, exc)
                self.stats.reconnects += 1
                await asyncio.sleep(TCP_RECONNECT_GAP_S)
        events = self._events(None)
        origin: float | None = None  # the first event's t (live: pts 0)
        anchor_wall = loop.time()
        anchor_played = played = 0.0
        last_t: float | None = None
        while True:
            if self._seek_to is not None:
                events, self._seek_to, last_t = self._events(self._seek_to), None, None
                anchor_wall, anchor_played = loop.time(), played
            event = next(events, None)
            if event is None:
                break
            if origin is None:
                origin = event.t if self.live else self.time_origin
            if last_t is not None and not event.piece_start:
                played += max(0.0, event.t - last_t)
            last_t = event.t
            delay = anchor_wall + (played - anchor_played) / (self.speed * self.scale) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.paused:
                await self._resumed.wait()
                anchor_wall, anchor_played = loop.time(), played
            pts = (self.pts_base + round((event.t - origin) * 90000)) & ((1 << 33) - 1)
            if self._dropped():
                self._was_dropped = True
                continue
            if self._was_dropped:  # resume on a keyframe, as a camera's encoder would
                if not (event.video and event.keyframe):
                    continue
                self._was_dropped = False
            if event.video:
                ps = self.muxer.video(event.data, pts, event.keyframe)
                self.stats.frames += 1
            else:
                ps = self.muxer.audio(event.data, pts)
                self.stats.audio_frames += 1
            await self._send_ps(ps, pts)
        self.stats.finished = True

    async def _send_ps(self, ps: bytes, pts: int) -> None:
        chunks = split_for_rtp(ps, max_payload=MAX_RTP_PAYLOAD)
        packets = []
        for i, chunk in enumerate(chunks):
            packets.append(build_rtp(chunk, payload_type=PS_PAYLOAD_TYPE, sequence=self.seq,
                                     timestamp=pts & 0xFFFFFFFF, ssrc=self.target.ssrc,
                                     marker=i == len(chunks) - 1))
            self.seq = (self.seq + 1) & 0xFFFF
        if self.target.transport == "udp":
            sock = self._udp
            if sock is None:
                return
            for packet in packets:
                try:
                    sock.sendto(packet, self.target.remote)
                except OSError as exc:  # full buffer, ICMP refusal: a camera keeps sending
                    self.stats.send_errors += 1
                    log.debug("RTP to %s: %s", self.target.remote, exc)
                    continue
                self.stats.packets += 1
                self.stats.bytes += len(packet)
            return
        data = b"".join(frame_rfc4571(p) for p in packets)
        for attempt in range(TCP_RECONNECTS + 1):
            writer = self._writer
            try:
                if writer is None or writer.is_closing():
                    raise ConnectionError("media connection closed")
                writer.write(data)
                await writer.drain()
                self.stats.packets += len(packets)
                self.stats.bytes += len(data)
                return
            except (ConnectionError, OSError) as exc:
                if self.target.transport != "tcp-passive" or attempt == TCP_RECONNECTS:
                    raise ConnectionError(f"media connection lost: {exc}") from None
                if not self._rebinding:
                    await asyncio.sleep(TCP_RECONNECT_GAP_S)
                self._rebinding = False
                self.stats.reconnects += 1
                try:
                    await self._connect()
                except (TimeoutError, OSError) as exc2:
                    log.info("RTP reconnect to %s failed: %s", self.target.remote, exc2)

    def send_garbage(self) -> int:
        """A few packets no platform should take: too short, an unknown payload type, a foreign SSRC with
        random bytes, and over UDP one that is not RTP version 2. Over TCP each is a well-formed RFC 4571
        frame starting like RTP (framing intact: the content is what is wrong)."""
        junk = [b"\x80" + os.urandom(4),
                build_rtp(os.urandom(100), payload_type=127, sequence=secrets.randbelow(1 << 16), timestamp=0,
                          ssrc=self.target.ssrc, marker=True),
                build_rtp(os.urandom(200), payload_type=PS_PAYLOAD_TYPE, sequence=secrets.randbelow(1 << 16),
                          timestamp=0, ssrc=(self.target.ssrc ^ 0x5A5A5A5A) or 1, marker=True)]
        if self.target.transport == "udp":
            junk.append(bytes([0x40]) + os.urandom(60))
        sent = 0
        for packet in junk:
            try:
                if self.target.transport == "udp" and self._udp is not None:
                    self._udp.sendto(packet, self.target.remote)
                elif self._writer is not None and not self._writer.is_closing():
                    self._writer.write(frame_rfc4571(packet))
                else:
                    continue
                sent += 1
            except OSError:
                pass
        return sent


def _udp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((host, 0))
    return sock


def _tcp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((host, 0))
    return sock

