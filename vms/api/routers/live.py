"""Live view: WebRTC offer/answer (H.264 passthrough) and the fMP4-over-WebSocket fallback.

Both check the live permission and town limits and write one access-log entry per view. The streams
come from the ingest's own camera connection through vms.live (tap in the worker, relay here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from vms.api import permissions as P
from vms.api.access import record_access
from vms.api.accounts import Principal
from vms.api.context import ApiContext
from vms.api.deps import Ctx, StationId, client_address, get_principal, require, visible_station
from vms.api.errors import ApiError
from vms.api.permissions import ROLE_TEXT
from vms.api.schemas import ApiModel
from vms.live.mse import FragmentedMp4Stream
from vms.live.protocol import StreamInfo
from vms.live.relay import CAMERA_DISCONNECTED, EndItem, InfoItem, LiveHub, LiveUnavailable, PacketItem
from vms.live.substream import SubStreamRequest, watch_sub
from vms.live.transcode import H264Transcoder, TranscodeSlots
from vms.live.webrtc import LiveCodecUnsupported, WebRtcSessions

log = logging.getLogger(__name__)

router = APIRouter(tags=["live"])

LivePrincipal = Annotated[Principal, Depends(require(P.LIVE))]


def live_hub(ctx: ApiContext) -> LiveHub:
    return ctx.singleton(
        "live_hub", lambda: LiveHub(ctx.settings.data_dir, ctx.settings.live.relay_linger_seconds)
    )


def webrtc_sessions(ctx: ApiContext) -> WebRtcSessions:
    hub = live_hub(ctx)  # first: singleton() holds a lock that is not re-entrant
    return ctx.singleton("live_webrtc", lambda: WebRtcSessions(hub, ctx.clock, ctx.settings.live.ice_servers))


def transcode_slots(ctx: ApiContext) -> TranscodeSlots:
    return ctx.singleton("live_transcode_slots", lambda: TranscodeSlots(ctx.settings.live.max_transcodes))


# Stable codes (docs/design/live.md); the console maps them to its own behaviour.
WEBRTC_CODEC_CODE = "live_webrtc_h264_only"  # 503 of the offer: an H.265 camera, use the MSE view
TRANSCODE_FULL_CLOSE = 4429  # the MSE WebSocket's close code: every transcode slot is taken
TRANSCODE_FULL_CODE = "live_transcode_full"


def _transcode_full_text(limit: int) -> str:
    return f"H.265 实时转码已满（同时最多 {limit} 路），请稍后再试"


def _check_and_log(
    ctx: ApiContext, principal: Principal, station_id: str, client: str, reason: str | None
) -> SubStreamRequest:
    """Refuses a station the caller may not see, logs the view; returns where its sub-stream is (if asked)."""
    with ctx.database.session() as session:
        station = visible_station(session, principal, station_id)
        now = ctx.clock.now_ms()
        record_access(
            session, principal, "live", now, client, station_id=station.id, start_ms=now, reason=reason
        )
        return SubStreamRequest(station.sub_url, station.transport or "tcp")


class WebRtcOffer(ApiModel):
    sdp: str = Field(
        min_length=10, max_length=20_000, description="the browser's offer, ICE gathering complete"
    )
    type: Literal["offer"] = "offer"
    reason: str | None = Field(default=None, max_length=500)
    stream: Literal["main", "sub"] = Field(
        default="main",
        description="sub: the station's sub-stream (a wall of 9 or 16 windows), pulled on demand and never "
        "recorded; the main stream when the station has none or it fails (the answer's stream_note says why)",
    )


class WebRtcAnswer(ApiModel):
    session_id: str = Field(description="POST /api/live/sessions/{id}/close when the viewer leaves")
    sdp: str
    type: str
    codec: str
    width: int | None
    height: int | None
    stream: Literal["main", "sub"] = Field(description="the stream sent")
    stream_note: str | None = Field(description="why the main stream is sent where the sub-stream was asked for")


@router.post(
    "/api/stations/{station_id}/live/webrtc",
    response_model=WebRtcAnswer,
    status_code=201,
    responses={503: {"description": "no live stream (camera down or not recorded here); code "
                     f"{WEBRTC_CODEC_CODE}: an H.265 camera, watch it with the MSE view"}},
)
async def webrtc_offer(
    station_id: StationId, body: WebRtcOffer, request: Request, ctx: Ctx, principal: LivePrincipal
) -> dict:
    sub = await run_in_threadpool(
        _check_and_log, ctx, principal, station_id, client_address(request), body.reason
    )
    try:
        session, answer = await webrtc_sessions(ctx).answer(
            station_id, principal.username, body.sdp, body.type, ctx.settings.live.wait_picture_seconds,
            sub=sub if body.stream == "sub" else None,
        )
    except LiveCodecUnsupported:
        raise ApiError(
            503, WEBRTC_CODEC_CODE, "该摄像机为 H.265 编码，WebRTC 仅支持 H.264：请使用兼容模式（MSE）"
        ) from None
    except LiveUnavailable as exc:
        raise ApiError(503, "live_unavailable", f"无实时画面：{exc}") from None
    except ValueError:  # an offer aiortc cannot parse or use
        raise ApiError(400, "webrtc_offer_invalid", "浏览器的 WebRTC 请求无法使用：请改用兼容模式") from None
    relay = session.track.viewer.relay
    info = relay.info
    return {
        "session_id": session.id,
        "sdp": answer.sdp,
        "type": answer.type,
        "codec": info.codec if info else "",
        "width": info.width if info else None,
        "height": info.height if info else None,
        "stream": relay.stream,
        "stream_note": session.stream_note,
    }


@router.post("/api/live/sessions/{session_id}/close", status_code=204)
async def close_session(
    session_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{8,40}$")], ctx: Ctx, principal: LivePrincipal
) -> Response:
    """End a WebRTC live view (the page sends it when the viewer leaves). Idempotent: a session that has
    already ended (the browser's own close reached the server first, or a second close) answers 204
    too; 404 only for an id this server never gave to this user (admins: to anyone)."""
    sessions = webrtc_sessions(ctx)
    owner = sessions.owner(session_id)
    if owner is None or (owner != principal.username and principal.role != "admin"):
        raise ApiError(404, "live_session_not_found", f"实时会话 {session_id} 不存在")
    await sessions.close(session_id, "closed by the viewer")
    return Response(status_code=204)


@router.get("/api/live/stats")
async def live_stats(ctx: Ctx, principal: Annotated[Principal, Depends(require(P.METRICS))]) -> dict:
    """Relays (one tap connection per watched station) and WebRTC sessions of this API process."""
    hub = live_hub(ctx)
    return {"relays": hub.stats(), "webrtc_sessions": webrtc_sessions(ctx).stats(),
            "sub_stream_pulls": sorted(hub.pulling)}


def origin_refusal(websocket: WebSocket, ctx: ApiContext) -> str | None:
    """Why a browser page of another origin may not open this WebSocket, or None. Browsers send Origin
    with every WebSocket and the session cookie with it; without this check a page elsewhere on the
    same site (another port of this host: SameSite does not separate ports) could open a live view as
    the operator. Clients that are not browsers send no Origin and are let through. The server's own
    origin is host[:port] as the Host header says (behind a proxy: `proxy_set_header Host $http_host`)."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return None
    origin = origin.strip().rstrip("/").lower()
    if origin in ctx.settings.api.allowed_origins:
        return None
    host = (websocket.headers.get("host") or "").strip().lower()
    if host and origin.partition("://")[2] == host:
        return None
    return f"其他网站的页面不能打开实时视频（api.allowed_origins）：{origin}"


def _close_reason(text: str) -> str:
    """A close frame's reason: at most 123 bytes of UTF-8."""
    return text.encode()[:123].decode(errors="ignore")


@router.websocket("/api/stations/{station_id}/live/mse")
async def mse_live(websocket: WebSocket, station_id: str) -> None:
    """Fallback live view: a JSON text message {mime, codec, width, height}, then binary fMP4 (init
    segment, then one fragment per frame); a new JSON message and init segment when the camera
    reconnects; {"ended": reason} when the stream stops. Refusals are accepted, then closed with code
    4401 (not logged in), 4403 (not allowed, or a page of another origin), 4404 (no such station in
    your towns), 4503 (no live stream) or 4429 (an H.265 camera to transcode and every transcode slot
    taken) and the reason; a handshake refused before accept reaches the page as a bare 1006 with no code.

    `?stream=sub`: the station's sub-stream (pulled on demand, shared, never recorded), or its main stream
    when it has none or the pull fails; the JSON message says which (`stream`) and why (`stream_note`).

    `?h264=1`: the browser cannot decode H.265 (Chromium on Linux); an H.265 camera is then transcoded
    to H.264 for this viewer, at most live.max_transcodes at once in this process."""
    ctx: ApiContext = websocket.app.state.ctx
    refusal: tuple[int, str] | None = None
    viewer = None
    want_h264 = websocket.query_params.get("h264") == "1"
    want_sub = websocket.query_params.get("stream") == "sub"
    stream_note: str | None = None
    slots = transcode_slots(ctx)
    holding_slot = False
    try:
        if (why := origin_refusal(websocket, ctx)) is not None:
            raise HTTPException(403, why)
        principal = await run_in_threadpool(get_principal, websocket, ctx)  # type: ignore[arg-type]
        if P.LIVE not in principal.permissions:
            raise HTTPException(403, f"{ROLE_TEXT.get(principal.role, principal.role)}角色不能观看实时视频")
        client = client_address(websocket)
        sub = await run_in_threadpool(
            _check_and_log, ctx, principal, station_id, client, websocket.query_params.get("reason")
        )
        wait = ctx.settings.live.wait_picture_seconds
        if want_sub:
            viewer, stream_note = await watch_sub(live_hub(ctx), station_id, sub.url, sub.transport, wait)
        else:
            viewer = await live_hub(ctx).watch(station_id, wait)
        info = viewer.relay.info
        if want_h264 and info is not None and info.codec == "hevc":
            if not slots.try_take():
                viewer.close()
                viewer = None
                refusal = (TRANSCODE_FULL_CLOSE, _transcode_full_text(slots.limit))
            else:
                holding_slot = True
    except HTTPException as exc:
        refusal = (4000 + exc.status_code, str(exc.detail))
    except LiveUnavailable as exc:
        refusal = (4503, str(exc))
    try:
        await websocket.accept()
        if refusal is not None:
            await websocket.close(code=refusal[0], reason=_close_reason(refusal[1]))
            return
    except (WebSocketDisconnect, RuntimeError, OSError):  # the page went away meanwhile
        if viewer is not None:
            viewer.close()
        if holding_slot:
            slots.give_back()
        return
    assert viewer is not None
    remux: FragmentedMp4Stream | None = None
    transcoder: H264Transcoder | None = None
    receiving = asyncio.create_task(_drain(websocket))

    async def start_remux(info: StreamInfo, transcoded: bool) -> FragmentedMp4Stream:
        stream = FragmentedMp4Stream(info)
        await websocket.send_json(
            {"mime": stream.mime, "codec": info.codec, "width": info.width, "height": info.height,
             "transcoded": transcoded, "stream": viewer.relay.stream, "stream_note": stream_note}
        )
        return stream

    try:
        while not receiving.done():
            getter = asyncio.ensure_future(viewer.get())
            done, _ = await asyncio.wait({getter, receiving}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            item = getter.result()
            if isinstance(item, InfoItem):
                if remux is not None:
                    remux.close()
                    remux = None
                transcoder = None
                if want_h264 and item.info.codec == "hevc":
                    if not holding_slot and not (holding_slot := slots.try_take()):
                        # The camera came back as H.265 and the slots are taken meanwhile.
                        await websocket.send_json(
                            {"ended": _transcode_full_text(slots.limit), "code": TRANSCODE_FULL_CODE}
                        )
                        break
                    transcoder = H264Transcoder(item.info, ctx.settings.live.transcode_max_height)
                else:
                    remux = await start_remux(item.info, transcoded=False)
            elif isinstance(item, PacketItem) and transcoder is not None:
                # Decoding and encoding take milliseconds a picture: off the event loop (PyAV lets go of the GIL).
                for packet in await asyncio.to_thread(transcoder.add, item.packet):
                    if remux is None and transcoder.info is not None:
                        remux = await start_remux(transcoder.info, transcoded=True)
                    if remux is not None and (data := remux.add(packet)):
                        await websocket.send_bytes(data)
            elif isinstance(item, PacketItem) and remux is not None:
                data = remux.add(item.packet)
                if data:
                    await websocket.send_bytes(data)
            elif isinstance(item, EndItem):
                await websocket.send_json({"ended": item.reason})
                if item.reason != CAMERA_DISCONNECTED:
                    break
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        viewer.close()
        receiving.cancel()
        if remux is not None:
            remux.close()
        if holding_slot:
            slots.give_back()
        with contextlib.suppress(Exception):
            await websocket.close()


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) what the page sends, so a closed page is noticed at once."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
