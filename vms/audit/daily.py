"""The daily audit: per station and local day, figures computed from the index and analysis tables.

Set-based: each interval table is read once for the whole run (all stations, all days) and split by
day in Python (those tables hold a few rows per station per day); segments (one row a minute per
camera) are summed in SQL, one aggregate query per day, and merged exactly where they overlap.
A re-run deletes and rewrites the rows of the days it covers.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import bindparam, delete, insert, or_, select, text
from sqlalchemy.orm import Session

from vms.audit.findings import fault_zh, finding, gap_zh, hours, pct
from vms.audit.periods import AuditInputError, DaySpan, local_hhmm, local_ms
from vms.catalog.model import BusinessHours
from vms.core.clock import Clock
from vms.core.settings import Settings
from vms.db.models import (
    ActivityEpisode,
    AuditDaily,
    Fault,
    Gap,
    OnlineInterval,
    OpenState,
    PurgeLog,
    Segment,
    Station,
    StationState,
)

RECORDED_STATES = ("complete", "growing")
# Segments are at most one hour long (IngestSettings.segment_seconds <= 3600); looking back further
# than this for segments that reach into a day lets the query use the (station_id, start_ms) index.
SEGMENT_LOOKBACK_MS = 6 * 3_600_000
DAY_MS = 86_400_000


@dataclass
class StationDay:
    """Accumulated figures of one station on one day (times in ms, clipped to the day)."""

    online_ms: int = 0
    recorded_ms: int = 0
    segments: int = 0
    open_ms: int = 0
    open_in_hours_ms: int = 0
    closed_ms: int = 0
    unknown_ms: int = 0
    first_open_ms: int | None = None
    last_close_ms: int | None = None
    still_open: bool = False
    activity_episodes: int = 0
    activity_ms: int = 0
    gaps_ms: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    faults_ms: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    faults_count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    purged: bool = False


@dataclass
class DailyRunResult:
    days: list[str]
    rows: int
    findings: int
    computed_ms: int


def _pieces(spans: list[DaySpan], starts: list[int], s: int, e: int) -> Iterable[tuple[int, int, int]]:
    """(day index, clipped start, clipped end) for each day that [s, e) overlaps."""
    i = max(bisect.bisect_right(starts, s) - 1, 0)
    while i < len(spans) and spans[i].start_ms < e:
        a, b = max(s, spans[i].start_ms), min(e, spans[i].end_ms)
        if a < b:
            yield i, a, b
        i += 1


def _overlap_ms(a: int, b: int, ranges: list[tuple[int, int]]) -> int:
    return sum(max(0, min(b, r1) - max(a, r0)) for r0, r1 in ranges)


def _segment_sums_sql(dialect: str) -> str:
    if dialect == "sqlite":
        # Unary + keeps SQLite off the (state, end_ms) index, which would read every later segment;
        # the (station_id, start_ms) index reads just the day's.
        greatest, least, end_col, state_col = "max", "min", "+end_ms", "+state"
    else:
        greatest, least, end_col, state_col = "GREATEST", "LEAST", "end_ms", "state"
    return f"""
SELECT station_id, COUNT(*) AS n, SUM({least}(end_ms, :hi) - {greatest}(start_ms, :lo)) AS total,
       MIN({greatest}(start_ms, :lo)) AS first_a, MAX({least}(end_ms, :hi)) AS last_e,
       MIN(node) AS node_lo, MAX(node) AS node_hi
FROM segments
WHERE station_id IN :ids AND start_ms >= :lookback AND start_ms < :hi AND {end_col} > :lo
  AND stream = 'main' AND {state_col} IN ('complete', 'growing')
GROUP BY station_id
"""


def _union_ms(session: Session, station_id: str, lo: int, hi: int) -> int:
    """Exact length of the union of one station's segments in [lo, hi), merging overlaps."""
    q = (select(Segment.start_ms, Segment.end_ms)
         .where(Segment.station_id == station_id, Segment.start_ms >= lo - SEGMENT_LOOKBACK_MS,
                Segment.start_ms < hi, Segment.end_ms > lo, Segment.stream == "main",
                Segment.state.in_(RECORDED_STATES))
         .order_by(Segment.start_ms))
    total, cur_a = 0, 0
    cur_e: int | None = None  # the merged interval [cur_a, cur_e) being extended, if any
    for s, e in session.execute(q):
        a, b = max(s, lo), min(e, hi)
        if cur_e is None or a > cur_e:
            if cur_e is not None:
                total += cur_e - cur_a
            cur_a, cur_e = a, b
        else:
            cur_e = max(cur_e, b)
    if cur_e is not None:
        total += cur_e - cur_a
    return total


def _intervals(session: Session, model, extra, lo: int, hi: int):
    cols = [model.station_id, model.start_ms, model.end_ms]
    if extra is not None:
        cols.append(extra)
    q = select(*cols).where(model.start_ms < hi)
    q = q.where(or_(model.end_ms.is_(None), model.end_ms > lo)) if model.end_ms.nullable else q.where(
        model.end_ms > lo)
    return session.execute(q)


def audit_days(
    session: Session,
    settings: Settings,
    clock: Clock,
    days: list[date],
    progress: Callable[[int], None] | None = None,
) -> DailyRunResult:
    """Compute and store the daily audit of every station for `days` (replacing earlier results).

    `progress(n)` is called after each day's segments are reduced (for a progress bar)."""
    if not days:
        raise AuditInputError("没有要审计的日期")
    tz = settings.tz
    now = clock.now_ms()
    days = sorted(set(days))
    spans = [DaySpan.of(d, tz) for d in days]
    for sp in spans:
        if sp.start_ms >= now:
            raise AuditInputError(f"{sp.key} 这一天还没有开始（本地时间 {settings.timezone}）")
    # Only whole contiguous runs are read as one range; for scattered days the range covers the gaps.
    lo, hi = spans[0].start_ms, min(spans[-1].end_ms, now)
    starts = [sp.start_ms for sp in spans]
    ends = [min(sp.end_ms, now) for sp in spans]
    rules = settings.audit

    stations = list(session.scalars(select(Station).order_by(Station.id)))
    by_id = {st.id: st for st in stations}
    acc: dict[tuple[str, int], StationDay] = defaultdict(StationDay)

    def add(station_id: str, s: int, e: int | None, fn) -> None:
        if station_id not in by_id:
            return
        e_eff = now if e is None else min(e, now)
        for i, a, b in _pieces(spans, starts, s, min(e_eff, hi)):
            fn(acc[(station_id, i)], i, a, b, e)

    def on_online(d: StationDay, i, a, b, e) -> None:
        d.online_ms += b - a

    for sid, s, e in _intervals(session, OnlineInterval, None, lo, hi):
        add(sid, s, e, on_online)

    def add_to(field: str, key: str):
        """A callback that sums an interval's length into d.<field>[key] (gaps by reason, faults by kind)."""
        def fn(d: StationDay, i, a, b, e) -> None:
            getattr(d, field)[key] += b - a
        return fn

    for sid, s, e, reason in _intervals(session, Gap, Gap.reason, lo, hi):
        add(sid, s, e, add_to("gaps_ms", reason))

    hours_cache: dict[str, list[tuple[int, int]]] = {}
    open_ranges: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)

    def business_ms(station: Station, i: int) -> list[tuple[int, int]]:
        key = f"{station.business_hours}|{i}"
        if key not in hours_cache:
            secs = BusinessHours.parse(station.business_hours).seconds_of_day()
            hours_cache[key] = [(local_ms(spans[i].day, a, tz), local_ms(spans[i].day, b, tz)) for a, b in secs]
        return hours_cache[key]

    for sid, s, e, state in _intervals(session, StationState, StationState.state, lo, hi):
        if sid not in by_id:
            continue
        e_eff = now if e is None else min(e, now)
        for i, a, b in _pieces(spans, starts, s, min(e_eff, hi)):
            d = acc[(sid, i)]
            if state == OpenState.OPEN:
                d.open_ms += b - a
                d.open_in_hours_ms += _overlap_ms(a, b, business_ms(by_id[sid], i))
                open_ranges[(sid, i)].append((a, b))
                d.first_open_ms = a if d.first_open_ms is None else min(d.first_open_ms, a)
                if e is None and b >= ends[i] and ends[i] == now:
                    d.still_open = True
                elif d.last_close_ms is None or b > d.last_close_ms:
                    d.last_close_ms = b
            elif state == OpenState.CLOSED:
                d.closed_ms += b - a
            else:
                d.unknown_ms += b - a

    for sid, s, e in _intervals(session, ActivityEpisode, None, lo, hi):
        if sid not in by_id:
            continue
        for i, a, b in _pieces(spans, starts, s, min(e, hi)):
            d = acc[(sid, i)]
            d.activity_ms += b - a
            if a == s:  # counted on the day it began
                d.activity_episodes += 1

    for sid, s, e, kind in _intervals(session, Fault, Fault.kind, lo, hi):
        add(sid, s, e, add_to("faults_ms", kind))
        if s >= lo and sid in by_id:
            i = bisect.bisect_right(starts, s) - 1
            if 0 <= i < len(spans) and s < spans[i].end_ms:
                acc[(sid, i)].faults_count[kind] += 1

    for sid, s, e in session.execute(
        select(PurgeLog.station_id, PurgeLog.start_ms, PurgeLog.end_ms).where(
            PurgeLog.start_ms < hi, PurgeLog.end_ms > lo)
    ):
        if sid in by_id:
            for i, _a, _b in _pieces(spans, starts, s, e):
                acc[(sid, i)].purged = True

    # Segments: one aggregate query per day. One node writes one camera's segments one after another,
    # so their clipped lengths add up to the recorded time; when a day has segments from two nodes
    # (failover) or the lengths add up to more than the span they lie in (an overlap), that station's
    # day is measured exactly by merging its segments.
    ids = [st.id for st in stations]
    seg_sql = text(_segment_sums_sql(session.get_bind().dialect.name)).bindparams(bindparam("ids", expanding=True))
    for i, sp in enumerate(spans):
        if ids:
            seg_rows = session.execute(seg_sql, {"ids": ids, "lo": sp.start_ms, "hi": ends[i],
                                                 "lookback": sp.start_ms - SEGMENT_LOOKBACK_MS}).all()
            for sid, n, total, first_a, last_e, node_lo, node_hi in seg_rows:
                d = acc[(sid, i)]
                d.segments = int(n)
                total = int(total or 0)
                if node_lo != node_hi or total > int(last_e) - int(first_a):
                    total = _union_ms(session, sid, sp.start_ms, ends[i])
                d.recorded_ms = total
        if progress:
            progress(1)

    keys = [sp.key for sp in spans]
    earlier = {
        (sid, day): (recorded, metrics or {})
        for sid, day, recorded, metrics in session.execute(
            select(AuditDaily.station_id, AuditDaily.day, AuditDaily.recorded_ms, AuditDaily.metrics)
            .where(AuditDaily.day.in_(keys)))
    }
    rows = []
    for st in stations:
        for i, sp in enumerate(spans):
            if st.active_since and sp.key < st.active_since:
                continue
            d = acc.get((st.id, i)) or StationDay()
            rows.append(_daily_row(st, sp, ends[i], d, earlier.get((st.id, sp.key)), rules, tz, now,
                                   business_ms(st, i)))
    session.execute(delete(AuditDaily).where(AuditDaily.day.in_(keys)), execution_options={
        "synchronize_session": False})
    if rows:
        session.execute(insert(AuditDaily), rows)
    session.flush()
    n_rows, n_findings = len(rows), sum(len(r["findings"]) for r in rows)
    return DailyRunResult(days=keys, rows=n_rows, findings=n_findings, computed_ms=now)


def _daily_row(st: Station, sp: DaySpan, end_ms: int, d: StationDay, earlier: tuple[int, dict] | None,
               rules, tz, now: int, business: list[tuple[int, int]]) -> dict:
    period = end_ms - sp.start_ms
    recorded_source = "segments"
    recorded = d.recorded_ms
    segments = d.segments
    if d.purged and earlier is not None and earlier[0] > recorded:
        # Retention has deleted footage of this day since it was first audited: keep what was measured
        # then rather than report as missing footage that existed.
        recorded = earlier[0]
        segments = int(earlier[1].get("segments", segments))
        recorded_source = "earlier_audit"
    online_pct = 100.0 * d.online_ms / period if period else 0.0
    coverage_pct = 100.0 * recorded / period if period else 0.0
    business_total = sum(min(b, end_ms) - a for a, b in business if a < end_ms)
    min_open_ms = int(rules.min_open_hours * 3_600_000)
    # Required open time can't exceed the business hours of the day (e.g. hours shorter than the rule).
    needed_open = min(min_open_ms, sum(b - a for a, b in business))
    open_day = d.online_ms > 0 and d.open_in_hours_ms >= needed_open and d.open_in_hours_ms > 0

    f: list[dict] = []
    if not st.enabled:
        f.append(finding("station_disabled", "站点已停用，不参与考核", "info"))
    if end_ms < sp.end_ms:
        f.append(finding("partial_day", f"当日尚未结束，统计至 {local_hhmm(end_ms, tz)}", "info"))
    if recorded == 0:
        f.append(finding("no_footage", "全天无录像", "critical"))
    elif coverage_pct < rules.min_coverage_percent:
        f.append(finding("low_coverage", f"录像覆盖率 {pct(coverage_pct)}，低于 {rules.min_coverage_percent:g}%"
                                         f"（缺 {hours(period - recorded)} 小时）"))
    if d.online_ms == 0:
        f.append(finding("camera_offline", "摄像机全天离线", "critical"))
    elif online_pct < rules.min_online_percent:
        f.append(finding("low_online", f"摄像机在线率 {pct(online_pct)}，低于 {rules.min_online_percent:g}%"
                                       f"（离线 {hours(period - d.online_ms)} 小时）"))
    if d.online_ms > 0 and business_total > 0:
        if d.open_in_hours_ms == 0:
            f.append(finding("not_open", "营业时间内未开门"))
        elif d.open_in_hours_ms < needed_open:
            f.append(finding("short_open",
                             f"营业时间内开门 {hours(d.open_in_hours_ms)} 小时，不足 {rules.min_open_hours:g} 小时"))
    gaps = sorted(((ms, reason) for reason, ms in d.gaps_ms.items() if ms > 0), reverse=True)
    if gaps:
        f.append(finding("gap_reasons", "录像缺失原因：" + "；".join(
            f"{gap_zh(reason)} {hours(ms)} 小时" for ms, reason in gaps[:3]), "info"))
    for kind, ms in sorted(d.faults_ms.items()):
        if ms > 0:
            f.append(finding("camera_fault", f"摄像机故障：{fault_zh(kind)} {hours(ms)} 小时"))
    if d.purged:
        if recorded_source == "earlier_audit":
            f.append(finding("footage_purged", "部分录像已按保存期限删除，录像时长沿用删除前的审计结果", "info"))
        else:
            f.append(finding("footage_purged", "部分录像已按保存期限删除，录像时长按剩余录像计算", "info"))

    metrics = {
        "period_ms": period,
        "partial": end_ms < sp.end_ms,
        "enabled": bool(st.enabled),
        "online_percent": round(online_pct, 3),
        "coverage_percent": round(coverage_pct, 3),
        "segments": segments,
        "recorded_source": recorded_source,
        "business_ms": business_total,
        "open_day": open_day,
        "closed_ms": d.closed_ms,
        "unknown_ms": d.unknown_ms,
        "still_open": d.still_open,
        "first_open": local_hhmm(d.first_open_ms, tz),
        "last_close": local_hhmm(d.last_close_ms, tz),
        "activity_ms": d.activity_ms,
        "gaps_ms": {k: v for k, v in sorted(d.gaps_ms.items()) if v},
        "faults_ms": {k: v for k, v in sorted(d.faults_ms.items()) if v},
        "faults_count": {k: v for k, v in sorted(d.faults_count.items()) if v},
        "rules": {"min_online_percent": rules.min_online_percent,
                  "min_coverage_percent": rules.min_coverage_percent,
                  "min_open_hours": rules.min_open_hours},
    }
    return dict(
        station_id=st.id, day=sp.key, online_ms=d.online_ms, recorded_ms=recorded, open_ms=d.open_ms,
        open_in_hours_ms=d.open_in_hours_ms, first_open_ms=d.first_open_ms, last_close_ms=d.last_close_ms,
        activity_episodes=d.activity_episodes, metrics=metrics, findings=f, computed_ms=now,
    )


__all__ = ["DAY_MS", "DailyRunResult", "audit_days"]
