"""The monthly audit: each station passes or fails the compliance rules, from its daily audit rows.

Monthly figures come from audit_daily (not from segments) because footage older than the retention
period (15 days by default) is gone by the time a month is reported; the daily rows keep what was
measured while it existed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from vms.audit.daily import audit_days
from vms.audit.findings import finding, hours, pct
from vms.audit.periods import AuditInputError, DaySpan, month_days, parse_month
from vms.core.clock import Clock
from vms.core.settings import AuditSettings, Settings
from vms.db.models import AuditDaily, AuditMonthly, Station


@dataclass
class MonthlyRunResult:
    month: str
    days_audited: int
    stations: int
    passed: int
    failed: int
    exempt: int
    computed_ms: int


def required_open_days(rules: AuditSettings, active_days: int, days_in_month: int) -> int:
    """Days that must count as open: the fraction rule if set, else min_open_days pro rata to the days
    the station was in service (a station commissioned on the 16th of a 30-day month needs 10 of 15)."""
    if rules.min_open_days_fraction is not None:
        return math.ceil(rules.min_open_days_fraction * active_days - 1e-9)
    if active_days >= days_in_month:
        return min(rules.min_open_days, days_in_month)  # 31 configured still passes February
    return math.ceil(rules.min_open_days * active_days / days_in_month - 1e-9)


def audit_month(
    session: Session,
    settings: Settings,
    clock: Clock,
    month: str,
    recompute: bool = True,
    progress: Callable[[int], None] | None = None,
) -> MonthlyRunResult:
    """Audit every begun day of `month` (all of them if `recompute`, else only days without rows), then
    decide pass/fail per station and replace the month's rows."""
    year, mon = parse_month(month)
    tz = settings.tz
    now = clock.now_ms()
    all_days = month_days(year, mon)
    begun = [d for d in all_days if DaySpan.of(d, tz).start_ms < now]
    if not begun:
        raise AuditInputError(f"{month} 月还没有开始")
    if recompute:
        to_run = begun
    else:
        have = {d for (d,) in session.execute(
            select(AuditDaily.day).where(AuditDaily.day.in_([d.isoformat() for d in begun])).distinct())}
        to_run = [d for d in begun if d.isoformat() not in have]
        # The last begun day may have been audited while still going: audit it again.
        if begun[-1] not in to_run:
            to_run.append(begun[-1])
    audit_days(session, settings, clock, to_run, progress=progress)
    rows = decide_month(session, settings.audit, month, all_days, begun, now)
    session.execute(delete(AuditMonthly).where(AuditMonthly.month == month),
                    execution_options={"synchronize_session": False})
    if rows:
        session.execute(insert(AuditMonthly), rows)
    session.flush()
    passed = sum(r["passed"] is True for r in rows)
    failed = sum(r["passed"] is False for r in rows)
    return MonthlyRunResult(month, len(to_run), len(rows), passed, failed, len(rows) - passed - failed, now)


def decide_month(session: Session, rules: AuditSettings, month: str, all_days: list[date],
                 begun: list[date], now: int) -> list[dict]:
    keys = [d.isoformat() for d in all_days]
    begun_keys = {d.isoformat() for d in begun}
    daily: dict[str, dict[str, AuditDaily]] = {}
    for row in session.scalars(select(AuditDaily).where(AuditDaily.day.in_(keys))):
        daily.setdefault(row.station_id, {})[row.day] = row
    out = []
    min_open_ms = int(rules.min_open_hours * 3_600_000)
    for st in session.scalars(select(Station).order_by(Station.id)):
        active = [k for k in keys if k in begun_keys and not (st.active_since and k < st.active_since)]
        rows = daily.get(st.id, {})
        period = online = recorded = 0
        open_days = days_opened = no_footage = offline = missing = episodes = 0
        faults: dict[str, int] = {}
        gaps: dict[str, int] = {}
        by_day: list[float | None] = []
        for k in keys:
            r = rows.get(k)
            if k not in active:
                by_day.append(None)
                continue
            if r is None:
                missing += 1
                period += 86_400_000
                by_day.append(0.0)
                continue
            m = r.metrics or {}
            period += int(m.get("period_ms", 86_400_000))
            online += r.online_ms
            recorded += r.recorded_ms
            episodes += r.activity_episodes
            needed = min(min_open_ms, int(m.get("business_ms", min_open_ms))) or min_open_ms
            if r.online_ms > 0 and r.open_in_hours_ms > 0 and r.open_in_hours_ms >= needed:
                open_days += 1
            days_opened += r.open_ms > 0
            no_footage += r.recorded_ms == 0
            offline += r.online_ms == 0
            for kind, ms in (m.get("faults_ms") or {}).items():
                faults[kind] = faults.get(kind, 0) + int(ms)
            for reason, ms in (m.get("gaps_ms") or {}).items():
                gaps[reason] = gaps.get(reason, 0) + int(ms)
            by_day.append(round(r.open_in_hours_ms / 3_600_000, 2))
        online_pct = 100.0 * online / period if period else None
        coverage_pct = 100.0 * recorded / period if period else None
        required = required_open_days(rules, len(active), len(all_days))
        reasons: list[dict] = []
        passed: bool | None
        if not st.enabled:
            passed = None
            reasons.append(finding("station_disabled", "站点已停用，不参与考核", "info"))
        elif not active:
            passed = None
            reasons.append(finding("not_active", f"本月未投入使用（启用日期 {st.active_since}）", "info"))
        else:
            if missing == len(active):
                reasons.append(finding("not_audited", "本月没有任何审计数据", "critical"))
            if online_pct is not None and online_pct < rules.min_online_percent:
                reasons.append(finding(
                    "low_online", f"摄像机在线率 {pct(online_pct)}，低于 {rules.min_online_percent:g}%"
                                  f"（累计离线 {hours(period - online)} 小时）", "critical"))
            if coverage_pct is not None and coverage_pct < rules.min_coverage_percent:
                reasons.append(finding(
                    "low_coverage", f"录像覆盖率 {pct(coverage_pct)}，低于 {rules.min_coverage_percent:g}%"
                                    f"（{no_footage} 天全天无录像）", "critical"))
            if open_days < required:
                reasons.append(finding(
                    "few_open_days", f"营业时间内开门满 {rules.min_open_hours:g} 小时的天数为 {open_days} 天，"
                                     f"少于要求的 {required} 天", "critical"))
            passed = not reasons
        metrics = {
            "days_in_month": len(all_days),
            "active_days": len(active),
            "partial": len(begun) < len(all_days),
            "enabled": bool(st.enabled),
            "period_ms": period,
            "online_ms": online,
            "recorded_ms": recorded,
            "online_percent": None if online_pct is None else round(online_pct, 3),
            "coverage_percent": None if coverage_pct is None else round(coverage_pct, 3),
            "open_days": open_days,
            "required_open_days": required,
            "days_opened": days_opened,
            "no_footage_days": no_footage,
            "offline_days": offline,
            "missing_days": missing,
            "activity_episodes": episodes,
            "faults_ms": dict(sorted(faults.items())),
            "gaps_ms": dict(sorted(gaps.items())),
            "open_in_hours_by_day": by_day,
            "rules": rules.model_dump(include={"min_online_percent", "min_coverage_percent", "min_open_hours",
                                               "min_open_days", "min_open_days_fraction"}),
        }
        out.append(dict(station_id=st.id, month=month, passed=passed, metrics=metrics, reasons=reasons,
                        computed_ms=now))
    return out
