"""Playback of an H.265 camera's footage for a browser without an H.265 decoder (Chromium on Linux):
`"h264": true` in the playback request gives an H.264 file transcoded on the server, with the same frame
times (so the spans of the answer still map it to wall time), at most api.playback_max_transcodes at
once, and at most api.playback_transcode_max_seconds of footage per request."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import av
import pytest
from test_api_helpers import CLIP_FPS, add_segments, login, make_clip

from vms.api.playback_transcode import playback_transcode_slots, transcode_to_h264
from vms.api.remux import SourceSegment, remux_range
from vms.live.transcode import TranscodeSlots
from vms.recording.volumes import VolumeSet

SID = "pingshan-town"
H264_SID = "pingshan-v01"
FRAME_S = 1 / CLIP_FPS


@pytest.fixture(scope="module")
def hevc_clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("hevc-clip") / "hevc.mp4", codec="hevc")


@pytest.fixture(scope="module")
def h264_clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("h264-clip") / "h264.mp4")


def _video(path_or_bytes) -> dict:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    with av.open(src) as c:
        vs = c.streams.video[0]
        out = {"codec": vs.codec_context.name, "width": vs.codec_context.width, "height": vs.codec_context.height,
               "kinds": [s.type for s in c.streams], "times": [], "keys": []}
        for f in c.decode(vs):
            out["times"].append(float(f.time))
            if f.key_frame:
                out["keys"].append(float(f.time))
        out["duration"] = float(c.duration / 1e6) if c.duration else None
    return out


def test_transcode_keeps_every_frame_time_keyframe_and_the_audio(hevc_clip, tmp_path):
    remuxed = tmp_path / "remuxed.mp4"
    result = remux_range([SourceSegment(1, hevc_clip, 0, 10_000, "complete")], 2_500, 7_000, remuxed)
    source = _video(remuxed)
    assert source["codec"] == "hevc"
    out = tmp_path / "h264.mp4"
    stats = transcode_to_h264(remuxed, out, max_height=720)
    got = _video(out)
    assert got["codec"] == "h264" and got["kinds"] == ["video", "audio"]
    assert (got["width"], got["height"]) == (160, 120)  # not scaled up
    assert len(got["times"]) == len(source["times"]) == stats.frames
    assert max(abs(a - b) for a, b in zip(got["times"], source["times"], strict=True)) < FRAME_S / 2
    assert got["keys"] == source["keys"]  # seek points where the camera had them
    assert abs(got["duration"] - result.duration_ms / 1000) <= FRAME_S
    assert stats.cpu_s > 0


def test_transcode_scales_down_to_the_max_height(hevc_clip, tmp_path):
    out = tmp_path / "small.mp4"
    transcode_to_h264(hevc_clip, out, max_height=64)
    got = _video(out)
    assert got["codec"] == "h264" and got["height"] == 64 and got["width"] == 84  # even, aspect kept


def test_transcode_slots_are_bounded_across_threads():
    slots = TranscodeSlots(2)
    barrier = threading.Barrier(8)
    taken: list[bool] = []

    def take() -> None:
        barrier.wait()
        taken.append(slots.try_take())

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == [False] * 6 + [True] * 2 and slots.active == 2
    slots.give_back()
    assert slots.try_take() and not slots.try_take()


def test_h264_playback_of_h265_footage_over_the_api(api, db, clock, settings, hevc_clip, h264_clip):
    now = clock.now_ms()
    t0 = now - 600_000
    vols = VolumeSet.from_settings(settings)
    add_segments(db, vols, hevc_clip, SID, t0, 3, settings.tz, gap_after={0: 5_000}, codec="hevc")
    add_segments(db, vols, h264_clip, H264_SID, t0, 2, settings.tz)
    op = login(api, "op")
    api.cookies.clear()
    body = {"start": str(t0 + 2_500), "end": str(t0 + 24_000), "reason": "投诉核查 2026-002"}

    plain = api.post(f"/api/stations/{SID}/playback", headers=op, json=body)
    assert plain.status_code == 201, plain.text
    plain = plain.json()
    assert plain["codec"] == "hevc" and plain["source_codec"] == "hevc" and not plain["transcoded"]

    r = api.post(f"/api/stations/{SID}/playback", headers=op, json={**body, "h264": True})
    assert r.status_code == 201, r.text
    pb = r.json()
    assert pb["codec"] == "h264" and pb["source_codec"] == "hevc" and pb["transcoded"]
    # The same footage and the same wall-time mapping as the file it was made from.
    for key in ("first_ms", "last_ms", "duration_ms", "spans"):
        assert pb[key] == plain[key], key
    assert len(pb["spans"]) == 2
    got = _video(api.get(pb["url"], headers=op).content)
    source = _video(api.get(plain["url"], headers=op).content)
    assert got["codec"] == "h264" and got["kinds"] == ["video", "audio"]
    assert len(got["times"]) == len(source["times"])
    assert max(abs(a - b) for a, b in zip(got["times"], source["times"], strict=True)) < FRAME_S / 2
    assert abs(got["duration"] - pb["duration_ms"] / 1000) <= FRAME_S
    part = api.get(pb["url"], headers={**op, "Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100

    # An H.264 camera's footage never goes through the transcoder.
    r = api.post(f"/api/stations/{H264_SID}/playback", headers=op, json={**body, "h264": True})
    assert r.status_code == 201, r.text
    assert r.json()["codec"] == "h264" and r.json()["source_codec"] == "h264" and not r.json()["transcoded"]


def test_h264_playback_is_limited_in_length_and_in_number_at_once(api, db, clock, settings, hevc_clip, h264_clip):
    settings.api.playback_transcode_max_seconds = 12
    now = clock.now_ms()
    t0 = now - 600_000
    vols = VolumeSet.from_settings(settings)
    add_segments(db, vols, hevc_clip, SID, t0, 4, settings.tz, codec="hevc")
    add_segments(db, vols, h264_clip, H264_SID, t0, 4, settings.tz)
    op = login(api, "op")
    api.cookies.clear()
    body = {"start": str(t0 + 2_000), "end": str(t0 + 40_000), "reason": "投诉核查 2026-003", "h264": True}

    # A long range is cut to playback_transcode_max_seconds: the console asks for the rest when it gets
    # there (last_ms), as at the end of any window.
    r = api.post(f"/api/stations/{SID}/playback", headers=op, json=body)
    assert r.status_code == 201, r.text
    pb = r.json()
    assert pb["transcoded"] and t0 + 1_000 <= pb["first_ms"] <= t0 + 2_000  # the keyframe at or before
    assert t0 + 13_000 <= pb["last_ms"] <= t0 + 14_000 + 100 and pb["duration_ms"] <= 13_000 + 100
    assert pb["range_limited"]
    # Without transcoding, the whole range.
    r = api.post(f"/api/stations/{H264_SID}/playback", headers=op, json=body)
    assert r.json()["last_ms"] >= t0 + 39_000 and not r.json()["range_limited"]

    slots = playback_transcode_slots(api.app.state.ctx)
    assert slots.limit == settings.api.playback_max_transcodes
    while slots.try_take():
        pass
    try:
        r = api.post(f"/api/stations/{SID}/playback", headers=op, json=body)
        assert r.status_code == 429 and r.json()["code"] == "playback_transcode_full", r.text
        assert "转码已满" in r.json()["detail"] and f"{slots.limit} 路" in r.json()["detail"]
        # An H.264 camera, or H.265 as it is: no slot needed.
        assert api.post(f"/api/stations/{H264_SID}/playback", headers=op, json=body).status_code == 201
        assert api.post(f"/api/stations/{SID}/playback", headers=op, json={**body, "h264": False}).status_code == 201
    finally:
        for _ in range(slots.limit):
            slots.give_back()
    # The slot of each finished transcode was given back.
    assert slots.active == 0
    assert api.post(f"/api/stations/{SID}/playback", headers=op, json=body).status_code == 201
    assert slots.active == 0


def test_playback_transcode_settings_are_checked_at_start_up():
    from pydantic import ValidationError

    from vms.core.settings import ApiSettings

    with pytest.raises(ValidationError):
        ApiSettings.model_validate({"playback_max_transcodes": -1})
    with pytest.raises(ValidationError):
        ApiSettings.model_validate({"playback_transcode_max_seconds": 0})
    with pytest.raises(ValidationError):
        ApiSettings.model_validate({"playback_max_trancodes": 2})  # a misspelt key is refused, not ignored
