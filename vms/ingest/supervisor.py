"""Starts the ingest worker processes (default one per core), restarts one that dies, hangs or stops
heartbeating, feeds systemd's watchdog while recording is healthy, and stops them within a deadline."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable

from vms.core.settings import Settings
from vms.core.systemd import SystemdNotifier
from vms.ingest.worker import EXIT_HUNG, WorkerSpec, run_worker_process

log = logging.getLogger(__name__)


CAMERAS_PER_WORKER = 70
# A new worker imports PyAV, NumPy and OpenCV and repairs what its predecessor left before its first
# heartbeat: it gets this long on top of heartbeat_timeout_seconds.
STARTUP_GRACE_S = 30.0
# A worker that dies sooner than this after its start is restarted after a growing delay (up to
# MAX_RESPAWN_DELAY_S): a worker that cannot start must not spin.
SHORT_LIFE_S = 30.0
MAX_RESPAWN_DELAY_S = 30.0
WATCH_INTERVAL_S = 0.5


def default_worker_count(cameras: int | None) -> int:
    """One worker per core, and enough that none carries more than ~70 cameras. At 139 cameras on 2 cores,
    2 workers cost the same CPU as 3 (3.30 vs 3.28 ms per stream-second, three alternating runs) and
    0.4 MB less memory per camera (one interpreter fewer)."""
    cores = os.cpu_count() or 1
    return max(cores, math.ceil((cameras or 0) / CAMERAS_PER_WORKER))


@dataclasses.dataclass
class _Slot:
    """One worker position: its current process and what the supervisor knows of it."""

    spec: WorkerSpec
    process: mp.process.BaseProcess | None = None
    # time.monotonic() of its worker's last healthy round: a double in shared memory, made by each
    # spawn (multiprocessing's Value('d', lock=False)); read only while a process runs.
    heartbeat: ctypes.c_double = dataclasses.field(default_factory=ctypes.c_double)
    started_mono: float = 0.0
    short_lives: int = 0
    respawn_at: float | None = None  # a restart waiting for its delay
    unhealthy_since: float | None = None


class IngestSupervisor:
    def __init__(self, settings: Settings, url_overrides: dict[str, str] | None = None,
                 observer_factories: list[str] | None = None, workers: int | None = None,
                 only_stations: set[str] | None = None, cameras: int | None = None,
                 notifier: SystemdNotifier | None = None,
                 on_restart: Callable[[int, str], None] | None = None,
                 source_openers: dict[str, str] | None = None) -> None:
        self.settings = settings
        # Told of every restart (worker index, why), on the watch thread: must return at once.
        self.on_restart = on_restart
        count = workers or settings.ingest.workers or default_worker_count(cameras)
        self._ctx = mp.get_context("spawn")  # never fork a process that runs PyAV threads
        # A shared flag the workers poll, not a multiprocessing.Event: Event.set() waits for every process
        # that was waiting on it to wake, and one that died waiting (killed, or exited while hung) never
        # does, so stop() would hang for good after the first worker restart.
        self._stop = self._ctx.Value("b", 0, lock=False)
        self.specs = [WorkerSpec(settings, i, count, dict(url_overrides or {}), only_stations,
                                 list(observer_factories or []), dict(source_openers or {}),
                                 supervisor_pid=os.getpid()) for i in range(count)]
        self._slots = [_Slot(spec) for spec in self.specs]
        self.restarts = 0
        self.restart_log: list[tuple[float, int, str]] = []  # (monotonic, worker, why), newest last
        self.notifier = notifier or SystemdNotifier({})
        self._last_watchdog_ping = 0.0
        self._stopping = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="ingest-supervisor", daemon=True)

    @property
    def processes(self) -> list[mp.process.BaseProcess | None]:
        return [slot.process for slot in self._slots]

    def start(self) -> IngestSupervisor:
        for i in range(len(self._slots)):
            self._spawn(i)
        self._watchdog.start()
        return self

    def _spawn(self, i: int, unclean_gap: tuple[str, str] | None = None) -> None:
        slot = self._slots[i]
        now = time.monotonic()
        slot.heartbeat = self._ctx.Value("d", now + STARTUP_GRACE_S, lock=False)
        spec = dataclasses.replace(slot.spec, unclean_gap=unclean_gap)
        p = self._ctx.Process(target=run_worker_process, args=(spec, self._stop, slot.heartbeat),
                              name=f"ingest-worker-{i}", daemon=False)
        p.start()
        slot.process, slot.started_mono, slot.respawn_at = p, now, None
        log.info("ingest worker %d started (pid %d)", i, p.pid)

    def _restart(self, i: int, why: str, unclean_gap: tuple[str, str] | None = None) -> None:
        slot = self._slots[i]
        self.restarts += 1
        self.restart_log.append((time.monotonic(), i, why))
        del self.restart_log[:-100]
        lived = time.monotonic() - slot.started_mono
        slot.short_lives = slot.short_lives + 1 if lived < SHORT_LIFE_S else 0
        delay = 0.0 if slot.short_lives <= 1 else min(MAX_RESPAWN_DELAY_S, 2.0 ** (slot.short_lives - 1))
        log.error("INGEST WORKER %d RESTARTED: %s%s", i, why, f" (in {delay:.0f} s: it keeps failing)" if delay else "")
        if self.on_restart is not None:
            try:
                self.on_restart(i, why)
            except Exception:  # noqa: BLE001 - telling of a restart must never stop the restart
                log.exception("could not report the restart of worker %d", i)
        slot.process = None
        if delay:
            slot.respawn_at = time.monotonic() + delay
            slot.spec = dataclasses.replace(slot.spec, unclean_gap=unclean_gap)
        else:
            self._spawn(i, unclean_gap)

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_S):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the supervisor's watch must go on
                log.exception("ingest supervisor check failed")

    def check(self) -> None:
        """One round: restart dead, hung or silent workers; feed systemd's watchdog if all is well."""
        timeout = self.settings.ingest.heartbeat_timeout_seconds
        now = time.monotonic()
        for i, slot in enumerate(self._slots):
            if self._stopping.is_set():
                return
            p = slot.process
            if p is None:
                if slot.respawn_at is not None and now >= slot.respawn_at:
                    self._spawn(i, slot.spec.unclean_gap)
                continue
            if not p.is_alive():
                if p.exitcode == 0:
                    # It was stopped on purpose (a SIGTERM to the process group): not a crash.
                    log.warning("ingest worker %d stopped cleanly; not restarting it", i)
                    slot.process = None
                elif p.exitcode == EXIT_HUNG:
                    self._restart(i, "one of its camera threads hung (the worker's log names the camera)")
                else:
                    self._restart(i, f"it died (exit code {p.exitcode})")
                continue
            silent = now - slot.heartbeat.value
            if silent > timeout:
                log.critical("ingest worker %d (pid %d) sent no heartbeat for %.0f s: killing it", i, p.pid, silent)
                p.kill()
                p.join(5)
                self._restart(i, f"no heartbeat for {silent:.0f} s",
                              ("ingest_hung", f"the ingest worker stopped responding for {silent:.0f} s and was "
                                              "restarted"))
        self._feed_systemd(now)

    def healthy(self) -> bool:
        """Every worker runs and heartbeats (one being restarted right now counts as healthy for a while)."""
        now = time.monotonic()
        timeout = self.settings.ingest.heartbeat_timeout_seconds
        ok = True
        for slot in self._slots:
            p = slot.process
            fine = p is not None and p.is_alive() and now - slot.heartbeat.value <= timeout
            if p is None and slot.respawn_at is None:
                fine = True  # stopped on purpose
            if fine:
                slot.unhealthy_since = None
                continue
            if slot.unhealthy_since is None:
                slot.unhealthy_since = now
            # A restart takes a few seconds, a hang is acted on within heartbeat_timeout: past both,
            # the supervisor's own remedies have failed.
            if now - slot.unhealthy_since > timeout + STARTUP_GRACE_S:
                ok = False
        return ok

    def _feed_systemd(self, now: float) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None or now - self._last_watchdog_ping < interval:
            return
        if self.healthy():
            self.notifier.watchdog()
            self._last_watchdog_ping = now
        else:
            self.notifier.status("recording unhealthy: ingest workers do not recover; not feeding the watchdog")

    def stop(self, timeout: float | None = None) -> None:
        """Ask every worker to finish its segments and exit; kill those that have not by the deadline."""
        self._stopping.set()
        self._stop.value = 1
        self.notifier.stopping()
        timeout = timeout if timeout is not None else self.settings.ingest.stop_seconds + 2
        deadline = time.monotonic() + timeout
        # A watch round under way could restart a worker after the list below is taken (or restart one
        # this stop kills): let it finish first. It checks _stopping before each worker.
        if self._watchdog.is_alive() and self._watchdog is not threading.current_thread():
            self._watchdog.join(max(0.0, deadline - time.monotonic()))
        for p in self.processes:
            if p is not None:
                p.join(max(0.0, deadline - time.monotonic()))
        for p in self.processes:
            if p is not None and p.is_alive():
                log.error("worker %s did not stop in %.0f s; killing it (the next start repairs its segments)",
                          p.name, timeout)
                p.kill()
                p.join(5)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p is not None and p.is_alive() and p.pid is not None]
