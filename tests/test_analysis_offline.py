"""`vms analyze` and the live observer on real H.264 made here with libx264 (no ../shared footage)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from vms.analysis.observer import StationAnalysisObserver, make_analysis_observer_factory
from vms.cli import app
from vms.core.clock import SimulatedClock
from vms.db.models import Fault, Station, StationState

FPS = 10


def make_clip(path: Path, seconds_dark: int = 20, seconds_lit: int = 20, raw: bool = False,
              dark_noise: float = 4) -> Path:
    """A room (textured wall and shelves) with the light off, then on; camera noise in every frame
    (dark_noise in the dark: real dark rooms have little, and their keyframes are far smaller)."""
    rng = np.random.default_rng(3)
    w, h = 320, 180
    room = np.full((h, w), 0.5, np.float32)
    for _ in range(30):
        x, y = rng.integers(0, w - 30), rng.integers(0, h - 30)
        room[y:y + rng.integers(10, 40), x:x + rng.integers(10, 60)] = rng.uniform(0.2, 1.0)
    out = av.open(str(path), "w", format="h264" if raw else None)
    st = out.add_stream("libx264", rate=FPS)
    st.width, st.height, st.pix_fmt = w, h, "yuv420p"
    st.options = {"x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0", "bf": "0", "preset": "ultrafast"}
    for i in range((seconds_dark + seconds_lit) * FPS):
        dark = i < seconds_dark * FPS
        light = 40 if dark else 200
        img = np.clip(room * light + rng.normal(0, dark_noise if dark else 4, room.shape), 0, 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(np.dstack([img] * 3), format="rgb24")
        for p in st.encode(frame):
            out.mux(p)
    for p in st.encode():
        out.mux(p)
    out.close()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "dark-then-lit.mp4")


def run_cli(*args) -> tuple[int, list[dict], str]:
    res = CliRunner().invoke(app, ["analyze", *map(str, args)])
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    return res.exit_code, lines, res.stderr


def test_analyze_finds_the_light_switched_on(clip):
    code, lines, err = run_cli(clip, "--format", "jsonl", "--hysteresis", "5", "--sample-interval", "1")
    assert code == 0, err
    states = [(d["t"], d["state"]) for d in lines if d["type"] == "state"]
    assert [s for _, s in states] == ["closed", "open"]
    assert states[0][0] == 0 and 19.9 <= states[1][0] <= 21.0
    samples = [d for d in lines if d["type"] == "sample"]
    assert 38 <= len(samples) <= 41 and {"luma", "laplacian", "vote"} <= set(samples[0])
    assert not [d for d in lines if d["type"] == "fault"]


def test_analyze_raw_stream_uses_the_assumed_rate(tmp_path):
    raw = make_clip(tmp_path / "c.h264", 4, 4, raw=True)
    cfg = tmp_path / "station.yaml"
    cfg.write_text("overrides:\n  hysteresis_seconds: 2\n  sample_interval_seconds: 0.5\n", encoding="utf-8")
    code, lines, err = run_cli(raw, "--fps-assumed", "5", "--station-config", cfg, "--decode", "all",
                               "--no-samples")
    assert code == 0, err
    # 40 frames of dark at an assumed 5 fps: the light goes on at 8 s, not at 4 s.
    states = [(d["t"], d["state"]) for d in lines if d["type"] == "state"]
    assert states[0] == (0.0, "closed") and states[1][1] == "open" and 7.9 <= states[1][0] <= 8.6


def test_analyze_reports_bad_input_plainly(tmp_path):
    code, _, err = run_cli(tmp_path / "missing.mp4")
    assert code == 2 and "file not found" in err
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 100)
    code, _, err = run_cli(tmp_path / "junk.mp4")
    assert code == 2 and "junk.mp4" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("overrides:\n  hysteresis_seconds: -1\n", encoding="utf-8")
    code, _, err = run_cli(tmp_path / "missing.mp4", "--station-config", bad)
    assert code == 2 and "bad.yaml" in err and "hysteresis_seconds" in err


def _feed(observer, path: Path, base_ms: int) -> int:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        observer.on_connect(s, base_ms)
        last = base_ms
        for p in c.demux(s):
            if p.pts is None or p.size == 0:
                continue
            last = base_ms + round(float(p.pts * p.time_base) * 1000)
            observer.on_packet(p, last)
    return last


def test_live_observer_through_the_factory_writes_the_database(clip, settings, db):
    clock = SimulatedClock()
    with db.session() as s:
        station = s.scalars(select(Station).order_by(Station.id)).first()
        station.calibration = {"overrides": {"hysteresis_seconds": 6, "sample_interval_seconds": 2}}
        sid = station.id
    factory = make_analysis_observer_factory(settings, db, clock)
    try:
        observer = factory(sid)
        assert factory(sid) is observer  # one observer per camera, whatever the reconnects
        base = clock.now_ms()
        last = _feed(observer, clip, base)
        observer.on_disconnect(last + 100, "stream_ended")
        clock.advance(40 + 35)  # away longer than fault_min_seconds (30 s)
        factory.tick()
        assert 18 <= observer.samples <= 21  # a keyframe every 2 s, never every frame
        with db.session() as s:
            states = [(r.state, r.start_ms - base) for r in
                      s.scalars(select(StationState).where(StationState.station_id == sid)
                                .order_by(StationState.start_ms))]
            assert [st for st, _ in states] == ["closed", "open", "unknown"]
            assert 19_000 <= states[1][1] <= 22_000
            lost = s.scalars(select(Fault).where(Fault.station_id == sid)).all()
            assert [(f.kind, f.severity, f.end_ms) for f in lost] == [("signal_lost", "critical", None)]
    finally:
        factory.close()
    assert (settings.data_dir / "analysis" / "looks" / f"{sid}.json").exists()


def test_observer_never_raises_into_the_camera_thread(clip, settings, db):
    class Boom:
        def submit(self, *a):
            raise RuntimeError("sink down")

    observer = StationAnalysisObserver("x", settings.analysis, Boom(), SimulatedClock())
    with av.open(str(clip)) as c:
        observer.on_connect(c.streams.video[0], 0)
    bad = av.Packet(b"\x00\x00\x00\x01\x65garbage")
    bad.is_keyframe = True
    observer.on_packet(bad, 1)
    observer.on_packet(object(), 2)  # not even a packet
    observer.on_disconnect(3, "stalled")
    assert observer._errors >= 2


def test_saving_the_learned_look_never_blocks_the_camera_thread(clip, settings, tmp_path):
    """Issue 16: on_packet held the observer's lock and _save_look took it again once
    model_save_minutes had passed; the camera thread then hung for good (every camera of the worker
    after 10 minutes). Each sample here is past the save interval, so every one saves."""
    import threading

    class Sink:
        def submit(self, station_id, events):
            pass

    clock = SimulatedClock()
    cfg = settings.analysis.model_copy(update={"model_save_minutes": 0.01, "sample_interval_seconds": 1})
    look_file = tmp_path / "look.json"
    observer = StationAnalysisObserver("x", cfg, Sink(), clock, look_file=look_file)
    saves: list[float] = []

    def feed() -> None:
        with av.open(str(clip)) as c:
            s = c.streams.video[0]
            observer.on_connect(s, clock.now_ms())
            for p in c.demux(s):
                if p.pts is None or p.size == 0:
                    continue
                if p.is_keyframe:
                    clock.advance(1.0)  # past the 0.6 s save interval at every keyframe
                observer.on_packet(p, clock.now_ms())
                if look_file.exists() and (not saves or look_file.stat().st_mtime != saves[-1]):
                    saves.append(look_file.stat().st_mtime)
            observer.on_disconnect(clock.now_ms(), "stream_ended")

    camera = threading.Thread(target=feed, daemon=True)
    camera.start()
    camera.join(30)
    assert not camera.is_alive(), "the camera thread deadlocked while saving the learned look"
    assert observer.samples >= 30 and observer._errors == 0
    assert look_file.exists() and json.loads(look_file.read_text())  # a whole, readable file
    # and the worker's tick (another thread) still gets the lock afterwards
    ticker = threading.Thread(target=observer.tick, args=(clock.now_ms(),), daemon=True)
    ticker.start()
    ticker.join(5)
    assert not ticker.is_alive()


def test_a_camera_thread_stuck_in_its_observer_does_not_hold_up_the_stop(settings, db):
    """Issue 16, the worker's stop after a camera thread hung while holding its observer's lock (as
    the look save did): close() waited 10 s for the analysis thread (itself waiting for that lock in
    tick) and then for the lock for good, past the worker's stop deadline, and no other station's
    look or pending events were saved. Now it gives up on that observer after a second."""
    import threading
    import time

    from vms.analysis.detector import StateChanged
    from vms.analysis.look import look_path

    quick = settings.model_copy(update={"analysis": settings.analysis.model_copy(update={"sink_flush_seconds": 0.05})})
    with db.session() as s:
        stuck_id, other_id = list(s.scalars(select(Station.id).order_by(Station.id)))[:2]
    clock = SimulatedClock()
    factory = make_analysis_observer_factory(quick, db, clock)
    stuck = factory(stuck_id)
    factory(other_id)  # a second camera of the same worker
    release = threading.Event()

    def hung_camera_thread() -> None:
        with stuck._lock:
            release.wait(60)

    camera = threading.Thread(target=hung_camera_thread, daemon=True)
    camera.start()
    try:
        deadline = time.monotonic() + 5
        while not stuck._lock.locked() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the analysis thread's next tick now waits for the stuck observer
        factory.sink.submit(other_id, [StateChanged(clock.now_ms(), "open")])
        closer = threading.Thread(target=factory.close, daemon=True)
        t0 = time.monotonic()
        closer.start()
        closer.join(8)
        assert not closer.is_alive(), "closing the analysis waited for the stuck camera thread"
        assert time.monotonic() - t0 < 5  # well inside ingest.stop_seconds (8 s)
        assert look_path(settings.data_dir, other_id).exists()
        with db.session() as s:
            states = s.scalars(select(StationState.state).where(StationState.station_id == other_id)).all()
        assert states == ["open"]
    finally:
        release.set()
        camera.join(5)


def test_a_station_no_longer_recorded_is_released_not_reported_lost(clip, settings, db):
    """A station disabled (or moved to another worker) stops being recorded here: its observer is
    released, so 30 s later no critical signal_lost fault opens for a camera that is not ours."""
    clock = SimulatedClock()
    with db.session() as s:
        sids = [st.id for st in s.scalars(select(Station).order_by(Station.id)).all()[:2]]
    factory = make_analysis_observer_factory(settings, db, clock)
    try:
        for sid in sids:
            ob = factory(sid)
            last = _feed(ob, clip, clock.now_ms())
            ob.on_disconnect(last + 100, "ingest_stopped")
        factory.release(sids[0])
        clock.advance(120)
        factory.tick()
        with db.session() as s:
            lost = {f.station_id for f in s.scalars(select(Fault).where(Fault.kind == "signal_lost"))}
        assert lost == {sids[1]}  # the one still ours is reported; the released one is not
        assert (settings.data_dir / "analysis" / "looks" / f"{sids[0]}.json").exists()  # what it learned is kept
    finally:
        factory.close()


def make_msmpeg4_avi(path: Path, seconds: int, garbage: bool = False) -> Path:
    """MS-MPEG4 (v2) in AVI: its bitstream does not carry the picture size, only the container does.
    With `garbage`, every packet's bytes are replaced by zeros (the container stays valid): a stream no
    decoder can read (random bytes now and then decode as a flat grey picture)."""
    out = av.open(str(path), "w", format="avi")
    st = out.add_stream("msmpeg4v2", rate=FPS)
    st.width, st.height, st.pix_fmt = 160, 120, "yuv420p"
    st.options = {"g": str(FPS)}
    packets = []
    for i in range(seconds * FPS):
        img = np.full((120, 160, 3), 40 if i < seconds * FPS // 2 else 200, np.uint8)
        img[40:80, 60:100] = (i * 3) % 256
        packets += st.encode(av.VideoFrame.from_ndarray(img, format="rgb24"))
    packets += st.encode(None)
    for p in packets:
        if garbage:
            p.update(bytes(p.size))
        out.mux(p)
    out.close()
    return path


def test_analyze_reads_ms_mpeg4_in_avi(tmp_path):
    """Keyframe mode opened a bare decoder: avcodec_open2 refused every sample (no picture size), one
    WARNING was logged and the run exited 0 with no output."""
    code, lines, err = run_cli(make_msmpeg4_avi(tmp_path / "ms.avi", 20), "--sample-interval", "2")
    assert code == 0, err
    samples = [x for x in lines if x["type"] == "sample"]
    assert len(samples) >= 8, (lines, err)
    assert samples[0]["luma"] < 60 and samples[-1]["luma"] > 150  # the pictures were really decoded


def test_analyze_says_when_nothing_can_be_decoded(tmp_path):
    bad = make_msmpeg4_avi(tmp_path / "noise.avi", 10, garbage=True)
    code, lines, err = run_cli(bad, "--sample-interval", "1")
    assert code != 0 and "noise.avi: cannot be analysed" in err and "could be decoded" in err, (code, err)
    assert not [x for x in lines if x["type"] == "sample"]
    code, _, err = run_cli(bad, "--decode", "all")
    assert code != 0 and "noise.avi" in err, (code, err)


def test_a_camera_whose_keyframes_never_decode_raises_a_fault(clip, settings, db, tmp_path):
    """Live: the same failure only logged a few warnings per camera; now the station gets a fault row
    (undecodable) while no keyframe decodes, ended by decoded pictures."""
    noise = make_msmpeg4_avi(tmp_path / "noise.avi", 45, garbage=True)
    clock = SimulatedClock()
    with db.session() as s:
        station = s.scalars(select(Station).order_by(Station.id)).first()
        station.calibration = {"overrides": {"sample_interval_seconds": 2}}
        sid = station.id
    factory = make_analysis_observer_factory(settings, db, clock)
    try:
        observer = factory(sid)
        base = clock.now_ms()
        last = _feed(observer, noise, base)
        factory.tick()  # flushes the sink
        assert observer.samples == 0 and observer.decode_failures >= 10
        with db.session() as s:
            faults = s.scalars(select(Fault).where(Fault.station_id == sid)).all()
            got = [(f.kind, f.severity, f.start_ms, f.end_ms) for f in faults]
            assert got == [("undecodable", "major", base, None)], got
            assert "cannot be decoded" in faults[0].detail
        # The camera sends decodable pictures again (a new connection): the fault ends.
        _feed(observer, clip, last + 1000)
        factory.tick()
        with db.session() as s:
            fault = s.scalars(select(Fault).where(Fault.station_id == sid)).one()
            assert fault.end_ms is not None and fault.end_ms > last
    finally:
        factory.close()
