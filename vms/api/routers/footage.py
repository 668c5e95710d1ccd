"""Playback of recorded footage (operator and admin), logged with a stated reason, and live-view
registration for the live module."""

from __future__ import annotations

import logging
import time
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse
from pydantic import Field

from vms.api import permissions as P
from vms.api.access import record_access
from vms.api.accounts import Principal
from vms.api.context import ApiContext
from vms.api.deps import Ctx, DbSession, StationId, client_address, require, visible_station
from vms.api.errors import ApiError
from vms.api.footage import segments_or_error
from vms.api.playback import PlaybackItem, playback_store
from vms.api.playback_transcode import (
    TRANSCODE_FULL_CODE,
    playback_transcode_slots,
    transcode_full_text,
    transcode_to_h264,
)
from vms.api.remux import NoFootage, RemuxResult, SourceSegment, remux_range
from vms.api.schemas import ApiModel, FootageRangeIn
from vms.api.timeparse import iso, parse_range

log = logging.getLogger(__name__)
router = APIRouter(tags=["footage"])


class PlaybackIn(FootageRangeIn):
    h264: bool = Field(default=False, description=(
        "the viewer cannot decode H.265 (Chromium on Linux): H.265 footage is then transcoded to H.264 on the "
        "server, at most api.playback_transcode_max_seconds of it (the range is cut: see range_limited) and "
        "at most api.playback_max_transcodes at once (429 playback_transcode_full). H.264 footage is "
        "served as it is: the option changes nothing for it"))


class SpanOut(ApiModel):
    video_offset_ms: int
    wall_start_ms: int
    wall_end_ms: int


class PlaybackOut(ApiModel):
    id: str
    url: str = Field(description="GET with the same credentials; supports Range requests")
    station_id: str
    first_ms: int = Field(description="wall time of the first frame: the keyframe at or before start")
    first_at: str
    last_ms: int
    duration_ms: int
    bytes: int
    spans: list[SpanOut] = Field(description="video offset -> wall time; longer gaps are collapsed")
    truncated: str | None = None
    codec: str = Field(description="the file's video codec: h264 | hevc (FFmpeg's names)")
    source_codec: str = Field(description="the recorded footage's video codec")
    transcoded: bool = Field(description="the file was transcoded from H.265 (`h264` asked); its frame times "
                                         "are the recording's, so spans hold for it unchanged")
    range_limited: bool = Field(default=False, description=(
        "the range was cut to api.playback_transcode_max_seconds (transcoded playback): last_ms says where "
        "this file ends; ask again from there for the rest"))


@router.post("/api/stations/{station_id}/playback", response_model=PlaybackOut, status_code=201,
             responses={404: {"description": "no footage in the range"},
                        429: {"description": "h264 asked, H.265 footage, every transcode slot taken "
                                             "(code playback_transcode_full)"}})
def start_playback(station_id: StationId, body: PlaybackIn, request: Request, ctx: Ctx, session: DbSession,
                   principal: Annotated[Principal, Depends(require(P.PLAYBACK))]) -> dict:
    station = visible_station(session, principal, station_id)
    if not body.reason.strip():
        raise ApiError(400, "reason_required", "回放须填写调用事由")
    s, e = parse_range(body.start, body.end, ctx.settings.tz,
                       int(ctx.settings.api.playback_max_minutes * 60_000), "回放范围")
    sources = segments_or_error(ctx, session, station, s, e)
    # The codec as indexed, to decide before any work; the remuxed file's own codec decides at the end.
    transcode = body.h264 and (sources[0].codec or "hevc") in ("hevc", "h265")
    range_limited = False
    slots = playback_transcode_slots(ctx)
    if transcode:
        max_ms = int(ctx.settings.api.playback_transcode_max_seconds * 1000)
        if e - s > max_ms:
            e, range_limited = s + max_ms, True
            sources = [src for src in sources if src.start_ms < e]
        if not slots.try_take():
            raise ApiError(429, TRANSCODE_FULL_CODE, transcode_full_text(slots.limit))
    store = playback_store(ctx)
    pid, path = store.new_path()
    try:
        result, transcoded = _make_playback_file(ctx, sources, s, e, path, transcode, station.name, station.id)
    finally:
        if transcode:
            slots.give_back()
    record_access(session, principal, "playback", ctx.clock.now_ms(), client_address(request),
                  station_id=station.id, start_ms=s, end_ms=e, reason=body.reason.strip())
    store.add(PlaybackItem(pid, principal.user_id, station.id, path, result, time.monotonic()))
    return {"id": pid, "url": f"/api/playback/{pid}.mp4", "station_id": station.id, "first_ms": result.first_ms,
            "first_at": iso(result.first_ms, ctx.settings.tz), "last_ms": result.last_ms,
            "duration_ms": result.duration_ms, "bytes": result.bytes,
            "spans": [vars(sp) for sp in result.spans], "truncated": result.truncated,
            "codec": "h264" if transcoded else result.codec, "source_codec": result.codec, "transcoded": transcoded,
            "range_limited": range_limited}


def _make_playback_file(ctx: ApiContext, sources: list[SourceSegment], start_ms: int, end_ms: int, path: FilePath,
                        transcode: bool, station_name: str, station_id: str) -> tuple[RemuxResult, bool]:
    """Remux [start_ms, end_ms) to path; with `transcode`, H.265 footage is remuxed beside it and transcoded
    to H.264 into path (the frame times, hence the result's spans, are the same)."""
    remuxed = path.with_name(path.stem + ".hevc.mp4") if transcode else path
    try:
        try:
            result = remux_range(sources, start_ms, end_ms, remuxed, tz=ctx.settings.tz)
        except NoFootage:
            raise ApiError(404, "footage_unreadable",
                           f"{station_name}（{station_id}）此时段的录像文件无法读取或已被截断") from None
        if remuxed == path:
            return result, False
        if result.codec != "hevc":  # indexed as H.265 (or not indexed) but H.264 after all
            remuxed.replace(path)
            return result, False
        stats = transcode_to_h264(remuxed, path, ctx.settings.live.transcode_max_height)
        log.info("playback of %s transcoded: %.1f s of footage, %d frames, %.1f CPU s", station_id,
                 result.duration_ms / 1000, stats.frames, stats.cpu_s)
        result.bytes = path.stat().st_size
        result.path = path
        return result, True
    finally:
        if remuxed != path:
            remuxed.unlink(missing_ok=True)


@router.get("/api/playback/{playback_id}.mp4", response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}}, 206: {"description": "partial content"}})
def playback_file(playback_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{8,40}$")], ctx: Ctx,
                  principal: Annotated[Principal, Depends(require(P.PLAYBACK))]) -> FileResponse:
    item = playback_store(ctx).get(playback_id)
    if item is None or not item.path.exists() or (item.user_id != principal.user_id and principal.role != "admin"):
        keep = ctx.settings.api.playback_keep_minutes
        raise ApiError(404, "playback_not_found", f"没有这个回放（回放文件保留 {keep:g} 分钟）：请重新发起回放")
    return FileResponse(item.path, media_type="video/mp4", filename=f"{item.station_id}-{playback_id}.mp4",
                        content_disposition_type="inline")


class LiveIn(ApiModel):
    reason: str | None = Field(default=None, max_length=500)


class LiveOut(ApiModel):
    station_id: str
    logged_at: str


@router.post("/api/stations/{station_id}/live-views", response_model=LiveOut, status_code=201)
def register_live_view(station_id: StationId, body: LiveIn, request: Request, ctx: Ctx, session: DbSession,
                       principal: Annotated[Principal, Depends(require(P.LIVE))]) -> dict:
    """Check live-view rights and write the access-log entry; the live module then opens the stream."""
    station = visible_station(session, principal, station_id)
    now = ctx.clock.now_ms()
    record_access(session, principal, "live", now, client_address(request), station_id=station.id,
                  start_ms=now, reason=body.reason)
    return {"station_id": station.id, "logged_at": iso(now, ctx.settings.tz)}
