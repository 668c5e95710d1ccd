"""G.711 audio (PCMA/PCMU, what most Hikvision and Dahua cameras send) is recorded as AAC: from a real
RTSP camera on both recorder paths, aligned with the video sample for sample across segment cuts
(late and early audio, a lost packet), kept by playback and export; `ingest.audio: drop` drops it."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from sqlalchemy import select

from tests.ingest_support import RunningWorker, ingest_settings, segments, wait_until
from vms.api.remux import find_segments, remux_range
from vms.db.models import CameraStatus
from vms.recording.fmp4 import playable_length, probe_segment
from vms.recording.index import IndexWriter
from vms.recording.recorder import StreamRecorder
from vms.recording.volumes import VolumeSet
from vms.simulate import Simulator

pytestmark = pytest.mark.slow  # real processes (simulator, vms serve, PostgreSQL): not for --fast

SID = "pingshan-town"
FPS = 15
RATE = 8000
AAC_FRAME = 1024  # samples per AAC packet
CLICKS_S = [0.25 + 0.5 * k for k in range(200)]  # a click every half second, none on a keyframe


def g711_clip(path: Path, seconds: int, codec: str = "pcm_alaw") -> Path:
    """H.264 (15 fps, a keyframe every second) and G.711 audio, silent but for a one-sample click at
    each CLICKS_S, in NUT, which keeps the 20 ms audio packets of RTP."""
    pcm = np.zeros(seconds * RATE, np.int16)
    for t in CLICKS_S:
        if t < seconds:
            pcm[round(t * RATE)] = 30000
    with av.open(str(path), "w", format="nut") as out:
        v = out.add_stream("libx264", rate=FPS, options={
            "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0:sliced-threads=0", "bf": "0"})
        v.width, v.height, v.pix_fmt = 160, 96, "yuv420p"
        a = out.add_stream(codec, rate=RATE, layout="mono")
        for i in range(seconds * FPS):
            img = np.full((96, 160, 3), (i * 7) % 255, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
            for s in range(i * RATE // FPS // 160 * 160, (i + 1) * RATE // FPS // 160 * 160, 160):
                frame = av.AudioFrame.from_ndarray(pcm[None, s:s + 160].copy(), format="s16", layout="mono")
                frame.sample_rate, frame.pts = RATE, s
                for p in a.encode(frame):
                    out.mux(p)
        for stream in (v, a):
            for p in stream.encode():
                out.mux(p)
    return path


def record_arrivals(clip: Path, db, settings, clock, audio_late_s: float, lost_audio_s: float | None = None,
                    keep_audio: bool = True, audio_until_s: float | None = None,
                    each_tick=None) -> StreamRecorder:
    """Feed the clip to a StreamRecorder as a camera's packets would arrive: the audio `audio_late_s`
    after the video of the same moment (negative: before it), the audio packet at `lost_audio_s` lost,
    none after `audio_until_s`. each_tick(seconds, recorder, index) runs every third of a second of
    video, after the recorder's periodic progress() (the camera session calls it every few seconds)."""
    index = IndexWriter(db, "t").start()
    rec = StreamRecorder(SID, VolumeSet.from_settings(settings), settings.tz, index, clock, segment_seconds=3,
                         keep_audio=keep_audio)
    with av.open(str(clip)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        rec.begin(video, audio)
        arrivals = []
        for n, pkt in enumerate(p for p in c.demux() if p.size):
            at = float(pkt.pts * pkt.time_base)
            is_audio = pkt.stream.type == "audio"
            if is_audio and lost_audio_s is not None and abs(at - lost_audio_s) < 0.01:
                continue
            if is_audio and audio_until_s is not None and at >= audio_until_s:
                continue
            arrivals.append((at + audio_late_s if is_audio else at, n, is_audio, pkt))
        arrivals.sort(key=lambda a: a[:2])
        frames = 0
        for _at, _n, is_audio, pkt in arrivals:
            if is_audio:
                rec.audio_packet(pkt)
            else:
                clock.advance(1 / FPS)
                rec.video_packet(pkt)
                frames += 1
                if each_tick is not None and frames % 5 == 0:
                    rec.progress()
                    each_tick(round(frames / FPS, 2), rec, index)
        rec.end("stream_ended")
    index.stop()
    return rec


def segment_tracks(path: Path) -> tuple[float, list[tuple[int, int]], av.audio.stream.AudioStream | None]:
    """(video length in s, [(pts, duration) of each audio packet, in samples], the audio stream)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        vpts = [p.pts for p in c.demux(vs) if p.size]
        video_s = float((max(vpts) - min(vpts)) * vs.time_base) + 1 / FPS
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return video_s, [], None
        aus = c.streams.audio[0]
        packets = [(p.pts, p.duration) for p in c.demux(aus) if p.size]
        return video_s, packets, aus


def assert_audio_follows_video(paths: list[Path], first_starts_with_video: bool) -> None:
    """Every segment has an AAC track (mono, 8 kHz) that covers its video within one AAC frame (128 ms,
    two video frames) at each end; packets follow each other without a hole or an overlap, within a
    segment and across each cut: every sample the camera sent is in exactly one segment."""
    carry = None  # samples of the last segment's audio after its video ended
    for i, path in enumerate(paths):
        video_s, packets, aus = segment_tracks(path)
        assert aus is not None, f"{path.name}: no audio track"
        ctx = aus.codec_context
        assert (ctx.name, ctx.sample_rate, ctx.channels) == ("aac", RATE, 1), path.name
        assert aus.time_base.denominator == RATE and aus.time_base.numerator == 1
        starts = [p for p, _d in packets]
        assert all(b - a == AAC_FRAME for a, b in zip(starts, starts[1:], strict=False)), (path.name, starts[:5])
        first = starts[0]
        end = starts[-1] + packets[-1][1]
        video = round(video_s * RATE)
        assert 0 <= first < AAC_FRAME, (path.name, first)
        if i == 0 and first_starts_with_video:
            assert first == 0, "the first segment's audio must start with its first frame"
        if carry is not None:
            assert abs(first - carry) <= 1, f"{path.name}: audio starts at {first}, {carry} expected (cut lost audio)"
        if i < len(paths) - 1:
            assert 0 <= end - video < AAC_FRAME, (path.name, end, video)
        carry = end - video
        # Decodable from its first packet on (a decoder gives whole frames: the last one of a
        # connection, shorter in the file, too).
        with av.open(str(path)) as c:
            assert sum(f.samples for f in c.decode(audio=0)) == len(packets) * AAC_FRAME


def decoded_audio(path: Path) -> tuple[np.ndarray, float, float]:
    """(samples, time of the first sample, video length) of a whole file, times from its first frame."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        vpts = [p.pts for p in c.demux(vs) if p.size]
        v0 = float(min(vpts) * vs.time_base)
        video_s = float((max(vpts) - min(vpts)) * vs.time_base) + 1 / FPS
    with av.open(str(path)) as c:
        frames = list(c.decode(audio=0))
        assert c.streams.audio[0].codec_context.name == "aac"
    first = float(frames[0].pts * frames[0].time_base) - v0
    return np.concatenate([f.to_ndarray()[0] for f in frames]), first, video_s


def clicks_at(samples: np.ndarray, first_s: float) -> list[float]:
    found, x, i = [], np.abs(samples), 0
    while i < len(x):
        if x[i] > 0.2:
            j = i + int(np.argmax(x[i:i + 400]))
            found.append(first_s + j / RATE)
            i = j + RATE // 4
        else:
            i += 1
    return found


def export_all(db, settings, tmp_path: Path) -> Path:
    with db.session() as s:
        sources = find_segments(s, VolumeSet.from_settings(settings), SID, 0, 2**62)
    out = tmp_path / "export.mp4"
    remux_range(sources, sources[0].start_ms, sources[-1].end_ms, out)
    return out


@pytest.mark.parametrize("audio_late_s", [0.3, -0.15], ids=["audio-late", "audio-early"])
def test_g711_becomes_aac_aligned_with_the_video_across_cuts(tmp_path, db, settings, clock, audio_late_s):
    clip = g711_clip(tmp_path / "cam.nut", seconds=16)
    rec = record_arrivals(clip, db, settings, clock, audio_late_s, lost_audio_s=7.0)
    assert rec.audio_status == "pcm_alaw->aac"
    vols = VolumeSet.from_settings(settings)
    rows = segments(db, SID)
    assert len(rows) >= 5 and all(r.state == "complete" and r.has_audio for r in rows)
    assert_audio_follows_video([vols.file_path(r.volume, r.path) for r in rows], first_starts_with_video=True)

    # Playback and export join the segments: every click once, where the camera put it (no encoder
    # delay, no priming, no shift at a cut or after the lost packet), and as much audio as video.
    samples, first_s, video_s = decoded_audio(export_all(db, settings, tmp_path))
    assert abs(len(samples) / RATE + first_s - video_s) <= 2 / FPS
    expected = [t for t in CLICKS_S if t < video_s - 0.05]
    found = clicks_at(samples, first_s)
    assert len(found) == len(expected), (found, expected)
    errors = [round(f - t, 4) for f, t in zip(found, expected, strict=True)]
    assert max(map(abs, errors)) <= 2 / RATE, errors


def test_a_segment_waits_for_its_last_audio_two_seconds_at_most(tmp_path, db, settings, clock):
    """A camera whose audio stops: the segment cut after it is complete (closed, fsynced, indexed) once
    the video has gone AUDIO_LATE_S past the cut, not at the next cut."""
    clip = g711_clip(tmp_path / "cam.nut", seconds=12)
    states: dict[float, list[str]] = {}
    on_disk: dict[float, float] = {}

    def note(seconds: float, rec, index) -> None:
        index.flush()
        states[seconds] = [r.state for r in segments(db, SID)]
        # What a kill -9 would leave of the growing segment: its complete fragments.
        path = rec._seg.file.path
        whole = tmp_path / "whole.mp4"
        whole.write_bytes(path.read_bytes()[:playable_length(path)])
        on_disk[seconds] = probe_segment(whole).duration_ms / 1000 if playable_length(path) else 0.0

    record_arrivals(clip, db, settings, clock, 0.3, audio_until_s=4.0, each_tick=note)
    # Cuts at 3, 6 and 9 s; the segment [3, 6) waits for audio that never comes, until 8 s.
    assert states[7.67] == ["complete", "growing", "growing"], states
    assert states[8.33] == ["complete", "complete", "growing"], states
    assert all(r.state == "complete" for r in segments(db, SID))
    # The video reaches the disk as it comes, though no audio comes with it (FFmpeg held it up to 10 s
    # waiting for audio to interleave with): at most a fragment and a frame behind.
    assert on_disk[8.33] >= 8.33 - 6 - 0.5 - 1 / FPS, on_disk
    assert on_disk[11.67] >= 11.67 - 9 - 0.5 - 1 / FPS, on_disk


def test_ingest_audio_drop_records_video_only(tmp_path, db, settings, clock):
    clip = g711_clip(tmp_path / "cam.nut", seconds=4, codec="pcm_mulaw")
    rec = record_arrivals(clip, db, settings, clock, 0.0, keep_audio=False)
    assert rec.audio_status == "dropped: pcm_mulaw"
    vols = VolumeSet.from_settings(settings)
    rows = segments(db, SID)
    assert rows and not any(r.has_audio for r in rows)
    for r in rows:
        with av.open(str(vols.file_path(r.volume, r.path))) as c:
            assert not c.streams.audio


@pytest.mark.parametrize(("codec", "native"), [("pcma", True), ("pcmu", False)],
                         ids=["pcma-native-copier", "pcmu-python-path"])
def test_rtsp_camera_with_g711_is_recorded_with_aac(tmp_path, db, codec, native):
    with Simulator(cameras=1, names=["cam"], width=320, height=240, fps=FPS, bitrate_kbps=300, gop=FPS,
                   audio=codec) as sim:
        with av.open(sim.urls["cam"], options={"rtsp_transport": "tcp"}) as c:
            sent = c.streams.audio[0].codec_context
            assert (sent.name, sent.sample_rate) == ({"pcma": "pcm_alaw", "pcmu": "pcm_mulaw"}[codec], RATE)
        settings = ingest_settings(tmp_path, segment_seconds=3, native_copy=native)
        with RunningWorker(settings, db, {SID: sim.urls["cam"]}):
            wait_until(lambda: sum(r.state == "complete" for r in segments(db, SID)) >= 5, 90,
                       "five complete segments")
    rows = [r for r in segments(db, SID) if r.state == "complete"]
    assert all(r.has_audio for r in rows)
    assert all(b.start_ms == a.end_ms for a, b in zip(rows, rows[1:], strict=False))
    vols = VolumeSet.from_settings(settings)
    # One connection: its segments' audio joins up at every cut. (Its first segment's audio may start a
    # few ms after the video: what the camera sent before the first keyframe came is not waited for.)
    assert_audio_follows_video([vols.file_path(r.volume, r.path) for r in rows], first_starts_with_video=False)
    with db.session() as s:
        status = s.scalars(select(CameraStatus).where(CameraStatus.station_id == SID)).one()
    assert status.audio == f"{sent.name}->aac"
    # Playback and export keep it: as much AAC as video, continuous.
    samples, first_s, video_s = decoded_audio(export_all(db, settings, tmp_path))
    assert first_s < 1 / FPS and abs(len(samples) / RATE + first_s - video_s) <= 2 / FPS
