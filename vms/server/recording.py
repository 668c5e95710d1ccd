"""Recording as a service: simulated cameras when needed, then the ingest supervisor."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy import select

from vms.core.settings import Settings
from vms.core.systemd import SystemdNotifier
from vms.db.engine import Database
from vms.db.models import GbChannel, Station, SystemEvent
from vms.ingest.supervisor import IngestSupervisor

if TYPE_CHECKING:  # (imported when a station needs a simulated camera: it brings the clip encoders)
    from vms.gb28181.backfill import BackfillService
    from vms.gb28181.server import GbServer
    from vms.simulate import Simulator

log = logging.getLogger(__name__)

# Observers the workers load by name (ingest imports nothing above it).
ANALYSIS_FACTORY = "vms.analysis.observer:make_analysis_observer_factory"
LIVE_TAP_FACTORY = "vms.live.tap:make_live_tap_factory"
# Cameras that are not RTSP, by URL scheme: the workers load their sources by name too.
GB28181_SOURCE = "vms.gb28181.source:make_gb_source_opener"


class RecordingService:
    def __init__(self, settings: Settings, database: Database, simulate: str = "auto", workers: int | None = None,
                 analysis: bool = True, notifier: SystemdNotifier | None = None) -> None:
        self.settings = settings
        self.db = database
        self.simulate_mode = simulate
        self.simulator: Simulator | None = None
        self.gb_server: GbServer | None = None
        self.backfill: BackfillService | None = None
        self.supervisor: IngestSupervisor | None = None
        self.workers = workers
        self.analysis = analysis
        self.camera_count = 0
        self.notifier = notifier
        self._stop_lock = threading.Lock()
        self._stopped = False

    def _simulated_stations(self) -> list[str]:
        """Stations to simulate; also counts the cameras to record (enabled stations with a camera URL,
        plus the simulated ones), which sizes the worker pool."""
        with self.db.session() as s:
            rows = s.execute(select(Station.id, Station.main_url).where(Station.enabled.is_(True))
                             .order_by(Station.id)).all()
            bound = set(s.scalars(select(GbChannel.station_id).where(GbChannel.station_id.is_not(None))))
        cameras = [(sid, url or (f"gb28181:{sid}" if sid in bound else None)) for sid, url in rows]
        with_url = [sid for sid, url in cameras if url]
        if self.simulate_mode == "never":
            ids: list[str] = []
        else:
            ids = [sid for sid, url in cameras if self.simulate_mode == "always" or not url]
            ids = ids[: self.settings.simulate.max_cameras]
        self.camera_count = len(set(with_url) | set(ids))
        return ids

    def start(self) -> None:
        overrides: dict[str, str] = {}
        simulated = self._simulated_stations()
        if simulated:
            from vms.simulate import Simulator

            sim = self.settings.simulate
            log.info("simulating %d cameras for stations without a camera URL", len(simulated))
            simulator = self.simulator = Simulator(
                cameras=len(simulated), names=simulated, width=sim.width, height=sim.height, fps=sim.fps,
                bitrate_kbps=sim.bitrate_kbps, content=sim.content, day_seconds=sim.day_seconds,
                port=sim.port, control_port=sim.control_port, cache_dir=self.settings.data_dir / "cache" / "simulate")
            simulator.start()
            log.info("simulated cameras' fault control on port %d (vms simulate fault stall NAME --control-port %d)",
                     simulator.control_port, simulator.control_port)
            overrides = dict(simulator.urls)
        sources: dict[str, str] = {}
        if self.settings.gb28181.enabled:
            from vms.gb28181.server import GbServer

            # Before the workers: their GB cameras ask it for their streams.
            self.gb_server = GbServer(self.settings, self.db).start()
            sources["gb28181"] = GB28181_SOURCE
            if self.settings.gb28181.backfill:
                from vms.gb28181.backfill import BackfillService

                self.backfill = BackfillService(self.settings, self.db, self.gb_server).start()
        factories = [LIVE_TAP_FACTORY]
        if self.analysis and self.settings.analysis.enabled:
            factories.append(ANALYSIS_FACTORY)
        self.supervisor = IngestSupervisor(self.settings, overrides, factories, self.workers,
                                           cameras=self.camera_count, notifier=self.notifier,
                                           on_restart=self._record_restart, source_openers=sources).start()

    def _record_restart(self, worker: int, why: str) -> None:
        """A system event for the alert rules (vms/alerts), written on its own thread: the supervisor's
        watch round must not wait for the database (it may be the thing that is down)."""
        node = self.settings.ingest.node
        at_ms = time.time_ns() // 1_000_000

        def write() -> None:
            try:
                with self.db.session() as s:
                    s.add(SystemEvent(at_ms=at_ms, kind="worker_restarted", subject=f"{node}/worker-{worker}"[:64],
                                      detail=f"节点 {node} 的录像进程 {worker} 已重启：{why}"))
            except Exception:  # noqa: BLE001 - the log line of the restart stays the record
                log.exception("could not record the restart of worker %d", worker)

        threading.Thread(target=write, name="restart-event", daemon=True).start()

    @property
    def worker_count(self) -> int:
        return len(self.supervisor.specs) if self.supervisor else 0

    def stop(self) -> None:
        """Stop recording (workers finish their segments), then the simulated cameras. Safe to call from
        two threads: the second call waits for the first to finish."""
        with self._stop_lock:
            if self._stopped:
                return
            if self.supervisor is not None:
                self.supervisor.stop()
            if self.backfill is not None:
                self.backfill.stop()
            if self.gb_server is not None:
                self.gb_server.stop()  # after the workers: their streams are hung up with them
            if self.simulator is not None:
                self.simulator.close()
            self._stopped = True
