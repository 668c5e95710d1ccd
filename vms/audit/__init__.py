"""Station-uptime audits: daily figures per station, monthly compliance, reports and exports."""

from vms.audit.daily import audit_days
from vms.audit.jobs import register_audit_jobs
from vms.audit.monthly import audit_month
from vms.audit.periods import AuditInputError
from vms.audit.reports import daily_report, monthly_report, station_history

__all__ = [
    "AuditInputError", "audit_days", "audit_month", "daily_report", "monthly_report", "register_audit_jobs",
    "station_history",
]
