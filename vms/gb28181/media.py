"""The platform's receiving end of one GB/T 28181 media session: RTP (over UDP, or framed on TCP) in,
the MPEG-PS it carries out into a pipe that PyAV reads with `av.open(f"pipe:{read_fd}", format="mpeg",
container_options=...)` (never `options=`: PyAV 16.1.0 segfaults on it for PS input). The recorder's C
packet loop then reads a plain fd, as for any other camera.

One thread per session, in an ingest worker process with up to ~70 sessions of ~180 packets/s each:
the per-packet path is one header parse and one copy into an output buffer, written to the pipe once
per burst of packets. Once the session knows its SSRC (and UDP source), the packets that are simply
the next in sequence take that path in C without the GIL (vms.gb28181.rtp_native, when built), and
this code sees only those that need a decision. Nothing a device sends can raise out of the thread,
and nothing it sends can write more than one log line per kind of problem per session.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import select
import socket
import threading
import time
from typing import Any, Literal

from vms.gb28181.rtp import Rfc4571Deframer, RtpError, rtp_header

try:  # built by scripts/build_native.py; without it every packet goes through the Python path below
    from vms.gb28181 import rtp_native
except ImportError:  # pragma: no cover - depends on the build
    rtp_native = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

Transport = Literal["udp", "tcp-passive", "tcp-active"]
TRANSPORTS: tuple[str, ...] = ("udp", "tcp-passive", "tcp-active")

# The pipe absorbs the reader's pauses (its C loop may stop for up to 0.5 s): at 4 Mbit/s that is
# 250 KB; a longer wait is held by the socket's buffer (UDP_RCVBUF) or the device's TCP window. Not
# more: once a user's pipes hold /proc/sys/fs/pipe-user-pages-soft (64 MiB by default, 16384 pages) in
# all, Linux makes every new pipe one page, so 70 cameras of a worker (and two workers) must stay under.
PIPE_SIZE = 256 * 1024
# While the thread waits on the pipe, datagrams queue in the socket: 2 MiB is ~4 s at 4 Mbit/s (the
# kernel caps it at net.core.rmem_max, and reports twice the value it grants).
UDP_RCVBUF = 2 << 20
DATAGRAM_BUFFER = 65536
TCP_CHUNK = 256 * 1024
# Reordering window over UDP: a hole is given up (counted lost) when this many later packets wait
# behind it, or when the oldest of them waited this long.
REORDER_PACKETS = 64
REORDER_SECONDS = 0.2
# A source that has been silent this long may be replaced by a new address sending the learned SSRC:
# a NAT rebinding gives the device's packets a new source port.
SOURCE_SILENCE_SECONDS = 2.0
# A packet further behind the delivery point than MAX_MISORDER is no late arrival, and one further
# ahead than MAX_DROPOUT (~17 s of video: silence that long ends the session first) no loss: the
# sender restarted its sequence numbers. Two such packets in a row make the receiver follow them.
MAX_MISORDER = 1000
MAX_DROPOUT = 3000
# Sequence numbers of given-up holes remembered, to count their late arrivals as "late".
GIVEN_UP_MEMORY = 1024
DRAIN_PACKETS = 256  # datagrams read per wake-up before the payload is written out
DRAIN_CHUNKS = 8  # TCP reads per wake-up, likewise
# After handling what arrived, let the next packets gather in the socket for this long: one wake-up
# per few packets instead of one per packet halves the CPU per packet at camera rates (measured on 2
# shared cores, 70 sessions of 180 packets/s: UDP 24-33 -> 14-16 us/packet, TCP 56 -> 20). Less than a
# frame interval at 25 fps.
BATCH_SECONDS = 0.02
CONNECT_TIMEOUT = 5.0
JOIN_SECONDS = 2.0
# The C fast path (rtp_native) comes back to Python at least this often, for the counters and deadlines.
FAST_RETURN_SECONDS = 1.0

STATS_KEYS = (
    "packets",  # accepted RTP packets
    "bytes",  # their payload bytes
    "lost",  # sequence numbers never delivered (holes given up, or gaps in a TCP stream)
    "reordered",  # accepted packets that arrived after a later one
    "duplicates",  # packets already delivered, or strays far from the delivery point
    "late",  # packets that arrived after their hole had been given up (also counted in lost)
    "dropped_ssrc",  # packets of another SSRC than the learned one
    "dropped_source",  # UDP packets from another address than the locked source
    "source_changes",  # re-locks onto a new UDP source (NAT rebinding)
    "malformed",  # datagrams or TCP frames that are not RTP, and TCP framing losses
    "rtcp",  # RTCP multiplexed on the RTP port (RFC 5761), ignored
    "refused_connections",  # TCP connections after the first (tcp-passive)
    "unexpected_ssrc",  # 1 when the device ignored the offered SSRC (SDP y=) and was accepted anyway
)


def expected_ssrc(answer: dict) -> int | None:
    """The SSRC a stream's packets should carry, from the SIP server's answer to a play request: the one the
    device's SDP answer gave (y=), else the one offered. A receiver told it follows a sender of it over a
    stale stream that reached its port first (MediaReceiver._on_datagram)."""
    for key in ("answered_ssrc", "ssrc"):
        value = answer.get(key)
        if isinstance(value, int) and 0 <= value <= 0xFFFFFFFF:
            return value
    return None


def make_media_pipe() -> tuple[int, int]:
    """(read_fd, write_fd) of a pipe for one session, enlarged to PIPE_SIZE where the system allows."""
    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # the limits above: the default 64 KiB pipe still works, with less slack for the reader
    return read_fd, write_fd


def _bind_first_free(kind: int, host: str, port_range: tuple[int, int]) -> tuple[socket.socket, int]:
    low, high = port_range
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(low, high + 1):
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                # Lets a port be reused while old connections of an earlier session sit in TIME_WAIT.
                # (Not for UDP: there it would let two sockets share a port and split its packets.)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(4)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        sock.setblocking(False)
        return sock, sock.getsockname()[1]
    what = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
    raise OSError(errno.EADDRINUSE, f"no free {what} port in {low}-{high} on {host}")


_rcvbuf_warned = False


def _enlarge_receive_buffer(sock: socket.socket) -> None:
    global _rcvbuf_warned
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports twice the value
    if granted < UDP_RCVBUF and not _rcvbuf_warned:
        _rcvbuf_warned = True  # a property of the host, said once per process
        log.warning("GB28181 media: UDP receive buffers are capped at %d KiB (net.core.rmem_max); "
                    "raise it to %d KiB or more to ride out pauses of the recorder", granted // 1024,
                    UDP_RCVBUF // 1024)


class _Ended(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Stopped(Exception):
    """stop() was called: leave without a reason."""


class MediaReceiver:
    """Receives one device's RTP/PS stream and writes the PS, in sequence order, into `sink_fd`.

    The receiver owns `sink_fd` (made non-blocking for its own waits; the read end is unaffected) and
    closes it when it ends or is stopped, so the reader sees end of file.
    """

    def __init__(self, transport: Transport, bind_host: str, port_range: tuple[int, int], sink_fd: int,
                 expected_ssrc: int | None = None, no_media_seconds: float = 10.0, name: str = "",
                 native: bool | None = None) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        low, high = port_range
        if not 0 <= low <= high <= 65535:
            raise ValueError(f"port range must be two ports, low to high, got {port_range}")
        if no_media_seconds <= 0:
            raise ValueError(f"no_media_seconds must be positive, got {no_media_seconds}")
        self.transport: Transport = transport
        self.name = name
        # The in-order packets in C (rtp_native) when it is built; native=False: all in Python (tests).
        self.native = rtp_native is not None and native is not False
        self.expected_ssrc = expected_ssrc
        self.no_media_seconds = no_media_seconds
        self.port = 0
        self.ended: tuple[str, str] | None = None
        self.last_packet_mono: float | None = None
        self.ssrc: int | None = None
        self.source: tuple[str, int] | None = None
        self.stats: dict[str, int] = dict.fromkeys(STATS_KEYS, 0)
        self.native_packets = 0  # of stats["packets"], those the C fast path took

        # The UDP socket, or the TCP media connection once there is one; the tcp-passive listener.
        self._sock: socket.socket | None = None
        self._listener: socket.socket | None = None
        if transport == "udp":
            self._sock, self.port = _bind_first_free(socket.SOCK_DGRAM, bind_host, port_range)
            _enlarge_receive_buffer(self._sock)
        elif transport == "tcp-passive":
            self._listener, self.port = _bind_first_free(socket.SOCK_STREAM, bind_host, port_range)
        try:
            os.set_blocking(sink_fd, False)
        except OSError:
            self._close_sockets()
            raise
        self._sink_fd = sink_fd
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # first packet, end
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._started_mono = 0.0
        self._sink_waited_mono = 0.0  # when the last wait for room in the pipe ended
        self._logged: set[str] = set()
        self._buffer = bytearray(TCP_CHUNK if transport != "udp" else DATAGRAM_BUFFER)
        self._out = bytearray()  # payload in order, not yet written to the sink
        self._source_addr: Any = None  # UDP: as recvfrom gives it, for a cheap compare
        # Sequence state: next sequence number to deliver; packets waiting behind a hole (UDP only).
        self._next_seq: int | None = None
        self._highest_seq = 0
        self._pending: dict[int, tuple[bytes, float]] = {}
        self._hole_since = 0.0
        self._given_up: dict[int, None] = {}
        self._restart_candidate: tuple[int, bytes] | None = None

    # -- control (any thread) ----------------------------------------------------------------------

    def connect(self, host: str, port: int) -> None:
        """tcp-active: dial the address the device answered in its SDP. Raises OSError on failure."""
        if self.transport != "tcp-active":
            raise RuntimeError(f"connect() is for tcp-active sessions, this one is {self.transport}")
        if self._sock is not None:
            raise RuntimeError("this session is already connected")
        conn = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        try:
            conn.setblocking(False)
            peer = conn.getpeername()
        except OSError:
            conn.close()
            raise
        with self._lock:
            if self._stopping or self.ended is not None:
                conn.close()
                raise RuntimeError("the receiver has stopped")
            self._sock = conn
            self.source = (peer[0], peer[1])
        self._wake()

    def start(self) -> None:
        if self._thread is not None or self._stopping:
            raise RuntimeError("a receiver starts once")
        self._started_mono = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"gb-media-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._changed.notify_all()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_SECONDS)
            if thread.is_alive():
                log.error("GB28181 media %s: the receiving thread did not stop within %g s", self.name,
                          JOIN_SECONDS)
                return  # it closes its fds when it ends: closing them under it could hit reused numbers
        self._close_all()

    def wait_first_packet(self, timeout: float) -> bool:
        """True once a packet was accepted; False on timeout, or as soon as the receiver ends."""
        with self._changed:
            self._changed.wait_for(lambda: self.last_packet_mono is not None or self.ended is not None
                                   or self._stopping, timeout)
            return self.last_packet_mono is not None

    def _wake(self) -> None:
        with self._lock:  # stop() closes the fd under the lock: never write to a reused number
            if self._wake_fd >= 0:
                os.eventfd_write(self._wake_fd, 1)

    # -- the thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        outcome: tuple[str, str] | None = None
        try:
            if self.transport == "udp":
                self._serve_udp()
            else:
                self._serve_tcp()
        except _Stopped:
            pass
        except _Ended as end:
            outcome = (end.reason, end.detail)
        except Exception as exc:  # a bug here must end this session, not the worker process
            log.exception("GB28181 media %s: the receiver failed", self.name)
            outcome = ("receiver_failed", f"{type(exc).__name__}: {exc}")
        self._close_all()
        with self._changed:
            if outcome is not None and not self._stopping:
                self.ended = outcome
            self._changed.notify_all()
        counts = ", ".join(f"{key} {value}" for key, value in self.stats.items() if value)
        if self.ended is not None:
            # A device closing its connection is how a playback or download ends; the rest are faults.
            log.log(logging.INFO if self.ended[0] == "media_closed" else logging.WARNING,
                    "GB28181 media %s ended: %s (%s); %s", self.name, self.ended[0], self.ended[1],
                    counts or "nothing received")
        else:
            log.info("GB28181 media %s stopped; %s", self.name, counts or "nothing received")

    def _once(self, kind: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        """Log a kind of event the first time it happens in this session only."""
        if kind not in self._logged:
            self._logged.add(kind)
            log.log(level, "GB28181 media %s: " + message, self.name, *args)

    def _silence_deadline(self) -> float:
        # Time spent waiting for the reader is not the device's silence: its packets wait in the socket.
        since = max(self.last_packet_mono or self._started_mono, self._sink_waited_mono)
        return since + self.no_media_seconds

    def _poll(self, poller: select.poll, deadline: float | None) -> list[tuple[int, int]]:
        """Wait for events until the deadline (monotonic; None: no limit); leave at stop()."""
        if deadline is None:
            events = poller.poll()
        else:
            events = poller.poll(max(0, math.ceil((deadline - time.monotonic()) * 1000)))
        if self._stopping:
            raise _Stopped
        return events

    def _clear_wake(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def _end_without_media(self) -> None:
        self._give_up_holes(everything=True)
        self._write_out()
        raise _Ended("no_media", f"no RTP for {self.no_media_seconds:g} s")

    # -- UDP ---------------------------------------------------------------------------------------

    def _serve_udp(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        view = memoryview(self._buffer)
        fast = self._fast_path(False, sock.fileno())
        while True:
            deadline = self._silence_deadline()
            if self._pending:
                deadline = min(deadline, self._hole_since + REORDER_SECONDS)
            if time.monotonic() >= self._silence_deadline():
                self._end_without_media()
            # In order, from the learned source: C takes the packets until one needs a decision.
            if (fast is not None and self.ssrc is not None and self._next_seq is not None and not self._pending
                    and self._restart_candidate is None
                    and fast.sync(self._next_seq, self.ssrc, self._source_addr)):
                status = self._run_fast(fast, poller, deadline)
                if status == rtp_native.STATUS_SLOW:
                    data, addr = fast.take_packet()
                    self._on_datagram(memoryview(data), len(data), addr, time.monotonic())
                elif status == rtp_native.STATUS_RECV_ERROR:
                    self.stats["malformed"] += 1
                    self._once("recv_error", "receiving failed: %s", fast.strerror)
                self._write_out()
                continue
            received = 0
            for fd, _ in self._poll(poller, deadline):
                if fd == self._wake_fd:
                    self._clear_wake()
                else:
                    received = self._drain_udp(sock, view)
            if self._pending and time.monotonic() - self._hole_since >= REORDER_SECONDS:
                self._give_up_holes()
            self._write_out()
            if 0 < received < DRAIN_PACKETS:  # (a full drain means more is waiting: no pause)
                time.sleep(BATCH_SECONDS)

    def _drain_udp(self, sock: socket.socket, view: memoryview) -> int:
        """Handle the datagrams waiting in the socket (at most DRAIN_PACKETS); return how many."""
        now = time.monotonic()
        for count in range(DRAIN_PACKETS):
            try:
                size, addr = sock.recvfrom_into(self._buffer)
            except BlockingIOError:
                return count
            except OSError as exc:  # not expected on an unconnected socket; never fatal
                self.stats["malformed"] += 1
                self._once("recv_error", "receiving failed: %s", exc)
                return count
            self._on_datagram(view, size, addr, now)
        return DRAIN_PACKETS

    def _on_datagram(self, view: memoryview, size: int, addr: Any, now: float) -> None:
        try:
            second, seq, _timestamp, ssrc, start, end = rtp_header(view, size)
        except RtpError as exc:
            self.stats["malformed"] += 1
            self._once("malformed", "dropping packets that are not RTP (first from %s: %s)", addr[0], exc)
            return
        if 192 <= second <= 223:  # RTCP sent to the RTP port (RFC 5761 tells them apart this way)
            self.stats["rtcp"] += 1
            return
        if self._source_addr is None:
            self._source_addr = addr
            self._learn(ssrc, (str(addr[0]), int(addr[1])), seq)
        elif addr != self._source_addr:
            last = self.last_packet_mono or now
            if self.expected_ssrc is not None and ssrc == self.expected_ssrc != self.ssrc:
                # What was locked sent another SSRC than the one this session offered: a stream still
                # running towards this (reused) port from an earlier session, whose device had not yet
                # acted on its BYE. The offered SSRC is this session's device: follow it. Locked to the
                # stale sender, the receiver once dropped the device's stream as a foreign source until
                # it ended for "no RTP" (seen in CI).
                self._once("stale_source", "%s:%s sent SSRC %s, not the offered %d: a stale stream; now "
                           "following %s:%s, which sends the offered SSRC", *self._source_addr[:2], self.ssrc,
                           self.expected_ssrc, *addr[:2])
                self.stats["source_changes"] += 1
                self.stats["unexpected_ssrc"] = 0
                self._pending.clear()
                self._source_addr = addr
                self._learn(ssrc, (str(addr[0]), int(addr[1])), seq)
            elif ssrc == self.ssrc and now - last >= SOURCE_SILENCE_SECONDS:
                self._once("source_change", "the source moved from %s:%s to %s:%s after %.1f s of silence "
                           "(NAT rebinding); following it", *self._source_addr[:2], *addr[:2], now - last,
                           level=logging.INFO)
                self.stats["source_changes"] += 1
                self._source_addr = addr
                self.source = (str(addr[0]), int(addr[1]))
            else:
                self.stats["dropped_source"] += 1
                self._once("dropped_source", "dropping packets from %s:%s, the session's source is %s:%s",
                           *addr[:2], *self._source_addr[:2])
                return
        if ssrc != self.ssrc:
            self._drop_ssrc(ssrc)
            return
        self._accepted(end - start, now)
        self._sequence_udp(seq, view, start, end, now)

    def _sequence_udp(self, seq: int, view: memoryview, start: int, end: int, now: float) -> None:
        expected = self._next_seq
        assert expected is not None
        ahead = (seq - expected) & 0xFFFF
        if ahead == 0 and not self._pending:  # the common case: in order
            self._out += view[start:end]
            self._next_seq = self._highest_seq = (seq + 1) & 0xFFFF
            self._restart_candidate = None
            return
        if ahead <= MAX_DROPOUT:
            self._restart_candidate = None
            if ahead and seq in self._pending:
                self.stats["duplicates"] += 1
                return
            # _highest_seq is one past the highest sequence number seen
            if 0 < (self._highest_seq - seq) & 0xFFFF <= 0x8000:
                self.stats["reordered"] += 1
            else:
                self._highest_seq = (seq + 1) & 0xFFFF
            if ahead == 0:
                self._out += view[start:end]
                self._next_seq = (seq + 1) & 0xFFFF
                self._release_run()
            else:
                if not self._pending:
                    self._hole_since = now
                self._pending[seq] = (bytes(view[start:end]), now)
                if len(self._pending) > REORDER_PACKETS:
                    self._give_up_holes()
            return
        if ahead >= 0x8000 and 0x10000 - ahead <= MAX_MISORDER:  # behind, within reach: late, or a repeat
            if seq in self._given_up:
                self.stats["late"] += 1
                self._once("late", "packets arrive after their hole was given up (more than %g s or %d "
                           "packets late)", REORDER_SECONDS, REORDER_PACKETS, level=logging.INFO)
            else:
                self.stats["duplicates"] += 1
                self._once("duplicates", "duplicate packets", level=logging.INFO)
        elif self._restart_candidate is not None and self._restart_candidate[0] == (seq - 1) & 0xFFFF:
            self._once("sequence_restart", "the device restarted its RTP sequence numbers (%d after %d); "
                       "following them", seq, expected)
            self._give_up_holes(everything=True)
            self._out += self._restart_candidate[1]
            self._out += view[start:end]
            self._next_seq = self._highest_seq = (seq + 1) & 0xFFFF
            self._restart_candidate = None
        else:
            # Far off: a stray, or the first packet of a restarted numbering (kept until the next).
            self.stats["duplicates"] += 1
            self._restart_candidate = (seq, bytes(view[start:end]))

    def _release_run(self) -> None:
        pending = self._pending
        seq = self._next_seq
        assert seq is not None
        while seq in pending:
            self._out += pending.pop(seq)[0]
            seq = (seq + 1) & 0xFFFF
        self._next_seq = seq
        if pending:
            self._hole_since = min(arrived for _, arrived in pending.values())

    def _give_up_holes(self, everything: bool = False) -> None:
        """Skip the hole before the earliest waiting packet while the window is over its limits."""
        while self._pending and (everything or len(self._pending) > REORDER_PACKETS
                                 or time.monotonic() - self._hole_since >= REORDER_SECONDS):
            expected = self._next_seq
            assert expected is not None
            first = min(self._pending, key=lambda s: (s - expected) & 0xFFFF)
            gap = (first - expected) & 0xFFFF
            self.stats["lost"] += gap
            self._once("lost", "packets lost (first hole: %d packets before sequence %d)", gap, first,
                       level=logging.INFO)
            for missing in range(expected, expected + min(gap, GIVEN_UP_MEMORY)):
                self._given_up[missing & 0xFFFF] = None
            while len(self._given_up) > GIVEN_UP_MEMORY:
                del self._given_up[next(iter(self._given_up))]
            self._next_seq = first
            self._release_run()

    # -- TCP ---------------------------------------------------------------------------------------

    def _serve_tcp(self) -> None:
        poller = select.poll()
        poller.register(self._wake_fd, select.POLLIN)
        if self._listener is not None:
            poller.register(self._listener.fileno(), select.POLLIN)
        deframer = Rfc4571Deframer()
        view = memoryview(self._buffer)
        conn: socket.socket | None = None
        fast: rtp_native.FastPath | None = None
        while True:
            if conn is None and self._sock is not None:  # accepted below, or dialled by connect()
                conn = self._sock
                poller.register(conn.fileno(), select.POLLIN)
                fast = self._fast_path(True, conn.fileno())
            if time.monotonic() >= self._silence_deadline():
                self._end_without_media()
            # RFC 4571 frames of the learned SSRC in order: C takes them until one needs a decision.
            # It goes on from what the deframer holds, and Python from what C holds (take_carry).
            if (fast is not None and self.ssrc is not None and self._next_seq is not None and not deframer.interleaved
                    and deframer.buffered <= rtp_native.MAX_CARRY_BYTES and fast.sync(self._next_seq, self.ssrc)):
                if deframer.buffered:
                    fast.set_carry(deframer.take_buffer())
                status = self._run_fast(fast, poller, self._silence_deadline())
                if status == rtp_native.STATUS_SLOW:
                    self._deframe(fast.take_rest(), deframer, time.monotonic())
                elif status == rtp_native.STATUS_CLOSED:
                    self._write_out()
                    raise _Ended("media_closed", "the device closed the TCP connection")
                elif status == rtp_native.STATUS_RECV_ERROR:
                    self._write_out()
                    raise _Ended("media_closed", f"the TCP connection failed: {fast.strerror}")
                self._write_out()
                continue
            if fast is not None:
                self._deframe(fast.take_carry(), deframer, time.monotonic())
            closed: str | None = None
            received = 0
            for fd, _ in self._poll(poller, self._silence_deadline()):
                if fd == self._wake_fd:
                    self._clear_wake()
                elif self._listener is not None and fd == self._listener.fileno():
                    self._accept()
                elif conn is not None and fd == conn.fileno():
                    received, closed = self._drain_tcp(conn, view, deframer)
            self._write_out()
            if closed is not None:
                raise _Ended("media_closed", closed)
            if 0 < received < DRAIN_CHUNKS * len(self._buffer):  # as for UDP
                time.sleep(BATCH_SECONDS)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, addr = self._listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        except OSError as exc:  # e.g. out of file descriptors: the device will retry
            self._once("accept_error", "accepting the device's connection failed: %s", exc)
            return
        if self._sock is not None:
            conn.close()
            self.stats["refused_connections"] += 1
            self._once("refused_connection", "refused a second TCP connection from %s:%s (the device "
                       "pushes the stream twice?); keeping the first", *addr[:2])
            return
        conn.setblocking(False)
        self._sock = conn
        self.source = (str(addr[0]), int(addr[1]))
        log.info("GB28181 media %s: device connected from %s:%s", self.name, *addr[:2])

    def _drain_tcp(self, conn: socket.socket, view: memoryview, deframer: Rfc4571Deframer) -> tuple[int, str | None]:
        """Read what has arrived (at most DRAIN_CHUNKS buffers); return the bytes read and why the
        connection is over, if it is."""
        now = time.monotonic()
        received = 0
        for _ in range(DRAIN_CHUNKS):
            try:
                size = conn.recv_into(self._buffer)
            except BlockingIOError:
                return received, None
            except OSError as exc:
                return received, f"the TCP connection failed: {exc.strerror or exc}"
            if size == 0:
                return received, "the device closed the TCP connection"
            received += size
            self._deframe(view[:size], deframer, now)
        return received, None

    def _deframe(self, data: bytes | memoryview, deframer: Rfc4571Deframer, now: float) -> None:
        skipped = deframer.skipped_bytes
        frames = deframer.feed(data)
        if deframer.skipped_bytes != skipped:
            self.stats["malformed"] += 1
            self._once("tcp_framing", "the TCP stream lost its RTP framing; skipping bytes to the next frame")
        for frame in frames:
            self._on_frame(frame, now)

    def _on_frame(self, frame: bytes, now: float) -> None:
        try:
            second, seq, _timestamp, ssrc, start, end = rtp_header(frame)
        except RtpError as exc:
            self.stats["malformed"] += 1
            self._once("malformed", "dropping TCP frames that are not RTP (first: %s)", exc)
            return
        if 192 <= second <= 223:
            self.stats["rtcp"] += 1
            return
        if self.ssrc is None:
            self._learn(ssrc, self.source, seq)
        elif ssrc != self.ssrc:
            self._drop_ssrc(ssrc)
            return
        self._accepted(end - start, now)
        # TCP keeps the order: deliver everything, and count what the device skipped.
        gap = (seq - (self._next_seq or 0)) & 0xFFFF
        if 0 < gap < 0x8000:
            self.stats["lost"] += gap
            self._once("lost", "the device skipped %d sequence numbers before %d", gap, seq, level=logging.INFO)
        self._next_seq = (seq + 1) & 0xFFFF
        self._out += memoryview(frame)[start:end]

    # -- the C fast path ---------------------------------------------------------------------------

    def _fast_path(self, tcp: bool, sock_fd: int) -> rtp_native.FastPath | None:
        if not self.native:
            return None
        return rtp_native.FastPath(tcp, sock_fd, self._sink_fd, self._wake_fd,
                                   self._listener.fileno() if self._listener is not None else -1,
                                   batch_s=BATCH_SECONDS, drain_packets=DRAIN_PACKETS, drain_chunks=DRAIN_CHUNKS,
                                   chunk=len(self._buffer))

    def _run_fast(self, fast: rtp_native.FastPath, poller: select.poll, deadline: float) -> int:
        """One run of the C fast path (no GIL) until it needs us; its counters and sequence folded into
        ours, what it had not written yet put before our output. The wake fd and the listener are
        handled here, as the Python loop does; a pipe whose reader is gone ends the session."""
        status = fast.run(min(deadline, time.monotonic() + FAST_RETURN_SECONDS))
        if fast.packets:
            self.native_packets += fast.packets
            self.stats["packets"] += fast.packets
            self.stats["bytes"] += fast.payload_bytes
            fast.packets = fast.payload_bytes = 0
            self.last_packet_mono = fast.last_packet
            self._next_seq = self._highest_seq = fast.next_seq
        self._sink_waited_mono = max(self._sink_waited_mono, fast.sink_waited)
        self._out += fast.take_out()
        if status == rtp_native.STATUS_EVENT:
            for fd, _ in self._poll(poller, time.monotonic()):  # (no wait: what woke it is there)
                if fd == self._wake_fd:
                    self._clear_wake()
                elif self._listener is not None and fd == self._listener.fileno():
                    self._accept()
        elif status == rtp_native.STATUS_SINK_CLOSED:
            raise _Ended("sink_closed", "the reader of the media pipe is gone")
        elif status == rtp_native.STATUS_SINK_ERROR:
            raise _Ended("sink_closed", f"writing the media pipe failed: {fast.strerror}")
        return status

    # -- shared ------------------------------------------------------------------------------------

    def _learn(self, ssrc: int, source: tuple[str, int] | None, seq: int) -> None:
        self.ssrc = ssrc
        self.source = source
        self._next_seq = self._highest_seq = seq
        if self.expected_ssrc is not None and ssrc != self.expected_ssrc:
            self.stats["unexpected_ssrc"] = 1
            self._once("unexpected_ssrc", "the device sends SSRC %d, not the offered %d; accepting it",
                       ssrc, self.expected_ssrc)
        log.info("GB28181 media %s: first packet from %s, SSRC %d", self.name,
                 f"{source[0]}:{source[1]}" if source else "?", ssrc)

    def _drop_ssrc(self, ssrc: int) -> None:
        self.stats["dropped_ssrc"] += 1
        self._once("dropped_ssrc", "dropping packets of SSRC %d, the session's is %s", ssrc, self.ssrc)

    def _accepted(self, payload_size: int, now: float) -> None:
        self.stats["packets"] += 1
        self.stats["bytes"] += payload_size
        first = self.last_packet_mono is None
        self.last_packet_mono = now
        if first:
            with self._changed:
                self._changed.notify_all()

    def _write_out(self) -> None:
        """Write the delivered payload to the sink, waiting for the reader as long as it takes (but
        not past stop())."""
        if not self._out:
            return
        with memoryview(self._out) as view:
            written, total = 0, len(view)
            while written < total:
                try:
                    written += os.write(self._sink_fd, view[written:])
                except BlockingIOError:
                    self._wait_sink_writable()
                except BrokenPipeError:
                    raise _Ended("sink_closed", "the reader of the media pipe is gone") from None
                except OSError as exc:
                    raise _Ended("sink_closed", f"writing the media pipe failed: {exc.strerror or exc}") from None
        self._out.clear()

    def _wait_sink_writable(self) -> None:
        """Block until the reader made room (or stop()): no timeout, the reader's own health checks
        judge a reader that stalls; meanwhile packets queue in the socket."""
        poller = select.poll()
        poller.register(self._sink_fd, select.POLLOUT)
        poller.register(self._wake_fd, select.POLLIN)
        for fd, _ in self._poll(poller, None):
            if fd == self._wake_fd:
                self._clear_wake()  # connect() in tcp-active: the connection is picked up afterwards
        self._sink_waited_mono = time.monotonic()

    def _close_sockets(self) -> None:
        for sock in (self._sock, self._listener):
            if sock is not None:
                sock.close()

    def _close_all(self) -> None:
        """Close everything; idempotent. The thread does it when it ends, stop() when it never ran."""
        with self._lock:
            self._close_sockets()
            for fd in (self._sink_fd, self._wake_fd):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._sink_fd = self._wake_fd = -1
