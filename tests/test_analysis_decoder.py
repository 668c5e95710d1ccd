"""The analysis's keyframe decoder: one H.264 decoder shared by a worker's cameras gives each camera
exactly the picture a decoder of its own would, whatever the others sent before; whatever it cannot
vouch for goes to a decoder of its own."""

from __future__ import annotations

import threading
from fractions import Fraction

import av
import numpy as np
import pytest

from vms.analysis.observer import KeyframeDecoder, frame_planes, shared_context
from vms.recording.h26x import parameter_sets_annexb


def _keyframes(encoder: str, width: int, height: int, seed: int, count: int = 3, options=None,
               gop: int = 1) -> list[bytes]:
    """`count` Annex B keyframes of distinct noise pictures (gop 1: an intra-only stream)."""
    ctx = av.CodecContext.create(encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, 15)
    ctx.gop_size = gop
    ctx.options = options or {}
    rng = np.random.default_rng(seed)
    packets = []
    for i in range(count * gop):
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
    def __init__(self, codec: str, encoder: str, width: int, height: int, seed: int, options=None,
                 gop: int = 1) -> None:
        keys = _keyframes(encoder, width, height, seed, options=options, gop=gop)
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
        Camera("h264", "libx264", 320, 180, 3, {"x264-params": "cabac=0:sps-id=1"}),
        # B-frames: the decoder holds the keyframe back until it is drained (and must then be flushed).
        Camera("h264", "libx264", 320, 180, 4,
               {"x264-params": "bframes=2:b-pyramid=0:keyint=5:min-keyint=5:scenecut=0"}, gop=5),
    ]


@pytest.fixture(scope="module")
def hevc_cameras() -> list[Camera]:
    return [Camera("hevc", "libx265", 320, 192, 5, {"x265-params": "log-level=none"}),
            Camera("hevc", "libx265", 256, 128, 6, {"x265-params": "log-level=none"})]


def test_cameras_taking_turns_on_the_shared_decoder_get_the_pictures_a_decoder_of_their_own_gives(cameras) -> None:
    before = shared_context("h264").samples
    assert all(cam.decoder.shared for cam in cameras)
    for round_ in range(2):
        for i in range(3):
            for cam in cameras:
                # Each keyframe lacks its parameter sets, and the camera before it (another size, profile,
                # entropy coder or parameter set id) left its own in the decoder: only the connection's,
                # put in front, decode it.
                assert _same(cam.decoder.decode(cam.keys[i]), cam.expected[i]), (cam.codec, round_, i)
    # Every one of them went through the shared decoder (none fell back to a decoder of its own).
    assert shared_context("h264").samples - before == 2 * 3 * len(cameras)


def test_h265_keyframes_are_decoded_on_a_decoder_of_their_own(cameras, hevc_cameras) -> None:
    # FFmpeg's H.265 decoder leaves the undecodable part of a torn picture as its buffer was: a shared
    # decoder's pooled buffer would show another camera's picture there.
    before = shared_context("h264").samples, shared_context("hevc").samples
    for cam in hevc_cameras:
        assert not cam.decoder.shared
        for i in range(3):
            assert _same(cam.decoder.decode(cam.keys[i]), cam.expected[i])
        assert _same(cameras[0].decoder.decode(cameras[0].keys[0]), cameras[0].expected[0])
    assert shared_context("hevc").samples == before[1]
    assert shared_context("h264").samples == before[0] + len(hevc_cameras)


def _alone_or_none(cam: Camera, key: bytes):
    try:
        return cam._alone(key)
    except (av.error.FFmpegError, IndexError):
        return None


def test_torn_keyframes_give_what_a_decoder_of_their_own_gives_and_leave_nothing_behind(cameras) -> None:
    a, b = cameras[0], cameras[1]
    for cut in (2, 3, 8):
        torn = a.keys[0][: len(a.keys[0]) // cut]
        expected = _alone_or_none(a, torn)
        try:
            got = a.decoder.decode(torn)
        except av.error.FFmpegError:
            got = None
        # FFmpeg conceals the missing part of an H.264 picture from the part it has: the same pixels as a
        # decoder of its own, not the last camera's picture.
        assert (got is None) == (expected is None) and (got is None or _same(got, expected)), cut
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


def test_a_shared_decoder_that_fails_is_replaced_and_the_sample_decoded_on_its_own(cameras, monkeypatch) -> None:
    cam = cameras[0]
    slot = shared_context("h264")
    cam.decoder.decode(cam.keys[0])
    assert slot.ctx is not None

    class Broken:
        def decode(self, packet):
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

        def flush_buffers(self):
            raise AssertionError("not reached")

    monkeypatch.setattr(slot, "ctx", Broken())
    before = slot.samples
    assert _same(cam.decoder.decode(cam.keys[1]), cam.expected[1])  # from a decoder of its own
    assert slot.ctx is None and slot.samples == before  # the broken one is gone
    assert _same(cam.decoder.decode(cam.keys[2]), cam.expected[2])
    assert slot.ctx is not None and slot.samples == before + 1  # a new shared one took over


def test_a_sample_that_finds_the_shared_decoder_busy_does_not_wait_for_it(cameras) -> None:
    cam = cameras[1]
    slot = shared_context("h264")
    before = slot.samples
    with slot.lock:  # another camera's sample, as many cameras connect at once
        assert _same(cam.decoder.decode(cam.keys[0]), cam.expected[0])
    assert slot.samples == before
    assert _same(cam.decoder.decode(cam.keys[0]), cam.expected[0])
    assert slot.samples == before + 1


def test_a_keyframe_that_refers_to_parameter_sets_its_camera_never_gave_is_decoded_on_its_own(cameras) -> None:
    # The connection's parameter sets have id 0; its keyframes refer to id 1 (a camera reconfigured after
    # its SDP), and the camera before it on the shared decoder left an SPS and a PPS of id 1 there.
    other = cameras[2]  # sps-id=1
    assert _same(other.decoder.decode(other.keys[0]), other.expected[0])
    odd = Camera("h264", "libx264", 320, 180, 7, {"x264-params": "sps-id=1"})
    connection = parameter_sets_annexb(_keyframes("libx264", 320, 180, 7)[0], "h264")  # ids 0
    decoder = KeyframeDecoder("h264", connection)
    assert decoder.shared
    before = shared_context("h264").samples
    alone = KeyframeDecoder("h264", connection)._context()
    try:
        expected = alone.decode(av.Packet(odd.keys[0])) or alone.decode(None)
    except av.error.FFmpegError:
        expected = []
    try:
        got = decoder.decode(odd.keys[0])
    except av.error.FFmpegError:
        got = None
    assert not expected and got is None  # no picture, as a decoder of its own: not the other camera's
    assert shared_context("h264").samples == before


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


def test_both_codecs_are_decoded_without_the_loop_filter(cameras, hevc_cameras) -> None:
    # Deblocking is invisible at the analysis's 160 pixels and costs ~13% of a decode, shared or not.
    for cam in (cameras[0], hevc_cameras[0]):
        pictures = {}
        for skip in ("all", "default"):
            ctx = av.CodecContext.create(cam.codec, "r")
            ctx.extradata = cam.extradata
            ctx.options = {"skip_loop_filter": skip}
            ctx.open()
            frames = ctx.decode(av.Packet(cam.keys[0])) or ctx.decode(None)
            pictures[skip] = tuple(np.array(p) for p in frame_planes(frames[-1]))
        assert not _same_planes(pictures["all"], pictures["default"]), cam.codec  # the filter shows here
        assert _same(cam.decoder.decode(cam.keys[0]), pictures["all"]), cam.codec


def _same_planes(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
