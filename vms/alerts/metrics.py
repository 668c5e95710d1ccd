"""Prometheus figures of the alert round (exposed by the API on /metrics): a dead alert pipeline must not
be silent -- alert on vms_alerts_last_round_timestamp_seconds falling behind."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LAST_ROUND = Gauge("vms_alerts_last_round_timestamp_seconds", "Wall time of the last alert round that finished")
ROUNDS_FAILED = Counter("vms_alerts_rounds_failed", "Alert rounds that failed (database down or an error)")
MESSAGES = Counter("vms_alerts_sends", "Sends to alert channels by channel and outcome (ok, failed)",
                   ["channel", "outcome"])
FIRING = Gauge("vms_alerts_firing", "Alerts firing after the last round")
