"""Read side of the audit: JSON-ready dicts for the API, the CLI and the exports.

They read stored results only (run the audit first); they need no settings. Shapes (all times UTC ms,
local clock times "HH:MM" in the audit's time zone, percents 0-100 with 1 decimal, hours 0.1):

daily_report(session, "2026-01-05", town=None) ->
  {"day", "town", "audited": bool, "computed_ms",
   "summary": Rollup, "towns": [Rollup + {"town"}], "poverty": Rollup + {"failing": [station_id]},
   "stations": [DailyStation]}
  Rollup = {"stations", "with_findings", "no_footage", "offline", "open_days", "online_percent",
            "coverage_percent"} (percents are means over the stations; disabled stations left out)
  DailyStation = {"station_id", "name", "town", "level", "poverty_village", "enabled", "day",
                  "online_ms", "online_percent", "recorded_ms", "coverage_percent", "open_ms",
                  "open_in_hours_ms", "open_hours", "open_in_hours_hours", "first_open_ms", "first_open",
                  "last_close_ms", "last_close", "still_open", "open_day", "activity_episodes",
                  "gaps_ms": {reason: ms}, "faults_ms": {kind: ms}, "segments", "partial",
                  "findings": [{"code", "message", "severity"}]}

monthly_report(session, "2026-01", town=None) ->
  {"month", "town", "audited": bool, "computed_ms", "rules", "days": ["2026-01-01", ...],
   "county": MRollup, "towns": [MRollup + {"town"}],
   "poverty": MRollup + {"failing": [station_id]}, "stations": [MonthlyStation],
   "failing": [MonthlyStation with status "fail"]}
  MRollup = {"stations", "assessed", "passed", "failed", "exempt", "pass_percent", "online_percent",
             "coverage_percent"}
  MonthlyStation = {"station_id", "name", "town", "level", "poverty_village", "enabled",
                    "status": "pass"|"fail"|"exempt", "passed": bool|None, "reasons": [{code, message,
                    severity}], plus every key of audit_monthly.metrics (online_percent, coverage_percent,
                    open_days, required_open_days, active_days, days_in_month, no_footage_days,
                    faults_ms, gaps_ms, open_in_hours_by_day: [hours|None per day], ...)}

station_history(session, station_id, "2026-01-01", "2026-01-31") -> [DailyStation | {"day",
  "station_id", "audited": False}] one per day, oldest first.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from vms.audit.periods import AuditInputError, month_days, parse_day, parse_month
from vms.catalog.towns import TOWN_NAMES, town_rank
from vms.db.models import AuditDaily, AuditMonthly, Station

MAX_HISTORY_DAYS = 366


def _check_town(town: str | None) -> None:
    if town is not None and town not in TOWN_NAMES:
        raise AuditInputError(f"没有镇街 {town!r}；可选：{'、'.join(TOWN_NAMES)}")


def _station_fields(st: Station) -> dict:
    return {"station_id": st.id, "name": st.name, "town": st.town, "level": st.level,
            "poverty_village": bool(st.poverty_village), "enabled": bool(st.enabled)}


def _r1(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def daily_station_dict(st: Station, r: AuditDaily) -> dict:
    m = r.metrics or {}
    return {
        **_station_fields(st),
        "day": r.day,
        "audited": True,
        "online_ms": r.online_ms,
        "online_percent": _r1(m.get("online_percent")),
        "recorded_ms": r.recorded_ms,
        "coverage_percent": _r1(m.get("coverage_percent")),
        "open_ms": r.open_ms,
        "open_in_hours_ms": r.open_in_hours_ms,
        "open_hours": round(r.open_ms / 3_600_000, 1),
        "open_in_hours_hours": round(r.open_in_hours_ms / 3_600_000, 1),
        "first_open_ms": r.first_open_ms,
        "first_open": m.get("first_open"),
        "last_close_ms": r.last_close_ms,
        "last_close": m.get("last_close"),
        "still_open": bool(m.get("still_open")),
        "open_day": bool(m.get("open_day")),
        "activity_episodes": r.activity_episodes,
        "gaps_ms": m.get("gaps_ms", {}),
        "faults_ms": m.get("faults_ms", {}),
        "segments": m.get("segments", 0),
        "partial": bool(m.get("partial")),
        "findings": list(r.findings or []),
        "computed_ms": r.computed_ms,
    }


def _daily_rollup(items: list[dict]) -> dict:
    counted = [i for i in items if i["enabled"]]
    n = len(counted)
    return {
        "stations": n,
        "with_findings": sum(any(f["severity"] != "info" for f in i["findings"]) for i in counted),
        "no_footage": sum(i["recorded_ms"] == 0 for i in counted),
        "offline": sum(i["online_ms"] == 0 for i in counted),
        "open_days": sum(i["open_day"] for i in counted),
        "online_percent": _r1(sum(i["online_percent"] or 0 for i in counted) / n) if n else None,
        "coverage_percent": _r1(sum(i["coverage_percent"] or 0 for i in counted) / n) if n else None,
    }


def daily_report(session: Session, day: str, town: str | None = None) -> dict:
    parse_day(day)
    _check_town(town)
    q = select(AuditDaily, Station).join(Station, Station.id == AuditDaily.station_id).where(AuditDaily.day == day)
    if town:
        q = q.where(Station.town == town)
    items = [daily_station_dict(st, r) for r, st in session.execute(q)]
    items.sort(key=lambda i: (town_rank(i["town"]), i["level"] != "town", i["station_id"]))
    towns = []
    for t in TOWN_NAMES:
        sub = [i for i in items if i["town"] == t]
        if sub:
            towns.append({"town": t, **_daily_rollup(sub)})
    poverty = [i for i in items if i["poverty_village"]]
    return {
        "day": day,
        "town": town,
        "audited": bool(items),
        "computed_ms": max((i["computed_ms"] for i in items), default=None),
        "summary": _daily_rollup(items),
        "towns": towns,
        "poverty": {**_daily_rollup(poverty),
                    "failing": [i["station_id"] for i in poverty if i["enabled"] and any(
                        f["severity"] == "critical" for f in i["findings"])]},
        "stations": items,
    }


def monthly_station_dict(st: Station, r: AuditMonthly) -> dict:
    status = "exempt" if r.passed is None else ("pass" if r.passed else "fail")
    m = dict(r.metrics or {})
    for k in ("online_percent", "coverage_percent"):
        m[k] = _r1(m.get(k))
    return {**_station_fields(st), "month": r.month, "status": status, "passed": r.passed,
            "reasons": list(r.reasons or []), **m, "computed_ms": r.computed_ms}


def _monthly_rollup(items: list[dict]) -> dict:
    assessed = [i for i in items if i["status"] != "exempt"]
    passed = sum(i["status"] == "pass" for i in assessed)
    n = len(assessed)
    return {
        "stations": len(items),
        "assessed": n,
        "passed": passed,
        "failed": n - passed,
        "exempt": len(items) - n,
        "pass_percent": _r1(100.0 * passed / n) if n else None,
        "online_percent": _r1(sum(i["online_percent"] or 0 for i in assessed) / n) if n else None,
        "coverage_percent": _r1(sum(i["coverage_percent"] or 0 for i in assessed) / n) if n else None,
    }


def monthly_report(session: Session, month: str, town: str | None = None) -> dict:
    year, mon = parse_month(month)
    _check_town(town)
    q = (select(AuditMonthly, Station).join(Station, Station.id == AuditMonthly.station_id)
         .where(AuditMonthly.month == month))
    if town:
        q = q.where(Station.town == town)
    items = [monthly_station_dict(st, r) for r, st in session.execute(q)]
    items.sort(key=lambda i: (town_rank(i["town"]), i["level"] != "town", i["station_id"]))
    towns = []
    for t in TOWN_NAMES:
        sub = [i for i in items if i["town"] == t]
        if sub:
            towns.append({"town": t, **_monthly_rollup(sub)})
    poverty = [i for i in items if i["poverty_village"]]
    return {
        "month": month,
        "town": town,
        "audited": bool(items),
        "computed_ms": max((i["computed_ms"] for i in items), default=None),
        "rules": items[0]["rules"] if items else None,
        "days": [d.isoformat() for d in month_days(year, mon)],
        "county": _monthly_rollup(items),
        "towns": towns,
        "poverty": {**_monthly_rollup(poverty), "failing": [i["station_id"] for i in poverty
                                                          if i["status"] == "fail"]},
        "stations": items,
        "failing": [i for i in items if i["status"] == "fail"],
    }


def station_history(session: Session, station_id: str, start_day: str, end_day: str) -> list[dict]:
    first, last = parse_day(start_day), parse_day(end_day)
    if last < first:
        raise AuditInputError(f"结束日期 {end_day} 早于开始日期 {start_day}")
    if (last - first).days + 1 > MAX_HISTORY_DAYS:
        raise AuditInputError(f"一次最多查询 {MAX_HISTORY_DAYS} 天（{start_day} 至 {end_day} 超出）")
    st = session.get(Station, station_id)
    if st is None:
        raise AuditInputError(f"没有站点 {station_id!r}")
    rows = {r.day: r for r in session.scalars(select(AuditDaily).where(
        AuditDaily.station_id == station_id, AuditDaily.day >= start_day, AuditDaily.day <= end_day))}
    out = []
    d = first
    while d <= last:
        k = d.isoformat()
        out.append(daily_station_dict(st, rows[k]) if k in rows else
                   {"day": k, "station_id": station_id, "audited": False})
        d += timedelta(days=1)
    return out
