"""The alert rules: from the recorder's evidence in the database (camera status, open/closed states,
faults, purges, audits, system events) and the volumes on disk, which conditions hold right now.

A rule says what holds and since when (`since_ms`, from the evidence wherever there is some) and when it
becomes worth telling people (`due_ms`: since + the rule's grace). It keeps no memory between rounds:
the engine (vms/alerts/engine.py) turns conditions into alerts and messages. Evidence that has no start
time of its own (a volume missing, a camera never heard of) is timed from `first_seen`, the engine's
memory of when it first saw the condition; a restart of the server starts those graces again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from vms.catalog.model import BusinessHours
from vms.core.clock import from_ms
from vms.core.settings import AlertRuleSettings, AlertSettings, Settings
from vms.db.models import (
    AuditMonthly,
    CameraStatus,
    Fault,
    OnlineInterval,
    OpenState,
    PurgeLog,
    Station,
    StationState,
    SystemEvent,
)
from vms.ingest.health import STALE_STATUS_INTERVALS, reported_camera_state
from vms.recording.volumes import VolumeSet

EVENT_LOOKBACK_MS = 3_600_000  # events (restarts, failed runs, early evictions) older than this are not told
AUDIT_LOOKBACK_MS = 2 * 86_400_000  # a monthly audit is summarised if it was computed within this

FAULT_LABELS = {
    "covered": "画面被遮挡", "scene_changed": "摄像机被移动（画面变化）", "black": "黑屏", "frozen": "画面冻结",
    "blurred": "画面模糊", "signal_lost": "无视频信号", "overexposed": "画面过曝", "color_cast": "画面偏色",
    "auth_failed": "摄像机登录认证失败",
}
RULE_LABELS = {
    "camera_offline": "摄像机离线/未录像", "station_not_open": "站点未按时开门",
    "station_closed_long": "营业时间长时间关门",
    "camera_fault": "视频质量故障", "disk_low": "磁盘空间不足", "early_eviction": "因磁盘压力提前删除录像",
    "retention_failed": "录像清理任务失败", "volume_missing": "存储卷不可用", "audit_noncompliant": "月度考核不达标",
    "worker_restarted": "录像进程重启", "database_unreachable": "数据库无法连接",
}
CAMERA_STATE_LABELS = {
    "offline": "录像节点无状态上报", "stalled": "视频流停滞", "hung": "录像线程卡死", "backoff": "连接失败，等待重试",
    "connecting": "正在连接", "failed": "连接失败", "stopped": "已停止", "unknown": "从未上报状态",
}


@dataclass(frozen=True)
class Condition:
    """Something that holds now. `key` names it across rounds: the same key is the same alert."""

    key: str
    rule: str
    severity: str
    title: str
    detail: str | None
    since_ms: int
    due_ms: int
    station_id: str | None = None
    station_name: str | None = None
    town: str | None = None
    one_shot: bool = False  # an event: told once, never "resolved"
    expires_ms: int | None = None  # it cannot outlast this (business hours' end): then ends with no recovery


@dataclass
class Evaluation:
    conditions: list[Condition] = field(default_factory=list)
    # Keys of conditions that ended without being put right (their rule or fault kind switched off): their
    # alerts end with no recovery message.
    expired: set[str] = field(default_factory=set)
    # Keys seen for the first time this round that rely on first_seen (the engine keeps them).
    observed: dict[str, int] = field(default_factory=dict)
    # Key prefixes the rules cannot judge this round (the camera is offline, the analysis has no verdict):
    # their firing alerts stay as they are, neither resolved nor reminded -- a camera going offline does
    # not mean the station opened or the cover was taken off.
    held: set[str] = field(default_factory=set)
    # Enabled stations: the alerts of a station disabled (or gone from the catalogue) end without a recovery.
    enabled_stations: set[str] = field(default_factory=set)


def rules_for(alerts: AlertSettings, station_id: str, town: str) -> AlertRuleSettings:
    """The thresholds for one station: the station's overrides over its town's over the defaults."""
    values = {name: getattr(alerts, name) for name in AlertRuleSettings.model_fields}
    for over in (alerts.per_town.get(town), alerts.per_station.get(station_id)):
        if over is not None:
            values.update({k: v for k, v in over.model_dump().items() if v is not None})
    return AlertRuleSettings.model_validate(values)


def local_text(ms: int, tz: ZoneInfo) -> str:
    return f"{from_ms(ms, tz):%Y-%m-%d %H:%M:%S}"


def _at(day: date, seconds: int, tz: ZoneInfo) -> int:
    """Epoch ms of `seconds` after local midnight of `day` (wall-clock arithmetic, DST-safe enough)."""
    base = datetime.combine(day, time(0), tz) + timedelta(seconds=seconds)
    return int(base.timestamp() * 1000)


class RuleContext:
    """One round's inputs."""

    def __init__(self, session: Session, settings: Settings, now_ms: int, started_ms: int,
                 first_seen: dict[str, int]) -> None:
        self.s = session
        self.settings = settings
        self.alerts = settings.alerts
        self.now = now_ms
        self.started_ms = started_ms
        self.first_seen = first_seen
        self.tz = settings.tz
        self.out = Evaluation()
        self._keys: set[str] = set()

    def seen_since(self, key: str) -> int:
        if key not in self.first_seen:
            self.out.observed[key] = self.now
            return self.now
        return self.first_seen[key]

    def add(self, cond: Condition, disabled: Iterable[str] = ()) -> None:
        if cond.key in self._keys:
            return  # (events of one hour share a key: the first stands for them)
        self._keys.add(cond.key)
        if cond.rule not in disabled and cond.rule not in self.alerts.disabled_rules:
            self.out.conditions.append(cond)
        else:
            self.out.expired.add(cond.key)  # switched off: its alert ends without a recovery message


def evaluate(session: Session, settings: Settings, now_ms: int, *, started_ms: int,
             first_seen: dict[str, int]) -> Evaluation:
    """Every condition that holds at now_ms. `started_ms`: when the engine started (downtime of the
    server itself is not counted as cameras' downtime); `first_seen`: see the module's note."""
    ctx = RuleContext(session, settings, now_ms, started_ms, first_seen)
    stations = list(session.scalars(select(Station).where(Station.enabled.is_(True)).order_by(Station.id)))
    ctx.out.enabled_stations = {st.id for st in stations}
    _station_rules(ctx, stations)
    _storage_rules(ctx)
    _event_rules(ctx)
    _audit_rule(ctx, {st.id: st for st in stations})
    return ctx.out


# ---------------------------------------------------------------- stations
def _station_rules(ctx: RuleContext, stations: list[Station]) -> None:
    ingest = ctx.settings.ingest
    stale_ms = int(STALE_STATUS_INTERVALS * ingest.status_interval_seconds * 1000)
    stall_ms = int(ingest.stall_seconds * 1000)
    cams = {c.station_id: c for c in ctx.s.scalars(select(CameraStatus))}
    faults: dict[str, list[Fault]] = {}
    for f in ctx.s.scalars(select(Fault).where(Fault.end_ms.is_(None)).order_by(Fault.start_ms)):
        faults.setdefault(f.station_id, []).append(f)
    today = from_ms(ctx.now, ctx.tz).date()
    day_start = _at(today, 0, ctx.tz)
    states: dict[str, list[tuple[str, int, int | None]]] = {}
    for sid, state, start, end in ctx.s.execute(
            select(StationState.station_id, StationState.state, StationState.start_ms, StationState.end_ms)
            .where((StationState.end_ms.is_(None)) | (StationState.end_ms > day_start))
            .order_by(StationState.station_id, StationState.start_ms)):
        states.setdefault(sid, []).append((state, start, end))
    # The analysis starts afresh when a camera (re)connects: it closes the open faults and states of its
    # previous run and takes its confirmation times to decide again. Until then a missing fault or
    # state is no evidence that the cover came off or the station opened.
    connected: dict[str, int] = {
        sid: start for sid, start in ctx.s.execute(
            select(OnlineInterval.station_id, func.max(OnlineInterval.start_ms))
            .where(OnlineInterval.end_ms.is_(None)).group_by(OnlineInterval.station_id))}
    settle_ms = analysis_settle_ms(ctx.settings)
    for st in stations:
        rules = rules_for(ctx.alerts, st.id, st.town)
        camera = reported_camera_state(cams.get(st.id), True, ctx.now, stale_ms, stall_ms)
        online = bool(camera["online"])
        since_connect = max(connected.get(st.id, ctx.started_ms), ctx.started_ms)
        if not online or ctx.now - since_connect < settle_ms:
            ctx.out.held.update({f"station_not_open:{st.id}:", f"station_closed_long:{st.id}:",
                                 f"camera_fault:{st.id}:"})
        if not online:
            _camera_offline(ctx, st, rules, camera)
        else:
            for f in faults.get(st.id, []):
                _camera_fault(ctx, st, rules, f)
        if online:
            _open_rules(ctx, st, rules, states.get(st.id, []), today)
        elif st.id in faults:  # auth_failed is written while the camera is not streaming
            for f in faults[st.id]:
                if f.kind == "auth_failed":
                    _camera_fault(ctx, st, rules, f)


def analysis_settle_ms(settings: Settings) -> int:
    """How long the analysis takes to confirm its faults and open/closed state after a (re)connect."""
    a = settings.analysis
    return int((max(a.hysteresis_seconds, a.fault_min_seconds, a.frozen_seconds, a.scene_changed_seconds) + 60) * 1000)


def _station_cond(st: Station, **kw) -> Condition:
    return Condition(station_id=st.id, station_name=st.name, town=st.town, **kw)


def _camera_offline(ctx: RuleContext, st: Station, rules: AlertRuleSettings, camera: dict) -> None:
    key = f"camera_offline:{st.id}"
    last = camera.get("last_packet_ms")
    # Downtime is counted from the last recorded frame, but never from before this server started
    # (after an upgrade the cameras reconnect within seconds; the server's own downtime is not theirs).
    since = max(last, ctx.started_ms) if last is not None else max(ctx.seen_since(key), ctx.started_ms)
    state = str(camera["state"])
    why = CAMERA_STATE_LABELS.get(state, state)
    last_text = local_text(last, ctx.tz) if last is not None else "从未录到"
    detail = f"状态：{why}（{camera.get('reason') or state}）。最后录到画面：{last_text}。"
    if camera.get("detail"):
        detail += f" {camera['detail']}"
    ctx.add(_station_cond(st, key=key, rule="camera_offline", severity="major",
                          title=f"{st.name}：摄像机离线/未录像", detail=detail, since_ms=since,
                          due_ms=since + int(rules.offline_grace_seconds * 1000)), rules.disabled_rules)


def _camera_fault(ctx: RuleContext, st: Station, rules: AlertRuleSettings, f: Fault) -> None:
    if f.kind not in rules.fault_kinds:
        ctx.out.expired.add(f"camera_fault:{st.id}:{f.kind}")  # no longer alerted: ends without a recovery
        return
    label = FAULT_LABELS.get(f.kind, f.kind)
    severity = f.severity if f.severity in ("minor", "major", "critical") else "minor"
    ctx.add(_station_cond(st, key=f"camera_fault:{st.id}:{f.kind}", rule="camera_fault", severity=severity,
                          title=f"{st.name}：{label}", detail=f"自 {local_text(f.start_ms, ctx.tz)} 起：{label}。"
                          + (f" {f.detail}" if f.detail else ""),
                          since_ms=f.start_ms, due_ms=f.start_ms + int(rules.fault_grace_seconds * 1000)),
            rules.disabled_rules)


def _open_rules(ctx: RuleContext, st: Station, rules: AlertRuleSettings,
                intervals: list[tuple[str, int, int | None]], today: date) -> None:
    """station_not_open and station_closed_long, from today's open/closed intervals. Only a `closed`
    verdict of the analysis counts: `unknown` (no verdict yet, a dark picture) never alerts."""
    try:
        ranges = BusinessHours.parse(st.business_hours).seconds_of_day()
    except ValueError:
        return
    if not ranges:
        return
    spans = [(_at(today, a, ctx.tz), _at(today, b, ctx.tz)) for a, b in ranges]
    first_start, last_end = spans[0][0], spans[-1][1]
    current = intervals[-1] if intervals else None
    closed_now = current is not None and current[0] == OpenState.CLOSED and current[2] is None
    if not closed_now and not (current is not None and current[0] == OpenState.OPEN and current[2] is None):
        # No verdict now (unknown, or no open interval): neither raise nor end the opening alerts.
        ctx.out.held.update({f"station_not_open:{st.id}:", f"station_closed_long:{st.id}:"})
    opened_today = any(state == OpenState.OPEN and (end is None or end > first_start) and start < ctx.now
                       for state, start, end in intervals)
    day = today.isoformat()
    # Not open by the first opening time + grace.
    key = f"station_not_open:{st.id}:{day}"
    if first_start <= ctx.now < last_end and not opened_today and closed_now:  # (past last_end: expires_ms)
        grace = int(rules.not_open_grace_minutes * 60_000)
        ctx.add(_station_cond(st, key=key, rule="station_not_open", severity="minor", expires_ms=last_end,
                              title=f"{st.name}：未按时开门",
                              detail=f"营业时间 {st.business_hours}，到 {local_text(ctx.now, ctx.tz)[11:16]} 仍未开门"
                                     "（画面分析判定为关门）。",
                              since_ms=first_start, due_ms=first_start + grace), rules.disabled_rules)
    # Closed long within one business range, after having opened today.
    inside = next(((a, b) for a, b in spans if a <= ctx.now < b), None)
    if closed_now and opened_today and current is not None and inside is not None:
        # One alert per business range (its key): a restart of the analysis that re-opens the closed
        # interval is the same closing, not a new one. It expires with the range.
        since = max(current[1], inside[0])
        ctx.add(_station_cond(st, key=f"station_closed_long:{st.id}:{inside[0]}", rule="station_closed_long",
                              severity="minor", expires_ms=inside[1], title=f"{st.name}：营业时间内长时间关门",
                              detail=f"自 {local_text(current[1], ctx.tz)[11:16]} 起关门，"
                                     f"营业时间 {st.business_hours}。",
                              since_ms=since, due_ms=since + int(rules.closed_long_minutes * 60_000)),
                rules.disabled_rules)


# ---------------------------------------------------------------- storage
def _storage_rules(ctx: RuleContext) -> None:
    volumes = VolumeSet(ctx.settings.storage.volumes)
    grace_ms = int(ctx.alerts.offline_grace_seconds * 1000)
    for v in ctx.settings.storage.volumes:
        if not volumes.is_available(v.name):
            key = f"volume_missing:{v.name}"
            since = ctx.seen_since(key)
            ctx.add(Condition(key=key, rule="volume_missing", severity="critical",
                              title=f"存储卷 {v.name} 不可用",
                              detail=f"{v.path} 下没有卷标记文件（磁盘未挂载或已损坏），录像无法写入该卷。",
                              since_ms=since, due_ms=since + grace_ms))
            continue
        try:
            st = os.statvfs(v.path)
        except OSError:
            continue
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        if total <= 0:
            continue
        percent = 100.0 * free / total
        if free < v.min_free_bytes or percent < ctx.alerts.disk_min_free_percent:
            key = f"disk_low:{v.name}"
            since = ctx.seen_since(key)
            critical = free < v.critical_free_bytes
            ctx.add(Condition(key=key, rule="disk_low", severity="critical" if critical else "major",
                              title=f"存储卷 {v.name} 磁盘空间不足",
                              detail=f"剩余 {free / 1e9:.1f} GB（{percent:.1f}%），低于阈值"
                                     f"（{v.min_free_bytes / 1e9:.1f} GB 或 {ctx.alerts.disk_min_free_percent:g}%），"
                                     "旧录像将被提前删除。",
                              since_ms=since, due_ms=since))


# ---------------------------------------------------------------- events
def _event_rules(ctx: RuleContext) -> None:
    after = ctx.now - EVENT_LOOKBACK_MS
    # Early evictions: one alert per retention run that deleted footage before its time.
    for run_id, critical, n_st, n_seg, n_bytes, at in ctx.s.execute(
            select(PurgeLog.run_id, func.max(case((PurgeLog.reason == "critical", 1), else_=0)),
                   func.count(func.distinct(PurgeLog.station_id)),
                   func.sum(PurgeLog.segments), func.sum(PurgeLog.bytes), func.min(PurgeLog.at_ms))
            .where(PurgeLog.at_ms > after, PurgeLog.reason.in_(("pressure", "critical")))
            .group_by(PurgeLog.run_id)):
        ctx.add(Condition(key=f"early_eviction:{run_id}", rule="early_eviction",
                          severity="critical" if critical else "major",
                          title="磁盘压力：录像被提前删除" + ("（已删至保留天数下限以内）" if critical else ""),
                          detail=f"清理任务 {run_id} 因磁盘空间不足，提前删除了 {n_st} 个站点的 {n_seg} 段录像"
                                 f"（{(n_bytes or 0) / 1e9:.1f} GB）。请扩容或检查保留天数。",
                          since_ms=at, due_ms=at, one_shot=True))
    for ev in ctx.s.scalars(select(SystemEvent).where(SystemEvent.at_ms > after).order_by(SystemEvent.id)):
        if ev.kind == "worker_restarted":
            # At most one message per worker and hour: a worker that keeps dying (restarted every 30 s at
            # worst) must not flood the robots; the rest are in the log and the system events.
            ctx.add(Condition(key=f"worker_restarted:{ev.subject}:{ev.at_ms // 3_600_000}", rule="worker_restarted",
                              severity="major", title=f"录像进程已重启（{ev.subject}）",
                              detail=(ev.detail or "") + "（同一进程一小时内的再次重启不另行通知，见日志）",
                              since_ms=ev.at_ms, due_ms=ev.at_ms, one_shot=True))
        elif ev.kind == "retention_failed":
            ctx.add(Condition(key=f"retention_failed:{ev.id}", rule="retention_failed", severity="major",
                              title="录像清理任务失败", detail=ev.detail, since_ms=ev.at_ms, due_ms=ev.at_ms,
                              one_shot=True))


def _audit_rule(ctx: RuleContext, stations: dict[str, Station]) -> None:
    """The newest month's non-compliant stations, once, as one summary."""
    month = ctx.s.scalar(select(func.max(AuditMonthly.month)).where(
        AuditMonthly.computed_ms > ctx.now - AUDIT_LOOKBACK_MS))
    if month is None:
        return
    failed = list(ctx.s.execute(select(AuditMonthly.station_id, AuditMonthly.reasons).where(
        AuditMonthly.month == month, AuditMonthly.passed.is_(False)).order_by(AuditMonthly.station_id)))
    if not failed:
        return
    computed = ctx.s.scalar(select(func.max(AuditMonthly.computed_ms)).where(AuditMonthly.month == month)) or ctx.now
    lines = []
    for sid, reasons in failed[:30]:
        name = stations[sid].name if sid in stations else sid
        why = "；".join(str(r) for r in (reasons or [])[:2])
        lines.append(f"- {name}（{sid}）{('：' + why) if why else ''}")
    if len(failed) > 30:
        lines.append(f"……另有 {len(failed) - 30} 个站点")
    ctx.add(Condition(key=f"audit_noncompliant:{month}", rule="audit_noncompliant", severity="minor",
                      title=f"{month} 月度考核：{len(failed)} 个站点不达标", detail="\n".join(lines),
                      since_ms=computed, due_ms=computed, one_shot=True))
