"""Prometheus counters of the retention service (exposed by the API on /metrics).

Every deletion is counted once, when its rows are marked for deletion in the same transaction that
writes the purge log; early evictions (reason pressure or critical) are the ones to alert on.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DELETED_SEGMENTS = Counter(
    "vms_retention_deleted_segments",
    "Segments deleted by retention, by reason (expired, pressure, critical, manual) and volume",
    ["reason", "volume"],
)
DELETED_BYTES = Counter(
    "vms_retention_deleted_bytes",
    "Bytes of footage deleted by retention, by reason and volume",
    ["reason", "volume"],
)
RUNS = Counter(
    "vms_retention_runs",
    "Retention runs by outcome (ok, busy: another run held the lock, error)",
    ["outcome"],
)
STUCK_VOLUMES = Counter(
    "vms_retention_stuck_volume_checks",
    "Pressure checks that found a volume over its limit with nothing left that may be deleted",
    ["volume"],
)
LAST_SUCCESS = Gauge(
    "vms_retention_last_success_timestamp_seconds",
    "Wall time of the last retention run that finished without error",
)
