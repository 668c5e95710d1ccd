"""The in-process scheduler of `vms serve`: retention sweeps, disk-pressure checks, audits."""

from __future__ import annotations

import importlib
import logging

from apscheduler.schedulers.background import BackgroundScheduler

from vms.core.clock import Clock
from vms.core.settings import Settings
from vms.db.engine import Database

log = logging.getLogger(__name__)

# Each service registers its own jobs; a service not installed is skipped with a warning.
JOB_REGISTRARS = (
    "vms.retention.jobs:register_retention_jobs",
    "vms.audit.jobs:register_audit_jobs",
)


def start_scheduler(settings: Settings, database: Database, clock: Clock) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone=settings.timezone)
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
