"""The camera simulator over real RTSP on loopback, read with PyAV: streams, loops, faults, odd mounts."""

from __future__ import annotations

import threading
import time

import av
import pytest

from vms.simulate import EXTRA_MOUNTS, Simulator, SimulatorError

pytestmark = pytest.mark.rtsp

FPS = 15
TICKS = 90000 // FPS  # RTP video clock is 90 kHz


def open_rtsp(url: str) -> av.container.InputContainer:
    # Small probe: the stream is described by the SDP; the RTSP timeout option, not av.open(timeout=).
    return av.open(url, options={"rtsp_transport": "tcp", "timeout": "5000000", "analyzeduration": "0",
                                 "probesize": "32"})


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    with Simulator(cameras=4, width=320, height=240, fps=FPS, bitrate_kbps=300, gop=15, content="pattern",
                   extra_mounts=EXTRA_MOUNTS, cache_dir=tmp_path_factory.mktemp("simcache"),
                   pattern_seconds=1) as s:
        yield s


def test_urls_name_every_mount_on_loopback(sim):
    assert list(sim.urls)[:4] == ["cam01", "cam02", "cam03", "cam04"]
    assert set(sim.urls) == {"cam01", "cam02", "cam03", "cam04", *EXTRA_MOUNTS}
    for name, url in sim.urls.items():
        if name == "auth":
            assert url == f"rtsp://admin:secret@127.0.0.1:{sim.port}/auth"
        else:
            assert url == f"rtsp://127.0.0.1:{sim.port}/{name}"
    assert sim.ground_truth is None


def test_pattern_stream_keeps_time_across_loop_boundaries(sim):
    """A 1 s loop read for ~4 s: H.264 320x240 at 15 fps, one pts step per frame, pts advance = wall time."""
    with open_rtsp(sim.urls["cam01"]) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (320, 240)
        pts, keys, walls = [], [], []
        start = time.monotonic()
        for packet in c.demux(stream):
            if packet.pts is None:
                continue  # the first packet after connecting may have none
            pts.append(packet.pts)
            keys.append(packet.is_keyframe)
            walls.append(time.monotonic())
            if walls[-1] - start > 4.0:
                break
        frame = next(f for p in c.demux(stream) for f in p.decode())
        assert (frame.width, frame.height) == (320, 240)
    steps = {b - a for a, b in zip(pts, pts[1:], strict=False)}
    assert steps == {TICKS}, f"pts must advance exactly one frame per packet across loops, saw steps {steps}"
    assert len(pts) >= 4 * FPS - 2
    key_positions = [i for i, k in enumerate(keys) if k]
    assert len(key_positions) >= 3 and {b - a for a, b in zip(key_positions, key_positions[1:], strict=False)} == {15}
    # Live pacing: over the last 3 s read, media time and wall time agree.
    i = next(i for i, w in enumerate(walls) if w - walls[0] > 1.0)
    media = (pts[-1] - pts[i]) / 90000
    wall = walls[-1] - walls[i]
    assert abs(media - wall) < 0.25, f"{media:.2f} s of media in {wall:.2f} s of wall time"


def test_stop_refuses_and_disconnects_then_start_serves_again(sim):
    with open_rtsp(sim.urls["cam02"]) as c:
        it = c.demux(c.streams.video[0])
        next(it)
        sim.stop_camera("cam02")
        t = time.monotonic()
        with pytest.raises((av.error.EOFError, av.error.FFmpegError, StopIteration)):
            while time.monotonic() - t < 5:
                next(it)
        assert time.monotonic() - t < 3, "the existing client must be disconnected at once"
    with pytest.raises(av.error.HTTPNotFoundError):
        open_rtsp(sim.urls["cam02"])
    assert sim.status()["cam02"]["up"] is False
    sim.start_camera("cam02")
    with open_rtsp(sim.urls["cam02"]) as c:
        assert next(p for p in c.demux(c.streams.video[0]) if p.pts is not None).size > 0
    sim.restart_camera("cam02")
    with open_rtsp(sim.urls["cam02"]) as c:
        assert next(p for p in c.demux(c.streams.video[0]) if p.pts is not None).size > 0


def test_stall_keeps_the_connection_but_sends_nothing_until_resume(sim):
    with open_rtsp(sim.urls["cam03"]) as c:
        stream = c.streams.video[0]
        it = c.demux(stream)
        t = time.monotonic()
        for _ in it:  # catch up with live before stalling
            if time.monotonic() - t > 0.6:
                break
        arrivals: list[tuple[float, object]] = []

        def read() -> None:
            for p in it:
                arrivals.append((time.monotonic(), p))
                if sum(1 for _, q in arrivals if q.is_keyframe) >= 1 and len(arrivals) >= 5:
                    return

        sim.stall("cam03")
        stalled_at = time.monotonic()
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(2.0)
        status = sim.status()["cam03"]
        assert status["stalled"] and status["clients"] == 1, f"connection must stay during a stall: {status}"
        early = [p for at, p in arrivals if at - stalled_at > 0.3]
        assert early == [], f"{len(early)} packets arrived during the stall"
        sim.resume("cam03")
        resumed_at = time.monotonic()
        reader.join(5)
        assert not reader.is_alive(), "no packets after resume"
    late = [(at, p) for at, p in arrivals if at >= resumed_at]
    assert late, "packets must flow again after resume"
    first_key = next(p for _, p in late if p.is_keyframe)
    keyed = [p for _, p in late if p.pts is not None and p.pts >= first_key.pts]
    assert keyed[0].is_keyframe
    # The media clock kept running: the stream jumps forward by about the stall.
    before = max(p.pts for at, p in arrivals if at < resumed_at and p.pts is not None) if any(
        at < resumed_at and p.pts is not None for at, p in arrivals) else None
    if before is not None:
        assert (first_key.pts - before) / 90000 > 1.5


def test_jump_moves_the_timestamps_at_a_non_key_frame_and_keeps_the_pace(sim):
    """A camera's clock set an hour forward, then reset: the pts jump by the hour, then back to the
    stream's start (a jump back is clamped there), each at a non-key frame; the frames keep coming at
    the stream's rate."""
    packets: list[tuple[float, int, bool]] = []  # (arrival, pts, keyframe)
    with open_rtsp(sim.urls["cam01"]) as c:
        for p in c.demux(c.streams.video[0]):
            if p.pts is None:
                continue
            packets.append((time.monotonic(), p.pts, p.is_keyframe))
            if len(packets) == 10:
                sim.jump("cam01", 3600)
            elif len(packets) == 30:
                sim.jump("cam01", -1e9)
            elif len(packets) == 50:
                break
    steps = [(b[1] - a[1], b[2]) for a, b in zip(packets, packets[1:], strict=False)]
    jumps = [(i, step, key) for i, (step, key) in enumerate(steps) if abs(step - TICKS) > 1]
    assert len(jumps) == 2, jumps
    (i_fwd, forward, key_fwd), (i_back, back, key_back) = jumps
    assert abs(forward - 3600 * 90000 - TICKS) <= 1 and not key_fwd
    assert back < 0 and not key_back and packets[i_back + 1][1] <= packets[0][1]
    assert 10 <= i_fwd < i_back
    took = packets[-1][0] - packets[10][0]
    assert abs(took - 39 / FPS) < 0.6, took


def test_stall_video_stops_the_video_while_the_g711_audio_goes_on(tmp_path):
    with Simulator(cameras=1, names=["cam"], width=320, height=240, fps=FPS, bitrate_kbps=300, gop=15,
                   content="pattern", audio="pcma", cache_dir=tmp_path, pattern_seconds=1) as sim:
        with open_rtsp(sim.urls["cam"]) as c:
            assert c.streams.audio[0].codec_context.name == "pcm_alaw"
            arrivals: list[tuple[float, str, bool, int | None]] = []  # (when, kind, keyframe, pts)
            t = time.monotonic()
            stalled_at = resumed_at = None
            for p in c.demux():
                now = time.monotonic()
                if p.size:
                    arrivals.append((now, p.stream.type, bool(p.is_keyframe), p.pts))
                if stalled_at is None and now - t > 0.6:
                    sim.stall_video("cam")
                    stalled_at = time.monotonic()
                    status = sim.status()["cam"]
                    assert status["video_stalled"] and not status["stalled"], status
                elif stalled_at is not None and resumed_at is None and now - stalled_at > 2.3:
                    sim.resume("cam")
                    resumed_at = time.monotonic()
                elif resumed_at is not None and (now - resumed_at > 5 or any(
                        at > resumed_at and kind == "video" and key for at, kind, key, _pts in arrivals)):
                    break
    during = [kind for at, kind, _key, _pts in arrivals if stalled_at + 0.3 < at < resumed_at]
    assert "video" not in during, "video packets arrived during the stall"
    assert during.count("audio") >= 40, "the audio (20 ms packets) must go on"
    assert any(key for at, kind, key, _pts in arrivals if at > resumed_at and kind == "video"), "no video after resume"


def test_drop_closes_clients_and_reconnect_works(sim):
    with open_rtsp(sim.urls["cam04"]) as c:
        it = c.demux(c.streams.video[0])
        next(it)
        sim.drop("cam04")
        t = time.monotonic()
        with pytest.raises((av.error.EOFError, av.error.FFmpegError, StopIteration)):
            while time.monotonic() - t < 5:
                next(it)
        assert time.monotonic() - t < 3
    assert sim.status()["cam04"]["up"] is True
    with open_rtsp(sim.urls["cam04"]) as c:
        assert next(p for p in c.demux(c.streams.video[0]) if p.pts is not None).size > 0


def test_fault_on_unknown_camera_names_it(sim):
    with pytest.raises(SimulatorError, match="unknown camera 'cam99'"):
        sim.stall("cam99")


def test_auth_mount_needs_the_right_credentials(sim):
    url = sim.urls["auth"]
    with open_rtsp(url) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(url.replace("admin:secret@", "admin:wrong@"))
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(url.replace("admin:secret@", ""))
    # Other mounts stay open to anonymous clients.
    with open_rtsp(sim.urls["cam01"]) as c:
        assert c.streams.video


def test_auth_mount_counts_attempts_and_failed_logins_answers_403_and_changes_password(sim):
    url = sim.urls["auth"]
    before = sim.counts("auth")
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(url.replace("admin:secret@", "admin:wrong@"))
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(url.replace("admin:secret@", ""))  # no credentials: refused, but no failed login
    with pytest.raises(av.error.HTTPForbiddenError):
        open_rtsp(url.replace("admin:secret@", "guest:guest@"))  # an account that may not watch
    after = sim.counts("auth")
    assert after["attempts"] - before["attempts"] == 3
    assert after["refused_logins"] - before["refused_logins"] == 2
    assert after["unauthorized"] - before["unauthorized"] >= 3
    try:
        sim.set_password("auth", "changed")
        with pytest.raises(av.error.HTTPUnauthorizedError):
            open_rtsp(url)
        with open_rtsp(url.replace("admin:secret@", "admin:changed@")) as c:
            assert c.streams.video
    finally:
        sim.set_password("auth", "secret")
    with open_rtsp(url) as c:
        assert c.streams.video
    assert sim.counts("auth")["attempts"] - after["attempts"] == 3
    with pytest.raises(SimulatorError, match="cam01 asks for no credentials"):
        sim.set_password("cam01", "x")


def test_codec_mounts(sim):
    with open_rtsp(sim.urls["h265"]) as c:
        assert [s.codec_context.name for s in c.streams] == ["hevc"]
        frame = next(f for p in c.demux(c.streams.video[0]) for f in p.decode())
        assert (frame.width, frame.height) == (320, 240)
    with open_rtsp(sim.urls["audio"]) as c:
        assert sorted((s.type, s.codec_context.name) for s in c.streams) == [("audio", "aac"), ("video", "h264")]
        audio = c.streams.audio[0]
        assert next(p for p in c.demux(audio) if p.stream is audio and p.size > 0)
    with open_rtsp(sim.urls["audio-only"]) as c:
        assert [s.type for s in c.streams] == ["audio"] and not c.streams.video
    with open_rtsp(sim.urls["mjpeg"]) as c:
        assert [s.codec_context.name for s in c.streams] == ["mjpeg"]


def test_resolution_change_mount_changes_resolution(sim):
    sizes: list[tuple[int, int]] = []
    with open_rtsp(sim.urls["res-change"]) as c:
        stream = c.streams.video[0]
        t = time.monotonic()
        for packet in c.demux(stream):
            for frame in packet.decode():
                if not sizes or sizes[-1] != (frame.width, frame.height):
                    sizes.append((frame.width, frame.height))
            if len(sizes) >= 2 or time.monotonic() - t > 6:
                break
    assert set(sizes) == {(640, 360), (320, 240)}, f"sizes seen: {sizes}"
