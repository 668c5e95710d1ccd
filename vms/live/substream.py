"""A station's sub-stream for the video wall: pulled over RTSP by the API process while someone watches it.

A 9- or 16-window wall that played every camera's main stream (1080p, 2 Mbit/s) sent the browser 16 main
streams to decode; most stations' cameras also offer a smaller sub-stream (`camera.sub_url`). The recorder
never records it, so no tap has it: the first viewer that asks for it (`stream=sub`) starts one RTSP pull
here (PyAV, a thread: demuxing only, no decoding), every later viewer of the station's sub-stream shares it
through the same relay and viewer queues as the main stream, and the last viewer leaving stops it after
the relay's linger. A station without a usable sub_url, or whose sub-stream gives no picture within
SUB_WAIT_S, is watched on its main stream, and the caller is told why (in Chinese, for the operator).
The sub_url's credentials are never logged or returned (mask_url / mask_text).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import av

from vms.catalog.urls import mask_text, mask_url
from vms.live.protocol import LivePacket, StreamInfo
from vms.live.relay import EndItem, LiveHub, LiveUnavailable, StationRelay, Viewer, relay_key

log = logging.getLogger(__name__)

SUB_WAIT_S = 3.0  # no sub-stream picture by then: the main stream instead (the tile waits for both)
SUB_RETRY_S = 60.0  # a sub-stream that failed is not tried again for this long (each try costs SUB_WAIT_S)
OPEN_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_US = "5000000"  # a camera that stops sending ends the pull (as the ingest's rtsp timeout)
ANNEXB_START = (b"\x00\x00\x00\x01", b"\x00\x00\x01")
CODECS = {"h264": "h264", "hevc": "hevc", "h265": "hevc"}


@dataclass(frozen=True)
class SubStreamRequest:
    """A viewer asks for the station's sub-stream: its URL (None: the station has none) and transport."""

    url: str | None
    transport: str = "tcp"

    def __repr__(self) -> str:  # never the URL's credentials, even in a traceback's locals
        return f"SubStreamRequest({mask_url(self.url)!r}, {self.transport!r})"


def sub_url_problem(sub_url: str | None) -> str | None:
    """Why the sub-stream cannot be pulled here (Chinese), or None."""
    if not sub_url:
        return "该站点没有配置子码流"
    if urlsplit(sub_url).scheme not in ("rtsp", "rtsps"):
        return "子码流不是 RTSP 地址"  # gb28181://: its media come through the GB/T 28181 server, not pulled
    return None


async def watch_sub(
    hub: LiveHub, station_id: str, sub_url: str | None, transport: str, wait_info_s: float = 5.0
) -> tuple[Viewer, str | None]:
    """A viewer of the station's sub-stream, or of its main stream when it has none or the pull fails; the
    second value then says why (Chinese, shown to the operator). A sub-stream that failed is not tried again
    for SUB_RETRY_S: every tile asking for it would first wait SUB_WAIT_S for it to fail again."""
    why = sub_url_problem(sub_url)
    failed = hub.sub_failures.get(station_id)
    if why is None and failed is not None and time.monotonic() - failed[0] < SUB_RETRY_S:
        why = failed[1]
    if why is None:
        assert sub_url is not None
        try:
            viewer = await hub.watch_relay(
                relay_key(station_id, "sub"),
                lambda: SubStreamRelay(hub, station_id, sub_url, transport),
                min(wait_info_s, SUB_WAIT_S),
            )
            hub.sub_failures.pop(station_id, None)
            return viewer, None
        except LiveUnavailable as exc:
            why = f"子码流不可用（{exc}）"
            hub.sub_failures[station_id] = (time.monotonic(), why)
            log.info("%s: sub-stream unavailable, main stream instead: %s", station_id, exc)
    return await hub.watch(station_id, wait_info_s), f"{why}，已改用主码流"


class SubStreamRelay(StationRelay):
    """The relay of a station's sub-stream: fed by an RTSP pull in a thread of this process."""

    stream = "sub"

    def __init__(self, hub: LiveHub, station_id: str, url: str, transport: str) -> None:
        super().__init__(hub, station_id)
        self.url = url
        self.transport = transport if transport in ("tcp", "udp") else "tcp"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._pull, name=f"live-sub-{self.station_id}", daemon=True)
        self.hub.pulling.add(self.key)
        self._thread.start()
        log.info("%s: pulling the sub-stream %s for live view", self.station_id, mask_url(self.url))

    def close(self) -> None:
        self._stop.set()  # the thread sees it at its next packet (or its socket timeout)
        super().close()

    # -- the pulling thread ----------------------------------------------------------------------
    def _post(self, callback, *args) -> None:
        """Run callback(*args) on the event loop (where the relay's viewers live), unless stopped."""

        def run() -> None:
            if not self._stop.is_set():
                callback(*args)

        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed (the API is stopping)
            self._loop.call_soon_threadsafe(run)

    def _pull(self) -> None:
        reason = "子码流已结束"
        try:
            options = {"rtsp_transport": self.transport, "timeout": SOCKET_TIMEOUT_US,
                       "analyzeduration": "1000000", "probesize": "500000", "fflags": "-genpts"}
            with av.open(self.url, options=options, timeout=(OPEN_TIMEOUT_S, None)) as container:
                if not container.streams.video:
                    raise ValueError("子码流没有视频")
                video = container.streams.video[0]
                ctx = video.codec_context
                codec = CODECS.get(ctx.name)
                if codec is None:
                    raise ValueError(f"子码流编码 {ctx.name} 不能实时观看")
                extradata = ctx.extradata or b""
                info = StreamInfo(self.station_id, codec, extradata if extradata.startswith(ANNEXB_START) else b"",
                                  ctx.width or None, ctx.height or None)
                self._post(self.on_info, info)
                last_dts: int | None = None
                for packet in container.demux(video):
                    if self._stop.is_set():
                        break
                    if packet.size == 0:
                        continue
                    # As the tap does: the receive time in ms, strictly increasing, is the packet's dts.
                    now = int(time.time() * 1000)
                    dts = now if last_dts is None or now > last_dts else last_dts + 1
                    last_dts = dts
                    pts = dts
                    p, d, tb = packet.pts, packet.dts, packet.time_base
                    if p is not None and d is not None and p > d and tb is not None:
                        pts = dts + round((p - d) * tb.numerator * 1000 / tb.denominator)
                    self._post(self.on_packet, LivePacket(pts, dts, now, bool(packet.is_keyframe), bytes(packet)))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            # The operator sees the reason (the answer's stream_note): Chinese; FFmpeg's own text goes to the log.
            reason = str(exc) if isinstance(exc, ValueError) else "无法连接或读取子码流"
            if not self._stop.is_set():
                log.info("%s: sub-stream pull ended: %s", self.station_id, mask_text(str(exc)))
        finally:
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # on the loop: /api/live/stats reads the set there
                self._loop.call_soon_threadsafe(self.hub.pulling.discard, self.key)
            self._post(self._pull_ended, reason)

    def _pull_ended(self, reason: str) -> None:
        """The pull stopped by itself (refused, no video, the camera went quiet): the viewers are told, and
        a new viewer starts a new pull."""
        self.ended = reason
        self.info_event.set()  # a viewer waiting for the first picture stops waiting (LiveHub.watch_relay)
        for v in list(self.viewers):
            v.put(EndItem(reason))
        self.hub._forget(self)
