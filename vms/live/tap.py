"""Live taps: in each ingest worker, one per camera, serving the camera's packets to the API process.

The API process has no camera packets (ingest runs in worker processes), and a second camera
connection per viewer is not allowed, so each camera session gets a `StationTap` observer that listens
on a Unix socket (`vms.live.protocol.tap_address`). One selector thread per worker accepts and
flushes every tap's connections. With nobody connected a tap costs next to nothing: the packets of
the current GOP are kept as references (no copy, no syscall), those the native copier records by the
copier itself, in C, until a client comes. A client gets the stream info, the cached GOP (so a new
viewer sees a picture at once) and then every packet, framed as in vms.live.protocol.
"""

from __future__ import annotations

import logging
import os
import queue
import selectors
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import av

from vms.core.clock import Clock
from vms.core.settings import Settings
from vms.db.engine import Database
from vms.ingest.observers import CopierWake, StreamObserver
from vms.live.protocol import StreamInfo, end_message, packet_message, peer_trusted, tap_address

log = logging.getLogger(__name__)

ANNEXB_START = (b"\x00\x00\x00\x01", b"\x00\x00\x01")
MAX_GOP_PACKETS = 900  # a camera with keyframes further apart than this gets no cached-GOP replay
MAX_PENDING_BYTES = 16 * 1024 * 1024  # a relay this far behind is dropped (it reconnects and resyncs)
SEND_BUFFER = 1024 * 1024


class _Client:
    """One relay connection; written from the camera thread, flushed by the selector thread."""

    def __init__(self, sock: socket.socket, server: LiveTapServer) -> None:
        self.sock = sock
        self.server = server
        self.pending = bytearray()
        self.dead = False
        self.lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self.lock:
            if self.dead:
                return
            if self.pending:
                self.pending += data
                if len(self.pending) > MAX_PENDING_BYTES:
                    log.warning("live relay too slow (%d bytes queued); disconnecting it", len(self.pending))
                    self._kill()
                return
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._kill()
                return
            if sent < len(data):
                self.pending += memoryview(data)[sent:]
                self.server.request(lambda: self.server.watch_writable(self))

    def flush(self) -> bool:
        """Write what is pending; True when nothing is left."""
        with self.lock:
            if self.dead:
                return True
            try:
                sent = self.sock.send(self.pending)
            except BlockingIOError:
                return False
            except OSError:
                self._kill()
                return True
            del self.pending[:sent]
            return not self.pending

    def _kill(self) -> None:
        self.dead = True
        self.pending.clear()
        self.server.request(lambda: self.server.drop_client(self))


class StationTap(StreamObserver):
    """The StreamObserver of one camera: keeps the current GOP, fans packets out to connected relays."""

    def __init__(self, station_id: str, address: str, server: LiveTapServer) -> None:
        self.station_id = station_id
        self.address = address
        self.server = server
        self.lock = threading.Lock()
        self.info: StreamInfo | None = None
        self.gop: list[tuple[int, int, int, bool, av.Packet]] = []
        self.clients: list[_Client] = []
        self.listener = _listen(address)
        self._last_dts: int | None = None
        self._wake_copier: CopierWake | None = None  # ends the native copier's read loop (see on_copier)
        self.packets = 0

    # -- StreamObserver --------------------------------------------------------------------------
    def on_connect(self, stream, wall_ms: int) -> None:
        ctx = stream.codec_context
        extradata = ctx.extradata or b""
        info = StreamInfo(
            self.station_id,
            "hevc" if ctx.name in ("hevc", "h265") else "h264",
            extradata if extradata.startswith(ANNEXB_START) else b"",
            ctx.width or None,
            ctx.height or None,
        )
        with self.lock:
            self.info = info
            self.gop = []
            self._last_dts = None
            self._broadcast(info.encode())

    def on_packet(self, packet: av.Packet, wall_ms: int, replay: bool = False) -> None:
        # The recorder has rebased packet.pts to its segment; wall_ms is the continuous capture time.
        dts = wall_ms if self._last_dts is None or wall_ms > self._last_dts else self._last_dts + 1
        self._last_dts = dts
        pts = dts
        p, d = packet.pts, packet.dts
        if p is not None and d is not None and p > d:  # B-frames: shown after they are decoded
            tb = packet.time_base
            if tb is not None:
                pts = dts + round((p - d) * tb.numerator * 1000 / tb.denominator)
        key = bool(packet.is_keyframe)
        received = self.server.clock.now_ms()
        with self.lock:
            self.packets += 1
            if key:
                self.gop = []
            if (self.gop or key) and len(self.gop) < MAX_GOP_PACKETS:
                self.gop.append((pts, dts, received, key, packet))
            if self.clients:
                self._broadcast(packet_message(pts, dts, received, key, bytes(packet), replay=replay))

    # With the native copier (vms.recording.copier): it keeps the packets of the current GOP it
    # recorded, in C, and hands them over (on_kept) when a relay connects (wants_each_packet: the
    # copier then stops, every packet comes as it arrives) or before another packet of the GOP.
    takes_copied = True
    copied_packets = True

    def on_copier(self, wake: CopierWake | None) -> None:
        self._wake_copier = wake

    def on_copied(self, count: int, nbytes: int, first_ms: int, last_ms: int) -> None:
        self.packets += count  # (only this thread writes it)

    def on_kept(self, packets: list[tuple[av.Packet, int]]) -> None:
        # Older than what a relay that is connected now gets next: for it they are the rest of the
        # cached GOP (replayed at once), not live packets.
        for packet, wall_ms in packets:
            self.on_packet(packet, wall_ms, replay=True)

    def wants_each_packet(self) -> bool:
        return bool(self.clients)

    def on_disconnect(self, wall_ms: int, reason: str) -> None:
        with self.lock:
            self.info = None
            self.gop = []
            self._broadcast(end_message(reason))

    # -- connections -----------------------------------------------------------------------------
    def _broadcast(self, data: bytes) -> None:
        for client in self.clients:
            client.send(data)

    def add_client(self, client: _Client) -> None:
        """Send what a new relay needs to start (info, current GOP) and then every new packet."""
        with self.lock:
            if self.info is not None:
                client.send(self.info.encode())
                for pts, dts, received, key, pkt in self.gop:
                    client.send(packet_message(pts, dts, received, key, bytes(pkt), replay=True))
            self.clients.append(client)
        wake = self._wake_copier
        if wake is not None:
            wake()  # the rest of the GOP is in the copier: now, not at the end of its batch

    def remove_client(self, client: _Client) -> None:
        with self.lock:
            if client in self.clients:
                self.clients.remove(client)

    def close(self) -> None:
        with self.lock:
            clients, self.clients = self.clients, []
        for c in clients:
            c.dead = True
        _unlink(self.address)


def _listen(address: str) -> socket.socket:
    if not address.startswith("\0"):
        Path(address).parent.mkdir(parents=True, exist_ok=True)
        _unlink(address)  # left by a worker that was killed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(address)
    if not address.startswith("\0"):
        os.chmod(address, 0o600)  # only the service's own user may watch
    sock.listen(16)
    sock.setblocking(False)
    return sock


def _unlink(address: str) -> None:
    if not address.startswith("\0"):
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass


class LiveTapServer:
    """The taps of one worker process and their one selector thread. Callable as an observer factory."""

    def __init__(self, data_dir: Path, clock: Clock) -> None:
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.taps: dict[str, StationTap] = {}
        self._selector = selectors.DefaultSelector()
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-taps", daemon=True)
        self._thread.start()

    def __call__(self, station_id: str) -> StationTap | None:
        try:
            tap = StationTap(station_id, tap_address(self.data_dir, station_id), self)
        except OSError as exc:  # live view unavailable must not stop the recording
            log.error("%s: live tap cannot listen: %s", station_id, exc)
            return None
        old = self.taps.get(station_id)
        self.taps[station_id] = tap

        def register() -> None:
            if old is not None:
                self._close_tap(old)
            self._selector.register(tap.listener, selectors.EVENT_READ, ("listen", tap))

        self.request(register)
        return tap

    def request(self, command: Callable[[], None]) -> None:
        """Run a command on the selector thread (the only thread that touches the selector)."""
        self._commands.put(command)
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already awake
        except OSError:
            pass  # closed

    def watch_writable(self, client: _Client) -> None:
        if client.dead:
            return
        key = self._selector.get_map().get(client.sock)
        if key is not None:
            self._selector.modify(client.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, key.data)

    def drop_client(self, client: _Client) -> None:
        if client.sock.fileno() >= 0:
            if client.sock in self._selector.get_map():
                self._selector.unregister(client.sock)
            client.sock.close()
        key_tap = getattr(client, "tap", None)
        if key_tap is not None:
            key_tap.remove_client(client)

    def _close_tap(self, tap: StationTap) -> None:
        if tap.listener in self._selector.get_map():
            self._selector.unregister(tap.listener)
        tap.listener.close()
        clients = list(tap.clients)
        tap.close()
        for c in clients:
            self.drop_client(c)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._selector.select(1.0)
            except OSError:
                break
            for key, mask in events:
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                what, obj = key.data
                try:
                    if what == "listen":
                        self._accept(obj)
                    else:
                        self._service(obj, mask)
                except Exception:  # noqa: BLE001 - one bad connection must not end the thread
                    log.exception("live tap connection failed")
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                try:
                    command()
                except Exception:  # noqa: BLE001
                    log.exception("live tap command failed")

    def _accept(self, tap: StationTap) -> None:
        while True:
            try:
                sock, _ = tap.listener.accept()
            except BlockingIOError:
                return
            if not peer_trusted(sock):
                sock.close()
                log.warning("%s: live tap refused a connection from another user", tap.station_id)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            client = _Client(sock, self)
            client.tap = tap  # type: ignore[attr-defined]
            self._selector.register(sock, selectors.EVENT_READ, ("client", client))
            tap.add_client(client)
            log.info("%s: live relay connected", tap.station_id)

    def _service(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data = client.sock.recv(4096)
            except BlockingIOError:
                data = b"."
            except OSError:
                data = b""
            if not data:  # the relay hung up: the last viewer left
                client.dead = True
                self.drop_client(client)
                log.info("%s: live relay disconnected", client.tap.station_id)  # type: ignore[attr-defined]
                return
        if mask & selectors.EVENT_WRITE and client.flush() and not client.dead:
            self._selector.modify(client.sock, selectors.EVENT_READ, ("client", client))
        if client.dead:
            self.drop_client(client)

    def close(self) -> None:
        """Stop listening (the worker is stopping): relays see end-of-stream."""
        done = threading.Event()

        def shutdown() -> None:
            for tap in list(self.taps.values()):
                self._close_tap(tap)
            self.taps.clear()
            self._stop.set()
            done.set()

        self.request(shutdown)
        if not done.wait(5):
            log.warning("live tap thread did not stop in time")
        self._thread.join(2)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def make_live_tap_factory(settings: Settings, database: Database, clock: Clock) -> LiveTapServer:
    """Observer factory maker for WorkerSpec.observer_factories: "vms.live.tap:make_live_tap_factory"."""
    return LiveTapServer(settings.data_dir, clock)
