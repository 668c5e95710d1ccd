"""The in-process scheduler of `vms serve`: retention sweeps, disk-pressure checks, audits."""

from __future__ import annotations

import importlib
import logging
import threading
from concurrent.futures import Executor, Future

from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from vms.core.clock import Clock
from vms.core.settings import Settings
from vms.db.engine import Database

log = logging.getLogger(__name__)

# Each service registers its own jobs; a service not installed is skipped with a warning.
JOB_REGISTRARS = (
    "vms.retention.jobs:register_retention_jobs",
    "vms.audit.jobs:register_audit_jobs",
    "vms.alerts.jobs:register_alert_jobs",
)


class _DaemonThreads(Executor):
    """One daemon thread per job run. APScheduler's default pool (concurrent.futures) has its threads
    joined when the interpreter exits, so a retention sweep or an audit running when `vms serve` was
    told to stop kept the process alive until it finished (minutes; systemd then kills it). Both are
    safe to cut short: the sweep is two-phase and finishes an interrupted run next time, audits are
    idempotent. Jobs are few and each has max_instances=1: no pool is needed."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to APScheduler, which logs it
                future.set_exception(exc)

        threading.Thread(target=run, name="scheduled-job", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass  # nothing queued; running jobs are not waited for


class DaemonJobExecutor(BasePoolExecutor):
    """APScheduler executor over _DaemonThreads (APScheduler's extension point for thread pools)."""

    def __init__(self) -> None:
        super().__init__(_DaemonThreads())


def start_scheduler(settings: Settings, database: Database, clock: Clock) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone=settings.timezone, executors={"default": DaemonJobExecutor()})
    for path in JOB_REGISTRARS:
        module, _, name = path.partition(":")
        try:
            register = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            log.warning("scheduled jobs of %s not available: %s", module, exc)
            continue
        register(scheduler, settings, database, clock)
    scheduler.start()
    for job in scheduler.get_jobs():
        log.info("scheduled job %s: %s", job.id, job.trigger)
    return scheduler
