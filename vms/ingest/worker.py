"""An ingest worker process: camera sessions as threads (PyAV releases the GIL in demux and mux),
one index writer, one status publisher. It keeps its set of cameras in step with the database."""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from vms.core.clock import Clock, SystemClock
from vms.core.settings import Settings
from vms.db.engine import Database
from vms.db.models import Gap, Segment
from vms.ingest.assignment import AllEnabledCameras, CameraAssignment, CameraAssignmentEntry
from vms.ingest.keyframes import KeyframeCacheObserver
from vms.ingest.session import CameraSession
from vms.ingest.stall import StallWatchdog
from vms.recording.index import IndexWriter
from vms.recording.recorder import StreamRecorder
from vms.recording.repair import recover_growing, recover_orphans
from vms.recording.volumes import VolumeSet

log = logging.getLogger(__name__)

ObserverFactoryMaker = Callable[[Settings, Database, Clock], Callable[[str], object]]


@dataclass
class WorkerSpec:
    """Everything a worker process needs; picklable (workers are spawned, not forked)."""

    settings: Settings
    worker_index: int = 0
    worker_count: int = 1
    url_overrides: dict[str, str] = field(default_factory=dict)
    only_stations: set[str] | None = None
    # "module:function" names of ObserverFactoryMaker functions (analysis, live relay...), so that
    # ingest needs no import of the layers above it.
    observer_factories: list[str] = field(default_factory=list)
    reconcile_seconds: float = 15.0
    supervisor_pid: int | None = None


def _load_factory(path: str) -> ObserverFactoryMaker:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class IngestWorker:
    def __init__(self, spec: WorkerSpec, clock: Clock | None = None, database: Database | None = None,
                 assignment: CameraAssignment | None = None) -> None:
        self.spec = spec
        self.settings = spec.settings
        self.clock = clock or SystemClock()
        self.db = database or Database.from_settings(self.settings)
        self.node = self.settings.ingest.node
        self.volumes = VolumeSet.from_settings(self.settings)
        self.assignment = assignment or AllEnabledCameras(spec.url_overrides, spec.only_stations)
        self.index = IndexWriter(self.db, self.node)
        self.sessions: dict[str, tuple[CameraAssignmentEntry, CameraSession]] = {}
        self.stop_event = threading.Event()
        self._published: dict[str, tuple[int, int, int]] = {}  # station -> (time, frames, bytes)
        self._stuck: dict[str, CameraSession] = {}
        self._factories = []
        for path in spec.observer_factories:
            try:
                self._factories.append(_load_factory(path)(self.settings, self.db, self.clock))
            except Exception:  # noqa: BLE001 - analysis missing must not stop recording
                log.exception("observer factory %s unavailable; recording without it", path)

    def run(self) -> None:
        """Record until stop() is called."""
        self.index.start()
        try:
            self.reconcile(initial=True)
            publisher = threading.Thread(target=self._publish_status_loop, name="status", daemon=True)
            publisher.start()
            StallWatchdog(lambda: [sess for _e, sess in list(self.sessions.values())],
                          self.settings.ingest.stall_seconds, self.stop_event, self.clock).start()
            while not self.stop_event.wait(self.spec.reconcile_seconds):
                self.reconcile()
        finally:
            self._stop_sessions(list(self.sessions))
            for factory in self._factories:
                close = getattr(factory, "close", None)
                if close is not None:
                    try:
                        close()  # e.g. analysis saves what each station learned
                    except Exception:  # noqa: BLE001
                        log.exception("closing observer factory %s failed", factory)
            self.index.stop()

    def stop(self) -> None:
        self.stop_event.set()

    def reconcile(self, initial: bool = False) -> None:
        """Start sessions for newly assigned cameras, stop those no longer assigned or changed."""
        try:
            with self.db.session() as s:
                wanted = {e.station_id: e for e in self.assignment.cameras_for(
                    s, self.spec.worker_index, self.spec.worker_count)}
        except Exception:  # noqa: BLE001 - keep recording what we have if the DB hiccups
            log.exception("cannot read the camera assignment; keeping the current sessions")
            return
        # Sessions whose camera changed or left, and threads that died (a bug): stop and restart.
        gone = [sid for sid, (entry, sess) in self.sessions.items()
                if wanted.get(sid) != entry or not sess.is_alive()]
        self._stop_sessions(gone)
        # A session that did not stop in time still owns its files and its connection: never start
        # a second recorder for that camera until it has.
        self._stuck = {sid: t for sid, t in self._stuck.items() if t.is_alive()}
        new = [e for sid, e in wanted.items() if sid not in self.sessions and sid not in self._stuck]
        if new:
            # The stopped sessions' last index writes (segment complete, gap) must land before the
            # new sessions read where their footage ended.
            self.index.flush()
            ids = [e.station_id for e in new]
            actions = recover_growing(self.db, self.volumes, self.node, ids)
            actions += recover_orphans(self.db, self.volumes, self.settings.tz, self.node, ids, self.clock.now_ms())
            if actions:
                log.warning("recovered %d segments left by an earlier run", len(actions))
        # Every session is prepared (its database reads done) before any starts: a started session
        # probes its camera, and 70 probing threads (PyAV's open deadline takes the GIL at every
        # check) slowed the preparation of the rest to ~0.3 s each, so the last camera of a worker
        # started recording ~20 s after the first.
        with self.db.session() as s:
            ends = {e.station_id: self._where_footage_ends(s, e.station_id) for e in new}
        prepared = [(entry, self._make_session(entry, *ends[entry.station_id])) for entry in new]
        for entry, session in prepared:
            session.start()
            # Registered once started: stopping joins every registered session.
            self.sessions[entry.station_id] = (entry, session)
            log.info("recording %s", session.describe())

    @staticmethod
    def _where_footage_ends(s, sid: str) -> tuple:
        """(end, volume) of the station's newest segment and (id, reason, start) of its open gap."""
        last = s.execute(select(Segment.end_ms, Segment.volume).where(
            Segment.station_id == sid, Segment.stream == "main", Segment.state != "deleting")
            .order_by(Segment.start_ms.desc()).limit(1)).first()
        open_gap = s.execute(select(Gap.id, Gap.reason, Gap.start_ms).where(
            Gap.station_id == sid, Gap.stream == "main", Gap.end_ms.is_(None))
            .order_by(Gap.start_ms.desc()).limit(1)).first()
        return last, open_gap

    def _make_session(self, entry: CameraAssignmentEntry, last, open_gap) -> CameraSession:
        sid = entry.station_id
        recorder = StreamRecorder(
            sid, self.volumes, self.settings.tz, self.index, self.clock, self.settings.ingest.segment_seconds,
            last_end_ms=last[0] if last else None, previous_volume=last[1] if last else None,
            keep_audio=self.settings.ingest.audio == "keep")
        recorder.start_run(tuple(open_gap) if open_gap else None)
        observers = [KeyframeCacheObserver(self.settings.data_dir, sid)]
        for factory in self._factories:
            try:
                obs = factory(sid)
            except Exception:  # noqa: BLE001
                log.exception("%s: observer factory failed; recording without it", sid)
                obs = None
            if obs is not None:
                observers.append(obs)
        return CameraSession(sid, entry.url, entry.transport, recorder, observers, self.settings.ingest,
                             self.clock, self.index)

    def _stop_sessions(self, station_ids: list[str]) -> None:
        sessions = [self.sessions[sid][1] for sid in station_ids if sid in self.sessions]
        if not sessions:
            return
        for s in sessions:
            s.stop()
        for s in sessions:
            s.join(self.settings.ingest.stall_seconds + 5)
            if s.is_alive():
                log.error("%s: session did not stop in time; its camera is not restarted until it does",
                          s.station_id)
                self._stuck[s.station_id] = s
        self._publish_status()
        for sid in station_ids:
            self.sessions.pop(sid, None)

    def _publish_status_loop(self) -> None:
        while not self.stop_event.wait(self.settings.ingest.status_interval_seconds):
            self._publish_status()

    def _publish_status(self) -> None:
        now = self.clock.now_ms()
        for sid, (_entry, session) in list(self.sessions.items()):
            h = session.health
            prev = self._published.get(sid)
            fps = bitrate = None
            if prev is not None and now > prev[0]:
                dt = (now - prev[0]) / 1000
                fps = (h.frames - prev[1]) / dt
                bitrate = (h.bytes - prev[2]) * 8 / dt
            self._published[sid] = (now, h.frames, h.bytes)
            self.index.put_status(
                sid, state=h.state, reason=h.reason, detail=h.detail, fps=fps, bitrate_bps=bitrate, codec=h.codec,
                width=h.width, height=h.height, last_packet_ms=h.last_packet_ms, reconnects=h.reconnects,
                segments_written=session.recorder.segments_written, bytes_written=session.recorder.bytes_written,
                audio=session.recorder.audio_status, updated_ms=now)


# glibc malloc settings of a worker process (each overridable with the environment variable VMS_<name>):
# - MALLOC_ARENA_MAX: glibc gives every thread that allocates its own arena; with ~70 camera threads
#   per worker that fragments into hundreds of MB. Two are plenty: the threads spend their time in
#   FFmpeg I/O, not in malloc.
# - MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_: fixed, so FFmpeg's large short-lived buffers
#   (probe frames, keyframes, fragments) go back to the system when freed. glibc's default raises
#   the threshold after the first large free, and the probe's 2 MB frames then stay in the heap as
#   free holes (30 cameras in one process: 404 -> 319 MB RSS; 8.4 -> 7.5 MB PSS per stream at 139).
# Set with mallopt() when the worker starts, before its threads: changing the supervisor's environment
# for the child would race with its other threads' getenv().
WORKER_MALLOC = {"MALLOC_ARENA_MAX": (-8, 2), "MALLOC_MMAP_THRESHOLD_": (-3, 131072),
                 "MALLOC_TRIM_THRESHOLD_": (-1, 131072)}


def tune_malloc() -> None:
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    for name, (param, default) in WORKER_MALLOC.items():
        value = os.environ.get(f"VMS_{name}")
        try:
            libc.mallopt(param, int(value) if value else default)
        except (ValueError, AttributeError) as exc:
            log.warning("malloc setting VMS_%s=%r ignored: %s", name, value, exc)


def run_worker_process(spec: WorkerSpec, stop_event) -> None:
    """Entry point of a spawned worker process."""
    import signal

    tune_malloc()

    from vms.core.logging_setup import configure_logging

    stop_now = threading.Event()
    holder: list[IngestWorker] = []

    def on_sigterm(*_args) -> None:
        # A SIGTERM to the whole process group (systemd, docker stop) stops this worker cleanly:
        # segments are finished and indexed, the gap is opened, rather than dying mid-fragment.
        stop_now.set()
        if holder:
            holder[0].stop()

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which tells us
    signal.signal(signal.SIGTERM, on_sigterm)

    def watch() -> None:
        # Stop when told to, and also when the supervisor is gone (killed): an orphaned worker
        # would otherwise keep a second connection to every camera after the supervisor restarts.
        while not stop_event.wait(1.0):
            if spec.supervisor_pid is not None and os.getppid() != spec.supervisor_pid:
                logging.getLogger(__name__).error("supervisor %d is gone; worker stopping", spec.supervisor_pid)
                break
        stop_now.set()
        if holder:
            holder[0].stop()

    threading.Thread(target=watch, daemon=True).start()
    configure_logging(spec.settings.log_level)
    worker = IngestWorker(spec)
    holder.append(worker)
    if stop_now.is_set():
        return
    worker.run()
