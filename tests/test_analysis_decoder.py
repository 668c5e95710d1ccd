"""The analysis's keyframe decoder: one decoder per codec shared by a worker's cameras gives each
camera exactly the picture a decoder of its own would, whatever the others sent before."""

from __future__ import annotations

import threading
from fractions import Fraction

import av
import numpy as np
import pytest

from vms.analysis.observer import KeyframeDecoder, frame_planes, shared_context
from vms.recording.h26x import parameter_sets_annexb


def _keyframes(encoder: str, width: int, height: int, seed: int, count: int = 3, options=None) -> list[bytes]:
    """`count` Annex B keyframes of distinct noise pictures (an intra-only stream)."""
    ctx = av.CodecContext.create(encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, 15)
    ctx.gop_size = 1
    ctx.options = options or {}
    rng = np.random.default_rng(seed)
    packets = []
    for i in range(count):
        img = rng.integers(0, 255, (height, width, 3), np.uint8)
        # Blocks rather than pixel noise: a picture the encoder codes with real structure.
        img = np.repeat(np.repeat(img[::8, ::8], 8, 0), 8, 1)[:height, :width]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    keys = [bytes(p) for p in packets if p.is_keyframe]
    assert len(keys) == count
    return keys


def _nal_units(data: bytes, codec: str) -> list[tuple[int, bytes]]:
    """Every NAL unit of Annex B data, with its type (vms.recording.h26x reads only the head)."""
    units, i = [], data.find(b"\x00\x00\x01")
    while i >= 0:
        j = data.find(b"\x00\x00\x01", i + 3)
        nal = data[i + 3:j if j > 0 else len(data)]
        if j > 0:
            nal = nal.rstrip(b"\x00")  # the next start code's leading zero
        units.append((nal[0] & 0x1F if codec == "h264" else (nal[0] >> 1) & 0x3F, nal))
        i = j
    return units


def _without_parameter_sets(data: bytes, codec: str) -> bytes:
    """The keyframe with its parameter sets taken out: they then come only from the connection."""
    kept = [nal for kind, nal in _nal_units(data, codec) if kind not in ((7, 8) if codec == "h264" else (32, 33, 34))]
    assert len(kept) < len(list(_nal_units(data, codec))), "the encoder put parameter sets in the keyframe"
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in kept)


class Camera:
    def __init__(self, codec: str, encoder: str, width: int, height: int, seed: int, options=None) -> None:
        keys = _keyframes(encoder, width, height, seed, options=options)
        self.codec = codec
        self.extradata = parameter_sets_annexb(keys[0], codec)
        self.keys = [_without_parameter_sets(k, codec) for k in keys]
        self.decoder = KeyframeDecoder(codec, self.extradata)
        self.expected = [self._alone(k) for k in self.keys]

    def _alone(self, key: bytes) -> tuple[np.ndarray, ...]:
        """The picture a decoder of its own (the connection's extradata, the analysis's settings) gives."""
        ctx = KeyframeDecoder(self.codec, self.extradata)._context()
        frames = ctx.decode(av.Packet(key)) or ctx.decode(None)
        return tuple(np.array(p) for p in frame_planes(frames[-1]))


def _same(frame, expected) -> bool:
    return frame is not None and all(np.array_equal(a, b) for a, b in zip(frame_planes(frame), expected, strict=True))


@pytest.fixture(scope="module")
def cameras() -> list[Camera]:
    return [
        Camera("h264", "libx264", 320, 180, 1),
        Camera("h264", "libx264", 256, 144, 2, {"profile": "baseline"}),
        Camera("h264", "libx264", 320, 180, 3, {"x264-params": "cabac=0"}),
        Camera("hevc", "libx265", 320, 192, 4, {"x265-params": "log-level=none"}),
        Camera("hevc", "libx265", 256, 128, 5, {"x265-params": "log-level=none"}),
    ]


def test_cameras_taking_turns_on_the_shared_decoder_get_the_pictures_a_decoder_of_their_own_gives(cameras) -> None:
    before = {codec: shared_context(codec).samples for codec in ("h264", "hevc")}
    assert all(cam.decoder.shared for cam in cameras)
    for round_ in range(2):
        for i in range(3):
            for cam in cameras:
                # Each keyframe lacks its parameter sets, and the camera before it (another size, profile or
                # entropy coder) left its own in the decoder: only the connection's, put in front, decode it.
                assert _same(cam.decoder.decode(cam.keys[i]), cam.expected[i]), (cam.codec, round_, i)
    # Every one of them went through the shared decoder (none fell back to a decoder of its own).
    assert shared_context("h264").samples - before["h264"] == 2 * 3 * 3
    assert shared_context("hevc").samples - before["hevc"] == 2 * 3 * 2


def test_a_keyframe_the_shared_decoder_cannot_decode_is_left_to_its_own_and_leaves_nothing_behind(cameras) -> None:
    a, b = cameras[0], cameras[1]
    broken = a.keys[0][: len(a.keys[0]) // 8]  # a torn keyframe
    alone = av.CodecContext.create("h264", "r")
    alone.extradata = a.extradata
    try:
        expected = alone.decode(av.Packet(broken)) or alone.decode(None)
    except av.error.FFmpegError:
        expected = None
    try:
        got = a.decoder.decode(broken)
    except av.error.FFmpegError:
        got = None
    # The same answer as a decoder of its own: FFmpeg conceals a torn picture, or gives none.
    assert (got is None) == (not expected)
    for i in range(3):
        assert _same(b.decoder.decode(b.keys[i]), b.expected[i])
        assert _same(a.decoder.decode(a.keys[i]), a.expected[i])
    # Garbage that is no keyframe at all: no picture, as from a decoder of its own, and the next is right.
    try:
        nothing = a.decoder.decode(b"\x00\x00\x00\x01\x65" + bytes(range(256)) * 4)
    except av.error.FFmpegError:
        nothing = None
    assert nothing is None
    assert _same(b.decoder.decode(b.keys[2]), b.expected[2])


def _avcc(annex_b: bytes) -> bytes:
    """The same SPS and PPS in MP4 form (avcC), as an MP4 or FLV source gives them."""
    sps = [nal for kind, nal in _nal_units(annex_b, "h264") if kind == 7][0]
    pps = [nal for kind, nal in _nal_units(annex_b, "h264") if kind == 8][0]
    return (bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps
            + bytes([1]) + len(pps).to_bytes(2, "big") + pps)


def test_connections_without_all_their_parameter_sets_in_annex_b_decode_on_a_decoder_of_their_own(cameras) -> None:
    cam = cameras[0]
    sps_only = b"".join(b"\x00\x00\x00\x01" + nal for kind, nal in _nal_units(cam.extradata, "h264") if kind == 7)
    for extradata, key in ((None, cam.extradata + cam.keys[1]),  # parameter sets in-band only
                           (sps_only, cam.extradata + cam.keys[1]),  # the PPS in-band only
                           (_avcc(cam.extradata), None)):  # MP4 form: length-prefixed keyframes
        decoder = KeyframeDecoder("h264", extradata)
        assert not decoder.shared
        if key is None:
            key = b"".join(len(nal).to_bytes(4, "big") + nal for _kind, nal in _nal_units(cam.keys[1], "h264"))
        before = shared_context("h264").samples
        assert _same(decoder.decode(key), cam.expected[1])
        assert shared_context("h264").samples == before


def test_cameras_sampling_at_the_same_moment_each_get_their_own_picture(cameras) -> None:
    failures: list[str] = []

    def sample(cam: Camera, n: int) -> None:
        for j in range(6):
            i = (n + j) % 3
            if not _same(cam.decoder.decode(cam.keys[i]), cam.expected[i]):
                failures.append(f"{cam.codec} {n} {i}")

    threads = [threading.Thread(target=sample, args=(cam, n)) for n in range(3) for cam in cameras]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
