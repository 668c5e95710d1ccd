"""H.265 is written with the `hvc1` sample entry (Apple's players and Safari refuse `hev1`) and its
parameter sets in the hvcC box: segments (both header paths), playback/export, and the MSE live view."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import av
import pytest

from tests.ingest_support import RunningWorker, ingest_settings, segments, wait_until
from vms.api.remux import find_segments, remux_range
from vms.live.h264 import nal_units
from vms.live.mse import FragmentedMp4Stream
from vms.live.protocol import LivePacket, StreamInfo
from vms.recording import segment_file
from vms.recording.volumes import VolumeSet
from vms.simulate import Simulator

pytestmark = pytest.mark.slow  # real processes (simulator, vms serve, PostgreSQL): not for --fast

SID = "andun-town"
HEVC_PARAMETER_SETS = {32, 33, 34}  # VPS, SPS, PPS


def _boxes(data: bytes, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        yield kind, pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int]:
    return next((s, e) for k, s, e in _boxes(data, start, end) if k == kind)


def video_sample_entry(data: bytes) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """The video track's sample entry type (from moov/trak/mdia/minf/stbl/stsd) and its hvcC arrays:
    NAL type -> (array_completeness, number of NAL units)."""
    moov = _child(data, 0, len(data), b"moov")
    for kind, s, e in _boxes(data, *moov):
        if kind != b"trak":
            continue
        mdia = _child(data, s, e, b"mdia")
        hdlr = _child(data, *mdia, b"hdlr")
        if data[hdlr[0] + 8:hdlr[0] + 12] != b"vide":
            continue
        stbl = _child(data, *_child(data, *mdia, b"minf"), b"stbl")
        stsd = _child(data, *stbl, b"stsd")
        entry_size, entry = struct.unpack(">I4s", data[stsd[0] + 8:stsd[0] + 16])
        entry_start = stsd[0] + 8
        arrays: dict[int, tuple[int, int]] = {}
        # A VisualSampleEntry's boxes start 8 + 78 bytes in.
        for k, cs, _ce in _boxes(data, entry_start + 86, entry_start + entry_size):
            if k == b"hvcC":
                pos = cs + 23  # after the 22 bytes of the configuration and numOfArrays
                for _ in range(data[cs + 22]):
                    head, count = data[pos], struct.unpack(">H", data[pos + 1:pos + 3])[0]
                    arrays[head & 0x3F] = (head >> 7, count)
                    pos += 3
                    for _n in range(count):
                        pos += 2 + struct.unpack(">H", data[pos:pos + 2])[0]
        return entry, arrays
    raise AssertionError("no video track")


def assert_hvc1_and_decodes(path: Path, frames: int | None = None) -> None:
    entry, arrays = video_sample_entry(path.read_bytes())
    assert entry == b"hvc1", f"{path.name}: sample entry {entry!r}"
    # hvc1: every parameter set in the hvcC box (array_completeness 1), none left in the samples.
    assert {t: arrays.get(t, (0, 0))[0] for t in HEVC_PARAMETER_SETS} == dict.fromkeys(HEVC_PARAMETER_SETS, 1)
    assert all(arrays[t][1] >= 1 for t in HEVC_PARAMETER_SETS)
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == "hevc" and vs.codec_context.codec_tag == "hvc1"
        for pkt in c.demux(vs):
            data, pos = bytes(pkt), 0
            while pos + 4 <= len(data):
                size = struct.unpack(">I", data[pos:pos + 4])[0]
                assert (data[pos + 4] >> 1) & 0x3F not in HEVC_PARAMETER_SETS, "a parameter set in a sample"
                pos += 4 + size
    with av.open(str(path)) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    assert decoded > 0 and (frames is None or decoded == frames), (decoded, frames)


@pytest.fixture(scope="module")
def sim():
    with Simulator(cameras=0, width=320, height=240, fps=15, bitrate_kbps=300, gop=15, extra_mounts=("h265",)) as s:
        yield s


@pytest.mark.parametrize("header", ["native write_header", "PyAV's header"])
def test_h265_segments_and_exports_use_hvc1(sim, tmp_path, db, monkeypatch, header):
    if header == "PyAV's header":
        monkeypatch.setattr(segment_file, "write_header", None)
    settings = ingest_settings(tmp_path, segment_seconds=3)
    with RunningWorker(settings, db, {SID: sim.urls["h265"]}):
        wait_until(lambda: sum(r.state == "complete" for r in segments(db, SID)) >= 2, 60, "two complete segments")
    vols = VolumeSet.from_settings(settings)
    rows = [r for r in segments(db, SID) if r.state == "complete"]
    for row in rows:
        assert row.codec == "hevc"
        assert_hvc1_and_decodes(vols.file_path(row.volume, row.path), row.frames)
    with db.session() as s:
        sources = find_segments(s, vols, SID, 0, 2**62)
    out = tmp_path / "export.mp4"
    remux_range(sources, rows[0].start_ms, rows[-1].end_ms, out)
    assert_hvc1_and_decodes(out, sum(r.frames for r in rows))


def _clip_packets(sim, codec: str) -> tuple[bytes, list[av.Packet]]:
    path = next(p for p in sim.cache_dir.glob(f"pattern-320x240-*.{'h265' if codec == 'hevc' else 'h264'}"))
    with av.open(str(path), format=codec) as c:
        vs = c.streams.video[0]
        return vs.codec_context.extradata or b"", [p for p in c.demux(vs) if p.size][:45]


@pytest.mark.parametrize("sdp_parameter_sets", [True, False], ids=["sets-in-sdp", "sets-in-band-only"])
def test_h265_live_view_over_mse_uses_hvc1(sim, tmp_path, sdp_parameter_sets):
    extradata, packets = _clip_packets(sim, "hevc")
    assert extradata
    mse = FragmentedMp4Stream(StreamInfo("x", "hevc", extradata if sdp_parameter_sets else b"", 320, 240))
    data = b"".join(mse.add(LivePacket(i * 66, i * 66, 0, p.is_keyframe, bytes(p))) for i, p in enumerate(packets))
    mse.close()
    out = tmp_path / "live.mp4"
    out.write_bytes(data)
    assert_hvc1_and_decodes(out, len(packets) - 1)  # the last fragment is not flushed until the next frame


def test_h264_live_view_over_mse_carries_the_cameras_parameter_sets(sim, tmp_path):
    """The MSE stream is made from the camera's parameters, as segments are: its avcC box holds the
    camera's SPS (it held that of an x264 encoder PyAV opened for every viewer, and players relied on
    the in-band copies)."""
    extradata, packets = _clip_packets(sim, "h264")
    sps = next(u for u in nal_units(extradata) if u[0] & 0x1F == 7)
    mse = FragmentedMp4Stream(StreamInfo("x", "h264", extradata, 320, 240))
    data = b"".join(mse.add(LivePacket(i * 66, i * 66, 0, p.is_keyframe, bytes(p))) for i, p in enumerate(packets))
    mse.close()
    avcc = data.index(b"avcC") + 4
    assert data[avcc + 5] & 0x1F == 1  # one SPS
    length = struct.unpack(">H", data[avcc + 6:avcc + 8])[0]
    assert data[avcc + 8:avcc + 8 + length] == sps
    with av.open(io.BytesIO(data)) as c:
        assert sum(1 for _ in c.decode(video=0)) == len(packets) - 1
