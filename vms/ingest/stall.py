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
        addrs = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
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
    found = []
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


def shut_down_idle_connections(url: str, probe_s: float = 0.5) -> int:
    """Shut down this process's connections to the camera at `url` that receive (almost) nothing.
    Returns how many were shut down."""
    target = _resolve(url)
    if target is None:
        return 0
    socks = sockets_to(*target)
    try:
        before = [_bytes_received(s) for s in socks]
        time.sleep(probe_s)
        count = 0
        for sock, b0 in zip(socks, before, strict=True):
            b1 = _bytes_received(sock)
            if b0 is not None and b1 is not None and b1 - b0 <= IDLE_BYTES:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    count += 1
                except OSError:
                    pass
        return count
    finally:
        for sock in socks:
            sock.close()


class StallWatchdog(threading.Thread):
    """Every second: ticks each session of one worker (see CameraSession.tick) and shuts down the
    connection of any that stalled."""

    def __init__(self, sessions: Callable[[], list], stall_seconds: float, stop: threading.Event,
                 clock: Clock) -> None:
        super().__init__(name="stall-watchdog", daemon=True)
        self.sessions = sessions
        self.stall_seconds = stall_seconds
        self.stop_event = stop
        self.clock = clock

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            sessions = self.sessions()
            # Every session's tick first (it also drives the growing segments' index rows): probing a
            # stalled connection takes half a second and must not delay the others.
            now, now_ms = self.clock.monotonic(), self.clock.now_ms()
            for session in sessions:
                try:
                    session.tick(now, now_ms)
                except Exception:  # noqa: BLE001 - the watchdog serves every camera of the worker
                    log.exception("%s: session tick failed", session.station_id)
            for session in sessions:
                try:
                    if session.is_stalled(self.clock.monotonic(), self.stall_seconds):
                        session.mark_stalled()
                        n = shut_down_idle_connections(session.url)
                        log.warning("%s: no packet for %.0f s; %s", session.station_id, self.stall_seconds,
                                    f"shut down {n} idle connection(s)" if n else "connection not found yet")
                except Exception:  # noqa: BLE001
                    log.exception("%s: stall check failed", session.station_id)
