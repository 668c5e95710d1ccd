"""Stations: the list with live status, one station, settings changes, snapshot and timeline."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import cv2
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import Field
from sqlalchemy import select

from vms.analysis.calibration import parse_calibration
from vms.api import permissions as P
from vms.api.access import record_access
from vms.api.accounts import Principal
from vms.api.deps import Ctx, DbSession, StationId, client_address, require, visible_station
from vms.api.errors import ApiError
from vms.api.schemas import ApiModel, time_query
from vms.api.status import status_cache
from vms.api.timeparse import iso, parse_range
from vms.catalog.model import BusinessHours
from vms.catalog.store import station_public_dict
from vms.catalog.towns import TOWN_NAMES
from vms.catalog.urls import mask_text
from vms.core.errors import ConfigError
from vms.db.models import Fault, Gap, Segment, Station, StationState
from vms.ingest.health import CameraState, ReportedState
from vms.ingest.keyframes import keyframe_path, latest_keyframe, request_keyframe

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/stations", tags=["stations"])

JOIN_GAP_MS = 1500
TIMELINE_MAX_DAYS = 31


class CameraOut(ApiModel):
    state: str = Field(description="connecting | streaming | backoff | failed | stopped | offline | unknown")
    reason: str | None = None
    online: bool
    detail: str | None = None
    node: str | None = None
    fps: float | None = None
    bitrate_bps: float | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    audio: str | None = Field(default=None, description=(
        "the camera's audio in the recording: aac|mp3|opus|... (kept as sent), pcm_alaw->aac | pcm_mulaw->aac"
        " (G.711 transcoded to AAC), 'dropped: <codec>' (not recorded), null (no audio track)"))
    last_packet_ms: int | None = None
    reconnects: int | None = None
    updated_ms: int | None = None


class FaultOut(ApiModel):
    kind: str
    severity: str
    since_ms: int
    detail: str | None = None


class StationStatus(ApiModel):
    id: str
    name: str
    level: str
    town: str
    enabled: bool
    poverty_village: bool
    business_hours: str
    camera: CameraOut
    recording: bool
    recorded_until_ms: int | None
    open_state: str = Field(description="open | closed | unknown")
    open_state_since_ms: int | None
    last_activity_ms: int | None
    faults: list[FaultOut]


class StationList(ApiModel):
    generated_ms: int
    count: int
    stations: list[StationStatus]


class StationDetail(StationStatus):
    placeholder_name: bool
    calibration: dict | None = None
    camera_urls: dict | None = Field(default=None, description="admins only; credentials masked")


Status = Annotated[Principal, Depends(require(P.STATUS))]


@router.get("", response_model=StationList, response_class=Response)
async def list_stations(
    ctx: Ctx, principal: Status,
    town: Annotated[str | None, Query(description="town name, e.g. 平山街道")] = None,
    level: Literal["town", "village"] | None = None,
    state: Annotated[str | None, Query(description="camera state, e.g. streaming or offline")] = None,
    open_state: Literal["open", "closed", "unknown"] | None = None,
    enabled: bool | None = None,
) -> Response:
    if town is not None and town not in TOWN_NAMES:
        raise HTTPException(400, f"unknown town {town!r}; known: {', '.join(TOWN_NAMES)}")
    # async: the usual answer is a cached encoded list, served without a thread hop; the status
    # queries run in a thread only when there is no list yet.
    cache = status_cache(ctx)
    snap = cache.fresh()
    if snap is None:
        snap = await run_in_threadpool(cache.snapshot)
    key = (principal.towns, town, level, state, open_state, enabled)
    body = snap.encoded.get(key)
    if body is None:
        # Validated once against the response model, then reused by every caller until the next
        # snapshot (at most status_cache_seconds old).
        body = await run_in_threadpool(_encoded, _filtered(snap.stations, principal, town, level, state,
                                                           open_state, enabled, snap.computed_ms))
        if len(snap.encoded) < 256:
            snap.encoded[key] = body
    return Response(body, media_type="application/json")


def _encoded(station_list: dict) -> bytes:
    return StationList.model_validate(station_list).model_dump_json().encode()


def _filtered(stations, principal, town, level, state, open_state, enabled, computed_ms) -> dict:
    rows = []
    for st in stations:
        if not principal.may_see_town(st["town"]):
            continue
        if town and st["town"] != town or level and st["level"] != level:
            continue
        if state and st["camera"]["state"] != state or open_state and st["open_state"] != open_state:
            continue
        if enabled is not None and st["enabled"] != enabled:
            continue
        rows.append(st)
    return {"generated_ms": computed_ms, "count": len(rows), "stations": rows}


def _detail(ctx, session, principal: Principal, station: Station) -> dict:
    st = next((s for s in status_cache(ctx).get() if s["id"] == station.id), None)
    if st is None:  # imported after the cache was made
        status_cache(ctx).invalidate()
        st = next(s for s in status_cache(ctx).get() if s["id"] == station.id)
    out: dict[str, Any] = dict(st)
    out.update(placeholder_name=station.placeholder_name, calibration=station.calibration,
               business_hours=station.business_hours, enabled=station.enabled)
    if principal.role == "admin":
        out["camera_urls"] = station_public_dict(station)["camera"]
    return out


@router.get("/{station_id}", response_model=StationDetail)
def get_station(station_id: StationId, ctx: Ctx, session: DbSession, principal: Status) -> dict:
    station = visible_station(session, principal, station_id)
    return _detail(ctx, session, principal, station)


class StationPatch(ApiModel):
    business_hours: str | None = Field(default=None, description="HH:MM-HH:MM[,HH:MM-HH:MM] local time")
    enabled: bool | None = None
    calibration: dict | None = Field(default=None, description="analysis calibration (see vms.analysis)")


def _validate_calibration(value: dict) -> dict:
    """The calibration as the analysis will read it (vms.analysis.calibration), or 422 naming each problem:
    a calibration the analysis refuses is dropped there with a log line, privacy masks included."""
    try:
        calibration = parse_calibration(value, "calibration")
    except ConfigError as exc:
        raise ApiError(422, "calibration_invalid", "标定无效：" + "；".join(exc.problems)) from None
    return calibration.model_dump(mode="json")


@router.patch("/{station_id}", response_model=StationDetail)
def patch_station(station_id: StationId, body: StationPatch, ctx: Ctx, session: DbSession,
                  principal: Annotated[Principal, Depends(require(P.STATIONS_WRITE))]) -> dict:
    station = visible_station(session, principal, station_id)
    if body.business_hours is not None:
        try:
            BusinessHours.parse(body.business_hours)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        station.business_hours = body.business_hours
    if body.enabled is not None:
        station.enabled = body.enabled
    if "calibration" in body.model_fields_set:
        station.calibration = None if body.calibration is None else _validate_calibration(body.calibration)
    station.updated_ms = ctx.clock.now_ms()
    session.flush()
    session.commit()
    status_cache(ctx).invalidate()
    return _detail(ctx, session, principal, station)


SNAPSHOT_FRESH_MS = 3000  # an older keyframe file makes the snapshot ask the session for a fresh one


@router.get("/{station_id}/snapshot.jpg", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, 503: {"description": "no recent picture"}})
def snapshot(station_id: StationId, request: Request, ctx: Ctx, session: DbSession,
             principal: Annotated[Principal, Depends(require(P.SNAPSHOT))]) -> Response:
    """The newest keyframe the recording session kept (no new camera connection), as JPEG."""
    station = visible_station(session, principal, station_id)
    now = ctx.clock.now_ms()
    cam = next((s["camera"] for s in status_cache(ctx).get() if s["id"] == station.id), None)
    max_age_ms = int(ctx.settings.api.snapshot_max_age_seconds * 1000)
    if cam is not None and cam["state"] not in (CameraState.STREAMING, ReportedState.UNKNOWN):
        raise HTTPException(503, f"camera {cam['state']}" + (f": {cam['reason']}" if cam.get("reason") else ""))
    kf = latest_keyframe(ctx.settings.data_dir, station.id)
    streaming = cam is not None and cam["state"] == CameraState.STREAMING
    if (kf is None or now - kf.wall_ms > SNAPSHOT_FRESH_MS) and streaming:
        # Give the pooled connection back before waiting for the session's next keyframe.
        session.close()
        kf = _wait_for_keyframe(ctx, station.id, kf, max_age_ms / 1000)
        now = ctx.clock.now_ms()
    if kf is None:
        raise HTTPException(503, "no picture yet: the camera is not being recorded on this server")
    if now - kf.wall_ms > max_age_ms:
        state = f"camera {cam['state']}" if cam else "no camera status"
        raise HTTPException(503, f"latest picture is {(now - kf.wall_ms) / 1000:.0f} s old ({state})")
    try:
        frame = kf.decode()
    except Exception as exc:  # a damaged keyframe file must not become a 500
        raise HTTPException(503, f"latest picture could not be decoded: {type(exc).__name__}") from None
    ok, jpg = cv2.imencode(".jpg", frame.to_ndarray(format="bgr24"), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise HTTPException(503, "JPEG encoding failed")
    record_access(session, principal, "snapshot", now, client_address(request), station_id=station.id,
                  start_ms=kf.wall_ms, end_ms=kf.wall_ms)
    return Response(jpg.tobytes(), media_type="image/jpeg",
                    headers={"Cache-Control": "no-store", "X-Frame-Time": iso(kf.wall_ms, ctx.settings.tz)})


def _wait_for_keyframe(ctx, station_id: str, kf, wait_s: float):
    """Ask the session for fresh keyframes (it keeps one every 30 s when nobody asks, see
    keyframes.py) and wait up to `wait_s` (one GOP, usually ~2 s) for a newer file than `kf`."""
    try:
        request_keyframe(ctx.settings.data_dir, station_id)
    except OSError as exc:  # e.g. a read-only data folder: serve what there is
        log.warning("cannot ask for a fresh keyframe of %s: %s", station_id, exc)
        return kf
    path = keyframe_path(ctx.settings.data_dir, station_id)
    seen = None  # not the mtime now: the file may have been replaced since `kf` was read
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        mtime = _mtime_ns(path)
        if mtime is None or mtime == seen:
            continue  # polled with a stat: the ~130 KB file is read only when it was replaced
        seen = mtime
        newer = latest_keyframe(ctx.settings.data_dir, station_id)
        if newer is not None and (kf is None or newer.wall_ms > kf.wall_ms):
            return newer
    return kf


def _mtime_ns(path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


class Interval(ApiModel):
    start_ms: int
    end_ms: int | None = Field(description="null: still going")


class GapOut(Interval):
    reason: str
    detail: str | None = None
    backfill: str | None = Field(default=None, description="GB28181 cameras: filled | partial | none | failed | "
                                 "running, or null (not tried): the hole filled from the camera's own recording")
    filled_ms: int | None = Field(default=None, description="footage filed inside the gap afterwards")


class StateOut(Interval):
    state: str


class FaultInterval(Interval):
    kind: str
    severity: str


class Timeline(ApiModel):
    station_id: str
    start_ms: int
    end_ms: int
    recorded: list[list[int]] = Field(description="[start_ms, end_ms] spans of footage, segments joined")
    recorded_ms: int
    gaps: list[GapOut]
    states: list[StateOut]
    faults: list[FaultInterval]


@router.get("/{station_id}/timeline", response_model=Timeline)
def timeline(station_id: StationId, ctx: Ctx, session: DbSession, principal: Status,
             start: Annotated[str, time_query()], end: Annotated[str, time_query()]) -> dict:
    station = visible_station(session, principal, station_id)
    s, e = parse_range(start, end, ctx.settings.tz, TIMELINE_MAX_DAYS * 86_400_000, "时间轴范围")
    spans: list[list[int]] = []
    for a, b in session.execute(
            select(Segment.start_ms, Segment.end_ms)
            .where(Segment.station_id == station.id, Segment.stream == "main", Segment.state != "deleting",
                   Segment.start_ms < e, Segment.end_ms > s).order_by(Segment.start_ms)):
        a, b = max(a, s), min(b, e)
        if spans and a - spans[-1][1] <= JOIN_GAP_MS:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])

    def overlapping(model):
        return (select(model).where(model.station_id == station.id, model.start_ms < e,
                                    (model.end_ms.is_(None)) | (model.end_ms > s)).order_by(model.start_ms))

    gaps = [{"start_ms": g.start_ms, "end_ms": g.end_ms, "reason": g.reason, "detail": g.detail,
             "backfill": g.backfill, "filled_ms": g.filled_ms}
            for g in session.scalars(overlapping(Gap).where(Gap.stream == "main"))]
    states = [{"start_ms": x.start_ms, "end_ms": x.end_ms, "state": x.state}
              for x in session.scalars(overlapping(StationState))]
    faults = [{"start_ms": f.start_ms, "end_ms": f.end_ms, "kind": f.kind, "severity": f.severity}
              for f in session.scalars(overlapping(Fault))]
    for g in gaps:
        if g["detail"]:
            g["detail"] = mask_text(g["detail"])
    return {"station_id": station.id, "start_ms": s, "end_ms": e, "recorded": spans,
            "recorded_ms": sum(b - a for a, b in spans), "gaps": gaps, "states": states, "faults": faults}


class FootageDay(ApiModel):
    day: str = Field(description="local day YYYY-MM-DD")
    recorded_ms: int = Field(description="footage of the main stream that day")
    gaps: int = Field(description="gaps (main stream) that started that day")


class FootageDays(ApiModel):
    station_id: str
    month: str
    days: list[FootageDay] = Field(description="the days with footage or gaps, in order; a day not listed has neither")


MONTH_PATTERN = r"^(20[0-9]{2})-(0[1-9]|1[0-2])$"


@router.get("/{station_id}/footage-days", response_model=FootageDays)
def footage_days(station_id: StationId, ctx: Ctx, session: DbSession, principal: Status,
                 month: Annotated[str, Query(pattern=MONTH_PATTERN, description="local month YYYY-MM")]) -> dict:
    """For the playback calendar: how much footage each local day of a month holds."""
    station = visible_station(session, principal, station_id)
    tz = ctx.settings.tz
    year, mon = int(month[:4]), int(month[5:7])
    first = datetime(year, mon, 1, tzinfo=tz)
    after = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=tz)
    s, e = int(first.timestamp() * 1000), int(after.timestamp() * 1000)
    recorded: dict[str, int] = {}
    for a, b in session.execute(
            select(Segment.start_ms, Segment.end_ms)
            .where(Segment.station_id == station.id, Segment.stream == "main", Segment.state != "deleting",
                   Segment.start_ms < e, Segment.end_ms > s)):
        a, b = max(a, s), min(b, e)
        while a < b:  # a segment may span local midnight
            day_start = datetime.fromtimestamp(a / 1000, tz).replace(hour=0, minute=0, second=0, microsecond=0)
            next_day = int((day_start + timedelta(days=1)).timestamp() * 1000)
            cut = min(b, next_day)
            key = day_start.strftime("%Y-%m-%d")
            recorded[key] = recorded.get(key, 0) + cut - a
            a = cut
    gaps: dict[str, int] = {}
    for (g,) in session.execute(select(Gap.start_ms).where(Gap.station_id == station.id, Gap.stream == "main",
                                                           Gap.start_ms >= s, Gap.start_ms < e)):
        key = datetime.fromtimestamp(g / 1000, tz).strftime("%Y-%m-%d")
        gaps[key] = gaps.get(key, 0) + 1
    days = [{"day": d, "recorded_ms": recorded.get(d, 0), "gaps": gaps.get(d, 0)}
            for d in sorted(recorded.keys() | gaps.keys())]
    return {"station_id": station.id, "month": month, "days": days}
