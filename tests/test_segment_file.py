"""The segment writer's file: copied without an encoder, in fragments short enough to bound memory and loss."""

from __future__ import annotations

import struct

import av
import pytest

from tests.ingest_support import FPS, TICKS, make_clip
from vms.recording.fmp4 import _boxes, playable_length
from vms.recording.segment_file import FRAGMENT_SECONDS, SegmentFile


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.ts"
    make_clip(path, seconds=4)  # a keyframe every second
    return path


def fragment_sizes(path) -> list[int]:
    """Samples per fragment (moof), in file order."""
    data = path.read_bytes()
    counts = []
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind != b"moof":
            continue
        samples = 0
        for k2, s2, e2 in _boxes(data, start, end):
            if k2 == b"traf":
                samples += sum(struct.unpack(">I", data[s3 + 4:s3 + 8])[0]
                               for k3, s3, _e3 in _boxes(data, s2, e2) if k3 == b"trun")
        counts.append(samples)
    return counts


def test_segment_is_copied_without_an_encoder_in_short_fragments(tmp_path, clip):
    with av.open(str(clip)) as c:
        video = c.streams.video[0]
        seg = SegmentFile(tmp_path / "seg.mp4", video)
        # PyAV's default output stream for a template is the codec's encoder (libx264), opened at
        # the first mux: never for a copy.
        assert not seg._video.codec_context.is_encoder
        frames = 0
        for i, pkt in enumerate(p for p in c.demux(video) if p.size):
            seg.write_video(pkt, i * TICKS, i * TICKS)
            frames += 1
        size = seg.close()
    assert playable_length(tmp_path / "seg.mp4") == size
    counts = fragment_sizes(tmp_path / "seg.mp4")
    assert sum(counts) == frames
    # The GOP is 1 s: fragments end every FRAGMENT_SECONDS too, holding at most that plus the frame
    # that ends them.
    assert max(counts) <= FRAGMENT_SECONDS * FPS + 1
    assert len(counts) >= frames / (FRAGMENT_SECONDS * FPS + 1)
    with av.open(str(tmp_path / "seg.mp4")) as back:
        assert sum(1 for p in back.demux(back.streams.video[0]) if p.size) == frames


@pytest.fixture(scope="module")
def clip_with_b_frames_and_audio(tmp_path_factory):
    """H.264 with B-frames (a reorder delay an opened decoder might report) and an AAC track."""
    import numpy as np

    path = tmp_path_factory.mktemp("clip") / "clip-b-aac.mp4"  # raw AAC with its config, as RTSP gives it
    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=FPS, options={"bf": "2", "g": str(FPS)})
        v.width, v.height, v.pix_fmt = 160, 96, "yuv420p"
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(3 * FPS):
            img = np.full((96, 160, 3), (i * 7) % 255, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        samples = np.zeros((1, 1024), np.float32)
        for i in range(45):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for p in a.encode(frame):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    return path


@pytest.mark.parametrize("which", ["video only", "B-frames and AAC"])
def test_segment_header_is_written_without_opening_a_decoder(tmp_path, clip, clip_with_b_frames_and_audio,
                                                             monkeypatch, which):
    # PyAV opens each output stream's codec context before the first mux: for a copy, a decoder that
    # never decodes (~0.9 MB per camera). The native module writes the header without it; the file
    # is the same as the one PyAV writes.
    from vms.recording import segment_file

    source = clip if which == "video only" else clip_with_b_frames_and_audio
    assert segment_file.write_header is not None, "native module not built (scripts/build_native.py)"
    files = {}
    for name, writer in (("native", segment_file.write_header), ("pyav", None)):
        monkeypatch.setattr(segment_file, "write_header", writer)
        with av.open(str(source)) as c:
            video = c.streams.video[0]
            audio = c.streams.audio[0] if c.streams.audio else None
            seg = SegmentFile(tmp_path / f"{name}.mp4", video, audio)
            if writer is not None:
                # The header (ftyp + empty moov) is on disk before any packet, and no codec is open.
                assert (tmp_path / f"{name}.mp4").read_bytes()[4:8] == b"ftyp"
                assert not seg._video.codec_context.is_open
            for pkt in c.demux():
                if pkt.size == 0 or pkt.dts is None:
                    continue
                if pkt.stream.type == "video":
                    seg.write_video(pkt, pkt.dts, pkt.pts)
                else:
                    seg.write_audio(pkt, pkt.dts, pkt.pts)
            if writer is None:
                assert seg._video.codec_context.is_open
            seg.close()
        files[name] = (tmp_path / f"{name}.mp4").read_bytes()
    assert files["native"] == files["pyav"]
    if audio is not None:
        with av.open(str(tmp_path / "native.mp4")) as back:
            assert len(back.streams.audio) == 1 and back.streams.video[0].codec_context.has_b_frames


def test_a_fragment_whose_moof_size_is_not_yet_patched_is_not_playable(tmp_path, clip):
    # With AVIO_FLAG_DIRECT the muxer's placeholder box sizes reach the disk before it seeks back to
    # patch them: a reader (or a kill -9) can meet a moof of size 0, which MP4 reads as "to the end
    # of the file". The file is playable up to the fragment before it.
    with av.open(str(clip)) as c:
        video = c.streams.video[0]
        seg = SegmentFile(tmp_path / "seg.mp4", video)
        for i, pkt in enumerate(p for p in c.demux(video) if p.size):
            seg.write_video(pkt, i * TICKS, i * TICKS)
        size = seg.close()
    data = (tmp_path / "seg.mp4").read_bytes()
    last_moof = data.rindex(b"moof") - 4
    (tmp_path / "torn.mp4").write_bytes(data[:last_moof] + b"\0\0\0\0moof" + data[last_moof + 8:])
    assert playable_length(tmp_path / "seg.mp4") == size
    assert playable_length(tmp_path / "torn.mp4") == last_moof
