"""Bad cameras: each gets a clear health state and a gap with its reason, and none disturbs the
recording of a good camera in the same worker."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import av
import pytest

from tests.ingest_support import RunningWorker, assert_contiguous, gaps, ingest_settings, segments, wait_until
from vms.recording.volumes import VolumeSet
from vms.simulate import Simulator

pytestmark = pytest.mark.slow  # real ingest workers and the RTSP simulator: not in scripts/test.sh --fast


class _SilentServer:
    """Accepts TCP connections and then never answers (a camera that hangs)."""

    def __init__(self, garbage: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.garbage = garbage
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.garbage:
                threading.Thread(target=self._spew, args=(conn,), daemon=True).start()

    def _spew(self, conn: socket.socket) -> None:
        try:
            while not self._stop:
                conn.sendall(os.urandom(4096))
                time.sleep(0.05)
        except OSError:
            pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def sim(simulator_cache):
    with Simulator(cameras=1, names=["good"], width=320, height=240, fps=15, bitrate_kbps=300, gop=15,
                   extra_mounts=("auth", "h265", "audio", "audio-only", "mjpeg", "res-change"),
                   cache_dir=simulator_cache) as s:
        yield s


def test_each_bad_camera_gets_its_reason_and_the_good_one_keeps_recording(sim, tmp_path, db, caplog):
    caplog.set_level(logging.DEBUG)
    silent, garbage = _SilentServer(), _SilentServer(garbage=True)
    auth_url = sim.urls["auth"]
    assert "admin:secret@" in auth_url
    urls = {
        "duozhu-town": sim.urls["good"],
        "duozhu-v01": f"rtsp://127.0.0.1:{_closed_port()}/cam",
        "duozhu-v02": f"rtsp://127.0.0.1:{silent.port}/cam",
        "duozhu-v03": auth_url.replace("admin:secret@", "admin:wrongpass@"),
        "duozhu-v04": sim.urls["audio-only"],
        "duozhu-v05": sim.urls["mjpeg"],
        "duozhu-v06": f"rtsp://127.0.0.1:{garbage.port}/cam",
        "duozhu-v07": sim.urls["res-change"],
        "duozhu-v08": auth_url,
        "andun-town": sim.urls["h265"],
        "andun-v01": sim.urls["audio"],
    }
    expected_failure = {
        "duozhu-v01": "refused",
        "duozhu-v02": "unreachable",
        "duozhu-v03": "auth_failed",
        "duozhu-v04": "no_video",
        "duozhu-v05": "unsupported_codec",
        "duozhu-v06": "bad_stream",
    }
    settings = ingest_settings(tmp_path, segment_seconds=3)
    try:
        with RunningWorker(settings, db, urls) as w:
            def settled() -> bool:
                return all(w.health(sid).reason == r for sid, r in expected_failure.items()) and all(
                    len(segments(db, sid)) >= 2 for sid in ("duozhu-town", "duozhu-v08", "andun-town", "andun-v01"))
            try:
                wait_until(settled, 45, "every camera to settle")
            except AssertionError:
                state = {sid: (w.health(sid).state, w.health(sid).reason, len(segments(db, sid))) for sid in urls}
                raise AssertionError(f"cameras did not settle: {state}") from None
            wait_until(lambda: len({(x.width, x.height) for x in segments(db, "duozhu-v07")}) >= 2, 40,
                       "segments in both resolutions")
            time.sleep(1)
            for sid in expected_failure:
                assert w.health(sid).state in ("backoff", "connecting"), sid
                assert w.health(sid).detail, f"{sid} has no explanation"
            assert w.health("duozhu-town").state == "streaming"
    finally:
        silent.close()
        garbage.close()

    for sid, reason in expected_failure.items():
        assert segments(db, sid) == [], sid
        g = gaps(db, sid)
        assert g and g[0].reason == reason, (sid, [(x.reason, x.detail) for x in g])
    # The good camera (and the good odd ones) recorded without a single hole.
    for sid in ("duozhu-town", "duozhu-v07", "duozhu-v08", "andun-town", "andun-v01"):
        segs = segments(db, sid)
        assert_contiguous(segs)
        assert all(b.start_ms == a.end_ms for a, b in zip(segs, segs[1:], strict=False)), sid
        assert [g.reason for g in gaps(db, sid)] == ["ingest_stopped"], sid
    vols = VolumeSet.from_settings(settings)
    hevc = segments(db, "andun-town")[0]
    assert hevc.codec == "hevc"
    with av.open(str(vols.file_path(hevc.volume, hevc.path))) as c:
        assert c.streams.video[0].codec_context.name == "hevc"
        assert sum(1 for _ in c.decode(video=0)) == hevc.frames
    with_audio = segments(db, "andun-v01")[0]
    assert with_audio.has_audio
    with av.open(str(vols.file_path(with_audio.volume, with_audio.path))) as c:
        assert len(c.streams.audio) == 1
        assert sum(1 for p in c.demux(c.streams.audio[0]) if p.size) > 10
    # Resolution change: recording goes on across it without a hole (checked above), a new
    # segment starts at the change, and each file really has the size its row says.
    res = segments(db, "duozhu-v07")
    assert len({(s.width, s.height) for s in res}) >= 2, [(s.width, s.height) for s in res]
    for seg in res:
        with av.open(str(vols.file_path(seg.volume, seg.path))) as c:
            frame = next(c.decode(video=0))
            assert (frame.width, frame.height) == (seg.width, seg.height), seg.path
    # Credentials are never logged.
    assert "secret" not in caplog.text and "wrongpass" not in caplog.text
