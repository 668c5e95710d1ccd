"""H.265 to H.264 for one live viewer whose browser cannot decode H.265 (Chromium on Linux has no
software HEVC decoder, so an H.265 camera's fMP4 plays nothing there).

Only on demand (the page says it cannot play `hvc1`), only for the MSE fallback, and at most
`live.max_transcodes` at once in an API process: each costs a decoder and an x264 encoder, a large share
of a core at 720p (docs/benchmarks.md), where passing the camera's stream through costs next to nothing.
The output keeps the camera's timestamps (capture ms) and its GOP: a keyframe out for each keyframe in,
so the relay's cached-GOP start and the MSE page's live-edge seeking work unchanged.
"""

from __future__ import annotations

import threading
from fractions import Fraction

import av
from av.video.frame import PictureType

from vms.live.h264 import has_parameter_sets, nal_units
from vms.live.protocol import LivePacket, StreamInfo
from vms.recording.avtypes import video_codec

MS = Fraction(1, 1000)
H264_PARAMETER_SET_TYPES = (7, 8)  # SPS, PPS


class TranscodeSlots:
    """How many transcodes may run at once in one API process. Live views take them on the event loop,
    playback transcodes in request threads: the lock makes the check and the count one step."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    def try_take(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.active = max(0, self.active - 1)


def _even(n: float) -> int:
    return max(2, int(n) // 2 * 2)


def configure_h264_encoder(encoder: av.VideoCodecContext, width: int, height: int, max_height: int,
                           time_base: Fraction = MS) -> None:
    """Set up an unopened x264 context for pictures of width x height, scaled down (aspect kept, even
    sizes) to at most max_height. Shared by live views and playback (vms/api/playback_transcode.py).

    ultrafast, zerolatency (no lookahead: one packet out per picture in, at once) and no B-frames, so each
    packet's pts is its picture's and dts = pts; keyframes only where the caller forces them (the
    camera's), so seeking and GOP-aligned starts work as on the camera's stream. In-band SPS/PPS on each
    keyframe; one slice per picture (sliced threads give keyframes two slices of equal DTS); one thread:
    one core at most per transcode, several transcodes spread over the cores."""
    scale = min(1.0, max_height / height)
    encoder.width, encoder.height = _even(width * scale), _even(height * scale)
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = time_base
    encoder.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "x264-params": "keyint=infinite:min-keyint=1:scenecut=0:bframes=0:repeat-headers=1:sliced-threads=0",
    }
    encoder.thread_count = 1


def open_h264_encoder(width: int, height: int, max_height: int) -> av.VideoCodecContext:
    encoder = video_codec("libx264", "w")
    configure_h264_encoder(encoder, width, height, max_height)
    encoder.open()
    return encoder


class H264Transcoder:
    """Decodes one camera connection's H.265 and encodes H.264 (x264 ultrafast, zero latency, no B-frames:
    one packet out per picture in, at once). Not thread-safe; one per viewer; `add` may run in a worker
    thread (PyAV releases the GIL while decoding and encoding)."""

    def __init__(self, info: StreamInfo, max_height: int = 720) -> None:
        if info.codec != "hevc":
            raise ValueError(f"only H.265 is transcoded here, not {info.codec}")
        self.source = info
        self.max_height = max_height
        self.decoder = video_codec("hevc", "r")
        self.decoder.thread_type = "SLICE"  # frame threads would hold pictures back (latency)
        self.encoder: av.VideoCodecContext | None = None  # opened at the first picture (its size)
        self.info: StreamInfo | None = None  # the H.264 stream's, known at the first keyframe out
        self.frames_in = 0
        self.packets_out = 0

    def add(self, pkt: LivePacket) -> list[LivePacket]:
        """The H.264 packets for one H.265 packet (none until the first keyframe has been decoded)."""
        data = pkt.data
        if pkt.keyframe and self.source.extradata and not has_parameter_sets(data, "hevc"):
            data = self.source.extradata + data  # parameter sets only in the SDP
        packet = av.Packet(data)
        packet.pts, packet.dts, packet.time_base = pkt.pts, pkt.dts, MS
        try:
            frames = self.decoder.decode(packet)
        except av.error.FFmpegError:
            return []  # a damaged packet (or one the decoder cannot use yet): the next keyframe recovers
        out: list[LivePacket] = []
        for frame in frames:
            self.frames_in += 1
            if self.encoder is None:
                if not frame.key_frame:
                    continue
                self.encoder = open_h264_encoder(frame.width, frame.height, self.max_height)
            picture = frame.reformat(width=self.encoder.width, height=self.encoder.height, format="yuv420p")
            picture.pts = frame.pts if frame.pts is not None else pkt.pts
            picture.time_base = MS
            picture.pict_type = PictureType.I if frame.key_frame else PictureType.NONE
            for encoded in self.encoder.encode(picture):
                out.append(self._live_packet(encoded, pkt.received_ms))
        return out

    def _live_packet(self, encoded: av.Packet, received_ms: int) -> LivePacket:
        data = bytes(encoded)
        if self.info is None and encoded.is_keyframe:
            sets = b"".join(b"\x00\x00\x00\x01" + u for u in nal_units(data) if u[0] & 0x1F in H264_PARAMETER_SET_TYPES)
            assert self.encoder is not None
            self.info = StreamInfo(self.source.station, "h264", sets, self.encoder.width, self.encoder.height)
        self.packets_out += 1
        pts = encoded.pts if encoded.pts is not None else 0
        dts = encoded.dts if encoded.dts is not None else pts
        return LivePacket(pts, dts, received_ms, encoded.is_keyframe, data)

    def close(self) -> None:
        self.encoder = None
        self.decoder = None  # type: ignore[assignment]
