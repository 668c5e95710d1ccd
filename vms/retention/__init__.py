"""Retention: expire footage after its retention period, evict early under disk pressure, honour holds."""

from vms.retention.holds import HoldError, add_hold, hold_state, list_holds, release_hold
from vms.retention.jobs import register_retention_jobs
from vms.retention.policy import RetentionPolicy
from vms.retention.sweeper import RetentionSweeper, SweepResult

__all__ = [
    "HoldError",
    "RetentionPolicy",
    "RetentionSweeper",
    "SweepResult",
    "add_hold",
    "hold_state",
    "list_holds",
    "register_retention_jobs",
    "release_hold",
]
