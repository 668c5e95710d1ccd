"""The API side of live view: one connection per station to its ingest tap, shared by every viewer.

The first viewer of a station connects the relay to the tap; the last one leaving disconnects it
(after a short linger, so switching pages does not reconnect). The relay keeps the stream info and
the current GOP, so a later viewer starts from the last keyframe without asking the tap again.
Runs on the API's event loop; viewers read their own bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from vms.live.protocol import (
    HEADER,
    KIND_END,
    KIND_INFO,
    KIND_PACKET,
    MAX_MESSAGE,
    LivePacket,
    StreamInfo,
    peer_trusted,
    tap_address,
)

log = logging.getLogger(__name__)

VIEWER_QUEUE = 600  # packets; a viewer further behind skips to the next keyframe
LINGER_S = 3.0


class LiveUnavailable(Exception):
    """The station has no live stream here (not recorded by this server, or camera down)."""


# The end of the stream a viewer may wait through: the camera reconnects, and the next info follows.
CAMERA_DISCONNECTED = "camera disconnected"


# What a viewer receives: stream info, a packet (replay = from the cached GOP), or the end; one class
# each, so that the type checker knows which fields an item has (`kind` names it, for logs and tests).
@dataclass(frozen=True)
class InfoItem:
    info: StreamInfo
    kind: ClassVar[str] = "info"


@dataclass(frozen=True)
class PacketItem:
    packet: LivePacket
    replay: bool = False
    kind: ClassVar[str] = "packet"


@dataclass(frozen=True)
class EndItem:
    reason: str
    kind: ClassVar[str] = "end"


Item = InfoItem | PacketItem | EndItem


class Viewer:
    def __init__(self, relay: StationRelay) -> None:
        self.relay = relay
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.skipping = False
        self.dropped = 0
        self.closed = False

    def put(self, item: Item) -> None:
        if isinstance(item, PacketItem) and not item.replay:
            if self.queue.qsize() >= VIEWER_QUEUE:
                self.skipping = True
            if self.skipping:
                if not item.packet.keyframe:
                    self.dropped += 1
                    return
                self.skipping = False
        self.queue.put_nowait(item)

    async def get(self) -> Item:
        return await self.queue.get()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.relay.leave(self)


class StationRelay:
    """The station's main stream, from the ingest's tap (the recorder's own camera connection)."""

    stream = "main"

    def __init__(self, hub: LiveHub, station_id: str) -> None:
        self.hub = hub
        self.station_id = station_id
        self.key = relay_key(station_id, self.stream)
        self.viewers: set[Viewer] = set()
        self.info: StreamInfo | None = None
        self.gop: list[LivePacket] = []
        self.info_event = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.connected = asyncio.Event()
        self.ended: str | None = None
        self._linger: asyncio.TimerHandle | None = None
        self.packets = 0

    async def connect(self) -> None:
        address = tap_address(self.hub.data_dir, self.station_id)
        # The socket is connected by hand and handed over: uvloop (what uvicorn runs) refuses an abstract
        # socket's name ("\0...", used when data_dir's path is too long for sun_path) with EINVAL.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, address)
            if not peer_trusted(sock):  # an abstract name another user bound first
                log.warning("%s: the live tap's socket belongs to another user: refused", self.station_id)
                raise ConnectionRefusedError
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE + 64)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            # Chinese: it reaches the operator (the 503's detail, the WebSocket's close reason).
            log.info("%s: no live tap (%s)", self.station_id, type(exc).__name__)
            raise LiveUnavailable(f"站点 {self.station_id} 未在本服务器录像") from None
        except BaseException:
            sock.close()
            raise
        self.writer = writer
        self.task = asyncio.create_task(self._read(reader), name=f"live-relay-{self.station_id}")
        log.info("%s: live relay connected to the tap", self.station_id)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason = "tap closed"
        try:
            while True:
                head = await reader.readexactly(HEADER.size)
                length, kind = HEADER.unpack(head)
                if not 1 <= length <= MAX_MESSAGE:
                    raise ValueError(f"bad live message length {length}")
                payload = await reader.readexactly(length - 1)
                self._dispatch(kind, payload)
        except asyncio.IncompleteReadError:
            pass
        except asyncio.CancelledError:
            reason = "closed"
            raise
        except (OSError, ValueError, struct.error) as exc:
            reason = f"tap connection failed: {exc}"
            log.warning("%s: %s", self.station_id, reason)
        finally:
            self.ended = reason
            for v in list(self.viewers):
                v.put(EndItem(reason))
            self.hub._forget(self)

    def _dispatch(self, kind: int, payload: bytes) -> None:
        if kind == KIND_PACKET:
            self.on_packet(LivePacket.decode(payload))
        elif kind == KIND_INFO:
            self.on_info(StreamInfo.decode(payload))
        elif kind == KIND_END:
            self.on_camera_end()

    def on_packet(self, pkt: LivePacket) -> None:
        self.packets += 1
        if pkt.keyframe:
            self.gop = []
        if self.gop or pkt.keyframe:
            self.gop.append(pkt)
        item = PacketItem(pkt, replay=pkt.replay)
        for v in self.viewers:
            v.put(item)

    def on_info(self, info: StreamInfo) -> None:
        self.info = info
        self.gop = []
        self.info_event.set()
        for v in self.viewers:
            v.put(InfoItem(info))

    def on_camera_end(self) -> None:
        self.info = None
        self.info_event.clear()
        self.gop = []
        for v in self.viewers:
            v.put(EndItem(CAMERA_DISCONNECTED))

    def join(self) -> Viewer:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        viewer = Viewer(self)
        if self.info is not None:
            viewer.put(InfoItem(self.info))
            for pkt in self.gop:
                viewer.put(PacketItem(pkt, replay=True))
        self.viewers.add(viewer)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if not self.viewers and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self.hub.linger_s, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._linger = None
        if not self.viewers:
            self.close()

    def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
        self.hub._forget(self)


def relay_key(station_id: str, stream: str) -> str:
    """The relay's name in LiveHub.relays and /api/live/stats: the station id, `<id>/sub` for a sub-stream."""
    return station_id if stream == "main" else f"{station_id}/{stream}"


class LiveHub:
    """All station relays of one API process."""

    def __init__(self, data_dir: Path | str, linger_s: float = LINGER_S) -> None:
        self.data_dir = Path(data_dir)
        self.linger_s = linger_s
        self.relays: dict[str, StationRelay] = {}
        # Sub-streams (vms/live/substream.py): station -> (monotonic, why) of its last failed pull, and the
        # relays whose pulling thread still runs.
        self.sub_failures: dict[str, tuple[float, str]] = {}
        self.pulling: set[str] = set()

    async def watch(self, station_id: str, wait_info_s: float = 5.0) -> Viewer:
        """A viewer of the station's live stream; waits up to wait_info_s for the camera to stream."""
        return await self.watch_relay(station_id, lambda: StationRelay(self, station_id), wait_info_s)

    async def watch_relay(self, key: str, make: Callable[[], StationRelay], wait_info_s: float) -> Viewer:
        """A viewer of the relay named `key`, made (and connected) by `make` if nobody watches it yet."""
        relay = self.relays.get(key)
        if relay is None or relay.ended is not None:
            relay = make()
            self.relays[key] = relay
            try:
                await relay.connect()
            except BaseException:
                self.relays.pop(key, None)
                raise
        viewer = relay.join()
        if relay.info is None:
            try:
                await asyncio.wait_for(relay.info_event.wait(), wait_info_s)
            except TimeoutError:
                viewer.close()
                raise LiveUnavailable(
                    f"站点 {relay.station_id} 的摄像机当前无画面（{wait_info_s:g} 秒内未收到）"
                ) from None
            if relay.info is None:  # the relay ended while we waited (a sub-stream pull that failed)
                viewer.close()
                raise LiveUnavailable(relay.ended or "无画面")
        return viewer

    def _forget(self, relay: StationRelay) -> None:
        if self.relays.get(relay.key) is relay:
            del self.relays[relay.key]

    def stats(self) -> dict:
        return {key: {"viewers": len(r.viewers), "packets": r.packets, "stream": r.stream}
                for key, r in self.relays.items()}

    async def close(self) -> None:
        for relay in list(self.relays.values()):
            relay.close()
            if relay.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await relay.task
