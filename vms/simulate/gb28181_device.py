"""Simulated GB/T 28181 cameras: they register outward over SIP to a platform, keep alive, answer its
queries and push MPEG-PS over RTP when it INVITEs them (docs/simulator.md, "GB/T 28181 devices").

Every device has its own SIP socket (its own source port, as separate cameras behind one NAT would) and
speaks the protocol as WVP's devices do (/work/shared/context A): REGISTER with From/To = its ID @ the
domain and an MD5 digest answer to the 401 (qop=auth, nc counting up, the challenge reused for refreshes),
refreshed before expiry, retried every 10 s after a refusal; a Keepalive MESSAGE every keepalive_seconds;
200 to every MESSAGE, then the answer to a Catalog, DeviceInfo, DeviceStatus or RecordInfo query as
separate MESSAGEs, paged (a catalog at most 2 items a message, with SumNum), in GB18030 declared GB2312;
100 + 200 with an SDP to an INVITE, media after the ACK, 200 to BYE (481 to an unknown dialog), MANSRTSP
INFO (PLAY/PAUSE/Scale/Range) for playback, MediaStatus 121 at the end of a playback or download.

All devices share one asyncio loop in a daemon thread; `status()`, `fault()` and `close()` may be called
from any other thread. Nothing the platform sends crashes a device: a message that does not parse is
logged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from xml.etree.ElementTree import Element
from zoneinfo import ZoneInfo

from vms.core.errors import VmsError
from vms.gb28181 import manscdp, sip
from vms.gb28181.digest import authorization
from vms.gb28181.manscdp import ManscdpError, child_text, xml_escape
from vms.gb28181.sdp import SdpError
from vms.gb28181.sdp import parse as parse_sdp
from vms.gb28181.sip import SipError, SipMessage
from vms.simulate.gb28181_media import Clip, MediaSender, MediaTarget, load_clip

log = logging.getLogger("vms.simulate.gb28181")
T = TypeVar("T")

MANUFACTURER = "vms-sim"
MODEL = "vms-sim-ipc"
FIRMWARE = "1.0.0"
USER_AGENT = "vms-sim GB28181 device"
REGISTER_RETRY_S = 10.0  # after a refusal or no answer: GB asks >= 60 s; 10 keeps tests short
REQUEST_TIMEOUT_S = 8.0  # a request of ours without a final answer is given up after this
T1, T2 = 0.5, 4.0  # UDP retransmission: 0.5, 1, 2, 4, 4 ... s (RFC 3261 timer E)
KEEPALIVE_MISSES = 3  # unanswered keepalives in a row: the platform is gone, register again
ACK_TIMEOUT_S = 32.0
CATALOG_PAGE_ITEMS = 2  # as real NVRs page their answers (the platform must gather to SumNum)
RECORD_PAGE_ITEMS = 8
RECORD_FILE_S = 3600  # the simulated card's files are at most an hour
MAX_RECORD_ITEMS = 1000
DEFAULT_DOWNLOAD_SPEED = 4
MAX_ANSWERED = 256
SDP_TYPE = "APPLICATION/SDP"
MANSCDP_TYPE = "Application/MANSCDP+xml"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

FAULT_ACTIONS = {
    "stop-keepalive": "no more Keepalive MESSAGEs (registration and media go on)",
    "resume-keepalive": "Keepalive MESSAGEs again",
    "drop-media": "sessions stay up, no RTP is sent",
    "resume-media": "RTP again, from the next keyframe",
    "rebind": "NAT rebinding: SIP and media sockets move to new source ports",
    "bye": "the device sends BYE on its sessions and stops them",
    "wrong-ssrc": "new sessions use another SSRC than the offer's y= (value 'hidden': the answer still says "
                  "the offer's y=)",
    "right-ssrc": "new sessions use the offer's y= again",
    "unregister": "REGISTER with Expires: 0; no keepalives until register/online",
    "register": "register again after unregister",
    "offline": "silent: no keepalive, no answers, media stopped",
    "online": "registers again, as a rebooted device",
    "garbage": "a few malformed SIP messages and garbage RTP to the platform",
    "password": "the password the device registers with from now on (value: the password)",
}

_DIGITS20 = re.compile(r"^\d{20}$")
_DOWNLOAD_SPEED = re.compile(r"^a=downloadspeed:\s*(\d+(?:\.\d+)?)\s*$", re.MULTILINE | re.IGNORECASE)


class GbSimulatorError(VmsError):
    """The GB28181 simulator could not start, or a fault command failed."""


@dataclass
class GbDeviceSpec:
    device_id: str  # 20 digits
    channels: list[tuple[str, str]]  # (channel ID, name)
    password: str
    clip: Path  # raw Annex-B .h264 / .h265, looped
    codec: str = "h264"  # "h264" | "hevc"
    fps: int = 15
    audio: str | None = None  # "pcma" | "pcmu" | None
    card_gaps: list[tuple[int, int]] = field(default_factory=list)  # (start_s, end_s) the SD card lacks
    name: str = ""  # DeviceName of DeviceInfo; default "vms-sim <device_id>"

    def check(self) -> None:
        problems = []
        if not _DIGITS20.match(self.device_id):
            problems.append(f"device ID must be 20 digits, got {self.device_id!r}")
        if not self.channels:
            problems.append(f"device {self.device_id} has no channels")
        for channel_id, _name in self.channels:
            if not _DIGITS20.match(channel_id):
                problems.append(f"channel ID must be 20 digits, got {channel_id!r}")
        ids = [c for c, _ in self.channels]
        if len(set(ids)) != len(ids):
            problems.append(f"device {self.device_id} repeats a channel ID")
        if self.codec not in ("h264", "hevc"):
            problems.append(f"codec must be h264 or hevc, got {self.codec!r}")
        if not 1 <= int(self.fps) <= 60:
            problems.append(f"fps must be from 1 to 60, got {self.fps}")
        if self.audio not in (None, "pcma", "pcmu"):
            problems.append(f"audio must be pcma, pcmu or None (GB devices send G.711), got {self.audio!r}")
        if not self.password or any(c.isspace() or c in '"\\' for c in self.password):
            problems.append("the password must be non-empty, without spaces, quotes or backslashes")
        for a, b in self.card_gaps:
            if b <= a:
                problems.append(f"card gap ({a}, {b}) ends before it starts")
        if problems:
            raise ValueError("; ".join(problems))


def gb_ids(domain: str, n: int) -> tuple[str, str]:
    """The n-th simulated device's ID and its (first) channel's: <domain[:8]>00132<n> and ...00131<n>."""
    if not re.match(r"^\d{10}$", domain):
        raise ValueError(f"the SIP domain must be 10 digits, got {domain!r}")
    if not 0 <= n < 10_000_000:
        raise ValueError(f"device number {n} out of range")
    return f"{domain[:8]}00132{n:07d}", f"{domain[:8]}00131{n:07d}"


# Rare characters on purpose ("萳" is outside GB2312, inside GBK/GB18030): platforms garble them.
DEFAULT_CHANNEL_NAMES = ("萳村服务站", "龍山镇服务点", "㵘湖村电商站", "东关村服务站")


def default_channel_name(n: int) -> str:
    base = DEFAULT_CHANNEL_NAMES[(n - 1) % len(DEFAULT_CHANNEL_NAMES)]
    return base if n <= len(DEFAULT_CHANNEL_NAMES) else f"{base}{n}"


# -- one session (an INVITE dialog) --------------------------------------------------------------------------

@dataclass
class _Session:
    call_id: str
    channel_id: str
    purpose: str
    transport: str
    ssrc: int
    invite: SipMessage
    local_tag: str
    sip_addr: tuple[str, int] | None
    sender: MediaSender
    answer: bytes = b""
    state: str = "wait-ack"
    cseq: int = 0
    task: asyncio.Task | None = None
    started: float = field(default_factory=time.time)

    def info(self) -> dict:
        s = self.sender.stats
        return {"call_id": self.call_id, "channel_id": self.channel_id, "purpose": self.purpose,
                "transport": self.transport, "ssrc": self.ssrc, "state": self.state, "packets": s.packets,
                "bytes": s.bytes, "frames": s.frames, "audio_frames": s.audio_frames, "local_port": s.local_port,
                "remote": s.remote, "reconnects": s.reconnects}


class _UdpSip(asyncio.DatagramProtocol):
    def __init__(self, device: _Device) -> None:
        self.device = device

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.device.on_data(data, (addr[0], addr[1]), datagram=True)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: the platform is down
        log.debug("%s: SIP socket: %s", self.device.id, exc)


# -- one device ---------------------------------------------------------------------------------------------

class _Device:
    def __init__(self, sim: GbSimulator, spec: GbDeviceSpec, clip: Clip) -> None:
        self.sim = sim
        self.spec = spec
        self.clip = clip
        self.id = spec.device_id
        self.password = spec.password
        self.channels = dict(spec.channels)
        self.aor = f"sip:{self.id}@{sim.domain}"
        self.registrar_uri = f"sip:{sim.server_id}@{sim.domain}"
        # state
        self.registered = False
        self.last_register_status: int | str | None = None
        self.register_requests = 0
        self.registrations = 0
        self.keepalives_sent = 0
        self.keepalives_answered = 0
        self.first_try = asyncio.Event()
        self.sessions: dict[str, _Session] = {}
        # faults
        self.keepalive_stopped = False
        self.media_dropped = False
        self.wrong_ssrc: str | None = None
        self.offline = False
        self.unregistered = False
        # SIP
        self.sip_port = 0  # the source port the platform sees
        # The port the device writes in Via and Contact. Over UDP it stays the first one: a NAT rebinding
        # changes the source port the platform sees, not what the device believes its address is, so the
        # platform must answer to where requests come from (rport), as WVP does. Over TCP each
        # connection has its own port.
        self.own_port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_writer: asyncio.StreamWriter | None = None
        self._reg_call_id = sip.new_call_id(sim.host)
        self._reg_tag = sip.new_tag()
        self._reg_cseq = 0
        self._cseq = random.randint(1, 1000)
        self._sn = random.randint(1, 1000)
        self._challenge: str | None = None
        self._nc = 0
        self._keepalive_misses = 0
        self._pending: dict[tuple[str, int, str], asyncio.Future[SipMessage]] = {}
        self._answered: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self._reg_task: asyncio.Task | None = None
        self._next_try = 0.0  # monotonic time before which no new registration is tried
        self._closed = False

    @property
    def udp(self) -> bool:
        return self.sim.sip_transport == "udp"

    # -- life cycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.udp:
            await self._open_udp()
        self._restart_registration()
        self._spawn(self._keepalive_loop(), "keepalive")

    async def stop(self) -> None:
        self._closed = True
        for session in list(self.sessions.values()):
            self._end_session(session)
        tasks = [t for t in self._tasks if not t.done()]
        for _ in range(3):  # a task may absorb a cancellation (library code): ask again
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=1.0) if tasks else (set(), set())
            tasks = list(pending)
            if not tasks:
                break
        else:
            log.warning("%s: %d task(s) would not stop", self.id, len(tasks))
        if self._udp is not None:
            self._udp.close()
        self._close_tcp()

    def _spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._guard(coro, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a device's task failing must not take the others down
            log.exception("%s: %s failed", self.id, what)

    # -- the SIP transport ----------------------------------------------------------------------------------
    async def _open_udp(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpSip(self), local_addr=(self.sim.host, 0))
        old, self._udp = self._udp, transport
        self.sip_port = transport.get_extra_info("sockname")[1]
        self.own_port = self.own_port or self.sip_port
        if old is not None:
            old.close()

    async def _tcp_connect(self) -> bool:
        self._close_tcp()
        host, port = self.sim.server
        try:
            async with asyncio.timeout(5.0):  # not wait_for: in 3.11 it can swallow a cancellation
                reader, writer = await asyncio.open_connection(host, port, local_addr=(self.sim.host, 0))
        except (TimeoutError, OSError) as exc:
            log.info("%s: cannot connect to the platform %s:%s over TCP: %s", self.id, host, port, exc)
            return False
        self._tcp_writer = writer
        self.sip_port = self.own_port = writer.get_extra_info("sockname")[1]
        self._spawn(self._tcp_read(reader, writer), "SIP over TCP")
        return True

    def _close_tcp(self) -> None:
        writer, self._tcp_writer = self._tcp_writer, None
        if writer is not None:
            writer.close()

    async def _tcp_read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        splitter = sip.StreamSplitter()
        peer = writer.get_extra_info("peername")
        addr = (peer[0], peer[1]) if peer else self.sim.server
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    messages = splitter.feed(data)
                except SipError as exc:
                    log.warning("%s: SIP stream from the platform broken (%s): dropped what was buffered",
                                self.id, exc)
                    splitter = sip.StreamSplitter()
                    continue
                for raw in messages:
                    self.on_data(raw, addr, datagram=False)
        except OSError as exc:
            log.info("%s: SIP connection: %s", self.id, exc)
        finally:
            writer.close()
        if self._tcp_writer is writer and not self._closed:  # lost, not closed by us
            self._tcp_writer = None
            self.registered = False
            log.info("%s: the platform closed the SIP connection; registering again", self.id)
            if not self.offline and not self.unregistered:
                await asyncio.sleep(1.0)  # reconnect at least 1 s apart (GB 2022 Annex D)
                if self._tcp_writer is None and not self.offline:
                    self._restart_registration()

    def send_raw(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        if self.offline or self._closed:
            return
        if self.udp:
            if self._udp is not None:
                self._udp.sendto(data, addr or self.sim.server)
        elif self._tcp_writer is not None and not self._tcp_writer.is_closing():
            self._tcp_writer.write(data)

    async def transact(self, msg: SipMessage, addr: tuple[str, int] | None = None) -> SipMessage | None:
        """Send a request; its final response, or None when none came within REQUEST_TIMEOUT_S."""
        loop = asyncio.get_running_loop()
        number, method = msg.cseq
        key = (msg.call_id, number, method)
        future: asyncio.Future[SipMessage] = loop.create_future()
        self._pending[key] = future
        data = msg.encode()
        deadline = loop.time() + REQUEST_TIMEOUT_S
        interval = T1
        try:
            self.send_raw(data, addr)
            while True:
                wait = min(interval, deadline - loop.time()) if self.udp else deadline - loop.time()
                if wait <= 0:
                    return None
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result and drops
                    # a cancellation that comes as the answer does (close() then hung for 10 s)
                    async with asyncio.timeout(wait):
                        return await asyncio.shield(future)
                except TimeoutError:
                    if self.udp:
                        self.send_raw(data, addr)  # from the current socket: after a rebind, the new one
                        interval = min(interval * 2, T2)
        finally:
            self._pending.pop(key, None)
            if not future.done():
                future.cancel()

    def _request(self, method: str, uri: str, to: str, *, call_id: str | None = None, cseq: int | None = None,
                 from_tag: str | None = None, body: bytes = b"", content_type: str | None = None,
                 extra: list[tuple[str, str]] | None = None, from_: str | None = None) -> SipMessage:
        if cseq is None:
            self._cseq += 1
            cseq = self._cseq
        return sip.request(
            method, uri, via_host=self.sim.host, via_port=self.own_port, transport=self.sim.sip_transport,
            from_=from_ or f"<{self.aor}>;tag={from_tag or sip.new_tag()}", to=to,
            call_id=call_id or sip.new_call_id(self.sim.host), cseq=cseq,
            contact=f"<sip:{self.id}@{self.sim.host}:{self.own_port}>", body=body, content_type=content_type,
            extra=extra, user_agent=USER_AGENT)

    async def send_manscdp(self, body: bytes) -> SipMessage | None:
        msg = self._request("MESSAGE", self.registrar_uri, f"<{self.registrar_uri}>", body=body,
                            content_type=MANSCDP_TYPE)
        return await self.transact(msg)

    def next_sn(self) -> int:
        self._sn += 1
        return self._sn

    # -- registration -----------------------------------------------------------------------------------------
    def _restart_registration(self) -> None:
        if self._reg_task is not None:
            self._reg_task.cancel()
        self._reg_task = self._spawn(self._register_loop(), "registration")

    def _stop_registration(self) -> None:
        if self._reg_task is not None:
            self._reg_task.cancel()
            self._reg_task = None

    async def _register_loop(self) -> None:
        # However the loop was restarted (a lost connection, unanswered keepalives), a refused or
        # unanswered registration is not tried again within REGISTER_RETRY_S.
        await asyncio.sleep(max(0.0, self._next_try - time.monotonic()))
        while True:
            status, granted = await self._register(self.sim.register_expires)
            self.first_try.set()
            if status == 200:
                # refresh before expiry: halfway for short registrations, a minute early for long ones
                await asyncio.sleep(max(1.0, granted - min(60.0, granted / 2)))
            else:
                self._next_try = time.monotonic() + REGISTER_RETRY_S
                await asyncio.sleep(REGISTER_RETRY_S)

    async def _register(self, expires: int) -> tuple[int | str, int]:
        """One registration (or unregistration, expires 0) with the digest dance; (status, granted s)."""
        if not self.udp and self._tcp_writer is None and not await self._tcp_connect():
            self.registered = False
            self.last_register_status = "connect-failed"
            return "connect-failed", 0
        response: SipMessage | None = None
        for _attempt in range(3):
            auth_header: list[tuple[str, str]] = []
            if self._challenge:
                self._nc += 1
                auth_header = [("Authorization", authorization(self._challenge, "REGISTER", self.registrar_uri,
                                                               self.id, self.password, self._nc))]
            self._reg_cseq += 1
            msg = self._request("REGISTER", self.registrar_uri, f"<{self.aor}>", call_id=self._reg_call_id,
                                cseq=self._reg_cseq, from_tag=self._reg_tag,
                                extra=[("Expires", str(expires)), *auth_header])
            self.register_requests += 1
            response = await self.transact(msg)
            if response is None or response.status != 401:
                break
            challenge = response.header("WWW-Authenticate")
            if not challenge:
                break
            self._challenge, self._nc = challenge, 0
        if response is None:
            self.registered = False
            self.last_register_status = "timeout"
            log.info("%s: REGISTER unanswered", self.id)
            return "timeout", 0
        status = response.status or 0
        self.last_register_status = status
        if status != 200:
            self.registered = False
            self._challenge = None
            log.info("%s: REGISTER refused: %s %s", self.id, status, response.reason)
            return status, 0
        if expires == 0:
            self.registered = False
            return status, 0
        self.registered = True
        self.registrations += 1
        self._keepalive_misses = 0
        return status, _granted(response, expires)

    # -- keepalive ------------------------------------------------------------------------------------------------
    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sim.keepalive_seconds)
            if self.registered and not self.keepalive_stopped and not self.offline:
                await self.keepalive()

    async def keepalive(self) -> None:
        body = manscdp.build("Notify", "Keepalive", self.next_sn(), self.id, [("Status", "OK")])
        self.keepalives_sent += 1
        response = await self.send_manscdp(body)
        if self.offline or not self.registered:
            return
        if response is None:
            self._keepalive_misses += 1
            if self._keepalive_misses >= KEEPALIVE_MISSES:
                log.info("%s: %d keepalives unanswered: registering again", self.id, self._keepalive_misses)
                self.registered = False
                self._restart_registration()
        elif 200 <= (response.status or 0) < 300:
            self._keepalive_misses = 0
            self.keepalives_answered += 1
        else:  # the platform does not know us (it restarted): register again
            log.info("%s: keepalive answered %s: registering again", self.id, response.status)
            self.registered = False
            self._restart_registration()

    # -- incoming ------------------------------------------------------------------------------------------------
    def on_data(self, data: bytes, addr: tuple[str, int], datagram: bool) -> None:
        if self.offline or self._closed:
            return
        try:
            msg = sip.parse_message(data, datagram=datagram)
        except SipError as exc:
            log.warning("%s: unparsable SIP from %s:%s dropped: %s", self.id, addr[0], addr[1], exc)
            return
        try:
            if msg.is_request:
                self._on_request(msg, addr)
            else:
                self._on_response(msg)
        except (SipError, ValueError) as exc:
            log.warning("%s: bad %s from %s:%s dropped: %s", self.id, msg.describe(), addr[0], addr[1], exc)
        except Exception:  # noqa: BLE001 - never crash on what the platform sends
            log.exception("%s: handling %s failed", self.id, msg.describe())

    def _on_response(self, msg: SipMessage) -> None:
        number, method = msg.cseq
        future = self._pending.get((msg.call_id, number, method))
        if future is not None and not future.done() and (msg.status or 0) >= 200:
            future.set_result(msg)

    def _on_request(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        number, method = msg.cseq
        key = (msg.call_id, number, method)
        if method != "ACK" and key in self._answered:  # a retransmission: the same answer again
            self.send_raw(self._answered[key], addr)
            return
        handler = {"MESSAGE": self._on_message, "INVITE": self._on_invite, "ACK": self._on_ack,
                   "BYE": self._on_bye, "INFO": self._on_info, "CANCEL": self._on_cancel,
                   "OPTIONS": self._on_options}.get(msg.method or "")
        if handler is None:
            self.respond(msg, addr, 405, extra=[("Allow", "INVITE, ACK, BYE, CANCEL, INFO, MESSAGE, OPTIONS")])
            return
        handler(msg, addr)

    def respond(self, request: SipMessage, addr: tuple[str, int], status: int, reason: str | None = None, *,
                to_tag: str | None = None, body: bytes = b"", content_type: str | None = None,
                extra: list[tuple[str, str]] | None = None, contact: bool = False) -> bytes:
        resp = sip.response_to(request, status, reason, to_tag=to_tag)
        if contact:
            resp.add_header("Contact", f"<sip:{self.id}@{self.sim.host}:{self.own_port}>")
        for name, value in extra or []:
            resp.add_header(name, value)
        resp.add_header("User-Agent", USER_AGENT)
        if content_type:
            resp.add_header("Content-Type", content_type)
        resp.body = body
        data = resp.encode()
        if request.method != "ACK":
            number, method = request.cseq
            self._answered[(request.call_id, number, method)] = data
            while len(self._answered) > MAX_ANSWERED:
                self._answered.popitem(last=False)
        self.send_raw(data, addr)
        return data

    def _on_options(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        self.respond(msg, addr, 200, extra=[("Allow", "INVITE, ACK, BYE, CANCEL, INFO, MESSAGE, OPTIONS")])

    def _on_cancel(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        # INVITEs are answered at once, so there is never one left to cancel
        self.respond(msg, addr, 481 if msg.call_id not in self.sessions else 200)

    # -- MESSAGE: queries ----------------------------------------------------------------------------------------
    def _on_message(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        try:
            root = manscdp.parse_body(msg.body)
        except ManscdpError as exc:
            log.warning("%s: MESSAGE body dropped: %s", self.id, exc)
            self.respond(msg, addr, 400)
            return
        kind, cmd, target, sn = manscdp.command(root)
        self.respond(msg, addr, 200)
        if kind.lower() != "query":
            return  # Control (PTZ, TeleBoot), Notify: acknowledged, not acted on
        sn = sn if sn is not None else 0
        if cmd == "Catalog":
            self._spawn(self._answer_catalog(sn), "Catalog answer")
        elif cmd == "DeviceInfo":
            self._spawn(self._answer_device_info(sn), "DeviceInfo answer")
        elif cmd == "DeviceStatus":
            self._spawn(self._answer_device_status(sn), "DeviceStatus answer")
        elif cmd == "RecordInfo":
            self._spawn(self._answer_record_info(root, target, sn), "RecordInfo answer")
        else:
            log.info("%s: query %s not simulated", self.id, cmd)

    async def _answer_catalog(self, sn: int) -> None:
        items = list(self.channels.items())
        civil = self.sim.domain[:6]
        pages = [items[i:i + CATALOG_PAGE_ITEMS] for i in range(0, len(items), CATALOG_PAGE_ITEMS)] or [[]]
        for page in pages:
            xml = [f'<DeviceList Num="{len(page)}">\r\n']
            for channel_id, name in page:
                fields = [("DeviceID", channel_id), ("Name", name), ("Manufacturer", MANUFACTURER),
                          ("Model", MODEL), ("Owner", "Owner"), ("CivilCode", civil),
                          ("Address", "simulated"), ("Parental", "0"), ("ParentID", self.id),
                          ("SafetyWay", "0"), ("RegisterWay", "1"), ("Secrecy", "0"), ("Status", "ON")]
                xml.append("<Item>\r\n" + _fields(fields) + "</Item>\r\n")
            xml.append("</DeviceList>\r\n")
            body = manscdp.build("Response", "Catalog", sn, self.id, [("SumNum", str(len(items)))],
                                 inner="".join(xml))
            if self.offline:
                return
            await self.send_manscdp(body)

    async def _answer_device_info(self, sn: int) -> None:
        body = manscdp.build("Response", "DeviceInfo", sn, self.id, [
            ("DeviceName", self.spec.name or f"{MANUFACTURER} {self.id}"), ("Result", "OK"),
            ("Manufacturer", MANUFACTURER), ("Model", MODEL), ("Firmware", FIRMWARE),
            ("Channel", str(len(self.channels)))])
        await self.send_manscdp(body)

    async def _answer_device_status(self, sn: int) -> None:
        now = datetime.now(self.sim.tz).strftime(TIME_FORMAT)
        body = manscdp.build("Response", "DeviceStatus", sn, self.id, [
            ("Result", "OK"), ("Online", "ONLINE"), ("Status", "OK"), ("Encode", "ON"), ("Record", "ON"),
            ("DeviceTime", now)], inner='<Alarmstatus Num="0">\r\n</Alarmstatus>\r\n')
        await self.send_manscdp(body)

    def card_pieces(self, start_s: float, end_s: float) -> list[tuple[float, float]]:
        """What the simulated SD card holds of [start_s, end_s): everything up to now, minus the gaps."""
        pieces = [(float(start_s), min(float(end_s), time.time()))]
        for gap_a, gap_b in sorted(self.spec.card_gaps):
            out = []
            for a, b in pieces:
                if gap_b <= a or gap_a >= b:
                    out.append((a, b))
                    continue
                if a < gap_a:
                    out.append((a, float(gap_a)))
                if gap_b < b:
                    out.append((float(gap_b), b))
            pieces = out
        return [(a, b) for a, b in pieces if b - a >= 1.0]

    async def _answer_record_info(self, root: Element, channel_id: str, sn: int) -> None:
        name = self.channels.get(channel_id)
        items: list[tuple[float, float]] = []
        start_text, end_text = child_text(root, "StartTime") or "", child_text(root, "EndTime") or ""
        start_s, end_s = self.sim.parse_time(start_text), self.sim.parse_time(end_text)
        if name is None:
            log.info("%s: RecordInfo for unknown channel %s", self.id, channel_id)
        elif start_s is None or end_s is None:
            log.info("%s: RecordInfo with unreadable times %r..%r", self.id, start_text, end_text)
        else:
            for a, b in self.card_pieces(start_s, end_s):
                while a < b and len(items) < MAX_RECORD_ITEMS:
                    cut = min(b, (a // RECORD_FILE_S + 1) * RECORD_FILE_S)
                    items.append((a, cut))
                    a = cut
        pages = [items[i:i + RECORD_PAGE_ITEMS] for i in range(0, len(items), RECORD_PAGE_ITEMS)] or [[]]
        for page in pages:
            xml = [f'<RecordList Num="{len(page)}">\r\n']
            for a, b in page:
                fields = [("DeviceID", channel_id), ("Name", name or ""),
                          ("FilePath", f"/sdcard/{channel_id}/{int(a)}.ps"), ("Address", "simulated"),
                          ("StartTime", self.sim.format_time(a)), ("EndTime", self.sim.format_time(b)),
                          ("Secrecy", "0"), ("Type", "time"), ("RecorderID", self.id),
                          ("FileSize", str(int((b - a) * 64_000)))]
                xml.append("<Item>\r\n" + _fields(fields) + "</Item>\r\n")
            xml.append("</RecordList>\r\n")
            body = manscdp.build("Response", "RecordInfo", sn, channel_id,
                                 [("Name", name or ""), ("SumNum", str(len(items)))], inner="".join(xml))
            if self.offline:
                return
            await self.send_manscdp(body)

    # -- INVITE dialogs -----------------------------------------------------------------------------------------
    def _on_invite(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        existing = self.sessions.get(msg.call_id)
        if existing is not None:  # a re-INVITE: the same answer
            self.respond(msg, addr, 200, to_tag=existing.local_tag, body=existing.answer, content_type=SDP_TYPE,
                         contact=True)
            return
        channel_id = sip.parse_uri(msg.uri or "").user or ""
        if channel_id not in self.channels:
            self.respond(msg, addr, 404)
            return
        try:
            offer = parse_sdp(msg.body)
        except (SdpError, ValueError) as exc:
            log.warning("%s: INVITE with a bad SDP: %s", self.id, exc)
            self.respond(msg, addr, 488)
            return
        purpose = {"play": "Play", "playback": "Playback", "download": "Download"}.get(offer.purpose.lower())
        ps_offered = not offer.rtpmap or any(v.upper().startswith("PS/") for v in offer.rtpmap.values())
        if purpose is None or offer.proto.upper() not in ("RTP/AVP", "TCP/RTP/AVP") or not ps_offered:
            self.respond(msg, addr, 488, f"Not Acceptable Here ({offer.purpose or '?'} {offer.proto})")
            return
        if offer.tcp:
            transport = "tcp-active" if offer.setup == "active" else "tcp-passive"
        else:
            transport = "udp"
        pieces: list[tuple[float, float]] | None = None
        speed = 1.0
        if purpose != "Play":
            if offer.end_s <= offer.start_s:
                self.respond(msg, addr, 488, "Not Acceptable Here (t= range)")
                return
            pieces = self.card_pieces(offer.start_s, offer.end_s)
            if not pieces:
                self.respond(msg, addr, 404, "No Recording")
                return
            if purpose == "Download":
                m = _DOWNLOAD_SPEED.search(msg.body.decode("utf-8", "replace"))
                speed = float(m.group(1)) if m and 0 < float(m.group(1)) <= 64 else DEFAULT_DOWNLOAD_SPEED
        offered = offer.ssrc if offer.ssrc and offer.ssrc.isdigit() and len(offer.ssrc) <= 10 else None
        if offered is None:  # no y=: the device picks its own (they do)
            offered = f"{0 if purpose == 'Play' else 1}{self.sim.domain[3:8]}{random.randint(0, 9999):04d}"
        used, answered = offered, offered
        if self.wrong_ssrc is not None:
            used = f"{(int(offered) + 1) % 10**10:010d}"
            answered = offered if self.wrong_ssrc == "hidden" else used
        ssrc = int(used) & 0xFFFFFFFF
        self.respond(msg, addr, 100)
        sender = MediaSender(self.sim.host, MediaTarget(transport, (offer.host, offer.port), ssrc), self.clip,
                             self.spec.fps, self.spec.audio, pieces, live=purpose == "Play", speed=speed,
                             time_origin=float(offer.start_s), dropped=lambda: self.media_dropped)
        session = _Session(msg.call_id, channel_id, purpose, transport, ssrc, msg, sip.new_tag(), addr, sender)
        self.sessions[msg.call_id] = session
        self._spawn(self._answer_invite(session, offer.start_s, offer.end_s, answered, addr), "INVITE answer")

    async def _answer_invite(self, session: _Session, start_s: int, end_s: int, y: str,
                             addr: tuple[str, int]) -> None:
        try:
            port = await session.sender.prepare()
        except OSError as exc:
            log.warning("%s: no media socket: %s", self.id, exc)
            self.sessions.pop(session.call_id, None)
            self.respond(session.invite, addr, 500)
            return
        host = self.sim.host
        proto = "TCP/RTP/AVP" if session.transport != "udp" else "RTP/AVP"
        lines = ["v=0", f"o={session.channel_id} 0 0 IN IP4 {host}", f"s={session.purpose}",
                 f"c=IN IP4 {host}", f"t={start_s} {end_s}" if session.purpose != "Play" else "t=0 0",
                 f"m=video {port} {proto} 96", "a=sendonly", "a=rtpmap:96 PS/90000"]
        if session.transport == "tcp-passive":
            lines += ["a=setup:active", "a=connection:new"]
        elif session.transport == "tcp-active":
            lines += ["a=setup:passive", "a=connection:new"]
        lines.append(f"y={y}")
        session.answer = ("\r\n".join(lines) + "\r\n").encode("ascii")
        if session.call_id not in self.sessions:  # a BYE or CANCEL came meanwhile
            session.sender.close()
            return
        data = self.respond(session.invite, addr, 200, to_tag=session.local_tag, body=session.answer,
                            content_type=SDP_TYPE, contact=True)
        # Over UDP the 200 is sent again until the ACK comes (RFC 3261 13.3.1.4)
        loop = asyncio.get_running_loop()
        deadline, interval = loop.time() + ACK_TIMEOUT_S, T1
        while session.state == "wait-ack" and loop.time() < deadline:
            await asyncio.sleep(interval)
            if session.state == "wait-ack" and self.udp:
                self.send_raw(data, addr)
                interval = min(interval * 2, T2)
        if session.state == "wait-ack":
            log.info("%s: no ACK for %s: session dropped", self.id, session.call_id)
            self._end_session(session)

    def _on_ack(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        session = self.sessions.get(msg.call_id)
        if session is None or session.state != "wait-ack":
            return
        session.state = "sending"
        session.task = self._spawn(self._run_media(session), f"media of {session.call_id}")

    async def _run_media(self, session: _Session) -> None:
        try:
            await session.sender.run()
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.info("%s: media of %s ended: %s", self.id, session.call_id, exc)
            session.state = "failed"
            await self.send_bye(session)
            return
        session.state = "finished"  # a playback's range is sent: tell the platform, wait for its BYE
        body = manscdp.build("Notify", "MediaStatus", self.next_sn(), session.channel_id, [("NotifyType", "121")])
        await self.send_manscdp(body)

    def _on_bye(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        session = self.sessions.get(msg.call_id)
        if session is None:
            self.respond(msg, addr, 481)
            return
        self.respond(msg, addr, 200)
        self._end_session(session)

    def _on_info(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        session = self.sessions.get(msg.call_id)
        if session is None:
            self.respond(msg, addr, 481)
            return
        text = msg.body.decode("utf-8", "replace")
        first = text.strip().split("\n", 1)[0].strip().upper() if text.strip() else ""
        scale: float | None = None
        seek: float | None = None
        for line in text.replace("\r\n", "\n").split("\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "scale":
                try:
                    scale = float(value.strip())
                except ValueError:
                    pass
            elif name.strip().lower() == "range":
                m = re.match(r"\s*npt\s*=\s*(\d+(?:\.\d+)?)\s*-", value)
                if m:
                    seek = float(m.group(1))
        if first.startswith("PAUSE"):
            session.sender.pause()
        elif first.startswith("PLAY"):
            session.sender.play(scale=scale, seek_s=seek)
        elif first.startswith("TEARDOWN"):
            self.respond(msg, addr, 200)
            self._end_session(session)
            return
        else:
            self.respond(msg, addr, 400)
            return
        self.respond(msg, addr, 200)

    def _end_session(self, session: _Session) -> None:
        self.sessions.pop(session.call_id, None)
        if session.state in ("wait-ack", "sending", "finished", "failed"):
            session.state = "ended"
        if session.task is not None and not session.task.done():
            session.task.cancel()
        session.sender.close()

    async def send_bye(self, session: _Session) -> SipMessage | None:
        """The device hangs up: BYE in the INVITE's dialog (From/To swapped, our tag on our side)."""
        self._end_session(session)
        invite = session.invite
        contact = invite.header("Contact")
        try:
            target = str(sip.parse_name_addr(contact).uri) if contact else str(invite.from_.uri)
        except SipError:
            target = str(invite.from_.uri)
        session.cseq += 1
        to_value = invite.header("To") or ""
        msg = self._request("BYE", target, invite.header("From") or "", call_id=session.call_id, cseq=session.cseq,
                            from_=f"{to_value};tag={session.local_tag}")
        return await self.transact(msg, session.sip_addr if self.udp else None)

    # -- faults ------------------------------------------------------------------------------------------------
    async def fault(self, action: str, value: str | None) -> str:
        if action == "stop-keepalive":
            self.keepalive_stopped = True
            return f"keepalives of {self.id} stopped"
        if action == "resume-keepalive":
            self.keepalive_stopped = False
            return f"keepalives of {self.id} resumed"
        if action == "drop-media":
            self.media_dropped = True
            return f"media of {self.id} dropped ({len(self.sessions)} session(s) stay up)"
        if action == "resume-media":
            self.media_dropped = False
            return f"media of {self.id} resumed"
        if action == "wrong-ssrc":
            if value not in (None, "", "answer", "hidden"):
                raise GbSimulatorError("wrong-ssrc takes no value, 'answer' or 'hidden'")
            self.wrong_ssrc = "hidden" if value == "hidden" else "answer"
            return f"new sessions of {self.id} use a wrong SSRC ({self.wrong_ssrc})"
        if action == "right-ssrc":
            self.wrong_ssrc = None
            return f"new sessions of {self.id} use the offered SSRC"
        if action == "password":
            if not value or any(c.isspace() or c in '"\\' for c in value):
                raise GbSimulatorError("password needs a value without spaces, quotes or backslashes")
            self.password, self._challenge, self._next_try = value, None, 0.0
            return f"password of {self.id} changed"
        if action == "garbage":
            return self._garbage()
        if action == "bye":
            sessions = list(self.sessions.values())
            for session in sessions:
                self._spawn(self.send_bye(session), "BYE")
            return f"BYE sent on {len(sessions)} session(s) of {self.id}"
        if action == "rebind":
            return await self._rebind()
        if action == "unregister":
            self._stop_registration()
            self.unregistered = True
            await self._register(0)
            self.registered = False
            return f"{self.id} unregistered ({self.last_register_status})"
        if action == "register":
            self.unregistered, self._next_try = False, 0.0
            self._restart_registration()
            return f"{self.id} registering"
        if action == "offline":
            self._stop_registration()
            self.offline, self.registered = True, False
            for session in list(self.sessions.values()):
                self._end_session(session)
            for future in self._pending.values():
                future.cancel()
            return f"{self.id} offline"
        if action == "online":
            if not self.offline and not self.unregistered:
                return f"{self.id} is online"
            self.offline = self.unregistered = False
            self._next_try = 0.0
            # a rebooted device: new registration dialog, new challenge, a new connection
            self._reg_call_id, self._reg_tag, self._challenge = sip.new_call_id(self.sim.host), sip.new_tag(), None
            if self.udp:
                await self._open_udp()
            else:
                self._close_tcp()
            self._restart_registration()
            return f"{self.id} online, registering"
        raise GbSimulatorError(f"unknown action {action!r} (known: {', '.join(FAULT_ACTIONS)})")

    async def _rebind(self) -> str:
        old = self.sip_port
        if self.udp:
            await self._open_udp()
        else:
            self._close_tcp()  # a NAT losing a TCP mapping: the connection is gone
            self.registered = False
            self._restart_registration()
        for session in self.sessions.values():
            session.sender.rebind()
        if self.udp and self.registered and not self.offline:
            self._spawn(self.keepalive(), "keepalive after rebind")  # the platform learns the new port
        return f"{self.id} rebound: SIP port {old} -> {self.sip_port or '(reconnecting)'}"

    def _garbage(self) -> str:
        messages = [
            os.urandom(64) + b"\r\n\r\n",
            b"NOT-SIP at all\r\n\r\n",
            b"MESSAGE sip:" + self.sim.server_id.encode() + b" SIP/2.0\r\nVia: nonsense\r\nContent-Length: 0\r\n\r\n",
            (f"MESSAGE {self.registrar_uri} SIP/2.0\r\nVia: SIP/2.0/{self.sim.sip_transport.upper()} "
             f"{self.sim.host}:{self.own_port};branch={sip.new_branch()}\r\nFrom: <{self.aor}>;tag={sip.new_tag()}"
             f"\r\nTo: <{self.registrar_uri}>\r\nCall-ID: {sip.new_call_id(self.sim.host)}\r\nCSeq: x MESSAGE\r\n"
             f"Content-Type: {MANSCDP_TYPE}\r\nContent-Length: 9\r\n\r\n<Notify>&").encode(),
        ]
        if self.udp:
            messages.append(b"SIP/2.0 200 OK\r\n" + b"X" * 300)
        for data in messages:
            self.send_raw(data)
        packets = sum(s.sender.send_garbage() for s in self.sessions.values() if s.state in ("sending", "finished"))
        return f"{len(messages)} garbage SIP message(s) and {packets} garbage RTP packet(s) sent by {self.id}"

    def status(self) -> dict:
        return {"registered": self.registered, "last_register_status": self.last_register_status,
                "register_requests": self.register_requests, "registrations": self.registrations,
                "keepalives_sent": self.keepalives_sent, "keepalives_answered": self.keepalives_answered,
                "sip_port": self.sip_port, "offline": self.offline, "unregistered": self.unregistered,
                "keepalive_stopped": self.keepalive_stopped, "media_dropped": self.media_dropped,
                "wrong_ssrc": self.wrong_ssrc, "sessions": [s.info() for s in self.sessions.values()]}


def _fields(fields: list[tuple[str, str]]) -> str:
    return "".join(f"<{name}>{xml_escape(value)}</{name}>\r\n" for name, value in fields)


def _granted(response: SipMessage, asked: int) -> int:
    """The registration time the platform gave: its Expires header, or the Contact's expires, or ours."""
    for text in (response.header("Expires"), _contact_expires(response)):
        if text and text.strip().isdigit() and int(text) > 0:
            return int(text)
    return asked


def _contact_expires(response: SipMessage) -> str | None:
    contact = response.header("Contact")
    if not contact:
        return None
    try:
        return sip.parse_name_addr(contact).params.get("expires")
    except SipError:
        return None


# -- the simulator --------------------------------------------------------------------------------------------

class GbSimulator:
    """Simulated GB/T 28181 devices registering to `server` (the platform's SIP address).

    Use as a context manager, or start()/close(). status(), fault() and urls() work from any thread.
    """

    def __init__(self, devices: list[GbDeviceSpec], server: tuple[str, int], server_id: str, domain: str,
                 sip_transport: str = "udp", keepalive_seconds: float = 5.0, register_expires: int = 3600,
                 host: str = "127.0.0.1", *, timezone: str = "Asia/Shanghai",
                 control_port: int | None = None) -> None:
        problems = []
        if not devices:
            problems.append("no devices")
        for spec in devices:
            try:
                spec.check()
            except ValueError as exc:
                problems.append(str(exc))
        ids = [d.device_id for d in devices]
        if len(set(ids)) != len(ids):
            problems.append("device IDs repeat")
        if not _DIGITS20.match(server_id):
            problems.append(f"the server ID must be 20 digits, got {server_id!r}")
        if not re.match(r"^\d{10}$", domain):
            problems.append(f"the SIP domain must be 10 digits, got {domain!r}")
        if sip_transport not in ("udp", "tcp"):
            problems.append(f"the SIP transport must be udp or tcp, got {sip_transport!r}")
        if not 0 < keepalive_seconds <= 3600:
            problems.append(f"keepalive_seconds must be from 0 to 3600, got {keepalive_seconds}")
        if not 0 < register_expires <= 86400 * 7:
            problems.append(f"register_expires must be from 1 to 604800 s, got {register_expires}")
        if not (isinstance(server, tuple) and len(server) == 2 and 0 < int(server[1]) < 65536):
            problems.append(f"server must be (host, port), got {server!r}")
        if control_port is not None and not 0 <= control_port <= 65535:
            problems.append(f"control_port must be from 0 to 65535, got {control_port}")
        if problems:
            raise ValueError("; ".join(problems))
        self.specs = list(devices)
        self.server = (str(server[0]), int(server[1]))
        self.server_id = server_id
        self.domain = domain
        self.sip_transport = sip_transport
        self.keepalive_seconds = float(keepalive_seconds)
        self.register_expires = int(register_expires)
        self.host = host
        self.tz = ZoneInfo(timezone)
        self.requested_control_port = control_port
        self.control_port: int | None = None
        self._devices: dict[str, _Device] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._control: asyncio.base_events.Server | None = None

    # -- times as GB writes them (local, no zone) -----------------------------------------------------------------
    def parse_time(self, text: str) -> float | None:
        text = text.strip().replace(" ", "T")
        if not text:
            return None
        try:
            moment = datetime.fromisoformat(text.removesuffix("Z") + ("+00:00" if text.endswith("Z") else ""))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.tz)
        return moment.timestamp()

    def format_time(self, seconds: float) -> str:
        return datetime.fromtimestamp(seconds, self.tz).strftime(TIME_FORMAT)

    # -- life cycle --------------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> GbSimulator:
        """Open every device's SIP socket and let it register; return once each has had an answer to its
        first REGISTER (or a timeout, a refused connection), at most `timeout` seconds."""
        if self._thread is not None:
            raise GbSimulatorError("the GB28181 simulator is already running")
        clips: dict[tuple[str, str], Clip] = {}
        try:
            for spec in self.specs:
                key = (str(Path(spec.clip).resolve()), spec.codec)
                if key not in clips:
                    clips[key] = load_clip(Path(spec.clip), spec.codec)
        except ValueError as exc:
            raise GbSimulatorError(str(exc)) from None
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="gb28181-simulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout

        async def start_all() -> None:
            for spec in self.specs:
                device = _Device(self, spec, clips[(str(Path(spec.clip).resolve()), spec.codec)])
                self._devices[spec.device_id] = device
                await device.start()
            if self.requested_control_port is not None:
                self._control = await asyncio.start_server(self._control_client, "127.0.0.1",
                                                           self.requested_control_port)
                self.control_port = self._control.sockets[0].getsockname()[1]

        try:
            self._call(start_all(), timeout)
        except Exception as exc:
            self.close()
            raise GbSimulatorError(f"the GB28181 simulator could not start: {exc}") from exc

        async def first_tries() -> None:
            await asyncio.gather(*(d.first_try.wait() for d in self._devices.values()))

        try:
            self._call(first_tries(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("not every simulated device had an answer to its first REGISTER within %g s", timeout)
        return self

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def stop_all() -> None:
            if self._control is not None:
                self._control.close()
            await asyncio.gather(*(d.stop() for d in self._devices.values()), return_exceptions=True)

        try:
            self._call(stop_all(), 10.0)
        except Exception:  # noqa: BLE001 - closing goes on whatever happened
            log.exception("stopping the simulated devices failed")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> GbSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        if self._loop is None:
            coro.close()
            raise GbSimulatorError("the GB28181 simulator is not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    # -- the interface ------------------------------------------------------------------------------------------
    def urls(self) -> list[str]:
        return [f"gb28181://{spec.device_id}/{channel_id}" for spec in self.specs for channel_id, _ in spec.channels]

    def status(self) -> dict[str, dict]:
        async def collect() -> dict[str, dict]:
            return {device_id: device.status() for device_id, device in self._devices.items()}

        return self._call(collect())

    def fault(self, device_id: str, action: str, value: str | None = None) -> str:
        """Inject a fault (FAULT_ACTIONS); returns what was done, raises GbSimulatorError if it can't."""
        return self._call(self._fault(device_id, action, value), REQUEST_TIMEOUT_S * 4)

    async def _fault(self, device_id: str, action: str, value: str | None) -> str:
        device = self._devices.get(device_id)
        if device is None:
            raise GbSimulatorError(f"unknown device {device_id!r}")
        if action not in FAULT_ACTIONS:
            raise GbSimulatorError(f"unknown action {action!r} (known: {', '.join(FAULT_ACTIONS)})")
        return await device.fault(action, value)

    # -- control port (the RTSP simulator's line protocol) -------------------------------------------------------
    def _status_line(self) -> str:
        items = []
        for device_id, device in self._devices.items():
            state = "offline" if device.offline else "registered" if device.registered else "unregistered"
            flags = [state, f"sessions:{len(device.sessions)}", f"port:{device.sip_port}"]
            flags += [name for name, on in (("keepalive-stopped", device.keepalive_stopped),
                                             ("media-dropped", device.media_dropped),
                                             ("wrong-ssrc", device.wrong_ssrc is not None)) if on]
            items.append(f"{device_id}={','.join(flags)}")
        return " ".join(items)

    async def _control_line(self, line: str) -> str:
        words = line.split()
        if not words:
            return "error empty command"
        verb, args = words[0], words[1:]
        if verb == "ping":
            return "ok pong"
        if verb == "status":
            return "ok " + self._status_line()
        if verb not in FAULT_ACTIONS:
            return f"error unknown command {verb!r} (known: {' '.join(FAULT_ACTIONS)} status ping)"
        if not 1 <= len(args) <= 2:
            return f"error {verb} needs a device ID (and at most one value)"
        try:
            return "ok " + await self._fault(args[0], verb, args[1] if len(args) > 1 else None)
        except GbSimulatorError as exc:
            return f"error {exc}"
        except Exception as exc:  # noqa: BLE001 - any failure becomes an error reply
            return f"error {type(exc).__name__}: {exc}"

    async def _control_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                reply = await self._control_line(raw.decode("utf-8", "replace").strip()[:1000])
                writer.write((reply.replace("\n", " ") + "\n").encode())
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
