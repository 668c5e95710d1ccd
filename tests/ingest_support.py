"""Helpers for the ingest tests: run a worker in a thread against simulator URLs, wait for states."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
from sqlalchemy import select

from vms.core.clock import Clock, SimulatedClock
from vms.core.settings import Settings
from vms.db.engine import Database
from vms.db.migrate import upgrade
from vms.db.models import Gap, Segment, Station
from vms.ingest.observers import StreamObserver
from vms.ingest.session import CameraHealth
from vms.ingest.worker import IngestWorker, WorkerSpec


def ingest_settings(tmp_path, **ingest) -> Settings:
    base = {"segment_seconds": 4, "status_interval_seconds": 1, "stall_seconds": 3, "rtsp_timeout_seconds": 3,
            "retry_initial_seconds": 0.3, "retry_max_seconds": 2, "node": "test-node"}
    base.update(ingest)
    return Settings.model_validate({
        "data_dir": str(tmp_path / "data"),
        "storage": {"volumes": [{"name": "main", "path": str(tmp_path / "recordings")}]},
        "ingest": base,
    })


def one_station_database(tmp_path, station_id: str, name: str) -> tuple[Settings, Database]:
    """Settings with one volume, the database made, and one enabled village station in it."""
    settings = Settings.model_validate({
        "data_dir": str(tmp_path / "data"),
        "storage": {"volumes": [{"name": "main", "path": str(tmp_path / "recordings")}]}})
    (tmp_path / "data").mkdir()
    upgrade(settings.db_url)
    db = Database(settings.db_url)
    with db.session() as s:
        s.add(Station(id=station_id, name=name, level="village", town="t", enabled=True))
    return settings, db


class PacketLog(StreamObserver):
    """A test observer: (is_keyframe, wall_ms) of each packet it is given; and, for the current
    connection, (monotonic s when given, wall s) of each."""

    def __init__(self, keyframes_only: bool) -> None:
        self.keyframes_only = keyframes_only
        self.packets: list[tuple[bool, int]] = []
        self.arrivals: list[tuple[float, float]] = []

    def on_connect(self, stream, wall_ms: int) -> None:
        self.arrivals.clear()

    def on_packet(self, packet, wall_ms: int) -> None:
        self.packets.append((bool(packet.is_keyframe), wall_ms))
        self.arrivals.append((time.monotonic(), wall_ms / 1000))

    def on_disconnect(self, wall_ms: int, reason: str) -> None:
        pass


PACKET_LOGS: dict[tuple[str, str], PacketLog] = {}


def _packet_log_maker(kind: str):
    def maker(settings, database, clock):
        def make(station_id: str) -> PacketLog:
            log = PACKET_LOGS[(station_id, kind)] = PacketLog(keyframes_only=kind == "keyframes")
            return log
        return make
    return maker


every_packet_log = _packet_log_maker("every")
keyframe_packet_log = _packet_log_maker("keyframes")
PACKET_LOG_FACTORIES = ["tests.ingest_support:every_packet_log", "tests.ingest_support:keyframe_packet_log"]


class RunningWorker:
    def __init__(self, settings: Settings, db: Database, urls: dict[str, str],
                 observer_factories: list[str] | None = None, clock: Clock | None = None) -> None:
        self.worker = IngestWorker(WorkerSpec(settings, url_overrides=urls, only_stations=set(urls),
                                              reconcile_seconds=3600,
                                              observer_factories=list(observer_factories or [])), database=db,
                                   clock=clock)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> RunningWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.worker.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "worker did not stop"

    def health(self, station_id: str) -> CameraHealth:
        entry = self.worker.sessions.get(station_id)
        return entry[1].health if entry else CameraHealth(state="not started")


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def segments(db: Database, station_id: str) -> list[Segment]:
    with db.session() as s:
        return list(s.scalars(select(Segment).where(Segment.station_id == station_id).order_by(Segment.start_ms)))


def gaps(db: Database, station_id: str) -> list[Gap]:
    with db.session() as s:
        return list(s.scalars(select(Gap).where(Gap.station_id == station_id).order_by(Gap.start_ms, Gap.id)))


def decode_all(path) -> tuple[int, float]:
    """Decode every frame of a file; return (frames, seconds of video by its timestamps)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        n = 0
        first = last = None
        for frame in c.decode(vs):
            n += 1
            t = float(frame.pts * vs.time_base)
            first = t if first is None else first
            last = t
    return n, (last - first) if n else 0.0


def assert_contiguous(segs: list[Segment]) -> None:
    """Segments of one camera never overlap and never have negative length."""
    for seg in segs:
        assert seg.end_ms >= seg.start_ms, f"negative segment {seg.path}"
    for a, b in zip(segs, segs[1:], strict=False):
        assert b.start_ms >= a.end_ms, f"{b.path} starts {a.end_ms - b.start_ms} ms before {a.path} ends"


def assert_same_recording(db: Database, settings: Settings, a: str, b: str) -> list[Segment]:
    """Stations `a` and `b` recorded the same clip (by the two paths): the same segment rows, byte for
    byte the same files, the same gaps. Returns a's segments."""
    import hashlib

    from vms.recording.volumes import VolumeSet

    sa, sb = segments(db, a), segments(db, b)

    def row(s: Segment) -> tuple:
        return (s.start_ms, s.end_ms, s.duration_ms, s.frames, s.keyframes, s.bytes, s.state)

    assert [row(s) for s in sa] == [row(s) for s in sb]
    vols = VolumeSet.from_settings(settings)
    for x, y in zip(sa, sb, strict=True):
        hx = hashlib.sha256(vols.file_path(x.volume, x.path).read_bytes()).hexdigest()
        hy = hashlib.sha256(vols.file_path(y.volume, y.path).read_bytes()).hexdigest()
        assert hx == hy, (x.path, y.path)
    assert [(g.reason, g.start_ms, g.end_ms) for g in gaps(db, a)] == \
        [(g.reason, g.start_ms, g.end_ms) for g in gaps(db, b)]
    return sa


FPS = 15
TICKS = 90000 // FPS  # RTSP video time base is 1/90000


def make_clip(path, seconds: int = 24):
    """seconds of 15 fps H.264 (160x96), a keyframe every second, in MPEG-TS (1/90000 like RTSP)."""
    import numpy as np

    with av.open(str(path), "w", format="mpegts") as out:
        s = out.add_stream("libx264", rate=FPS, options={
            "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0:sliced-threads=0", "bf": "0"})
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        for i in range(seconds * FPS):
            img = np.full((96, 160, 3), (i * 3) % 255, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def remux_with_timestamps(clip, path, stamps: list[int | None]):
    """The clip's video packets, in order, in a new MPEG-TS file with `stamps` as their dts (and pts;
    None: the packet carries no timestamp at all), jumps, resets, wraps and repeats included: what a
    demuxer reads back, natively or in PyAV, is exactly these timestamps.

    A muxer refuses timestamps that do not increase, so each increasing run is muxed on its own and the
    runs are joined (MPEG-TS is a sequence of 188-byte packets; each run opens with its own PAT/PMT). A
    packet without timestamp is muxed with a placeholder that is then blanked in its PES header."""
    with av.open(str(clip)) as src:
        template = src.streams.video[0]
        packets = [(bytes(p), p.is_keyframe) for p in src.demux(template) if p.size]
        if len(packets) != len(stamps):
            raise ValueError(f"{len(stamps)} timestamps for {len(packets)} packets")
        runs: list[list[tuple[bytes, bool, int, bool]]] = []
        last = None
        for (data, key), ts in zip(packets, stamps, strict=True):
            blank = ts is None
            if blank:
                ts = last + 1 if last is not None else 0
            if last is None or ts <= last:
                runs.append([])
            runs[-1].append((data, key, ts, blank))
            last = ts
        out = bytearray()
        for run in runs:
            buf = io.BytesIO()
            with av.open(buf, "w", format="mpegts") as dst:
                stream = dst.add_stream_from_template(template)
                for data, key, ts, _ in run:
                    pkt = av.Packet(data)
                    pkt.stream, pkt.time_base, pkt.is_keyframe = stream, template.time_base, key
                    pkt.pts = pkt.dts = ts
                    dst.mux(pkt)
            out += _blank_pes_timestamps(buf.getvalue(), {i for i, (*_, blank) in enumerate(run) if blank})
    Path(path).write_bytes(bytes(out))
    return path


def _blank_pes_timestamps(ts: bytes, which: set[int]) -> bytes:
    """Remove the PTS/DTS of the video PES packets numbered `which` (0: the first) of an MPEG-TS stream:
    the header keeps its length, the timestamp bytes become stuffing (0xFF)."""
    data = bytearray(ts)
    n = -1
    for off in range(0, len(data), 188):
        if data[off] != 0x47:
            raise ValueError(f"not MPEG-TS at byte {off}")
        adaptation, payload_start = data[off + 3] & 0x20, data[off + 1] & 0x40
        pes = off + 4 + (1 + data[off + 4] if adaptation else 0)
        if not payload_start or data[pes:pes + 3] != b"\x00\x00\x01" or not 0xE0 <= data[pes + 3] <= 0xEF:
            continue
        n += 1
        if n in which:
            flags = data[pes + 7]
            if flags & 0x3F:
                raise ValueError("PES header with optional fields after the timestamps")
            size = {0x80: 5, 0xC0: 10}[flags & 0xC0]
            data[pes + 7] = 0
            data[pes + 9:pes + 9 + size] = b"\xff" * size
    return bytes(data)


def record_clip(clip, db, settings, clock, rewrite=lambda i, p: None, clock_step=None, segment_seconds=5.0,
                station_id="pingshan-town"):
    """Feed a clip's packets through a StreamRecorder on a simulated clock; rewrite(i, pkt) may change
    timestamps (or return False to drop them); clock_step(i) is the clock advance before packet i.
    Returns (segments, gaps) from the index."""
    from vms.recording.index import IndexWriter
    from vms.recording.recorder import StreamRecorder
    from vms.recording.volumes import VolumeSet

    index = IndexWriter(db, "t").start()
    rec = StreamRecorder(station_id, VolumeSet.from_settings(settings), settings.tz, index, clock,
                         segment_seconds=segment_seconds)
    with av.open(str(clip)) as c:
        vs = c.streams.video[0]
        rec.begin(vs, None)
        for i, pkt in enumerate(p for p in c.demux(vs) if p.size):
            clock.advance(clock_step(i) if clock_step else 1 / FPS)
            pkt.dts = pkt.pts = i * TICKS
            if rewrite(i, pkt) is False:
                pkt.dts = pkt.pts = None
            rec.video_packet(pkt)
        rec.end("stream_ended")
    index.stop()
    return segments(db, station_id), gaps(db, station_id)


class StreamClock(SimulatedClock):
    """Wall time = a start plus the recorder's stream position: the same at every packet the recorder
    sees, whether or not the packets before it went through Python. shift(seconds of stream position)
    adds wall seconds, for a receive clock that steps or a camera that paused."""

    def __init__(self, shift: Callable[[float], float] | None = None) -> None:
        super().__init__()
        self.base_ms = self.now_ms()
        self.recorder = None  # a StreamRecorder
        self.shift = shift

    def now_ms(self) -> int:
        rec = getattr(self, "recorder", None)
        if rec is None:
            return self._now_ms
        pos_ms = rec._ticks_to_ms(rec._pos)
        return self.base_ms + pos_ms + (round(self.shift(pos_ms / 1000) * 1000) if self.shift else 0)

    def monotonic(self) -> float:
        return self.now_ms() / 1000


def record_connection(clip, db, settings, station_id: str, native: bool, segment_seconds=5.0, hook=None,
                      clock_shift: Callable[[float], float] | None = None, open_options: dict | None = None,
                      recorded_in_python: list[int] | None = None, copy_allowed=None, on_kept=None, on_packet=None):
    """Record `clip` as one connection, as a camera session does, natively or not, on a StreamClock
    (with clock_shift, see StreamClock; open_options go to the demuxer); hook(seconds into the clip), if
    given, runs after every packet handed to Python and every batch the copier reports;
    recorded_in_python, if given, gets the stream position (ticks) of each packet Python recorded.
    copy_allowed(seconds into the clip) and on_kept([(packet, wall ms)]), if given, are the copier's
    (with on_kept it keeps the current GOP); on_packet(packet, wall ms) gets each video packet the
    recorder took through Python, as an observer would. Returns the recorder and the number of packets
    the copier recorded."""
    from vms.recording import copier as copier_mod
    from vms.recording.index import IndexWriter
    from vms.recording.recorder import StreamRecorder
    from vms.recording.volumes import VolumeSet

    clock = StreamClock(clock_shift)
    index = IndexWriter(db, "t").start()
    rec = StreamRecorder(station_id, VolumeSet.from_settings(settings), settings.tz, index, clock,
                         segment_seconds=segment_seconds)
    clock.recorder = rec
    copied = 0

    def seconds() -> float:
        return (clock.now_ms() - clock.base_ms) / 1000

    def count(n, nbytes, first_ms, last_ms):
        nonlocal copied
        copied += n
        if hook:
            hook(seconds())

    try:
        # `clip`: a path, or a file object (in MPEG-TS) whose reads may fail like a network would.
        with av.open(clip if hasattr(clip, "read") else str(clip), format="mpegts", options=open_options) as c:
            vs = c.streams.video[0]
            rec.begin(vs, None)
            if native:
                cp = copier_mod.make_copier(c, [vs], vs.index)
                cp.keep = on_kept is not None
                allowed = (lambda: copy_allowed(seconds())) if copy_allowed else (lambda: True)
                packets = copier_mod.recorded_packets(cp, rec, count, allowed, on_kept)
            else:
                packets = c.demux(vs)
            for pkt in packets:
                if pkt is not None and pkt.size:
                    wall = rec.video_packet(pkt)
                    if wall is not None and recorded_in_python is not None:
                        recorded_in_python.append(rec._pos)
                    if on_packet and wall is not None:
                        on_packet(pkt, wall)
                    if hook:
                        hook(seconds())
    finally:
        # As the camera session does after any end of the connection, a read error included.
        rec.end("stream_ended")
        index.stop()
    return rec, copied


HANG_DIR_ENV = "VMS_TEST_HANG_DIR"


class HangingObserver(StreamObserver):
    """Fault injection for the hang tests: the first packet (or copied batch) after a file named after
    the station appears in $VMS_TEST_HANG_DIR blocks the camera thread for good, as a deadlock would
    (the file is removed, so the restarted worker records normally). Keeps the native copier on."""

    takes_copied = True

    def __init__(self, station_id: str, hang_dir: str | None) -> None:
        self.flag = os.path.join(hang_dir, station_id) if hang_dir else None

    def _maybe_hang(self) -> None:
        if self.flag and os.path.exists(self.flag):
            os.remove(self.flag)
            threading.Event().wait()  # forever: nothing can interrupt a thread stuck like this

    def on_connect(self, stream, wall_ms: int) -> None:
        pass

    def on_packet(self, packet, wall_ms: int) -> None:
        self._maybe_hang()

    def on_copied(self, count: int, nbytes: int, first_ms: int, last_ms: int) -> None:
        self._maybe_hang()

    def on_disconnect(self, wall_ms: int, reason: str) -> None:
        pass


def hanging_observer(settings, database, clock):
    hang_dir = os.environ.get(HANG_DIR_ENV)
    return lambda station_id: HangingObserver(station_id, hang_dir)


HANGING_OBSERVER = "tests.ingest_support:hanging_observer"
