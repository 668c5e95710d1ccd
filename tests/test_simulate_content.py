"""Simulated content: the station day matches its ground truth, clips are cached, files are converted."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from vms.analysis.features import mean_abs_diff, reduce_planes
from vms.core.settings import AnalysisSettings
from vms.simulate import Simulator
from vms.simulate.content import VideoFormat, pattern_clip, source_clip, station_day_clip
from vms.simulate.simulator import PATTERN_LOOP_SECONDS

FAST_OPEN = {"rtsp_transport": "tcp", "timeout": "5000000", "analyzeduration": "0", "probesize": "32"}
SMALL = VideoFormat(width=192, height=108, fps=10, bitrate_kbps=200, gop=10)


def decode_gray(path, fmt="h264"):
    with av.open(str(path), format=fmt) as c:
        return [f.to_ndarray(format="gray").astype(np.float32) for f in c.decode(video=0)]


def keyframe_flags(path):
    with av.open(str(path), format="h264") as c:
        return [p.is_keyframe for p in c.demux(video=0) if p.size]


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    cache = tmp_path_factory.mktemp("daycache")
    path, truth = station_day_clip(cache, SMALL, day_seconds=30)
    return path, truth, decode_gray(path)


def test_station_day_ground_truth_is_written_beside_the_clip(day):
    path, truth, frames = day
    assert json.loads(path.with_suffix(".json").read_text()) == truth
    assert truth["frames"] == len(frames) == 300 and truth["fps"] == 10
    order = [e["event"] for e in truth["events"] if not e["event"].startswith("person")]
    assert order == ["lights_on", "shutter_up", "shutter_down", "lights_off"]
    times = [e["t"] for e in truth["events"]]
    assert times == sorted(times) and 0 < times[0] and times[-1] < truth["day_seconds"]
    enters = sum(e["event"] == "person_enter" for e in truth["events"])
    assert enters == len(truth["person_episodes"]) >= 3


def test_station_day_pictures_match_the_ground_truth(day):
    _, truth, frames = day
    fps = truth["fps"]
    ev = {e["event"]: e for e in truth["events"] if not e["event"].startswith("person")}

    def at(t: float) -> np.ndarray:
        return frames[int(t * fps)]

    lights_on, lights_off = ev["lights_on"]["t"], ev["lights_off"]["t"]
    dark = [at(t).mean() for t in (0.5, lights_on - 0.5, lights_off + 0.5, truth["day_seconds"] - 0.5)]
    lit = [at(t).mean() for t in (lights_on + 0.5, (lights_on + lights_off) / 2, lights_off - 0.5)]
    assert max(dark) < 40 and min(lit) > 100, (dark, lit)

    # The shutter: the door area changes between closed-but-lit and fully up.
    h, w = frames[0].shape
    door = (slice(int(0.2 * h), int(0.7 * h)), slice(int(0.6 * w), int(0.8 * w)))
    up = ev["shutter_up"]
    shut, opened = at(up["t"] - 0.2)[door], at(up["t"] + up["duration"] + 0.2)[door]
    assert abs(opened.mean() - shut.mean()) > 30

    # People: frames with someone present differ from the empty shop; empty lit frames do not.
    empty = at(up["t"] + up["duration"] + 0.5)
    first = truth["person_episodes"][0]
    someone = at((first["enter"] + first["leave"]) / 2)
    later_empty = at(first["enter"] - 0.3)
    changed = (np.abs(someone - empty) > 30).mean()
    assert changed > 0.01 and (np.abs(later_empty - empty) > 30).mean() < 0.002, changed


@pytest.mark.rtsp  # serves it with the RTSP simulator
def test_served_station_day_carries_its_ground_truth(day, tmp_path):
    path, truth, _ = day
    with Simulator(cameras=1, width=SMALL.width, height=SMALL.height, fps=SMALL.fps,
                   bitrate_kbps=SMALL.bitrate_kbps, gop=SMALL.gop, content="station-day", day_seconds=30,
                   cache_dir=path.parent) as sim:
        assert sim.ground_truth == truth and sim.clip_path == path
        with av.open(sim.urls["cam01"], options=FAST_OPEN) as c:
            assert c.streams.video[0].codec_context.width == SMALL.width


def test_pattern_clip_is_whole_gops_cached_and_keyed_by_every_parameter(tmp_path):
    clip = pattern_clip(tmp_path, SMALL, seconds=1.5)
    flags = keyframe_flags(clip)
    assert len(flags) == 20 and [i for i, k in enumerate(flags) if k] == [0, 10]
    stamp = clip.stat().st_mtime_ns
    assert pattern_clip(tmp_path, SMALL, seconds=1.5) == clip and clip.stat().st_mtime_ns == stamp
    other = pattern_clip(tmp_path, VideoFormat(192, 108, 10, 300, 10), seconds=1.5)
    assert other != clip
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files left behind"


@pytest.mark.rtsp  # serves it with the RTSP simulator
def test_source_files_are_converted_to_a_loopable_raw_stream(tmp_path):
    # An MP4 holding H.264 (remuxed) and an MPEG-4 Part 2 file (re-encoded), both made here.
    mp4 = tmp_path / "clip.mp4"
    mpeg4 = tmp_path / "clip.avi"
    for path, codec in ((mp4, "libx264"), (mpeg4, "mpeg4")):
        with av.open(str(path), "w") as out:
            stream = out.add_stream(codec, rate=10)
            stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
            if codec == "libx264":
                stream.options = {"x264-params": "keyint=10:min-keyint=10:scenecut=0", "bf": "0"}
            for i in range(25):
                frame = av.VideoFrame.from_ndarray(
                    np.full((96 * 3 // 2, 160), 16 + 8 * i, np.uint8), format="yuv420p")
                frame.pts, frame.time_base = i, Fraction(1, 10)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    remuxed = source_clip(tmp_path / "cache", mp4, SMALL)
    assert remuxed.read_bytes()[:4] == b"\x00\x00\x00\x01", "Annex B start code"
    flags = keyframe_flags(remuxed)
    assert len(flags) == 25 and flags[0]
    reencoded = source_clip(tmp_path / "cache", mpeg4, SMALL)
    with av.open(str(reencoded), format="h264") as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 25 and (frames[0].width, frames[0].height) == (SMALL.width, SMALL.height)

    with Simulator(cameras=1, source=mp4, fps=10, cache_dir=tmp_path / "cache") as sim:
        with av.open(sim.urls["cam01"], options=FAST_OPEN) as c:
            assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (160, 96)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"width": 63}, "width must be an even number"),
    ({"fps": 0}, "fps must be from 1 to 60"),
    ({"content": "night"}, "content must be one of pattern, station-day"),
    ({"extra_mounts": ("vp9",)}, "unknown extra mount"),
    ({"cameras": 2, "names": ["a"]}, "1 names given for 2 cameras"),
    ({"cameras": 2, "names": ["a", "a"]}, "mount names repeat"),
    ({"cameras": 1, "names": ["a b"]}, "camera names must be"),
    ({"cameras": 0}, "nothing to serve"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Simulator(**kwargs)


def test_missing_source_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.h264 does not exist"):
        Simulator(source=tmp_path / "nope.h264", cache_dir=tmp_path).start()


def test_station_day_keyframes_of_a_still_scene_are_never_identical(day):
    """A real sensor's noise never repeats, so no two keyframes of a real camera decode to the same
    picture even when nothing in the room moves; the analysis calls identical samples `frozen`. The
    station day's noise once cycled through 4 fixed patterns: keyframes a multiple of 4 frames apart
    (every sample 20 or 60 s apart, at 15 fps) decoded bit for bit the same, and `vms serve` flagged
    7 of its 8 healthy simulated cameras frozen (issue 19)."""
    path, truth, _ = day
    fps = truth["fps"]
    moving = [(e["t"], e["t"] + e.get("duration", 0)) for e in truth["events"]]
    moving += [(ep["enter"], ep["leave"]) for ep in truth["person_episodes"]]
    lit = truth["lit_intervals"][0]

    def still(t: float) -> bool:
        return lit[0] + 0.5 < t < lit[1] - 0.5 and all(not a - 0.5 < t < b + 0.5 for a, b in moving)

    pictures = []
    with av.open(str(path), format="h264") as c:
        for i, frame in enumerate(c.decode(video=0)):
            if frame.key_frame and still(i / fps):
                y = frame.to_ndarray(format="yuv420p")[:frame.height]
                pictures.append((i / fps, reduce_planes(y, None, None, AnalysisSettings().analysis_width, None)))
    assert len(pictures) >= 8, "the clip has too few still keyframes to judge"
    limit = AnalysisSettings().frozen_max_mean_diff
    identical = [(a, b) for n, (a, pa) in enumerate(pictures) for b, pb in pictures[n + 1:]
                 if mean_abs_diff(pa, pb) <= limit]
    assert not identical, f"keyframes at these seconds decode identically: {identical[:5]}"


def test_looped_pattern_never_shows_the_same_keyframe_one_sample_apart(tmp_path):
    """The pattern clip loops, so its keyframes come back bit-identical one loop later. The analysis
    samples a keyframe every 20 s (while a change waits) or 60 s; with the old 4 s loop every such sample
    was the keyframe before it, and each healthy simulated camera of `vms serve` (content: pattern, as the
    tests run it) turned 故障 (frozen) a minute after it started (seen in CI). Along the looped stream the
    keyframe a sample interval later must decode to a different picture."""
    loop_seconds = PATTERN_LOOP_SECONDS  # the simulator's default loop, what vms serve runs
    fmt = VideoFormat(320, 240, 15, 300, 30)  # the simulator's GOP: a keyframe every 2 s
    clip = pattern_clip(tmp_path, fmt, loop_seconds)
    fps = fmt.fps
    pictures: dict[int, np.ndarray] = {}  # keyframe's frame number in the loop -> analysed picture
    frames = 0
    with av.open(str(clip), format="h264") as c:
        for i, frame in enumerate(c.decode(video=0)):
            frames += 1
            if frame.key_frame:
                y = frame.to_ndarray(format="yuv420p")[:frame.height]
                pictures[i] = reduce_planes(y, None, None, AnalysisSettings().analysis_width, None)
    assert len(pictures) >= 2
    limit = AnalysisSettings().frozen_max_mean_diff
    settings = AnalysisSettings()
    intervals = {settings.sample_interval_changing_seconds, settings.sample_interval_seconds,
                 2 * settings.sample_interval_changing_seconds, 2 * settings.sample_interval_seconds}
    same = []
    for at in pictures:
        for seconds in sorted(intervals):
            later = (at + round(seconds * fps)) % frames
            assert later in pictures, f"{seconds} s after a keyframe is not a keyframe: the loop is not whole GOPs"
            if mean_abs_diff(pictures[at], pictures[later]) <= limit:
                same.append((at / fps, seconds))
    assert not same, f"(loop second, sample interval) pairs that show the same picture: {same[:5]}"
