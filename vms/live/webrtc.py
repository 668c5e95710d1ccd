"""Live view over WebRTC (aiortc): the camera's H.264 passed through to the browser without decoding.

A `CameraTrack` returns av.Packet objects (aiortc packetizes them, no transcoding). A new viewer first
gets the cached GOP with timestamps one tick apart, so the browser decodes up to the current picture at
once and shows it in a few hundred ms instead of waiting for the next keyframe. Keyframes get the
stream's SPS/PPS in front when the camera sends them only out of band (Chromium decodes nothing
otherwise). Each peer connection is watched and closed when the tab goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import OrderedDict, deque
from fractions import Fraction

import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from vms.core.clock import Clock
from vms.live.h264 import has_parameter_sets
from vms.live.relay import CAMERA_DISCONNECTED, EndItem, InfoItem, LiveHub, LiveUnavailable, Viewer
from vms.live.substream import SubStreamRequest, watch_sub

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
TICKS_PER_MS = 90
CONNECT_TIMEOUT_S = 30.0
DISCONNECTED_GRACE_S = 5.0
ENDED_REMEMBERED = 2000  # ended sessions whose close still answers 204 (id -> owner)
MAX_MDNS_CANDIDATES = 8  # resolved in the background; an offer may list more, they are dropped

# An ICE candidate line whose address is an mDNS name (`<uuid>.local`): what Chromium offers in place
# of its host addresses unless the page has camera/microphone permission (an operator's console never has).
_MDNS_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ [^\s]+\.local \d+ ", re.IGNORECASE)


def split_mdns_candidates(sdp: str) -> tuple[str, list[str]]:
    """The offer without its mDNS candidate lines, and those lines (without `a=`).

    aiortc resolves every mDNS candidate inside setRemoteDescription, each with a 1 s timeout (aioice),
    so where multicast DNS gets no answer (the browser's responder unreachable, as on this loopback) the
    offer POST took 1.0 s every time and the first frame 1.2-1.6 s. Nothing needs them before the answer:
    the browser (ICE controlling) sends its checks to our host candidates and aioice learns its address
    from them (a peer-reflexive candidate); they are resolved afterwards, off the answer's path."""
    kept: list[str] = []
    mdns: list[str] = []
    for line in sdp.splitlines():
        if _MDNS_CANDIDATE.match(line):
            mdns.append(line[2:])
        else:
            kept.append(line)
    return "\r\n".join(kept) + "\r\n", mdns


class LiveCodecUnsupported(LiveUnavailable):
    """The camera sends a codec WebRTC here does not carry (H.265): the fallback (MSE) can show it."""


class CameraTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, viewer: Viewer, clock: Clock, codec: str = "h264") -> None:
        super().__init__()
        self.viewer = viewer
        self.clock = clock
        self.codec = codec
        self.parameter_sets = b""
        self._last_ts = -1
        self._offset: int | None = None
        self.sent = 0
        self.relay_delays_ms: deque[int] = deque(maxlen=1000)  # ingest receive -> handed to aiortc

    async def recv(self) -> av.Packet:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            item = await self.viewer.get()
            if isinstance(item, InfoItem):
                self.parameter_sets = item.info.extradata
                continue
            if isinstance(item, EndItem):
                if item.reason == CAMERA_DISCONNECTED:
                    continue  # the camera reconnects; the next info and keyframe follow
                self.stop()
                raise MediaStreamError
            pkt = item.packet
            data = pkt.data
            if pkt.keyframe and self.parameter_sets and not has_parameter_sets(data, self.codec):
                data = self.parameter_sets + data
            if item.replay:
                ts = self._last_ts + 1  # squeezed: decode the cached GOP at once
            else:
                if self._offset is None:
                    # Live frames follow the replay at the camera's pace, one frame interval on.
                    self._offset = self._last_ts + 40 * TICKS_PER_MS - pkt.pts * TICKS_PER_MS
                ts = max(self._last_ts + 1, pkt.pts * TICKS_PER_MS + self._offset)
                self.relay_delays_ms.append(self.clock.now_ms() - pkt.received_ms)
            self._last_ts = ts
            out = av.Packet(data)
            out.pts = out.dts = ts
            out.time_base = VIDEO_TIME_BASE
            out.is_keyframe = pkt.keyframe
            self.sent += 1
            return out

    def stop(self) -> None:
        super().stop()
        self.viewer.close()


class LiveSession:
    def __init__(
        self, session_id: str, station_id: str, username: str, pc: RTCPeerConnection, track: CameraTrack
    ) -> None:
        self.id = session_id
        self.station_id = station_id
        self.username = username
        self.pc = pc
        self.track = track
        self.started = time.monotonic()
        self.background: set[asyncio.Task] = set()  # mDNS candidates being resolved
        self.stream_note: str | None = None  # why the main stream is sent where the sub-stream was asked for


class WebRtcSessions:
    """The peer connections of one API process."""

    def __init__(self, hub: LiveHub, clock: Clock, ice_servers: list[str] | None = None) -> None:
        self.hub = hub
        self.clock = clock
        # An explicit (possibly empty) list: aiortc's default is a public STUN server on the Internet.
        self.configuration = RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in ice_servers or []])
        self.sessions: dict[str, LiveSession] = {}
        # Sessions that ended by themselves (the browser's pc.close() reaches aiortc as a DTLS close and
        # ends the session before the page's close request arrives: that request got 404 every time).
        self.ended: OrderedDict[str, str] = OrderedDict()

    async def answer(
        self,
        station_id: str,
        username: str,
        offer_sdp: str,
        offer_type: str = "offer",
        wait_picture_s: float = 5.0,
        sub: SubStreamRequest | None = None,
    ) -> tuple[LiveSession, RTCSessionDescription]:
        """`sub`: the station's sub-stream is wanted (its URL, None if it has none, and transport); the
        session's `stream_note` says why the main stream is sent instead, if it is."""
        note = None
        if sub is None:
            viewer = await self.hub.watch(station_id, wait_picture_s)
        else:
            viewer, note = await watch_sub(self.hub, station_id, sub.url, sub.transport, wait_picture_s)
        info = viewer.relay.info
        if info is None or info.codec != "h264":
            viewer.close()
            raise LiveCodecUnsupported(
                f"camera of {station_id} sends {info.codec if info else 'nothing'}; WebRTC "
                "here carries H.264 only: use the MSE live view"
            )
        pc = RTCPeerConnection(self.configuration)
        track = CameraTrack(viewer, self.clock, info.codec)
        session = LiveSession(secrets.token_urlsafe(12), station_id, username, pc, track)
        session.stream_note = note
        try:
            # The sending transceiver exists before the offer is applied, so the offer's video line binds
            # to it and the H.264-only preference applies (else aiortc picks VP8 and would transcode).
            transceiver = pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(
                [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
            )
            offer_sdp, mdns_candidates = split_mdns_candidates(offer_sdp)
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, offer_type))
            if transceiver.mid is None:
                raise ValueError("the offer has no video (add a recvonly video transceiver)")
            await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate (no trickle)
        except BaseException as exc:
            track.stop()
            await pc.close()
            if isinstance(exc, Exception) and not isinstance(exc, ValueError):
                # aiortc's own errors for an offer it cannot use (no H.264, bad SDP): the caller's fault
                raise ValueError(f"{type(exc).__name__}: {exc}") from exc
            raise
        self.sessions[session.id] = session
        self._watch(session)
        for line in mdns_candidates[:MAX_MDNS_CANDIDATES]:
            task = asyncio.create_task(self._add_mdns_candidate(session, transceiver, line))
            session.background.add(task)
            task.add_done_callback(session.background.discard)
        log.info("%s: WebRTC live view %s for %s", station_id, session.id, username)
        return session, pc.localDescription

    @staticmethod
    async def _add_mdns_candidate(session: LiveSession, transceiver: RTCRtpTransceiver, line: str) -> None:
        """Resolve one of the offer's mDNS candidates (up to 1 s) and add it, after the answer went out:
        where multicast DNS works the pair is checked from both ends, as before."""
        try:
            candidate = candidate_from_sdp(line.split(":", 1)[1])
            await transceiver.sender.transport.transport.addRemoteCandidate(candidate)
        except Exception as exc:  # noqa: BLE001 - a malformed line, or the session closed meanwhile
            log.debug("%s: mDNS candidate not added: %s", session.id, exc)

    def _watch(self, session: LiveSession) -> None:
        pc = session.pc
        pending: dict[str, asyncio.TimerHandle] = {}
        loop = asyncio.get_running_loop()

        def later(delay: float, why: str) -> asyncio.TimerHandle:
            return loop.call_later(delay, lambda: asyncio.ensure_future(self.close(session.id, why)))

        pending["connect"] = later(CONNECT_TIMEOUT_S, "never connected")

        @pc.on("connectionstatechange")
        async def _changed() -> None:
            state = pc.connectionState
            if state == "connected":
                for h in pending.values():
                    h.cancel()
                pending.clear()
            elif state == "disconnected":
                pending["grace"] = later(DISCONNECTED_GRACE_S, "disconnected")
            elif state in ("failed", "closed"):
                await self.close(session.id, state)

    async def close(self, session_id: str, why: str = "closed") -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        self.ended[session_id] = session.username
        while len(self.ended) > ENDED_REMEMBERED:
            self.ended.popitem(last=False)
        session.track.stop()
        for task in list(session.background):
            task.cancel()
        with contextlib.suppress(Exception):
            await session.pc.close()
        log.info(
            "%s: live view %s ended (%s) after %.0f s",
            session.station_id,
            session_id,
            why,
            time.monotonic() - session.started,
        )
        return True

    def owner(self, session_id: str) -> str | None:
        """Who opened a session, live or ended (among the last ENDED_REMEMBERED), or None."""
        session = self.sessions.get(session_id)
        return session.username if session is not None else self.ended.get(session_id)

    async def close_all(self) -> None:
        for sid in list(self.sessions):
            await self.close(sid, "server stopping")

    def stats(self) -> list[dict]:
        out = []
        for s in self.sessions.values():
            delays = sorted(s.track.relay_delays_ms)
            out.append(
                {
                    "id": s.id,
                    "station_id": s.station_id,
                    "username": s.username,
                    "state": s.pc.connectionState,
                    "packets_sent": s.track.sent,
                    "stream": s.track.viewer.relay.stream,
                    "seconds": round(time.monotonic() - s.started, 1),
                    "relay_delay_ms_p50": delays[len(delays) // 2] if delays else None,
                    "relay_delay_ms_p95": delays[int(len(delays) * 0.95)] if delays else None,
                }
            )
        return out
