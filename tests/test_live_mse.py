"""The MSE live view's pieces at unit level (frames encoded here, no simulator, no server): the fMP4's
packet times are the camera's, H.265 transcoded to H.264 keeps them, the offer's mDNS candidates."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from vms.live.h264 import nal_units
from vms.live.mse import FragmentedMp4Stream
from vms.live.protocol import LivePacket, StreamInfo

FPS = 15


def _times(data: bytes) -> tuple[str, int, list[float], list[bool]]:
    """Codec, height, packet times (s) and keyframe flags of an fMP4, read back with PyAV."""
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        packets = [p for p in c.demux(stream) if p.pts is not None]
        return (stream.codec_context.name, stream.codec_context.height,
                [float(p.pts * stream.time_base) for p in packets], [p.is_keyframe for p in packets])


def _camera_packets(count: int, fps: int = FPS, codec_name: str = "libx264",
                    height: int = 240) -> tuple[bytes, list[av.Packet]]:
    """H.264 (or H.265) as a camera sends it (no B-frames, a keyframe every 2 s): Annex B packets, and the
    SPS/PPS of H.264."""
    codec = av.CodecContext.create(codec_name, "w")
    codec.width, codec.height, codec.pix_fmt = height * 4 // 3, height, "yuv420p"
    codec.time_base = Fraction(1, fps)
    codec.framerate = Fraction(fps)
    params = f"keyint={2 * fps}:min-keyint={2 * fps}:scenecut=0:bframes=0:repeat-headers=1"
    key = "x264-params" if codec_name == "libx264" else "x265-params"
    codec.options = {key: params + ("" if codec_name == "libx264" else ":log-level=error")}
    packets: list[av.Packet] = []
    for i in range(count):
        picture = np.full((height, height * 4 // 3, 3), (i * 7) % 256, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))
    sets = b"".join(b"\x00\x00\x00\x01" + u for u in nal_units(bytes(packets[0])) if u[0] & 0x1F in (7, 8))
    return sets, packets


@pytest.mark.parametrize("start_ms", [0, 1_765_000_000_000], ids=["from-zero", "wall-clock-ms"])
def test_fragments_carry_the_cameras_frame_times(start_ms):
    """The tap's timestamps are capture times in ms (time base 1/1000). The muxer changes the output
    stream's time base when it writes the header (to 1/16000 here): taking that one as the packets' time
    base made every frame 1/16 of its real duration, and Chromium dropped 160 of 163 frames."""
    sets, packets = _camera_packets(3 * FPS)
    remux = FragmentedMp4Stream(StreamInfo("x", "h264", sets, 320, 240))
    step_ms = 1000 / FPS
    data = b"".join(
        remux.add(LivePacket(start_ms + round(i * step_ms), start_ms + round(i * step_ms), 0, p.is_keyframe,
                             bytes(p)))
        for i, p in enumerate(packets)
    )
    remux.close()
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        times = [float(p.pts * stream.time_base) for p in c.demux(stream) if p.pts is not None]
    assert len(times) >= len(packets) - 1  # the last fragment waits for the next frame
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(abs(s - 1 / FPS) < 0.002 for s in steps), steps[:10]
    assert times[-1] - times[0] == pytest.approx((len(times) - 1) / FPS, abs=0.01)


OFFER_WITH_MDNS = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0",
    "a=candidate:1 1 udp 2122260223 4a1e2b5c-0d3f-4e5a-9b8c-7d6e5f4a3b2c.local 51234 typ host generation 0",
    "a=candidate:2 1 udp 2122194687 127.0.0.1 51235 typ host generation 0",
    "a=candidate:3 1 tcp 1518280447 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0.LOCAL 9 typ host tcptype active",
    "a=mid:0", "",
])


def test_the_offers_mdns_candidates_are_set_aside():
    """Chromium without camera permission offers `<uuid>.local` candidates; aiortc resolved each in the
    offer request (1 s timeout each). They are set aside, to be resolved after the answer."""
    from vms.live.webrtc import split_mdns_candidates

    kept, mdns = split_mdns_candidates(OFFER_WITH_MDNS)
    assert ".local" not in kept.lower()
    assert "a=candidate:2 1 udp 2122194687 127.0.0.1 51235 typ host" in kept and "a=mid:0" in kept
    assert [line.split()[4] for line in mdns] == ["4a1e2b5c-0d3f-4e5a-9b8c-7d6e5f4a3b2c.local",
                                                  "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0.LOCAL"]
    assert all(line.startswith("candidate:") for line in mdns)
    assert split_mdns_candidates("v=0\r\n") == ("v=0\r\n", [])


def test_h265_is_transcoded_to_h264_with_the_cameras_times_and_keyframes():
    """For browsers without an H.265 decoder: H.264 out, scaled to live.transcode_max_height, a keyframe
    where the camera has one, the camera's frame times."""
    from vms.live.transcode import H264Transcoder

    _sets, packets = _camera_packets(3 * FPS, codec_name="libx265", height=360)
    transcoder = H264Transcoder(StreamInfo("x", "hevc", b"", 480, 360), max_height=240)
    # Damaged packets before the first keyframe give nothing and break nothing.
    assert transcoder.add(LivePacket(0, 0, 0, True, b"\x00\x00\x01\x40" + bytes(range(256)) * 4)) == []
    assert transcoder.add(LivePacket(0, 0, 0, False, b"\xff" * 100)) == []
    step_ms = 1000 / FPS
    out = [o for i, p in enumerate(packets)
           for o in transcoder.add(LivePacket(round(i * step_ms), round(i * step_ms), 0, p.is_keyframe, bytes(p)))]
    assert len(out) == len(packets)
    assert [o.keyframe for o in out] == [p.is_keyframe for p in packets]
    assert transcoder.info is not None and transcoder.info.codec == "h264" and transcoder.info.height == 240
    remux = FragmentedMp4Stream(transcoder.info)
    assert remux.mime.startswith('video/mp4; codecs="avc1.')
    data = b"".join(remux.add(o) for o in out)
    remux.close()
    transcoder.close()
    codec, height, times, keys = _times(data)
    assert (codec, height) == ("h264", 240)
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(abs(s - 1 / FPS) < 0.002 for s in steps), steps[:10]
    assert [i for i, k in enumerate(keys) if k] == [0, 2 * FPS]


def test_transcode_slots_are_bounded():
    from vms.live.transcode import TranscodeSlots

    slots = TranscodeSlots(2)
    assert slots.try_take() and slots.try_take() and not slots.try_take()
    slots.give_back()
    assert slots.try_take() and not slots.try_take()
    assert not TranscodeSlots(0).try_take()
