"""Scheduling for `vms serve`: the periodic sweep and the more frequent disk-pressure check."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vms.core.clock import Clock, from_ms
from vms.core.settings import Settings
from vms.db.engine import Database
from vms.retention.sweeper import DiskUsage, RetentionSweeper, SweepResult

log = logging.getLogger("vms.retention")

SWEEP_JOB_ID = "retention-sweep"
PRESSURE_JOB_ID = "retention-pressure"
FIRST_SWEEP_DELAY_MS = 30_000  # let the recorders start before the first sweep


@dataclass
class RetentionJobs:
    sweeper: RetentionSweeper

    def sweep(self) -> SweepResult:
        """Expire old footage, then check every volume's pressure."""
        return _logged(self.sweeper.run(), "sweep")

    def pressure_check(self) -> SweepResult:
        return _logged(self.sweeper.run(expire=False), "pressure check")


def _logged(result: SweepResult, what: str) -> SweepResult:
    if not result.ran:
        log.info("retention %s skipped: %s", what, result.message)
    elif result.errors:
        log.error("retention %s %s finished with errors: %s", what, result.run_id, "; ".join(result.errors))
    elif result.segments or result.recovered.segments:
        log.info("retention %s %s: deleted %d segments (%d bytes) in %.1f s", what, result.run_id,
                 result.segments, result.bytes, result.seconds)
    return result


def register_retention_jobs(scheduler, settings: Settings, database: Database, clock: Clock, *,
                            disk_usage: DiskUsage | None = None) -> RetentionJobs:
    """Add the sweep (every retention.sweep_minutes) and the pressure check (every
    retention.pressure_check_seconds) to an APScheduler 3.x scheduler. Both take the same database
    lease as `vms retention run`, so a cron run at the same moment makes one of them skip cleanly."""
    jobs = RetentionJobs(RetentionSweeper(settings, database, clock, disk_usage=disk_usage))
    first = from_ms(clock.now_ms() + FIRST_SWEEP_DELAY_MS)
    scheduler.add_job(jobs.sweep, "interval", minutes=settings.retention.sweep_minutes, id=SWEEP_JOB_ID,
                      name="retention sweep", max_instances=1, coalesce=True, replace_existing=True,
                      next_run_time=first)
    scheduler.add_job(jobs.pressure_check, "interval", seconds=settings.retention.pressure_check_seconds,
                      id=PRESSURE_JOB_ID, name="retention pressure check", max_instances=1, coalesce=True,
                      replace_existing=True)
    return jobs
