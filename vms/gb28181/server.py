"""The platform's SIP side of GB/T 28181: registration, keepalives, catalogs, and the INVITEs that bring
the media (docs/design/gb28181.md).

One thread (`gb28181-sip`) runs an asyncio loop with the SIP sockets (UDP and TCP on one port) and the
control socket the ingest workers use (vms.gb28181.control). The database is reached through a single
worker thread, in order, so the signalling never waits on it. Everything a device sends is checked
before it is believed: digest on every REGISTER, only registered devices' MESSAGEs are taken, a device's
address is re-learned from the packets it really sends (NAT), and REGISTER/MESSAGE are rate-limited per
source address.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from vms.core.clock import Clock, SystemClock
from vms.core.settings import Settings
from vms.db.engine import Database
from vms.gb28181 import manscdp, registry, sdp
from vms.gb28181.control import MAX_LINE, control_address, decode, encode
from vms.gb28181.digest import DigestServer
from vms.gb28181.manscdp import CatalogItem, ManscdpError
from vms.gb28181.sip import (
    SipError,
    SipMessage,
    StreamSplitter,
    new_call_id,
    new_tag,
    parse_message,
    parse_uri,
    request,
    response_to,
)

log = logging.getLogger(__name__)

T1 = 0.5  # RFC 3261 retransmission base over UDP
TRANSACTION_TIMEOUT = 32.0  # how long a server transaction's answer is kept for retransmitted requests
CATALOG_WAIT_S = 30.0  # a catalog answer whose pages stop coming is stored as it is after this long
FLUSH_SEEN_S = 5.0
MAX_RATE_ENTRIES = 10_000
MAX_REGISTER_EXPIRES_S = 7 * 86400  # longer expiries are granted this long (GB's default is a day)
USER_AGENT = "vms-gb28181"


def time_text(epoch_s: int, tz) -> str:
    """GB's times in queries: local time, no zone."""
    return datetime.fromtimestamp(epoch_s, tz).strftime("%Y-%m-%dT%H:%M:%S")


def parse_time_text(text: str, tz) -> int | None:
    try:
        when = datetime.fromisoformat(text.strip().replace(" ", "T"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return int(when.timestamp())


def _gb_date() -> str:
    """GB's Date header: local time, ISO without zone and with milliseconds (devices set their clock
    from it)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


@dataclass
class DeviceLink:
    """A registered device, in memory: where it is and how to reach it."""

    device_id: str
    host: str
    port: int
    transport: str  # UDP | TCP
    registered_mono: float
    expires_mono: float
    last_keepalive_mono: float
    gb_version: str | None = None
    writer: asyncio.StreamWriter | None = None  # its TCP connection, when it registered over TCP
    dirty: bool = False  # address or keepalive not yet written to the database
    keepalive_ms: int | None = None
    seen_ms: int = 0


@dataclass
class Dialog:
    """An INVITE we sent (a stream a worker asked for)."""

    call_id: str
    device_id: str
    channel_id: str
    from_tag: str
    owner: StreamOwner | None
    session: str  # the worker's id of the request
    purpose: str
    ssrc: str
    uri: str
    to_tag: str | None = None
    remote_target: str | None = None
    cseq: int = 1
    confirmed: bool = False
    ack: bytes | None = None
    ended: bool = False


@dataclass
class _Transaction:
    method: str
    future: asyncio.Future
    provisional: bool = False


@dataclass
class _CatalogCollector:
    sum_num: int
    items: dict[str, CatalogItem] = field(default_factory=dict)
    started_mono: float = 0.0


class StreamOwner(Protocol):
    """Who asked for a stream: a worker's control connection, or an in-process user (the backfill)."""

    calls: set[str]

    def send(self, message: dict[str, Any]) -> None: ...


class LocalOwner:
    """An in-process owner of streams: the server's answers and events arrive in `messages`."""

    def __init__(self) -> None:
        self.calls: set[str] = set()
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()

    def send(self, message: dict[str, Any]) -> None:
        self.messages.put(message)


@dataclass
class _RecordQuery:
    future: asyncio.Future
    sum_num: int | None = None
    items: list[tuple[int, int]] = field(default_factory=list)


class _ControlConn:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.calls: set[str] = set()

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message))


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: GbServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("gb28181: UDP error %s", exc)


class GbServer:
    def __init__(self, settings: Settings, database: Database, clock: Clock | None = None) -> None:
        self.settings = settings
        self.cfg = settings.gb28181
        self.db = database
        self.clock = clock or SystemClock()
        self.control_path = control_address(settings.data_dir)
        self.digest = DigestServer(self.cfg.domain)
        self.links: dict[str, DeviceLink] = {}
        self.dialogs: dict[str, Dialog] = {}
        self.port = 0  # bound SIP port (UDP and TCP)
        self.stats: dict[str, int] = {"malformed": 0, "rate_limited": 0, "refused": 0, "registered": 0,
                                      "keepalives": 0, "invites": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gb28181-db")
        self._transactions: dict[str, _Transaction] = {}
        self._answers: OrderedDict[tuple[str, str, str, str], tuple[float, bytes]] = OrderedDict()
        self._handling: set[tuple[str, str, str, str]] = set()  # requests not answered yet (their copies are absorbed)
        self._catalogs: dict[tuple[str, int], _CatalogCollector] = {}
        self._rates: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._sn = int(time.time()) % 100000
        self._ssrc_serial = 0
        self._logged: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task] = set()
        self._abandoned: OrderedDict[str, str] = OrderedDict()  # call id -> device of INVITEs that timed out
        self._record_queries: dict[int, _RecordQuery] = {}  # by SN

    # -- lifecycle (any thread) ------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> GbServer:
        self._thread = threading.Thread(target=self._run, name="gb28181-sip", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the GB28181 SIP server did not start in time")
        if self._start_error is not None:
            raise RuntimeError(f"the GB28181 SIP server cannot start: {self._start_error}") from self._start_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._db_pool.shutdown(wait=False)

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine of this server from another thread (the API, tests) and wait for it."""
        if self._loop is None:
            raise RuntimeError("the GB28181 server is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported through start()
            if not self._ready.is_set():
                self._start_error = exc
                self._ready.set()
            else:
                log.exception("gb28181: the SIP server stopped")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        cfg = self.cfg
        family = socket.AF_INET6 if ":" in cfg.sip_host else socket.AF_INET
        tries = 1 if cfg.sip_port else 20  # port 0: the free UDP port may be taken over TCP; try another
        for attempt in range(tries):
            udp_sock = socket.socket(family, socket.SOCK_DGRAM)
            udp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp_sock.bind((cfg.sip_host, cfg.sip_port))
            self.port = udp_sock.getsockname()[1]
            try:
                tcp = await asyncio.start_server(self._tcp_client, cfg.sip_host, self.port, reuse_address=True,
                                                 limit=MAX_LINE)
                break
            except OSError:
                udp_sock.close()
                if attempt == tries - 1:
                    raise
        udp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        transport, _ = await self._loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp_sock)
        self._udp = transport
        path = self.control_path
        if not path.startswith("\0"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        control = await asyncio.start_unix_server(self._control_client, path=path, limit=MAX_LINE)
        if not path.startswith("\0"):
            os.chmod(path, 0o600)
        await self._restore_registrations()
        log.info("gb28181: SIP on %s:%d (UDP and TCP), server %s, domain %s", cfg.sip_host, self.port,
                 cfg.server_id, cfg.domain)
        self._ready.set()
        ticker = asyncio.create_task(self._tick_loop())
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()
            for dialog in list(self.dialogs.values()):
                self._end_dialog(dialog, "ingest_stopped", "the server stopped", send_bye=True)
            await asyncio.sleep(0.05)  # let the BYEs leave
            control.close()
            tcp.close()
            transport.close()
            if not path.startswith("\0"):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    async def _db(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_pool, fn, self.db, *args)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _log_once(self, kind: str, subject: str, text: str, *args) -> None:
        key = (kind, subject)
        if key in self._logged:
            log.debug(text, *args)
            return
        if len(self._logged) > 10_000:
            self._logged.clear()
        self._logged.add(key)
        log.warning(text, *args)

    async def _restore_registrations(self) -> None:
        now_ms, mono = self.clock.now_ms(), time.monotonic()
        rows = await self._db(registry.registered_devices, now_ms)
        for row in rows:
            if not row.host or not row.port or row.transport != "UDP":
                continue  # a TCP device's connection died with the old process: it registers again
            keepalive_ms = row.last_keepalive_ms or row.registered_ms or now_ms
            self.links[row.device_id] = DeviceLink(
                row.device_id, row.host, row.port, "UDP", registered_mono=mono,
                expires_mono=mono + max(0, (row.expires_ms or now_ms) - now_ms) / 1000,
                last_keepalive_mono=mono - max(0, now_ms - keepalive_ms) / 1000, gb_version=row.gb_version)
        if self.links:
            log.info("gb28181: %d device registrations still valid from before the restart", len(self.links))

    # -- transport ---------------------------------------------------------------------------------

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive CRLF
        try:
            msg = parse_message(data, datagram=True)
        except SipError as exc:
            self.stats["malformed"] += 1
            self._log_once("malformed", addr[0], "gb28181: malformed SIP from %s:%d dropped (%s); further ones "
                           "from there are counted, not logged", addr[0], addr[1], exc)
            return
        self._dispatch(msg, (addr[0], addr[1]), "UDP", None)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        splitter = StreamSplitter()
        # No whole message for this long (a device sends a keepalive each interval): closed, or a connection
        # holding a half-sent header, or nothing, would hold its file descriptor for ever.
        idle_s = self.cfg.keepalive_interval_seconds * self.cfg.keepalive_missed
        last_message = time.monotonic()
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), last_message + idle_s - time.monotonic())
                except TimeoutError:
                    self._log_once("tcp-idle", peer[0], "gb28181: TCP connection from %s:%d closed: no whole SIP "
                                   "message for %g s", peer[0], peer[1], idle_s)
                    break
                if not data:
                    break
                try:
                    messages = splitter.feed(data)
                except SipError as exc:
                    self.stats["malformed"] += 1
                    self._log_once("malformed", peer[0], "gb28181: TCP connection from %s:%d closed: %s",
                                   peer[0], peer[1], exc)
                    break
                if messages:
                    last_message = time.monotonic()
                for raw in messages:
                    try:
                        msg = parse_message(raw, datagram=False)
                    except SipError as exc:
                        self.stats["malformed"] += 1
                        self._log_once("malformed", peer[0], "gb28181: malformed SIP from %s:%d dropped (%s)",
                                       peer[0], peer[1], exc)
                        continue
                    self._dispatch(msg, (peer[0], peer[1]), "TCP", writer)
        except (ConnectionError, OSError):
            pass
        finally:
            for link in self.links.values():
                if link.writer is writer:
                    link.writer = None
            writer.close()

    def _send_to(self, data: bytes, addr: tuple[str, int], transport: str,
                 writer: asyncio.StreamWriter | None) -> bool:
        if transport == "TCP":
            if writer is None or writer.is_closing():
                return False
            writer.write(data)
            return True
        if self._udp is None:
            return False
        self._udp.sendto(data, addr)
        return True

    def _send_link(self, link: DeviceLink, data: bytes) -> bool:
        return self._send_to(data, (link.host, link.port), link.transport, link.writer)

    def _reply(self, req: SipMessage, status: int, addr: tuple[str, int], transport: str,
               writer: asyncio.StreamWriter | None, reason: str | None = None,
               extra: list[tuple[str, str]] | None = None, body: bytes = b"", content_type: str | None = None,
               to_tag: str | None = None) -> None:
        resp = response_to(req, status, reason, to_tag=to_tag or (new_tag() if status > 100 else None),
                           received=addr)
        for name, value in extra or []:
            resp.add_header(name, value)
        resp.add_header("User-Agent", USER_AGENT)
        if content_type:
            resp.add_header("Content-Type", content_type)
        resp.body = body
        data = resp.encode()
        try:
            key = (req.via.branch or "", req.call_id, req.method or "", req.header("CSeq") or "")
            self._answers[key] = (time.monotonic() + TRANSACTION_TIMEOUT, data)
            while len(self._answers) > 20_000:
                self._answers.popitem(last=False)
        except SipError:
            pass
        # Over UDP the answer goes where the request came from (rport), which is what crosses NAT.
        self._send_to(data, addr, transport, writer)

    def _rate_ok(self, host: str) -> bool:
        now = time.monotonic()
        rate = self.cfg.requests_per_second
        burst = rate * 2
        tokens, last = self._rates.pop(host, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        ok = tokens >= 1
        self._rates[host] = (tokens - 1 if ok else tokens, now)
        while len(self._rates) > MAX_RATE_ENTRIES:
            self._rates.popitem(last=False)
        return ok

    # -- incoming ----------------------------------------------------------------------------------

    def _dispatch(self, msg: SipMessage, addr: tuple[str, int], transport: str,
                  writer: asyncio.StreamWriter | None) -> None:
        if not msg.is_request:
            self._on_response(msg)
            return
        method = msg.method or ""
        if method in ("REGISTER", "MESSAGE") and not self._rate_ok(addr[0]):
            self.stats["rate_limited"] += 1
            self._log_once("rate", addr[0], "gb28181: too many requests from %s: dropping its REGISTER and MESSAGE "
                           "above %g a second", addr[0], self.cfg.requests_per_second)
            return
        try:
            key = (msg.via.branch or "", msg.call_id, method, msg.header("CSeq") or "")
        except SipError:
            key = None
        if key is not None and method != "ACK":
            cached = self._answers.get(key)
            if cached is not None and cached[0] > time.monotonic():
                self._send_to(cached[1], addr, transport, writer)  # a retransmitted request
                return
            if key in self._handling:
                return  # retransmitted before its answer (which waits on the database) went out: that one will do
        handler = {"REGISTER": self._on_register, "MESSAGE": self._on_message, "BYE": self._on_bye,
                   "ACK": None, "OPTIONS": self._on_options, "INFO": self._on_options,
                   "CANCEL": self._on_cancel, "NOTIFY": self._on_options}.get(method, self._on_unknown)
        if handler is None:
            return
        if key is not None:
            self._handling.add(key)
        self._spawn(self._guarded(handler, msg, addr, transport, writer, key))

    async def _guarded(self, handler, msg, addr, transport, writer, key=None) -> None:
        try:
            await handler(msg, addr, transport, writer)
        except (SipError, ManscdpError) as exc:
            self.stats["malformed"] += 1
            self._log_once("bad-request", addr[0], "gb28181: bad %s from %s:%d: %s", msg.method, addr[0], addr[1], exc)
            self._reply(msg, 400, addr, transport, writer, reason="Bad Request")
        except Exception:  # noqa: BLE001 - one device's message must not stop the server
            log.exception("gb28181: handling %s from %s:%d failed", msg.method, addr[0], addr[1])
            self._reply(msg, 500, addr, transport, writer)
        finally:
            self._handling.discard(key)

    async def _on_unknown(self, msg, addr, transport, writer) -> None:
        self._reply(msg, 405, addr, transport, writer,
                    extra=[("Allow", "REGISTER, MESSAGE, INVITE, ACK, BYE, CANCEL, OPTIONS, INFO")])

    async def _on_options(self, msg, addr, transport, writer) -> None:
        self._reply(msg, 200, addr, transport, writer)

    async def _on_cancel(self, msg, addr, transport, writer) -> None:
        self._reply(msg, 481, addr, transport, writer)  # we never have a pending INVITE from a device

    async def _on_register(self, msg: SipMessage, addr, transport, writer) -> None:
        device_id = msg.from_.uri.user or ""
        if not (device_id.isascii() and device_id.isdigit() and len(device_id) == 20):
            self._reply(msg, 400, addr, transport, writer, reason="Device ID must be 20 digits")
            return
        expires_text = msg.header("Expires")
        if expires_text is None:
            contact = msg.header("Contact") or ""
            for part in contact.split(";")[1:]:
                key, _, value = part.partition("=")
                if key.strip().lower() == "expires":
                    expires_text = value.strip()
        if expires_text is None or not (expires_text.strip().isascii() and expires_text.strip().isdigit()):
            self._reply(msg, 400, addr, transport, writer, reason="Missing Expires")
            return
        expires = min(int(expires_text.strip()), MAX_REGISTER_EXPIRES_S)  # a registrar may shorten it (RFC 3261 10.3)
        now_ms = self.clock.now_ms()
        admission = await self._db(registry.admission, device_id, self.cfg.password)
        if admission.password is None:
            self.stats["refused"] += 1
            await self._db(registry.note_refused, device_id, addr[0], addr[1], transport,
                           "no password: neither its own nor gb28181.password", now_ms)
            self._log_once("refused", device_id, "gb28181: device %s from %s refused: it has no password and "
                           "gb28181.password is not set", device_id, addr[0])
            self._reply(msg, 403, addr, transport, writer, reason="Forbidden")
            return
        verdict = self.digest.verify(msg.header("Authorization"), "REGISTER", device_id, admission.password)
        if not verdict.ok and (verdict.stale or not msg.header("Authorization")):
            self._reply(msg, 401, addr, transport, writer,
                        extra=[("WWW-Authenticate", self.digest.challenge(device_id, stale=verdict.stale))])
            return
        if not verdict.ok:
            self.stats["refused"] += 1
            await self._db(registry.note_refused, device_id, addr[0], addr[1], transport,
                           f"registration refused: {verdict.problem}", now_ms)
            self._log_once("refused", device_id, "gb28181: device %s from %s refused: %s", device_id, addr[0],
                           verdict.problem)
            self._reply(msg, 403, addr, transport, writer, reason="Forbidden")
            return
        if not admission.known:
            self.stats["refused"] += 1
            await self._db(registry.note_refused, device_id, addr[0], addr[1], transport,
                           "unknown device: accept it (vms gb28181 accept, or the console) or bind a channel",
                           now_ms)
            self._log_once("unknown", device_id, "gb28181: unknown device %s from %s:%d refused and listed for an "
                           "admin to accept", device_id, addr[0], addr[1])
            self._reply(msg, 403, addr, transport, writer, reason="Forbidden")
            return
        version = (msg.header("X-GB-Ver") or "")[:8] or None  # the column holds 8 (3.0 = 2022)
        extra = [("Date", _gb_date())]
        if version:
            extra.append(("X-GB-Ver", version))
        if expires == 0:
            link = self.links.pop(device_id, None)
            if link is not None:
                self._device_gone(device_id, "unregistered", "the device unregistered")
            await self._db(registry.note_offline, device_id, "unregistered", now_ms)
            self._reply(msg, 200, addr, transport, writer, extra=[*extra, ("Expires", "0")])
            log.info("gb28181: device %s unregistered", device_id)
            return
        if expires < self.cfg.register_expires_min_seconds:
            self._reply(msg, 423, addr, transport, writer,
                        extra=[("Min-Expires", str(self.cfg.register_expires_min_seconds))])
            return
        mono = time.monotonic()
        old = self.links.get(device_id)
        fresh = old is None
        self.links[device_id] = link = DeviceLink(
            device_id, addr[0], addr[1], transport, registered_mono=old.registered_mono if old else mono,
            expires_mono=mono + expires, last_keepalive_mono=mono, gb_version=version,
            writer=writer if transport == "TCP" else None, keepalive_ms=now_ms, seen_ms=now_ms)
        if old is not None and (old.host, old.port) != (addr[0], addr[1]):
            log.info("gb28181: device %s now at %s:%d (was %s:%d)", device_id, addr[0], addr[1], old.host, old.port)
        contact_header = msg.header("Contact")
        if contact_header:
            extra.append(("Contact", contact_header))
        extra.append(("Expires", str(expires)))
        self._reply(msg, 200, addr, transport, writer, extra=extra)
        self.stats["registered"] += 1
        await self._db(registry.note_registered, device_id, addr[0], addr[1], transport, version, now_ms,
                       now_ms + expires * 1000)
        if fresh:
            log.info("gb28181: device %s registered from %s:%d over %s%s", device_id, addr[0], addr[1], transport,
                     f" (GB {version})" if version else "")
            self._spawn(self._query(link, "DeviceInfo"))
            self._spawn(self._query(link, "Catalog"))

    def _touch(self, link: DeviceLink, addr: tuple[str, int], transport: str,
               writer: asyncio.StreamWriter | None) -> None:
        """Re-learn where the device is from what it sends (a NAT rebinding changes the source port)."""
        if transport == "UDP" and link.transport == "UDP" and (link.host, link.port) != addr:
            log.info("gb28181: device %s moved to %s:%d (was %s:%d)", link.device_id, addr[0], addr[1],
                     link.host, link.port)
            link.host, link.port = addr
        elif transport == "TCP" and writer is not None:
            link.writer, link.transport = writer, "TCP"
            link.host, link.port = addr
        link.seen_ms = self.clock.now_ms()
        link.dirty = True

    async def _on_message(self, msg: SipMessage, addr, transport, writer) -> None:
        device_id = msg.from_.uri.user or ""
        link = self.links.get(device_id)
        if link is None:
            # Not registered (or offline): the device must register first; many re-register on a 403.
            self._reply(msg, 403, addr, transport, writer, reason="Not Registered")
            return
        if (addr[0], transport) != (link.host, link.transport):
            # A MESSAGE carries no credentials: it may move a device to another port (a NAT rebinding), but
            # another host or transport takes an authenticated REGISTER (devices register again on a 403).
            self._reply(msg, 403, addr, transport, writer, reason="Not Registered From Here")
            return
        root = manscdp.parse_body(msg.body)
        kind, cmd, _, sn = manscdp.command(root)
        self._touch(link, addr, transport, writer)
        self._reply(msg, 200, addr, transport, writer)
        if cmd == "Keepalive":
            link.last_keepalive_mono = time.monotonic()
            link.keepalive_ms = self.clock.now_ms()
            self.stats["keepalives"] += 1
        elif cmd == "Catalog" and kind == "Response":
            await self._catalog_page(link, root)
        elif cmd == "RecordInfo" and kind == "Response":
            self._record_page(root)
        elif cmd == "DeviceInfo" and kind == "Response":
            info = {c.tag: (c.text or "").strip() for c in root}
            await self._db(registry.note_device_info, device_id, info, self.clock.now_ms())
        elif cmd == "MediaStatus":
            if (manscdp.child_text(root, "NotifyType") or "") == "121":
                channel = manscdp.child_text(root, "DeviceID") or ""
                for dialog in list(self.dialogs.values()):
                    if dialog.device_id == device_id and dialog.channel_id == channel and dialog.purpose != "Play":
                        self._end_dialog(dialog, "media_end", "the device sent the whole recording", send_bye=True)

    async def _catalog_page(self, link: DeviceLink, root) -> None:
        page = manscdp.catalog_page(root)
        key = (link.device_id, page.sn or 0)
        collector = self._catalogs.get(key)
        if collector is None:
            collector = self._catalogs[key] = _CatalogCollector(page.sum_num, started_mono=time.monotonic())
        for item in page.items:
            collector.items[item.channel_id] = item
        # SumNum missing or 0 with items listed: a device that does not count; what came is kept when the
        # pages stop (CATALOG_WAIT_S), only adding, never as a complete list that would remove channels.
        if collector.sum_num > 0 and len(collector.items) >= collector.sum_num:
            del self._catalogs[key]
            await self._db(registry.store_catalog, link.device_id, list(collector.items.values()),
                           self.clock.now_ms(), True)
            log.info("gb28181: device %s has %d channel(s)", link.device_id, len(collector.items))

    async def _on_bye(self, msg: SipMessage, addr, transport, writer) -> None:
        dialog = self.dialogs.get(msg.call_id)
        link = self.links.get(dialog.device_id) if dialog is not None else None
        # Our dialog, from its device: the Call-ID alone would let anyone who learnt it (or a host on the
        # path) end a recording. A BYE carries our tag in its To; it comes from the registered host.
        if dialog is None or link is None or addr[0] != link.host or msg.to.tag != dialog.from_tag:
            self._reply(msg, 481, addr, transport, writer)
            return
        self._reply(msg, 200, addr, transport, writer)
        self._end_dialog(dialog, "device_bye", "the device ended the stream (BYE)", send_bye=False)

    # -- outgoing requests -------------------------------------------------------------------------

    def _local_host_for(self, host: str) -> str:
        """Our address as the device sees it on this network (the source of the route to it)."""
        if self.cfg.sip_host not in ("0.0.0.0", "::"):
            return self.cfg.sip_host
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((host, 9))
                return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"

    def _next_sn(self) -> int:
        self._sn = (self._sn + 1) % 1_000_000_000
        return self._sn

    def _request(self, link: DeviceLink, method: str, target_user: str, *, call_id: str | None = None,
                 from_tag: str | None = None, to: str | None = None, cseq: int = 1, uri: str | None = None,
                 body: bytes = b"", content_type: str | None = None,
                 extra: list[tuple[str, str]] | None = None) -> SipMessage:
        cfg = self.cfg
        local = self._local_host_for(link.host)
        return request(
            method, uri or f"sip:{target_user}@{link.host}:{link.port}", via_host=local, via_port=self.port,
            transport=link.transport, from_=f"<sip:{cfg.server_id}@{cfg.domain}>;tag={from_tag or new_tag()}",
            to=to or f"<sip:{target_user}@{cfg.domain}>", call_id=call_id or new_call_id(local), cseq=cseq,
            contact=f"<sip:{cfg.server_id}@{local}:{self.port}>", body=body, content_type=content_type,
            extra=extra, user_agent=USER_AGENT)

    async def _transaction(self, link: DeviceLink, msg: SipMessage, timeout: float) -> SipMessage | None:
        """Send a request and wait for its final answer (None: none within `timeout`). Over UDP it is
        sent again at T1, 2T1, 4T1... until something answers."""
        branch = msg.via.branch or ""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        tx = self._transactions[branch] = _Transaction(msg.method or "", future)
        data = msg.encode()
        deadline = time.monotonic() + timeout
        interval = T1
        try:
            if not self._send_link(link, data):
                return None
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    return await asyncio.wait_for(asyncio.shield(future), min(interval, remaining))
                except TimeoutError:
                    if link.transport == "UDP" and not tx.provisional:
                        self._send_link(link, data)
                    interval = min(interval * 2, 4.0)
        finally:
            self._transactions.pop(branch, None)

    def _on_response(self, msg: SipMessage) -> None:
        try:
            branch = msg.via.branch or ""
            _, method = msg.cseq
        except SipError:
            self.stats["malformed"] += 1
            return
        tx = self._transactions.get(branch)
        if tx is None:
            if method == "INVITE" and msg.status and 200 <= msg.status < 300:
                self._late_invite_ok(msg)
            return
        if msg.status is not None and msg.status < 200:
            tx.provisional = True
            return
        if not tx.future.done():
            tx.future.set_result(msg)

    def _late_invite_ok(self, msg: SipMessage) -> None:
        """A 200 to an INVITE we already confirmed (our ACK was lost: ACK again) or gave up on (the device
        answered after the timeout and would send media to nobody: ACK and BYE)."""
        dialog = self.dialogs.get(msg.call_id)
        if dialog is not None:
            link = self.links.get(dialog.device_id)
            if link is not None and dialog.ack is not None:
                self._send_link(link, dialog.ack)
            return
        device_id = self._abandoned.pop(msg.call_id, None)
        link = self.links.get(device_id) if device_id else None
        if link is None:
            return
        log.info("gb28181: device %s answered an INVITE after it timed out: hanging up", device_id)
        ack, bye = self._ack_and_bye_for(link, msg)
        self._send_link(link, ack)
        self._send_link(link, bye)

    def _ack_and_bye_for(self, link: DeviceLink, answer: SipMessage) -> tuple[bytes, bytes]:
        from_ = answer.header("From") or ""
        to = answer.header("To") or ""
        contact = answer.header("Contact")
        uri = str(parse_uri(contact.split(";")[0].strip())) if contact else f"sip:{answer.to.uri.user}@{link.host}"
        number, _ = answer.cseq
        local = self._local_host_for(link.host)
        common = dict(via_host=local, via_port=self.port, transport=link.transport, from_=from_, to=to,
                      call_id=answer.call_id)
        ack = request("ACK", uri, cseq=number, **common)  # type: ignore[arg-type]
        bye = request("BYE", uri, cseq=number + 1, **common)  # type: ignore[arg-type]
        return ack.encode(), bye.encode()

    async def _query(self, link: DeviceLink, cmd: str, fields: list[tuple[str, str]] | None = None,
                     target: str | None = None) -> int:
        sn = self._next_sn()
        body = manscdp.build("Query", cmd, sn, target or link.device_id, fields)
        msg = self._request(link, "MESSAGE", link.device_id, body=body,
                            content_type="Application/MANSCDP+xml")
        answer = await self._transaction(link, msg, timeout=8.0)
        if answer is None or (answer.status or 0) >= 300:
            self._log_once("query", link.device_id, "gb28181: device %s did not take the %s query (%s)",
                           link.device_id, cmd, answer.describe() if answer else "no answer")
        return sn

    async def query_catalog(self, device_id: str) -> bool:
        link = self.links.get(device_id)
        if link is None:
            return False
        await self._query(link, "Catalog")
        return True

    # -- streams for the workers -------------------------------------------------------------------

    async def _control_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and hasattr(socket, "SO_PEERCRED"):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid not in (os.geteuid(), 0):
                log.warning("gb28181: control connection from uid %d refused", uid)
                writer.close()
                return
        conn = _ControlConn(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    break
                if not line:
                    break
                try:
                    message = decode(line)
                except ValueError:
                    conn.send({"ok": False, "reason": "bad_request", "detail": "not a JSON object"})
                    continue
                op = message.get("op")
                if op == "play":
                    self._spawn(self._play(conn, message))
                elif op == "bye":
                    dialog = self.dialogs.get(str(message.get("call", "")))
                    if dialog is not None and dialog.owner is conn:
                        self._end_dialog(dialog, "ingest_stopped", "the worker ended the stream", send_bye=True)
                elif op == "catalog":
                    ok = await self.query_catalog(str(message.get("device", "")))
                    conn.send({"id": message.get("id"), "ok": ok})
                else:
                    conn.send({"id": message.get("id"), "ok": False, "reason": "bad_request",
                               "detail": f"unknown op {op!r}"})
        except (ConnectionError, OSError):
            pass
        finally:
            for call_id in list(conn.calls):
                dialog = self.dialogs.get(call_id)
                if dialog is not None:
                    dialog.owner = None
                    self._end_dialog(dialog, "ingest_stopped", "the worker went away", send_bye=True)
            writer.close()

    async def request_stream(self, owner: StreamOwner, req: dict[str, Any]) -> None:
        """An in-process request for a stream (the backfill): the answer and the stream's end go to owner."""
        await self._play(owner, req)

    async def hangup(self, call_id: str) -> None:
        dialog = self.dialogs.get(call_id)
        if dialog is not None:
            self._end_dialog(dialog, "ingest_stopped", "the stream was ended here", send_bye=True)

    async def record_info(self, device_id: str, channel_id: str, start_s: int, end_s: int,
                          timeout: float = 15.0) -> list[tuple[int, int]] | None:
        """What the camera's own recording (its card) holds of [start_s, end_s): (start_s, end_s) pieces.
        None: the device is not registered or did not answer."""
        link = self.links.get(device_id)
        if link is None:
            return None
        sn = self._next_sn()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._record_queries[sn] = _RecordQuery(future)
        tz = self.settings.tz
        fields = [("StartTime", time_text(start_s, tz)), ("EndTime", time_text(end_s, tz)), ("Secrecy", "0"),
                  ("Type", "all")]
        body = manscdp.build("Query", "RecordInfo", sn, channel_id, fields)
        msg = self._request(link, "MESSAGE", device_id, body=body, content_type="Application/MANSCDP+xml")
        try:
            answer = await self._transaction(link, msg, timeout=8.0)
            if answer is None or (answer.status or 0) >= 300:
                return None
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            query = self._record_queries.get(sn)
            if query is not None and query.items:
                return sorted(query.items)  # pages stopped coming: what came
            return None
        finally:
            self._record_queries.pop(sn, None)

    def _record_page(self, root) -> None:
        _, _, _, sn = manscdp.command(root)
        query = self._record_queries.get(sn or -1)
        if query is None or query.future.done():
            return
        sum_text = manscdp.child_text(root, "SumNum") or "0"
        query.sum_num = int(sum_text) if sum_text.isdigit() else 0
        records = manscdp.child(root, "RecordList")
        tz = self.settings.tz
        for item in list(records)[:manscdp.MAX_ITEMS_PER_MESSAGE] if records is not None else []:
            start = parse_time_text(manscdp.child_text(item, "StartTime") or "", tz)
            end = parse_time_text(manscdp.child_text(item, "EndTime") or "", tz)
            if start is not None and end is not None and end > start:
                query.items.append((start, end))
        if len(query.items) >= query.sum_num:
            query.future.set_result(sorted(query.items))

    async def _play(self, conn: StreamOwner, req: dict[str, Any]) -> None:
        session = str(req.get("id", ""))

        def fail(reason: str, detail: str) -> None:
            conn.send({"id": session, "ok": False, "reason": reason, "detail": detail})

        device_id, channel_id = str(req.get("device", "")), str(req.get("channel", ""))
        transport = str(req.get("transport", "udp"))
        purpose = str(req.get("purpose", "Play"))
        try:
            port = int(req.get("port", 0))
            start_s, end_s = int(req.get("start_s", 0) or 0), int(req.get("end_s", 0) or 0)
            stream_number = int(req.get("stream_number", 0) or 0)
        except (TypeError, ValueError):
            port = start_s = end_s = stream_number = 0
            purpose = "bad"  # refused below with bad_request
        if transport not in ("udp", "tcp-passive", "tcp-active") or purpose not in ("Play", "Playback", "Download") \
                or (transport != "tcp-active" and not 0 < port < 65536):
            fail("bad_request", f"bad play request {req!r}")
            return
        link = self.links.get(device_id)
        if link is None:
            fail("unregistered", f"device {device_id} is not registered")
            return
        self._ssrc_serial = (self._ssrc_serial + 1) % 10000
        ssrc = sdp.ssrc_for(self.cfg.domain, self._ssrc_serial, history=purpose != "Play")
        media_host = self.cfg.media_host or self._local_host_for(link.host)
        body = sdp.offer(device_id=self.cfg.server_id, media_host=media_host, media_port=port or 9,
                         transport=transport, ssrc=ssrc, purpose=purpose,  # type: ignore[arg-type]
                         channel_id=channel_id, start_s=start_s, end_s=end_s, stream_number=stream_number)
        from_tag = new_tag()
        msg = self._request(link, "INVITE", channel_id, from_tag=from_tag, body=body, content_type="APPLICATION/SDP",
                            extra=[("Subject", f"{channel_id}:{ssrc},{self.cfg.server_id}:0")])
        dialog = Dialog(msg.call_id, device_id, channel_id, from_tag, conn, session, purpose, ssrc, msg.uri or "")
        self.dialogs[dialog.call_id] = dialog
        conn.calls.add(dialog.call_id)
        self.stats["invites"] += 1
        answer = await self._transaction(link, msg, timeout=self.cfg.invite_timeout_seconds)
        if dialog.ended:  # the worker went away meanwhile (its BYE goes out below if the device answered)
            if answer is None:
                self._abandon(dialog.call_id, device_id)  # an answer after the timeout still gets ACK and BYE
            elif answer.status and 200 <= answer.status < 300:
                late_ack, late_bye = self._ack_and_bye_for(link, answer)
                self._send_link(link, late_ack)
                self._send_link(link, late_bye)
            return
        if answer is None:
            self._forget(dialog)
            self._abandon(dialog.call_id, device_id)
            fail("invite_timeout", f"device {device_id} did not answer the INVITE for channel {channel_id} within "
                                   f"{self.cfg.invite_timeout_seconds:g} s")
            return
        status = answer.status or 0
        if status >= 300:
            self._forget(dialog)
            ack = self._request(link, "ACK", channel_id, call_id=dialog.call_id, from_tag=from_tag,
                                to=answer.header("To"), cseq=1, uri=msg.uri)
            ack.set_header("Via", msg.header("Via") or "")  # the ACK of a failure is in its transaction
            self._send_link(link, ack.encode())
            fail("invite_refused", f"device {device_id} refused the stream of channel {channel_id}: "
                                   f"{status} {answer.reason}")
            return
        dialog.to_tag = answer.to.tag
        contact = answer.header("Contact")
        try:
            dialog.remote_target = str(parse_uri(contact.split(";")[0].strip())) if contact else msg.uri
        except SipError:
            dialog.remote_target = msg.uri
        ack = self._request(link, "ACK", channel_id, call_id=dialog.call_id, from_tag=from_tag,
                            to=answer.header("To"), cseq=1, uri=dialog.remote_target)
        dialog.ack = ack.encode()
        dialog.confirmed = True
        self._send_link(link, dialog.ack)
        try:
            desc = sdp.parse(answer.body)
        except sdp.SdpError as exc:
            self._end_dialog(dialog, "bad_stream", f"the device's answer cannot be used: {exc}", send_bye=True)
            fail("bad_stream", f"device {device_id} answered with an unusable SDP: {exc}")
            return
        try:
            answered_ssrc = int(desc.ssrc) if desc.ssrc and desc.ssrc.isdigit() else None
        except ValueError:
            answered_ssrc = None
        conn.send({"id": session, "ok": True, "call": dialog.call_id, "ssrc": int(ssrc),
                   "answered_ssrc": answered_ssrc, "host": desc.host or link.host, "port": desc.port,
                   "tcp": desc.tcp, "setup": desc.setup})

    def _abandon(self, call_id: str, device_id: str) -> None:
        self._abandoned[call_id] = device_id
        while len(self._abandoned) > 1000:
            self._abandoned.popitem(last=False)

    def _forget(self, dialog: Dialog) -> None:
        dialog.ended = True
        self.dialogs.pop(dialog.call_id, None)
        if dialog.owner is not None:
            dialog.owner.calls.discard(dialog.call_id)

    def _end_dialog(self, dialog: Dialog, reason: str, detail: str, send_bye: bool,
                    link: DeviceLink | None = None) -> None:
        if dialog.ended:
            return
        self._forget(dialog)
        if dialog.owner is not None and reason != "ingest_stopped":
            dialog.owner.send({"event": "ended", "id": dialog.session, "call": dialog.call_id, "reason": reason,
                               "detail": detail})
        link = link or self.links.get(dialog.device_id)
        if send_bye and dialog.confirmed and link is not None:
            dialog.cseq += 1
            bye = self._request(link, "BYE", dialog.channel_id, call_id=dialog.call_id, from_tag=dialog.from_tag,
                                to=f"<sip:{dialog.channel_id}@{self.cfg.domain}>;tag={dialog.to_tag or ''}",
                                cseq=dialog.cseq, uri=dialog.remote_target or dialog.uri)
            self._spawn(self._transaction(link, bye, timeout=4.0))

    def _device_gone(self, device_id: str, reason: str, detail: str, link: DeviceLink | None = None) -> None:
        """End the device's streams. With its last link (keepalives lost), each is hung up too, best
        effort: a device that only lost its keepalives' way may still be streaming to a port that a new
        stream will use (its packets would be dropped there by SSRC, but they cost the device's uplink)."""
        for dialog in list(self.dialogs.values()):
            if dialog.device_id == device_id:
                self._end_dialog(dialog, reason, detail, send_bye=link is not None, link=link)

    # -- periodic ----------------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._tick()
                if time.monotonic() - last_flush >= FLUSH_SEEN_S:
                    last_flush = time.monotonic()
                    await self._flush_seen()
            except Exception:  # noqa: BLE001 - the round must go on
                log.exception("gb28181: periodic round failed")

    async def _tick(self) -> None:
        mono = time.monotonic()
        now_ms = self.clock.now_ms()
        limit = self.cfg.keepalive_interval_seconds * self.cfg.keepalive_missed
        for device_id, link in list(self.links.items()):
            if mono >= link.expires_mono:
                why, reason = "its registration expired", "unregistered"
            elif mono - link.last_keepalive_mono > limit:
                why, reason = (f"no keepalive for {mono - link.last_keepalive_mono:.0f} s "
                               f"({self.cfg.keepalive_missed} missed)"), "keepalive_lost"
            else:
                continue
            del self.links[device_id]
            log.warning("gb28181: device %s offline: %s", device_id, why)
            self._device_gone(device_id, reason, f"device {device_id} offline: {why}", link=link)
            await self._db(registry.note_offline, device_id, why, now_ms)
        for key, collector in list(self._catalogs.items()):
            if mono - collector.started_mono > CATALOG_WAIT_S:
                del self._catalogs[key]
                log.warning("gb28181: device %s's catalog stopped at %d of %d channels; kept what came", key[0],
                            len(collector.items), collector.sum_num)
                await self._db(registry.store_catalog, key[0], list(collector.items.values()), now_ms, False)
        while self._answers:
            expiry, _ = next(iter(self._answers.values()))
            if expiry > mono:
                break
            self._answers.popitem(last=False)

    async def _flush_seen(self) -> None:
        dirty = {}
        for link in self.links.values():
            if link.dirty:
                link.dirty = False
                dirty[link.device_id] = (link.host, link.port, link.seen_ms, link.keepalive_ms)
        if dirty:
            await self._db(registry.note_seen, dirty)

    # -- views -------------------------------------------------------------------------------------

    def online(self, device_id: str) -> bool:
        return device_id in self.links
