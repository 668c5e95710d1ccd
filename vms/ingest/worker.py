"""An ingest worker process: camera sessions as threads (PyAV releases the GIL in demux and mux),
one index writer, one status publisher. It keeps its set of cameras in step with the database."""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from vms.core.clock import Clock, SystemClock
from vms.core.settings import Settings
from vms.core.signals import StopSignals
from vms.db.engine import Database
from vms.db.models import Gap, Segment
from vms.ingest.assignment import AllEnabledCameras, CameraAssignment, CameraAssignmentEntry
from vms.ingest.health import CameraState, judge_state
from vms.ingest.keyframes import KeyframeCacheObserver
from vms.ingest.observers import ObserverFactory, StreamObserver
from vms.ingest.session import CameraSession
from vms.ingest.sources import OpenedSource, SourceOpener, SourceUnavailable, load_openers, url_scheme
from vms.ingest.stall import StallWatchdog
from vms.recording.index import IndexWriter
from vms.recording.liveness import RecorderLock, StationWriterLock
from vms.recording.recorder import StreamRecorder
from vms.recording.repair import recover_growing, recover_orphans
from vms.recording.volumes import VolumeSet

log = logging.getLogger(__name__)

ObserverFactoryMaker = Callable[[Settings, Database, Clock], ObserverFactory]

# Exit code of a worker that stopped itself because one of its camera threads hung: the supervisor
# restarts it at once (a Python thread cannot be killed; a process can).
EXIT_HUNG = 75


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
    # {URL scheme: "module:function"} of SourceOpenerMaker functions for cameras that are not RTSP
    # (gb28181: vms.gb28181.source), loaded by name for the same reason.
    source_openers: dict[str, str] = field(default_factory=dict)
    reconcile_seconds: float | None = None  # None: settings.ingest.reconcile_seconds
    supervisor_pid: int | None = None
    # (reason, detail) of the gap that explains the hole an unclean end of the previous worker left,
    # e.g. ("ingest_hung", ...) when the supervisor killed it for missing heartbeats.
    unclean_gap: tuple[str, str] | None = None


def _no_source(scheme: str) -> SourceOpener:
    """The opener of a scheme no source serves here (gb28181 with the GB server off): every attempt is
    a gap that says why, instead of FFmpeg's "protocol not found"."""

    def refuse(url: str, transport: str, stop: threading.Event) -> OpenedSource:
        raise SourceUnavailable("unsupported_source", f"{scheme}:// cameras are not served by this server "
                                                      f"(for gb28181://, set gb28181.enabled: true)")
    return refuse


def _load_factory(path: str) -> ObserverFactoryMaker:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class IngestWorker:
    """Threads (see docs/design/threads.md): the main thread reconciles; a camera thread per session;
    the watchdog ticks sessions, ends stalls, judges hangs and beats the heartbeat; the status thread
    publishes judged states; the index writer owns the database writes."""

    def __init__(self, spec: WorkerSpec, clock: Clock | None = None, database: Database | None = None,
                 assignment: CameraAssignment | None = None, heartbeat=None) -> None:
        self.spec = spec
        # A multiprocessing.Value('d') the supervisor reads: time.monotonic() of the last healthy round.
        self.heartbeat = heartbeat
        self.exit_code = 0
        self.hung_station: str | None = None
        self._status_mono = time.monotonic()  # when the status thread last published
        self.settings = spec.settings
        self.clock = clock or SystemClock()
        self.db = database or Database.from_settings(self.settings)
        self.node = self.settings.ingest.node
        self.volumes = VolumeSet.from_settings(self.settings)
        self.assignment = assignment or AllEnabledCameras(spec.url_overrides, spec.only_stations)
        self.index = IndexWriter(self.db, self.node)
        self.sessions: dict[str, tuple[CameraAssignmentEntry, CameraSession]] = {}
        self.stop_event = threading.Event()
        # station -> (monotonic s, frames, bytes, fps, bitrate) of the last rate measurement
        self._published: dict[str, tuple[float, int, int, float | None, float | None]] = {}
        self._stuck: dict[str, tuple[CameraSession, float]] = {}  # did not stop in time: (session, since)
        # station -> its writer lock, held from before its crash repair until its session's thread ended
        self._writer_locks: dict[str, StationWriterLock] = {}
        self._told_locked: set[str] = set()  # stations whose "recorded elsewhere" was logged
        self._told_unlockable: set[str] = set()  # stations whose lock could not be made (logged once)
        self._first_reconcile = True
        self._factories: list[ObserverFactory] = []
        for path in spec.observer_factories:
            try:
                self._factories.append(_load_factory(path)(self.settings, self.db, self.clock))
            except Exception:  # noqa: BLE001 - analysis missing must not stop recording
                log.exception("observer factory %s unavailable; recording without it", path)
        self._openers: dict[str, SourceOpener] = {}
        try:
            self._openers = load_openers(spec.source_openers, self.settings)
        except Exception:  # noqa: BLE001 - RTSP cameras record without them
            log.exception("camera sources %s unavailable; their cameras are not recorded", spec.source_openers)

    def run(self) -> None:
        """Record until stop() is called (or a camera thread hangs: then exit_code is EXIT_HUNG)."""
        lock = RecorderLock(self.settings.data_dir, self.node)
        self.index.start()
        try:
            # The watchdog (and so the heartbeat) before the first reconcile, which may take a while
            # (crash repair of the segments a killed run left).
            StallWatchdog(self._watched_sessions, self.settings.ingest.stall_seconds, self.stop_event, self.clock,
                          after_round=self._after_watchdog_round).start()
            threading.Thread(target=self._publish_status_loop, name="status", daemon=True).start()
            self.reconcile(initial=True)
            while not self.stop_event.wait(self.spec.reconcile_seconds or self.settings.ingest.reconcile_seconds):
                try:
                    self.reconcile()
                except Exception:  # noqa: BLE001 - e.g. the database went away mid-way: try next round
                    log.exception("reconcile failed; the cameras already recording go on")
        finally:
            # Bounded: a hung camera thread (or an observer it holds a lock of) must not keep the
            # process from exiting; what is not written by the deadline is repaired at the next start.
            closer = threading.Thread(target=self._close, name="worker-stop", daemon=True)
            closer.start()
            closer.join(self.settings.ingest.stop_seconds)
            if closer.is_alive():
                log.error("worker did not finish stopping in %.0f s; exiting anyway (the next start repairs "
                          "what was left)", self.settings.ingest.stop_seconds)
            else:
                # Everything written and committed: the stations are free (a worker run in a thread of a
                # longer-lived process, as tests do, would otherwise keep them from the next one).
                for sid in list(self._writer_locks):
                    self._release_writer(sid)
            lock.release()

    def _close(self) -> None:
        # A hung session is told to stop but not waited for: it would use up the whole deadline.
        hung = self.sessions.pop(self.hung_station, None) if self.hung_station else None
        if hung is not None:
            hung[1].stop()
        # The writer locks stay until the process exits: another worker taking a station before this one's
        # last segment and gap are committed would repair a stale row and open a second gap.
        self._stop_sessions(list(self.sessions), deadline=time.monotonic() + self.settings.ingest.stop_seconds - 1,
                            release=False)
        for factory in self._factories:
            close = getattr(factory, "close", None)
            if close is not None:
                try:
                    close()  # e.g. analysis saves what each station learned
                except Exception:  # noqa: BLE001
                    log.exception("closing observer factory %s failed", factory)
        self.index.stop(timeout=max(1.0, self.settings.ingest.stop_seconds / 2))

    def stop(self) -> None:
        self.stop_event.set()

    def _watched_sessions(self) -> list[CameraSession]:
        return [sess for _e, sess in list(self.sessions.values())]

    # --- health: judged from evidence, acted on here (docs/design/recording.md "Health") ---
    def _after_watchdog_round(self) -> None:
        if self.hung_station is None:
            self._check_hung()
        # The heartbeat says the watchdog goes round and the status thread publishes; the supervisor
        # kills and restarts a worker whose heartbeat stops.
        status_late = time.monotonic() - self._status_mono > 3 * self.settings.ingest.status_interval_seconds + 5
        if self.heartbeat is not None and self.hung_station is None and not status_late:
            self.heartbeat.value = time.monotonic()

    def _check_hung(self) -> None:
        ing = self.settings.ingest
        now = self.clock.monotonic()
        for _entry, session in list(self.sessions.values()):
            if judge_state(session.evidence(), now, ing.stall_seconds, ing.hung_grace_seconds) is CameraState.HUNG:
                self._declare_hung(session, f"no footage recorded for {now - session.progress_mono:.0f} s "
                                            f"(the camera thread says {session.health.state})")
                return
        for session, since in list(self._stuck.values()):
            if session.is_alive() and now - since > ing.stop_seconds + ing.hung_grace_seconds:
                self._declare_hung(session, f"its session did not stop in {now - since:.0f} s")
                return

    def _declare_hung(self, session: CameraSession, why: str) -> None:
        sid = session.station_id
        self.hung_station = sid
        self.exit_code = EXIT_HUNG
        log.critical("%s: CAMERA THREAD HUNG: %s; restarting ingest worker %d (its %d cameras reconnect)", sid, why,
                     self.spec.worker_index, len(self.sessions))
        # If the stuck thread had already opened a gap (with its reason), the next worker adopts that one.
        if not session.recorder.gap_open:
            last = session.health.last_packet_ms
            start = last if last is not None else self.clock.now_ms()
            self.index.open_gap(sid, start, "ingest_hung", f"camera thread hung: {why}; worker restarted",
                                session.recorder.stream)
        self._publish_status([session])  # says `hung` until the restarted worker reports it again
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
        # A changed URL (or a station no longer recorded here) ends what the old camera told us (its
        # auth_failed fault); the new session starts again with quick tries.
        retired = [sess for sid, (entry, sess) in self.sessions.items() if wanted.get(sid) != entry]
        self._stop_sessions(gone)
        for sess in retired:
            sess.retire()
        # Stations no longer recorded here at all: observers that keep per-station state (analysis)
        # forget them, or they would report the station's camera as lost.
        for sid in [sess.station_id for sess in retired if sess.station_id not in wanted]:
            for factory in self._factories:
                release = getattr(factory, "release", None)
                if release is not None:
                    try:
                        release(sid)
                    except Exception:  # noqa: BLE001
                        log.exception("%s: releasing its observer failed", sid)
        # A session that did not stop in time still owns its files and its connection: never start
        # a second recorder for that camera until it has (or the worker is restarted for it).
        for sid in [sid for sid, t in self._stuck.items() if not t[0].is_alive()]:
            del self._stuck[sid]
            self._release_writer(sid)
        new = [e for sid, e in wanted.items() if sid not in self.sessions and sid not in self._stuck]
        new = [e for e in new if self._take_writer(e.station_id)]
        log.debug("reconcile: %d cameras wanted, %d stopped, %d to start", len(wanted), len(gone), len(new))
        try:
            if new:
                # The stopped sessions' last index writes (segment complete, gap) must land before the
                # new sessions read where their footage ended: while the database is away, wait.
                if not self.index.flush():
                    log.warning("index writes are waiting for the database; %d cameras start later", len(new))
                    return
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
            self._first_reconcile = False
        finally:
            # Taken for a station that did not start (the database away, an error on the way): not kept
            # with no session behind it.
            for e in new:
                if e.station_id not in self.sessions:
                    self._release_writer(e.station_id)

    def _take_writer(self, sid: str) -> bool:
        """This station's writer lock (see StationWriterLock): False while another process holds it."""
        if sid in self._writer_locks:
            return True
        try:
            lock = StationWriterLock.try_take(self.settings.data_dir, self.node, sid)
        except OSError as exc:
            # The data directory cannot hold the lock (full, read-only, permissions): recording matters
            # more than the guard, so record without it.
            if sid not in self._told_unlockable:
                self._told_unlockable.add(sid)
                log.error("%s: cannot take its writer lock (%s); recording it without", sid, exc)
            return True
        if lock is None:
            if sid not in self._told_locked:
                self._told_locked.add(sid)
                log.error("%s: another process of node %s still records this station (a worker of a killed "
                          "supervisor still stopping, or a second `vms ingest`); not recording or repairing it "
                          "until it stops", sid, self.node)
            return False
        if sid in self._told_locked:
            self._told_locked.discard(sid)
            log.warning("%s: the other process stopped; recording it here", sid)
        self._writer_locks[sid] = lock
        return True

    def _release_writer(self, sid: str) -> None:
        lock = self._writer_locks.pop(sid, None)
        if lock is not None:
            lock.release()

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
        unclean = self.spec.unclean_gap if self._first_reconcile else None
        recorder.start_run(tuple(open_gap) if open_gap else None, *(unclean or ()))
        observers: list[StreamObserver] = [KeyframeCacheObserver(self.settings.data_dir, sid,
                                           idle_interval_s=self.settings.ingest.snapshot_keyframe_seconds)]
        for factory in self._factories:
            try:
                obs = factory(sid)
            except Exception:  # noqa: BLE001
                log.exception("%s: observer factory failed; recording without it", sid)
                obs = None
            if obs is not None:
                observers.append(obs)
        scheme = url_scheme(entry.url)
        opener = None if scheme in ("rtsp", "rtsps") else self._openers.get(scheme)
        if opener is None and scheme not in ("rtsp", "rtsps"):
            opener = _no_source(scheme)
        return CameraSession(sid, entry.url, entry.transport, recorder, observers, self.settings.ingest,
                             self.clock, self.index, opener=opener)

    def _stop_sessions(self, station_ids: list[str], deadline: float | None = None, release: bool = True) -> None:
        """Stop these sessions, all at once, waiting for them until `deadline` (monotonic; default
        stop_seconds from now). `release` False: their writer locks stay until the process exits (the
        worker is stopping, and their last index writes are not committed yet)."""
        sessions = [self.sessions[sid][1] for sid in station_ids if sid in self.sessions]
        if not sessions:
            return
        if deadline is None:
            deadline = time.monotonic() + self.settings.ingest.stop_seconds
        for s in sessions:
            s.stop()
        for s in sessions:
            s.join(max(0.0, deadline - time.monotonic()))
            if s.is_alive():
                log.error("%s: session did not stop in time; its camera is not restarted until it does",
                          s.station_id)
                self._stuck[s.station_id] = (s, self.clock.monotonic())
        self._publish_status(sessions)
        for sid in station_ids:
            self.sessions.pop(sid, None)
            self._published.pop(sid, None)
            if release and sid not in self._stuck:
                self._release_writer(sid)  # a stuck session keeps it: it may still write

    def _publish_status_loop(self) -> None:
        while not self.stop_event.wait(self.settings.ingest.status_interval_seconds):
            self._publish_status()

    def _publish_status(self, sessions: list[CameraSession] | None = None) -> None:
        """Write each session's judged state (never what its thread says of itself alone), and its
        rates measured over at least half a status interval, only while it streams."""
        ing = self.settings.ingest
        now_ms, mono = self.clock.now_ms(), self.clock.monotonic()
        if sessions is None:
            sessions = self._watched_sessions()
            self._status_mono = time.monotonic()
        for session in sessions:
            sid, h = session.station_id, session.health
            state = judge_state(session.evidence(), mono, ing.stall_seconds, ing.hung_grace_seconds)
            reason, detail = h.reason, h.detail
            if state is not h.state:
                idle = mono - session.progress_mono
                reason = session.recorder.gap_reason or state.value  # e.g. disk_error: why nothing is written
                detail = f"no footage recorded for {idle:.0f} s; the camera thread says {h.state.value}"
            fps = bitrate = None
            prev = self._published.get(sid)
            if state is CameraState.STREAMING:
                # Between the moments the counts grew (see CameraHealth.counted_mono).
                if prev is None or h.frames < prev[1]:
                    self._published[sid] = (h.counted_mono, h.frames, h.bytes, None, None)
                elif h.counted_mono - prev[0] >= ing.status_interval_seconds / 2:
                    dt = h.counted_mono - prev[0]
                    fps, bitrate = (h.frames - prev[1]) / dt, (h.bytes - prev[2]) * 8 / dt
                    self._published[sid] = (h.counted_mono, h.frames, h.bytes, fps, bitrate)
                else:  # too soon to measure again (a stop's publish): the last figures stand
                    fps, bitrate = prev[3], prev[4]
            else:
                self._published.pop(sid, None)  # a new connection measures afresh
            self.index.put_status(
                sid, state=state.value, reason=reason, detail=detail, fps=fps, bitrate_bps=bitrate, codec=h.codec,
                width=h.width, height=h.height, last_packet_ms=h.last_packet_ms, reconnects=h.reconnects,
                segments_written=session.recorder.segments_written, bytes_written=session.recorder.bytes_written,
                audio=session.recorder.audio_status, updated_ms=now_ms)


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


def run_worker_process(spec: WorkerSpec, stop_flag, heartbeat=None) -> None:
    """Entry point of a spawned worker process. Exits with the worker's exit code (EXIT_HUNG when a
    camera thread hung), without waiting for threads that are stuck."""
    import signal

    tune_malloc()

    from vms.core.logging_setup import configure_logging

    holder: list[IngestWorker] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which tells us
    # A SIGTERM to the whole process group (systemd, docker stop) stops this worker cleanly: segments
    # are finished and indexed, the gap is opened, rather than dying mid-fragment. The handler only
    # stores the signal (vms.core.signals): the watch thread acts on it, since a handler that sets an
    # Event the main thread waits on can deadlock it.
    sigterm = StopSignals((signal.SIGTERM,))

    def stop_requested() -> bool:
        return bool(stop_flag.value) or sigterm.received is not None

    def watch() -> None:
        # Stop when told to, and also when the supervisor is gone (killed): an orphaned worker
        # would otherwise keep a second connection to every camera after the supervisor restarts.
        while not stop_requested():
            time.sleep(0.5)
            if spec.supervisor_pid is not None and os.getppid() != spec.supervisor_pid:
                logging.getLogger(__name__).error("supervisor %d is gone; worker stopping", spec.supervisor_pid)
                break
        if holder:
            holder[0].stop()
        else:
            stopped_early.append(True)

    stopped_early: list[bool] = []
    threading.Thread(target=watch, daemon=True).start()
    configure_logging(spec.settings.log_level)
    code = 0
    try:
        worker = IngestWorker(spec, heartbeat=heartbeat)
        holder.append(worker)
        if not stopped_early and not stop_requested():
            worker.run()
        code = worker.exit_code
    except BaseException:
        log.exception("ingest worker %d failed", spec.worker_index)
        code = 1
    finally:
        # Flush the logs, but not for ever: a thread stuck writing a line holds its handler's lock.
        flusher = threading.Thread(target=logging.shutdown, daemon=True)
        flusher.start()
        flusher.join(2.0)
        # Not sys.exit: interpreter shutdown would wait on what a hung camera thread holds.
        os._exit(code)
