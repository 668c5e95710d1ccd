"""Live analysis inside the ingest workers: a StreamObserver per camera, fed the packets it already has.

Per packet only the compressed size is noted (activity). A keyframe is decoded when the sample
schedule says so (vms.analysis.sampling: every 60 s, sooner while the picture changes) by a
single-threaded decoder (skip_frame=NONKEY; one per codec shared by the worker's cameras where their
parameter sets allow, see KeyframeDecoder) and reduced to a small gray picture.
Nothing here raises into the camera thread: errors are logged and the sample skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import av
import numpy as np
from sqlalchemy import select

from vms.analysis.calibration import StationCalibration, parse_calibration
from vms.analysis.detector import Event, StationDetector
from vms.analysis.look import load_look, look_json, look_path, write_look
from vms.analysis.sampling import SampleSchedule
from vms.analysis.sink import AnalysisSink, EventSink, Resumed
from vms.catalog.model import BusinessHours
from vms.core.clock import Clock
from vms.core.errors import VmsError
from vms.core.settings import AnalysisSettings, Settings
from vms.db.engine import Database
from vms.db.models import Station
from vms.ingest.observers import StreamObserver
from vms.recording.avtypes import video_codec
from vms.recording.h26x import complete_parameter_sets, h264_ids_resolved, parameter_sets_annexb

log = logging.getLogger(__name__)
YUV_FORMATS = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"}


def frame_planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Y, U, V planes of a decoded frame as numpy views (no colour conversion for planar YUV)."""
    if frame.format.name not in YUV_FORMATS:
        frame = frame.reformat(format="yuv420p")
    planes = []
    for i, p in enumerate(frame.planes[:3]):
        arr = np.frombuffer(memoryview(p), np.uint8).reshape(p.height, p.line_size)[:, : p.width]
        planes.append(arr)
        if i == 0 and len(frame.planes) < 3:
            return arr, None, None
    return planes[0], planes[1], planes[2]


# Parameter sets in Annex B form (start codes), as FFmpeg gives them for RTSP's sprop-parameter-sets.
_ANNEX_B_STARTS = (b"\x00\x00\x01", b"\x00\x00\x00\x01")
# H.264 only: FFmpeg's H.265 decoder leaves the part of a torn picture it could not decode as the buffer
# held it, and a pooled buffer holds another camera's picture (a decoder of its own zeroes new buffers).
SHARED_CODECS = ("h264",)
# Deblocking is invisible at the 160-pixel analysis size: skipping it saves ~13% of a decode.
NO_LOOP_FILTER_CODECS = ("h264", "hevc")


class _SharedContext:
    """One decoder of a codec for every camera of the process, one sample at a time (see KeyframeDecoder)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # leaf: nothing else is taken under it (docs/design/threads.md)
        self.ctx: av.VideoCodecContext | None = None
        self.samples = 0  # pictures it gave (tests)


_shared_contexts: dict[str, _SharedContext] = {}
_shared_guard = threading.Lock()  # leaf: the dict only


def shared_context(codec_name: str) -> _SharedContext:
    with _shared_guard:
        slot = _shared_contexts.get(codec_name)
        if slot is None:
            slot = _shared_contexts[codec_name] = _SharedContext()
        return slot


class KeyframeDecoder:
    """Decodes single keyframes of one connection.

    H.264 keyframes whose parameter sets the connection gives in Annex B form (RTSP's
    sprop-parameter-sets) go through one decoder shared by every camera of the worker: the camera's
    parameter sets are put in front of each keyframe (only when its slice refers to their ids, or to
    ones it carries itself), so the picture depends on nothing an earlier camera left, and the decoder
    is flushed after each one. A sample that finds the shared decoder busy (many cameras connecting at
    once) does not wait for it. A decoder made per sample cost
    ~17 ms against ~14 for the shared one, most of the difference its 6.5 MB of buffers mapped and
    faulted afresh each time (~1,650 page faults; docs/benchmarks.md). A decoder kept per camera would
    hold that picture pool for every camera (~1 GB for 139). Other keyframes (parameter sets only
    in-band or in MP4 form, other ids, H.265 and other codecs), and any keyframe the shared decoder
    gives no picture for, get a decoder of their own, as before."""

    def __init__(self, codec_name: str, extradata: bytes | None, width: int = 0, height: int = 0) -> None:
        self.codec_name = codec_name
        self.extradata = extradata
        # Codecs whose bitstream does not carry the picture size (MS-MPEG4, H.263 in AVI...) refuse to open
        # without it (avcodec_open2: EINVAL on every sample); the container gives it.
        self.width, self.height = width, height
        self._context()  # fail at connect, not at the first sample, if the codec is unusable
        # The camera's parameter sets, put before each keyframe for the shared decoder: only when the
        # connection gives all of them (else another camera's, left in the decoder, could be used).
        self._parameter_sets: bytes | None = None
        if (codec_name in SHARED_CODECS and extradata and extradata.startswith(_ANNEX_B_STARTS)
                and complete_parameter_sets(extradata, codec_name)):
            self._parameter_sets = parameter_sets_annexb(extradata, codec_name)

    @property
    def shared(self) -> bool:
        """Whether this connection's keyframes go through the worker's shared decoder first."""
        return self._parameter_sets is not None

    def _context(self, extradata: bool = True) -> av.VideoCodecContext:
        ctx = video_codec(self.codec_name, "r")
        if extradata and self.extradata:
            ctx.extradata = self.extradata
        if self.width and self.height:
            ctx.width, ctx.height = self.width, self.height
        ctx.thread_count = 1  # 139 cameras: no decoder thread pools
        ctx.skip_frame = "NONKEY"
        if self.codec_name in NO_LOOP_FILTER_CODECS:
            ctx.options = {"skip_loop_filter": "all"}
        ctx.open()  # here, so that a decoder that cannot open says so at once
        return ctx

    @classmethod
    def for_stream(cls, stream) -> KeyframeDecoder:
        cc = stream.codec_context
        return cls(cc.name, cc.extradata, cc.width or 0, cc.height or 0)

    def decode(self, data: bytes) -> av.VideoFrame | None:
        if self._parameter_sets is not None and h264_ids_resolved(self._parameter_sets, data):
            frame = self._decode_shared(self._parameter_sets + data)
            if frame is not None:
                return frame
            # No picture: a decoder of its own decides (and raises what it raises), so that nothing about
            # the shared decoder can make a camera's keyframes look undecodable.
        ctx = self._context()
        frames = ctx.decode(av.Packet(data))
        if not frames:
            # The decoder holds the picture back until the next input; a keyframe alone must come out.
            frames = ctx.decode(None)
        return frames[-1] if frames else None

    def _decode_shared(self, data: bytes) -> av.VideoFrame | None:
        slot = shared_context(self.codec_name)
        if not slot.lock.acquire(blocking=False):
            return None  # busy: a decoder of its own now beats waiting for every sample queued before
        try:
            ctx = slot.ctx
            try:
                if ctx is None:
                    # Without extradata: every keyframe brings its camera's parameter sets.
                    ctx = slot.ctx = self._context(extradata=False)
                frames = ctx.decode(av.Packet(data))
                if not frames:
                    frames = ctx.decode(None)  # drains: the flush below makes it take input again
                # Forget this camera's pictures (the frame returned keeps its own buffer: the pool does
                # not hand out a buffer still referenced).
                ctx.flush_buffers()
            except (av.error.FFmpegError, ValueError, MemoryError) as exc:
                log.debug("analysis: shared %s decoder failed, a new one takes over: %s", self.codec_name, exc)
                slot.ctx = None
                return None
            if not frames:
                return None
            slot.samples += 1
            return frames[-1]
        finally:
            slot.lock.release()


def business_hours_check(hours: str | None, tz) -> Callable[[int], bool] | None:
    if not hours:
        return None
    try:
        ranges = BusinessHours.parse(hours).seconds_of_day()
    except ValueError:
        return None

    def inside(t_ms: int) -> bool:
        local = datetime.fromtimestamp(t_ms / 1000, tz)
        sec = local.hour * 3600 + local.minute * 60 + local.second
        return any(a <= sec < b for a, b in ranges)

    return inside


class StationAnalysisObserver(StreamObserver):
    """The StreamObserver of one camera (see vms.ingest.observers)."""

    takes_copied = True  # the activity tracker needs only the sizes and times of the other packets

    def __init__(
        self,
        station_id: str,
        cfg: AnalysisSettings,
        sink: EventSink,
        clock: Clock,
        calibration: StationCalibration | None = None,
        look_file: Path | None = None,
        in_business_hours: Callable[[int], bool] | None = None,
    ) -> None:
        self.station_id = station_id
        self.sink = sink
        self.clock = clock
        self.look_file = look_file
        look = load_look(look_file) if look_file else None
        self.detector = StationDetector(cfg, calibration, look, in_business_hours)
        self._base_cfg = cfg
        self._decoder: KeyframeDecoder | None = None
        self.schedule = SampleSchedule(self.detector.cfg)
        self._last_save = clock.monotonic()
        self._lock = threading.Lock()
        self._errors = 0
        self.samples = 0
        self.decode_failures = 0  # sampled keyframes that gave no picture (see StationDetector.undecodable)
        self.last_decode_error: str | None = None
        self.decode_seconds = 0.0
        self._maybe_reset_reference()

    def _emit(self, events: list[Event]) -> None:
        if events:
            self.sink.submit(self.station_id, events)

    def _error(self, what: str, exc: BaseException) -> None:
        self._errors += 1
        if self._errors <= 5 or self._errors % 1000 == 0:
            log.warning("analysis %s: %s failed (%d so far): %s", self.station_id, what, self._errors, exc)

    # -- StreamObserver ---------------------------------------------------------------------------
    def on_connect(self, stream, wall_ms: int) -> None:
        try:
            with self._lock:
                cc = stream.codec_context
                self._decoder = None
                self.schedule.restart()
                self._emit(self.detector.connected(wall_ms, cc.width or 0, cc.height or 0))
                try:
                    self._decoder = KeyframeDecoder.for_stream(stream)
                except Exception as exc:  # no keyframe of this connection will be decoded: a fault now
                    detail = f"no {cc.name} decoder opens for this stream: {exc}"
                    self._decode_failed(detail)
                    self._emit(self.detector.undecodable(wall_ms, detail, at_once=True))
                    self._error("opening the decoder", exc)
        except Exception as exc:
            self._decoder = None
            self._error("connect", exc)

    def on_packet(self, packet, wall_ms: int) -> None:
        try:
            if not packet.is_keyframe:
                # 29 packets of 30: only the activity tracker counts their bytes. Only this (the
                # camera's) thread touches the tracker (tick and calibration leave it alone): no lock.
                self.detector.activity.packet(wall_ms, packet.size, False)
                return
            with self._lock:
                self.detector.packet(wall_ms, packet.size, True)
                if self._decoder is None or not self.schedule.due(wall_ms, packet.size, self.detector.unsettled):
                    return
                self.schedule.taken(wall_ms)
                self._sample(self._decoder, bytes(packet), wall_ms)
            # Outside the lock: _save_look takes it itself (a plain Lock; taking it twice hung the
            # camera thread for good, issue 16), and the file write must not hold up tick().
            if self.look_file and self.clock.monotonic() - self._last_save >= self.detector.cfg.model_save_minutes * 60:
                self._save_look()
        except Exception as exc:
            self._error("packet", exc)

    def on_copied(self, count: int, nbytes: int, first_ms: int, last_ms: int) -> None:
        """Non-key packets the native copier recorded without handing them over (one call per GOP or
        second): the activity tracker only needs their sizes and times."""
        try:
            self.detector.activity.copied(first_ms, last_ms, nbytes, count)
        except Exception as exc:
            self._error("packet", exc)

    def _sample(self, decoder: KeyframeDecoder, data: bytes, wall_ms: int) -> None:
        t0 = time.thread_time()
        try:
            frame = decoder.decode(data)
        except (av.error.FFmpegError, ValueError) as exc:
            frame, problem = None, f"{type(exc).__name__}: {exc}"
            self._error("decoding a keyframe", exc)
        else:
            problem = "the decoder gave no picture"
        if frame is None:
            # Not silent (issue 17): a camera whose keyframes never decode is a fault, not just a log line.
            detail = f"keyframe of {decoder.codec_name} cannot be decoded: {problem}"
            self._decode_failed(detail)
            self._emit(self.detector.undecodable(wall_ms, detail))
            return
        y, u, v = frame_planes(frame)
        events = self.detector.frame(wall_ms, y, u, v)
        self.decode_seconds += time.thread_time() - t0
        self.samples += 1
        self._emit(events)

    def _decode_failed(self, detail: str) -> None:
        self.decode_failures += 1
        self.last_decode_error = detail

    def on_disconnect(self, wall_ms: int, reason: str) -> None:
        try:
            with self._lock:
                self._decoder = None
                self._emit(self.detector.disconnected(wall_ms, reason))
            self._save_look()
        except Exception as exc:
            self._error("disconnect", exc)

    # -- from the worker's analysis thread --------------------------------------------------------
    def tick(self, now_ms: int) -> None:
        try:
            with self._lock:
                self._emit(self.detector.tick(now_ms))
        except Exception as exc:
            self._error("tick", exc)

    def set_calibration(self, calibration: StationCalibration) -> None:
        with self._lock:
            d = self.detector
            d.calibration = calibration
            d.cfg = calibration.effective_settings(self._base_cfg)
            d.states.hysteresis_ms = int(d.cfg.hysteresis_seconds * 1000)
            self.schedule.configure(d.cfg)
            d._mask_cache = None
            d._prev = None  # a new mask makes the previous picture incomparable
            self._maybe_reset_reference()

    def _maybe_reset_reference(self) -> None:
        reset = self.detector.calibration.reference_reset_ms
        if reset and reset > self.detector.look.reference_since_ms:
            self.detector.look.reset_references(reset)

    def _save_look(self, lock_timeout: float = -1) -> None:
        """Write what the station learned. Never call with self._lock held: it takes the lock only to
        serialise the look (a consistent copy), then writes the file without it. With `lock_timeout`
        (seconds), gives up when the lock stays taken that long (a camera thread stuck inside on_packet)."""
        if not self.look_file:
            return
        self._last_save = self.clock.monotonic()
        try:
            if not self._lock.acquire(timeout=lock_timeout):
                log.error("analysis %s: learned look not saved: its camera thread has held the observer "
                          "for %g s", self.station_id, lock_timeout)
                return
            try:
                text = look_json(self.detector.look)
            finally:
                self._lock.release()
            write_look(self.look_file, text)
            log.debug("analysis %s: learned look saved", self.station_id)
        except OSError as exc:
            self._error("saving the learned look", exc)


class AnalysisObserverFactory:
    """Made once per ingest worker: observer per station, one sink, one thread that flushes the sink
    every few seconds, raises signal_lost for cameras that stay away and picks up calibration edits
    (every analysis.calibration_reload_seconds)."""

    # At a stop, how long to wait for the analysis thread and for each observer's lock: a camera thread
    # stuck while holding its observer (the worker stops because it hung) must not use up the worker's
    # whole stop deadline (ingest.stop_seconds) and keep the other stations' looks and events unsaved.
    CLOSE_WAIT_S = 1.0

    def __init__(self, settings: Settings, database: Database, clock: Clock, start_thread: bool = True) -> None:
        self.settings = settings
        self.database = database
        self.clock = clock
        self.sink = AnalysisSink(database)
        self.observers: dict[str, StationAnalysisObserver] = {}
        self._calibration_seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_reload = 0.0
        if start_thread:
            self._thread = threading.Thread(target=self._run, name="analysis-sink", daemon=True)
            self._thread.start()

    def __call__(self, station_id: str) -> StationAnalysisObserver | None:
        if not self.settings.analysis.enabled:
            return None
        with self._lock:
            existing = self.observers.get(station_id)
            if existing is not None:
                return existing
        try:
            calibration, hours, updated = self._station(station_id)
        except Exception as exc:  # never stop a camera because analysis could not start
            log.error("analysis %s: cannot read the station (%s); analysing with defaults", station_id, exc)
            calibration, hours, updated = StationCalibration(), None, 0
        observer = StationAnalysisObserver(
            station_id, self.settings.analysis, self.sink, self.clock, calibration,
            look_path(self.settings.data_dir, station_id), business_hours_check(hours, self.settings.tz),
        )
        with self._lock:
            self.observers.setdefault(station_id, observer)
            self._calibration_seen[station_id] = updated
            observer = self.observers[station_id]
        self.sink.submit(station_id, [Resumed(self.clock.now_ms())])
        return observer

    def release(self, station_id: str) -> None:
        """The station is no longer recorded by this worker (disabled, removed, moved to another worker):
        save what it learned and stop analysing it, so no `signal_lost` is raised for a camera that is
        simply not ours any more."""
        with self._lock:
            observer = self.observers.pop(station_id, None)
            self._calibration_seen.pop(station_id, None)
        if observer is not None:
            observer._save_look()

    def _station(self, station_id: str) -> tuple[StationCalibration, str | None, int]:
        with self.database.session() as s:
            row = s.get(Station, station_id)
            if row is None:
                return StationCalibration(), None, 0
            try:
                cal = parse_calibration(row.calibration, f"station {station_id} calibration")
            except VmsError as exc:
                log.error("analysis %s: %s; analysing without calibration", station_id, exc)
                cal = StationCalibration()
            return cal, row.business_hours, row.updated_ms or 0

    def tick(self) -> None:
        """One round of the worker's analysis thread (also callable directly, e.g. from tests)."""
        now = self.clock.now_ms()
        with self._lock:
            observers = list(self.observers.values())
        for ob in observers:
            ob.tick(now)
        if time.monotonic() - self._last_reload >= self.settings.analysis.calibration_reload_seconds:
            self._last_reload = time.monotonic()
            self._reload_calibration()
        written = self.sink.flush()
        log.debug("analysis tick: %d cameras, %d events written", len(observers), written)

    def _reload_calibration(self) -> None:
        ids = list(self.observers)
        if not ids:
            return
        try:
            with self.database.session() as s:
                rows = s.execute(select(Station.id, Station.calibration, Station.updated_ms)
                                 .where(Station.id.in_(ids))).all()
        except Exception as exc:
            log.warning("analysis: cannot reload calibration: %s", exc)
            return
        changed = [(sid, raw, updated) for sid, raw, updated in rows
                   if (updated or 0) != self._calibration_seen.get(sid)]
        log.debug("analysis: calibration reloaded for %d stations, %d changed", len(rows), len(changed))
        for sid, raw, updated in changed:
            self._calibration_seen[sid] = updated or 0
            try:
                self.observers[sid].set_calibration(parse_calibration(raw, f"station {sid} calibration"))
            except VmsError as exc:
                log.error("analysis %s: %s; keeping the previous calibration", sid, exc)

    def _run(self) -> None:
        interval = self.settings.analysis.sink_flush_seconds
        while not self._stop.wait(interval):
            try:
                self.tick()
            except Exception as exc:
                log.warning("analysis thread: %s", exc)

    def close(self) -> None:
        """Save learned looks and write what is pending (call when the worker stops)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.CLOSE_WAIT_S)  # it may wait in tick() for a stuck observer
        with self._lock:
            observers = list(self.observers.values())
        for ob in observers:
            ob._save_look(lock_timeout=self.CLOSE_WAIT_S)
        self.sink.flush()
        if observers:
            log.info("analysis: %d cameras, %d samples (%d early), %.1f s CPU in samples", len(observers),
                     sum(ob.samples for ob in observers), sum(ob.schedule.early for ob in observers),
                     sum(ob.decode_seconds for ob in observers))


def make_analysis_observer_factory(settings: Settings, database: Database, clock: Clock) -> AnalysisObserverFactory:
    """The ObserverFactory for vms.ingest: call it with a station id from the camera's thread."""
    return AnalysisObserverFactory(settings, database, clock)
