"""The fallback live view: fragmented MP4 over a WebSocket into Media Source Extensions.

For browsers or networks where WebRTC does not connect (UDP blocked, no H.264 in WebRTC, H.265
cameras). Fed by the same relay; each viewer gets its own remux (PyAV mp4 muxer, one fragment per
frame, no transcoding): an init segment (ftyp+moov), then moof+mdat per frame. The cached GOP is sent
with its real timestamps; the page jumps to the live edge.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av

from vms.live.h264 import mse_codec
from vms.live.protocol import LivePacket, StreamInfo
from vms.recording.h26x import sequence_parameter_set
from vms.recording.segment_file import add_copy_stream

MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+frag_every_frame"


class _Chunks:
    """A write-only file for the muxer (not seekable: the muxer writes fragments in order)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class FragmentedMp4Stream:
    """Remuxes one camera connection's packets to fMP4 bytes (starting at a keyframe)."""

    def __init__(self, info: StreamInfo) -> None:
        self.info = info
        self.mime = f'video/mp4; codecs="{mse_codec(info.codec, info.extradata)}"'
        self._sink = _Chunks()
        self._container = av.open(self._sink, "w", format="mp4", options={"movflags": MOVFLAGS})
        self._stream: av.stream.Stream | None = None  # made at the first keyframe
        # The packets' own time base (the tap's: capture ms), never the stream's: the muxer replaces the
        # stream's when it writes the header (1/16000 for a 15 fps camera), and packets labelled with
        # that one played at 1/16 speed (Chromium dropped 160 of 163 frames).
        self._packet_time_base = Fraction(*info.time_base)
        self._base: int | None = None
        self._last_dts = -1

    def _open_stream(self, keyframe: bytes) -> av.stream.Stream:
        """The output stream, made from the camera's own parameters (a probe of the first keyframe,
        with the SDP's parameter sets if it has none), as the recorder makes its segments' streams.
        Not from an encoder (PyAV's add_stream): PyAV opened it (libx264/libx265 for every viewer)
        and its own parameter sets replaced the camera's in the avcC/hvcC box; players got by with
        the in-band ones, which an `hvc1` file no longer carries (the muxer strips them)."""
        codec = self.info.codec
        sets = b"" if sequence_parameter_set(keyframe, codec) else self.info.extradata
        with av.open(io.BytesIO(sets + keyframe), "r", format=codec) as probe:
            stream = add_copy_stream(self._container, probe.streams.video[0])
        stream.time_base = self._packet_time_base  # a hint: the muxer picks its own track time scale
        return stream

    def add(self, pkt: LivePacket) -> bytes:
        """Mux one packet; returns the bytes the muxer produced (the init segment comes with the first)."""
        if self._base is None or self._stream is None:  # (both are set at once)
            if not pkt.keyframe:
                return b""
            self._stream = self._open_stream(pkt.data)
            self._base = pkt.dts
        dts = max(self._last_dts + 1, pkt.dts - self._base)
        self._last_dts = dts
        out = av.Packet(pkt.data)
        out.dts = dts
        out.pts = dts + max(0, pkt.pts - pkt.dts)
        out.time_base = self._packet_time_base  # PyAV rescales to the stream's at mux
        out.is_keyframe = pkt.keyframe
        out.stream = self._stream
        self._container.mux(out)
        return self._sink.take()

    def close(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - a viewer that left mid-fragment
            pass
