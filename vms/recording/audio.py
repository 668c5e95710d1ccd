"""A camera's audio in the segments: copied when MP4 can hold it, G.711 transcoded to AAC on the fly.

G.711 (PCMA/PCMU: FFmpeg's pcm_alaw/pcm_mulaw) is the default audio of most Hikvision and Dahua
cameras, and MP4 has no sample entry for it. So it becomes AAC-LC, mono, at the camera's rate (8 kHz),
with FFmpeg's native encoder: every segment stays an ordinary MP4 with H.264/H.265 + AAC, which the
playback, export and live paths already handle. Cost: docs/design/recording.md ("Audio").

One encoder per connection, never restarted at a segment cut: AAC frames overlap (each decoded
frame needs the one before it), so the packets of a continuous encoding concatenate (playback and
export join segments) as they would from a camera that sends AAC. Timestamps are the encoder's own,
which already account for its delay: a packet's pts is the time of the first sample it decodes to,
so the priming does not shift the audio (its first packet, before the first sample, is dropped by
the recorder like any audio before the segment's first frame).
"""

from __future__ import annotations

from fractions import Fraction
from typing import overload

import av
import numpy as np

from vms.recording.avtypes import audio_codec

# Audio codecs an MP4 segment holds as they come (copied).
MP4_AUDIO = ("aac", "mp3", "opus", "alac", "flac")
# G.711, transcoded to AAC.
G711 = ("pcm_alaw", "pcm_mulaw")
# AAC-LC at 8 kHz mono: 24 kbit/s keeps speech clear (G.711 itself is 64 kbit/s).
AAC_BIT_RATE = 24_000
# The "fast" coder costs half of the default "twoloop" or less on camera-like sound (a fifth on
# speech), and varies less with the content (scripts/bench_audio.py, docs/design/recording.md).
AAC_OPTIONS = {"aac_coder": "fast"}
# A hole in the camera's audio timestamps up to this long is filled with silence, so that what follows
# stays in place; a longer jump (or one backwards) restarts the encoding at the new time.
MAX_FILL_S = 1.0


@overload
def audio_status(codec: str, keep: bool) -> str: ...
@overload
def audio_status(codec: None, keep: bool) -> None: ...
def audio_status(codec: str | None, keep: bool) -> str | None:
    """What happens to a stream's audio, for the camera status: "aac" (copied), "pcm_alaw->aac"
    (transcoded), "dropped: <codec>", or None (no audio track)."""
    if codec is None:
        return None
    if not keep:
        return f"dropped: {codec}"
    if codec in MP4_AUDIO:
        return codec
    if codec in G711:
        return f"{codec}->aac"
    return f"dropped: {codec}"


_G711_TABLES: dict[str, np.ndarray] = {}


def g711_table(codec: str) -> np.ndarray:
    """Sample value (float, -1..1) of each of the 256 G.711 code words, as FFmpeg's own decoder gives
    them: one table look-up per byte instead of a decoder call (and a frame) per 20 ms packet."""
    table = _G711_TABLES.get(codec)
    if table is None:
        decoder = audio_codec(codec, "r")
        decoder.sample_rate = 8000
        decoder.layout = "mono"
        frames = decoder.decode(av.Packet(bytes(range(256))))
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        if pcm.shape != (256,):
            raise ValueError(f"{codec}: unexpected decoder output {pcm.shape}")
        table = _G711_TABLES[codec] = (pcm.astype(np.float32) / 32768.0)
    return table


class G711ToAac:
    """Transcodes one connection's G.711 packets to AAC packets (time base 1/rate, pts in samples on
    the camera's audio timeline). Not thread-safe: used from the camera's thread.

    Cameras send G.711 in 20-40 ms packets, 25-50 a second, each handed to Python: a packet costs a
    buffer append, and the table look-up and the encoder run once per AAC frame (1024 samples)."""

    def __init__(self, stream: av.audio.stream.AudioStream) -> None:
        ctx = stream.codec_context
        if ctx.name not in G711:
            raise ValueError(f"not G.711: {ctx.name}")
        if (ctx.channels or 1) != 1:
            raise ValueError(f"{ctx.channels} channels (G.711 from cameras is mono)")
        self.codec = ctx.name
        self.rate = ctx.sample_rate or 8000
        self.time_base = Fraction(1, self.rate)
        # Packets come in their stream's time base (a Fraction PyAV makes anew at each access).
        self._in_time_base = stream.time_base if stream.time_base != self.time_base else None
        self._table = g711_table(self.codec)
        self._silence = int(np.argmin(np.abs(self._table)))  # the code word nearest to 0
        self._max_fill = int(MAX_FILL_S * self.rate)
        self._encoder = self._new_encoder()
        self.extradata = self._encoder.extradata  # AudioSpecificConfig, for the segments' stream
        self.frame_size = self._encoder.frame_size
        self._pending = bytearray()  # G.711 code words (one per sample) not yet encoded
        self._pending_pos = 0  # timeline position (samples) of the first of them
        self._next: int | None = None  # timeline position of the next sample expected

    def _new_encoder(self) -> av.AudioCodecContext:
        enc = av.CodecContext.create("aac", "w")
        enc.sample_rate = self.rate
        enc.layout = "mono"
        enc.format = "fltp"
        enc.bit_rate = AAC_BIT_RATE
        enc.time_base = self.time_base
        enc.options = dict(AAC_OPTIONS)
        enc.open()
        self._encoder = enc
        return enc

    def add_output_stream(self, container: av.container.OutputContainer) -> av.audio.stream.AudioStream:
        """The AAC stream of a segment file. Nothing is opened: the native write_header only needs its
        parameters (without the native module PyAV opens an encoder there, unused)."""
        stream = container.add_stream("aac", rate=self.rate, layout="mono")
        stream.time_base = self.time_base
        ctx = stream.codec_context
        ctx.time_base = self.time_base
        ctx.bit_rate = AAC_BIT_RATE
        ctx.extradata = self.extradata
        return stream

    def push(self, pkt: av.Packet, not_before: int | None = None) -> list[av.Packet]:
        """Take one G.711 packet; return the AAC packets that are complete. `not_before` (a timeline
        position, samples) drops the samples before it when the timeline starts with this packet."""
        pos = pkt.pts if pkt.pts is not None else pkt.dts
        if pos is None:
            return []
        if self._in_time_base is not None:  # (RTP's G.711 time base is 1/rate: nothing to convert)
            pos = round(pos * self._in_time_base * self.rate)
        codes = memoryview(pkt)
        out: list[av.Packet] = []
        nxt = self._next
        if nxt is not None and pos != nxt:
            step = pos - nxt
            if 0 < step <= self._max_fill:
                # Packets lost (over UDP) or a pause: silence keeps what follows in place.
                self._pending += bytes((self._silence,)) * step
            elif step < 0 and -step < len(codes):
                codes = codes[-step:]  # overlaps what was taken: keep the new part only
            elif step < 0 and -step <= self._max_fill:
                return out  # a repeat of what was already taken
            else:
                out = self.flush()  # a jump: end this encoding, start again at the new time
                nxt = None
        if nxt is None:
            if not_before is not None and pos < not_before:
                if not_before - pos >= len(codes):
                    return out
                codes = codes[not_before - pos:]
                pos = not_before
            self._pending_pos = pos
        self._pending += codes
        self._next = self._pending_pos + len(self._pending)
        if len(self._pending) >= self.frame_size:
            out += self._encode_pending(final=False)
        return out

    def _encode_pending(self, final: bool) -> list[av.Packet]:
        size = self.frame_size
        count = len(self._pending) if final else len(self._pending) // size * size
        samples = self._table[np.frombuffer(self._pending, np.uint8, count)]
        out: list[av.Packet] = []
        enc = self._encoder
        for start in range(0, count, size):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + size], format="fltp", layout="mono")
            frame.sample_rate = self.rate
            frame.pts = self._pending_pos + start
            frame.time_base = self.time_base
            out += enc.encode(frame)
        del self._pending[:count]
        self._pending_pos += count
        for p in out:
            p.time_base = self.time_base
        return out

    def flush(self) -> list[av.Packet]:
        """End the encoding: the packets of every sample taken (the last one shorter); the next packet
        starts a new encoding."""
        out = self._encode_pending(final=True) if self._pending else []
        if self._next is not None:
            out += self._encoder.encode(None)
            for p in out:
                p.time_base = self.time_base
            self._new_encoder()
        self._pending.clear()
        self._next = None
        return out

    def reset(self) -> None:
        """Forget what was taken, without encoding it (nothing is being recorded)."""
        if self._next is not None:
            self._new_encoder()
        self._pending.clear()
        self._next = None
