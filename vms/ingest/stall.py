"""Stall watchdog: a camera that keeps its RTSP session alive (RTCP reports) but sends no media never
times out its socket, and a blocked FFmpeg read cannot be interrupted without PyAV's interrupt
callback, which takes the GIL on every network read (measured: +50 % CPU at 139 cameras). Instead,
when a session has had no packet for `stall_seconds`, this finds its TCP connection among the
process's sockets to that camera (those that received almost nothing in half a second) and shuts it
down; the blocked read then fails and the session reconnects with reason `stalled`. Linux only
(/proc and TCP_INFO); elsewhere stalls are caught by the socket timeout when the camera goes silent."""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from vms.core.clock import Clock

log = logging.getLogger(__name__)

_TCP_INFO_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received (u64) in struct tcp_info (Linux >= 4.1)
IDLE_BYTES = 1024  # a stalled connection receives at most RTCP reports in the probe window


def _resolve(url: str) -> tuple[set[str], int] | None:
    parts = urlsplit(url)
    port = parts.port or (322 if parts.scheme == "rtsps" else 554)
    try:
        addrs = {str(info[4][0]) for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return None
    return addrs, port


def _bytes_received(sock: socket.socket) -> int | None:
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    except OSError:
        return None
    if len(info) < _TCP_INFO_BYTES_RECEIVED + 8:
        return None
    return struct.unpack_from("Q", info, _TCP_INFO_BYTES_RECEIVED)[0]


def sockets_to(addrs: set[str], port: int) -> list[socket.socket]:
    """Duplicates of this process's TCP sockets connected to (addr, port); the caller closes them."""
    found: list[socket.socket] = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except (OSError, ValueError):
            continue
        try:
            peer = sock.getpeername() if sock.type == socket.SOCK_STREAM else None
        except OSError:
            peer = None
        if peer and peer[0] in addrs and peer[1] == port:
            found.append(sock)
        else:
            sock.close()
    return found


def shut_down_idle_connections(urls: list[str], probe_s: float = 0.5) -> dict[str, int]:
    """Shut down this process's connections to the cameras at `urls` that receive (almost) nothing,
    all in one probe window (a mass outage must not make the watchdog's round last 0.5 s a camera).
    Returns how many were shut down, per URL."""
    socks: list[tuple[str, socket.socket]] = []
    counts = dict.fromkeys(urls, 0)
    for url in urls:
        target = _resolve(url)
        if target is not None:
            socks.extend((url, sock) for sock in sockets_to(*target))
    if not socks:
        return counts
    try:
        before = [_bytes_received(sock) for _url, sock in socks]
        time.sleep(probe_s)
        for (url, sock), b0 in zip(socks, before, strict=True):
            b1 = _bytes_received(sock)
            if b0 is not None and b1 is not None and b1 - b0 <= IDLE_BYTES:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    counts[url] += 1
                except OSError:
                    pass
        return counts
    finally:
        for _url, sock in socks:
            sock.close()


class StallWatchdog(threading.Thread):
    """Every second: ticks each session of one worker (see CameraSession.tick), shuts down the
    connection of any that stalled, then calls `after_round` (the worker's health checks and
    heartbeat: a watchdog that stops going round stops the heartbeat, and the supervisor acts)."""

    def __init__(self, sessions: Callable[[], list], stall_seconds: float, stop: threading.Event,
                 clock: Clock, after_round: Callable[[], None] | None = None) -> None:
        super().__init__(name="stall-watchdog", daemon=True)
        self.sessions = sessions
        self.stall_seconds = stall_seconds
        self.stop_event = stop
        self.clock = clock
        self.after_round = after_round
        self._prober: threading.Thread | None = None

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            self.round()

    def _shut_down(self, stalled: list) -> None:
        try:
            # Sources that are not an RTSP connection (gb28181) are ended by their own means.
            stalled = [s for s in stalled if not s.interrupt_source()]
            if not stalled:
                return
            counts = shut_down_idle_connections(sorted({s.url for s in stalled}))
        except Exception:  # noqa: BLE001
            log.exception("shutting down stalled connections failed")
            return
        for session in stalled:
            n = counts.get(session.url, 0)
            log.warning("%s: no packet for %.0f s; %s", session.station_id, self.stall_seconds,
                        f"shut down {n} idle connection(s)" if n else "connection not found yet")

    def round(self) -> None:
        sessions = self.sessions()
        # Every session's tick first (it also drives the growing segments' index rows): probing a
        # stalled connection takes half a second and must not delay the others.
        now, now_ms = self.clock.monotonic(), self.clock.now_ms()
        for session in sessions:
            try:
                session.tick(now, now_ms)
            except Exception:  # noqa: BLE001 - the watchdog serves every camera of the worker
                log.exception("%s: session tick failed", session.station_id)
        stalled = []
        for session in sessions:
            try:
                if session.is_stalled(self.clock.monotonic(), self.stall_seconds):
                    session.mark_stalled()
                    stalled.append(session)
            except Exception:  # noqa: BLE001
                log.exception("%s: stall check failed", session.station_id)
        if stalled and (self._prober is None or not self._prober.is_alive()):
            # On a thread of its own: resolving a camera's name can wait for DNS, and the probe sleeps
            # half a second; the round (and so the worker's heartbeat) must not wait for either. A
            # session still stalled when this probe ends is probed again 5 s after the last.
            self._prober = threading.Thread(target=self._shut_down, args=(stalled,), name="stall-probe", daemon=True)
            self._prober.start()
        if self.after_round is not None:
            try:
                self.after_round()
            except Exception:  # noqa: BLE001
                log.exception("worker health check failed")
