"""The simulated GB/T 28181 cameras against a minimal platform written here (real sockets on 127.0.0.1).

The platform harness is deliberately small and independent of the real platform: SIP over UDP or TCP with
vms.gb28181.sip, digest checks with DigestServer, an RTP sink (UDP, TCP listening, TCP connecting), and
PyAV demuxing what arrived as MPEG-PS.
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import av
import pytest

from vms.gb28181 import manscdp, sip
from vms.gb28181.digest import DigestServer, authorization, digest_response, parse_digest
from vms.gb28181.media import MediaReceiver, make_media_pipe
from vms.gb28181.rtp import Rfc4571Deframer, RtpError, RtpPacket, parse_rtp
from vms.gb28181.sdp import offer as sdp_offer
from vms.gb28181.sdp import parse as parse_sdp
from vms.gb28181.sip import SipError, SipMessage
from vms.simulate.content import VideoFormat, pattern_clip
from vms.simulate.gb28181_device import GbDeviceSpec, GbSimulator, gb_ids

T = TypeVar("T")
DOMAIN = "3402000000"
SERVER_ID = "34020000002000000001"
PASSWORD = "12345678"
FPS = 15
RARE = "萳村服务站"
HOST = "127.0.0.1"


# -- the platform harness ------------------------------------------------------------------------------------

@dataclass
class Received:
    t: float
    msg: SipMessage
    addr: tuple[str, int]

    @property
    def device(self) -> str:
        return self.msg.from_.uri.user or ""

    @property
    def root(self):
        return manscdp.parse_body(self.msg.body)

    def cmd(self) -> tuple[str, str, str, int | None]:
        try:
            return manscdp.command(self.root)
        except manscdp.ManscdpError:
            return "", "", "", None


@dataclass
class Call:
    dev: str
    channel: str
    invite: SipMessage
    answer: SipMessage
    sdp: object
    cseq: int = 2


class Platform:
    """Answers REGISTER (401 digest challenge, 200 or 403), MESSAGE and BYE with 200; learns each
    device's address from its latest request (as WVP does behind NAT); sends queries and INVITEs."""

    def __init__(self, transport: str = "udp", password: str = PASSWORD, hang_up_on_refusal: bool = False) -> None:
        self.transport = transport
        self.password = password
        self.hang_up_on_refusal = hang_up_on_refusal  # TCP: close the connection after a 403
        self.digest = DigestServer(DOMAIN)
        self.cond = threading.Condition()
        self.requests: list[Received] = []
        self.responses: dict[tuple[str, int, str], SipMessage] = {}
        self.junk: list[tuple[bytes, tuple[str, int]]] = []
        self.where: dict[str, tuple[str, int]] = {}
        self.conns: dict[str, socket.socket] = {}
        self.mute = False  # answer nothing (a platform gone)
        self.closed = False
        self._cseq = 100
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((HOST, 0))
            threading.Thread(target=self._udp_loop, daemon=True).start()
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((HOST, 0))
            self.sock.listen(16)
            threading.Thread(target=self._accept_loop, daemon=True).start()
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        for conn in list(self.conns.values()):
            conn.close()

    # -- receiving
    def _udp_loop(self) -> None:
        while not self.closed:
            try:
                data, addr = self.sock.recvfrom(65536)
            except OSError:
                return
            self._on(data, addr, None, datagram=True)

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_loop, args=(conn, addr), daemon=True).start()

    def _tcp_loop(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        splitter = sip.StreamSplitter()
        with conn:
            while not self.closed:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    messages = splitter.feed(data)
                except SipError:
                    splitter = sip.StreamSplitter()
                    continue
                for raw in messages:
                    self._on(raw, addr, conn, datagram=False)

    def _on(self, data: bytes, addr: tuple[str, int], conn: socket.socket | None, datagram: bool) -> None:
        try:
            msg = sip.parse_message(data, datagram=datagram)
            msg.cseq  # noqa: B018 - checks it
        except SipError:
            with self.cond:
                self.junk.append((data, addr))
                self.cond.notify_all()
            return
        if not msg.is_request:
            with self.cond:
                number, method = msg.cseq
                if (msg.status or 0) >= 200:
                    self.responses[(msg.call_id, number, method)] = msg
                self.cond.notify_all()
            return
        with self.cond:
            rec = Received(time.monotonic(), msg, addr)
            self.requests.append(rec)
            try:
                device = rec.device
            except SipError:
                device = ""
            if device and msg.method != "ACK":
                self.where[device] = addr
                if conn is not None:
                    self.conns[device] = conn
            self.cond.notify_all()
        if self.mute:
            return
        if msg.method == "REGISTER":
            self._register(msg, addr, conn, device)
        elif msg.method != "ACK":
            self._reply(sip.response_to(msg, 200, to_tag=sip.new_tag()), addr, conn)

    def _register(self, msg: SipMessage, addr, conn, device: str) -> None:
        auth = msg.header("Authorization")
        if not auth:
            resp = sip.response_to(msg, 401, to_tag=sip.new_tag())
            resp.add_header("WWW-Authenticate", self.digest.challenge(device))
        else:
            verdict = self.digest.verify(auth, "REGISTER", device, self.password)
            if verdict.ok:
                resp = sip.response_to(msg, 200, to_tag=sip.new_tag())
                resp.add_header("Expires", msg.header("Expires") or "3600")
            elif verdict.stale:
                resp = sip.response_to(msg, 401, to_tag=sip.new_tag())
                resp.add_header("WWW-Authenticate", self.digest.challenge(device, stale=True))
            else:
                resp = sip.response_to(msg, 403, to_tag=sip.new_tag())
        self._reply(resp, addr, conn)
        if resp.status == 403 and conn is not None and self.hang_up_on_refusal:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:  # the device was quicker
                pass

    def _reply(self, resp: SipMessage, addr, conn) -> None:
        self.send_raw(resp.encode(), addr, conn)

    def send_raw(self, data: bytes, addr, conn=None) -> None:
        try:
            if conn is not None:
                conn.sendall(data)
            else:
                self.sock.sendto(data, addr)
        except OSError:  # a connection the device closed (rebind), the harness closing
            pass

    # -- waiting
    def wait(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        with self.cond:
            result = self.cond.wait_for(predicate, timeout)
        assert result, f"not within {timeout} s: {getattr(predicate, '__name__', predicate)}"
        return result

    def seen(self, method: str, device: str | None = None, cmd: str | None = None,
             since: float = 0.0) -> list[Received]:
        out = []
        for rec in list(self.requests):
            if rec.msg.method != method or rec.t < since:
                continue
            if device is not None and rec.device != device:
                continue
            if cmd is not None and rec.cmd()[1] != cmd:
                continue
            out.append(rec)
        return out

    # -- sending
    def new_request(self, method: str, dev: str, uri_user: str | None = None, body: bytes = b"",
                    content_type: str | None = None, **kw) -> SipMessage:
        self._cseq += 1
        return sip.request(
            method, f"sip:{uri_user or dev}@{DOMAIN}", via_host=HOST, via_port=self.port, transport=self.transport,
            from_=kw.pop("from_", f"<sip:{SERVER_ID}@{DOMAIN}>;tag={sip.new_tag()}"),
            to=kw.pop("to", f"<sip:{uri_user or dev}@{DOMAIN}>"), call_id=kw.pop("call_id", sip.new_call_id(HOST)),
            cseq=kw.pop("cseq", self._cseq), contact=f"<sip:{SERVER_ID}@{HOST}:{self.port}>", body=body,
            content_type=content_type, **kw)

    def send(self, dev: str, msg: SipMessage, timeout: float = 5.0) -> SipMessage | None:
        """Send to the device's learned address; its final response (None when timeout is 0)."""
        self.send_raw(msg.encode(), self.where[dev], self.conns.get(dev))
        if not timeout:
            return None
        number, method = msg.cseq
        key = (msg.call_id, number, method)
        return self.wait(lambda: self.responses.get(key), timeout)

    def query(self, dev: str, cmd: str, target: str | None = None, fields=None, timeout: float = 5.0):
        self._cseq += 1
        sn = self._cseq
        body = manscdp.build("Query", cmd, sn, target or dev, fields or [])
        resp = self.send(dev, self.new_request("MESSAGE", dev, body=body, content_type="Application/MANSCDP+xml"),
                         timeout)
        return sn, resp

    def answers(self, dev: str, cmd: str, sn: int) -> list[Received]:
        return [r for r in self.seen("MESSAGE", dev, cmd) if r.cmd()[0] == "Response" and r.cmd()[3] == sn]

    def invite(self, dev: str, channel: str, media_port: int, transport: str = "udp", ssrc: str = "0200000001",
               purpose: str = "Play", start_s: int = 0, end_s: int = 0, speed: int = 4) -> Call:
        body = sdp_offer(device_id=dev, media_host=HOST, media_port=media_port, transport=transport,
                         ssrc=ssrc, purpose=purpose, channel_id=channel, start_s=start_s, end_s=end_s,
                         download_speed=speed)
        msg = self.new_request("INVITE", dev, uri_user=channel, body=body, content_type="APPLICATION/SDP",
                               extra=[("Subject", f"{channel}:{ssrc},{SERVER_ID}:0")])
        answer = self.send(dev, msg, timeout=5)
        assert answer is not None
        call = Call(dev, channel, msg, answer, parse_sdp(answer.body) if answer.status == 200 else None)
        if answer.status == 200:
            ack = self.new_request("ACK", dev, uri_user=channel, from_=msg.header("From"), to=answer.header("To"),
                                   call_id=msg.call_id, cseq=msg.cseq[0])
            self.send(dev, ack, timeout=0)
        return call

    def bye(self, call: Call) -> SipMessage | None:
        call.cseq += 1
        msg = self.new_request("BYE", call.dev, uri_user=call.channel, from_=call.invite.header("From"),
                               to=call.answer.header("To"), call_id=call.invite.call_id, cseq=call.cseq)
        return self.send(call.dev, msg)


class RtpSink:
    """RTP received: over UDP, on a TCP port the device connects to (the platform passive), or over a
    TCP connection to the device (active)."""

    def __init__(self, mode: str = "udp") -> None:
        self.mode = mode
        self.packets: list[tuple[float, RtpPacket, tuple[str, int]]] = []
        self.bad = 0
        self.peers: list[tuple[str, int]] = []
        self.cond = threading.Condition()
        self.closed = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if mode == "udp" else socket.SOCK_STREAM)
        if mode != "active":
            self.sock.bind((HOST, 0))
        if mode == "udp":
            threading.Thread(target=self._udp, daemon=True).start()
        elif mode == "passive":
            self.sock.listen(4)
            threading.Thread(target=self._accept, daemon=True).start()
        self.port = self.sock.getsockname()[1] if mode != "active" else 9  # active: the offer's port is unused

    def connect(self, addr: tuple[str, int]) -> None:
        self.sock.connect(addr)
        threading.Thread(target=self._tcp, args=(self.sock, addr), daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def _add(self, data: bytes, addr) -> None:
        with self.cond:
            try:
                self.packets.append((time.monotonic(), parse_rtp(data), addr))
            except RtpError:
                self.bad += 1
            self.cond.notify_all()

    def _udp(self) -> None:
        while not self.closed:
            try:
                data, addr = self.sock.recvfrom(65536)
            except OSError:
                return
            self._add(data, addr)

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            with self.cond:
                self.peers.append(addr)
            threading.Thread(target=self._tcp, args=(conn, addr), daemon=True).start()

    def _tcp(self, conn: socket.socket, addr) -> None:
        deframer = Rfc4571Deframer()
        with conn:
            while not self.closed:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for frame in deframer.feed(data):
                    self._add(frame, addr)

    def wait_packets(self, n: int, timeout: float = 5.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.packets) >= n, timeout), f"{len(self.packets)} packets"

    def count(self) -> int:
        with self.cond:
            return len(self.packets)

    def ps(self, ssrc: int | None = None) -> bytes:
        with self.cond:
            return b"".join(p.payload for _, p, _ in self.packets
                            if p.payload_type == 96 and (ssrc is None or p.ssrc == ssrc))


def demux(ps: bytes) -> tuple[dict[str, str], int, list[int], int]:
    """(stream type -> codec, decoded video frames, video pts, audio packets) of a PS byte string."""
    frames, pts, audio = 0, [], 0
    with av.open(io.BytesIO(ps), format="mpeg") as container:
        for packet in container.demux():
            if not packet.size:
                continue
            if packet.stream.type == "video":
                pts.append(packet.pts)
                frames += len(packet.decode())
            elif packet.stream.type == "audio":
                audio += 1
        codecs = {s.type: s.codec_context.name for s in container.streams}
    return codecs, frames, pts, audio


def frame_rate(sink: RtpSink) -> float:
    """Video frames a second as they arrived: packs opening with a video PES (00 00 01 E0), over the span."""
    with sink.cond:
        starts, last_ts = [], None
        for t, p, _ in sink.packets:
            if p.timestamp != last_ts and b"\x00\x00\x01\xe0" in p.payload[:200]:
                starts.append(t)
            last_ts = p.timestamp
    if len(starts) < 2:
        return 0.0
    return (len(starts) - 1) / (starts[-1] - starts[0])


# -- fixtures ---------------------------------------------------------------------------------------------

FMT = VideoFormat(320, 240, FPS, 300, FPS)


@pytest.fixture(scope="module")
def clips(simulator_cache) -> dict[str, Path]:
    return {"h264": pattern_clip(simulator_cache, FMT, 2.0),
            "hevc": pattern_clip(simulator_cache, FMT, 2.0, codec="libx265")}


def ids(n: int) -> tuple[str, str]:
    return gb_ids(DOMAIN, n)


def channel(n: int, k: int) -> str:
    return f"{DOMAIN[:8]}00131{n * 10 + k:07d}"


NOW = int(time.time())
GAP = (NOW - 3600, NOW - 1800)
D1, D2, D3, D4 = (ids(n)[0] for n in (1, 2, 3, 4))


@dataclass
class Env:
    platform: Platform
    sim: GbSimulator
    specs: dict[str, GbDeviceSpec] = field(default_factory=dict)


@pytest.fixture(scope="module")
def udp_env(clips) -> Iterator[Env]:
    platform = Platform("udp")
    specs = [
        GbDeviceSpec(D1, [(channel(1, 1), RARE), (channel(1, 2), "龍山镇&服务点"), (channel(1, 3), "第三路")],
                     PASSWORD, clips["h264"], "h264", FPS, "pcma", card_gaps=[GAP]),
        GbDeviceSpec(D2, [(channel(2, 1), "hevc")], PASSWORD, clips["hevc"], "hevc", FPS, None),
        GbDeviceSpec(D3, [(channel(3, 1), "faults")], PASSWORD, clips["h264"], "h264", FPS, None),
        GbDeviceSpec(D4, [(channel(4, 1), "wrong password")], "not-the-password", clips["h264"], "h264", FPS),
    ]
    sim = GbSimulator(specs, ("127.0.0.1", platform.port), SERVER_ID, DOMAIN, keepalive_seconds=1.0,
                      register_expires=3)
    sim.start(timeout=10)
    try:
        yield Env(platform, sim, {s.device_id: s for s in specs})
    finally:
        sim.close()
        platform.close()


# -- registration, keepalive, queries -------------------------------------------------------------------------

def test_register_answers_the_digest_challenge_and_refreshes(udp_env):
    p, sim = udp_env.platform, udp_env.sim
    assert sim.status()[D1]["registered"] is True
    p.wait(lambda: len([r for r in p.seen("REGISTER", D1) if r.msg.header("Authorization")]) >= 3, 6)
    regs = p.seen("REGISTER", D1)
    first = regs[0].msg
    assert first.uri == f"sip:{SERVER_ID}@{DOMAIN}"
    assert str(first.from_.uri) == f"sip:{D1}@{DOMAIN}" and str(first.to.uri) == f"sip:{D1}@{DOMAIN}"
    assert first.header("Expires") == "3" and first.header("Authorization") is None
    authed = [parse_digest(r.msg.header("Authorization") or "") for r in regs if r.msg.header("Authorization")]
    assert authed[0]["username"] == D1 and authed[0]["uri"] == f"sip:{SERVER_ID}@{DOMAIN}"
    assert authed[0]["qop"] == "auth" and authed[0]["nc"] == "00000001" and authed[0]["realm"] == DOMAIN
    # refreshes: same Call-ID, the same challenge answered again with the count going up, no new 401
    assert {r.msg.call_id for r in regs} == {first.call_id}
    assert [a["nc"] for a in authed[:3]] == ["00000001", "00000002", "00000003"]
    assert len({a["nonce"] for a in authed[:3]}) == 1
    p.wait(lambda: sim.status()[D1]["registrations"] >= 3, 2)


def test_keepalives_arrive_and_stop_keepalive_stops_them(udp_env):
    p, sim = udp_env.platform, udp_env.sim
    start = time.monotonic()
    p.wait(lambda: len(p.seen("MESSAGE", D1, "Keepalive", since=start)) >= 2, 4)
    rec = p.seen("MESSAGE", D1, "Keepalive", since=start)[-1]
    kind, _, device, sn = rec.cmd()
    assert (kind, device) == ("Notify", D1) and sn is not None
    assert manscdp.child_text(rec.root, "Status") == "OK"
    assert rec.msg.uri == f"sip:{SERVER_ID}@{DOMAIN}"
    assert "GB2312" in rec.msg.body.decode("ascii", "replace")

    assert "stopped" in sim.fault(D3, "stop-keepalive")
    time.sleep(0.3)  # one in flight may still land
    stopped = time.monotonic()
    time.sleep(2.5)
    assert p.seen("MESSAGE", D3, "Keepalive", since=stopped) == []
    assert len(p.seen("MESSAGE", D1, "Keepalive", since=stopped)) >= 2, "the other devices go on"
    sim.fault(D3, "resume-keepalive")
    p.wait(lambda: p.seen("MESSAGE", D3, "Keepalive", since=stopped), 3)


def test_catalog_is_paged_to_sum_num_and_rare_characters_survive(udp_env):
    p = udp_env.platform
    sn, resp = p.query(D1, "Catalog")
    assert resp.status == 200
    pages = p.wait(lambda: len(p.answers(D1, "Catalog", sn)) >= 2 and p.answers(D1, "Catalog", sn), 5)
    time.sleep(0.3)
    pages = p.answers(D1, "Catalog", sn)
    assert len(pages) == 2, "3 channels: pages of at most 2 items"
    items = []
    for page in pages:
        cat = manscdp.catalog_page(page.root)
        assert cat.sum_num == 3 and cat.device_id == D1 and len(cat.items) <= 2
        assert page.msg.header("Content-Type").lower() == "application/manscdp+xml"
        items += cat.items
    assert [i.channel_id for i in items] == [channel(1, 1), channel(1, 2), channel(1, 3)]
    assert [i.name for i in items] == [RARE, "龍山镇&服务点", "第三路"]
    assert {i.manufacturer for i in items} == {"vms-sim"} and {i.status for i in items} == {"ON"}
    assert {i.parent_id for i in items} == {D1}
    raw = pages[0].msg.body
    assert b'encoding="GB2312"' in raw and RARE.encode("gb18030") in raw, "declared GB2312, written GB18030"
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")

    sn, _ = p.query(D1, "DeviceInfo")
    info = p.wait(lambda: p.answers(D1, "DeviceInfo", sn), 5)[0].root
    assert manscdp.child_text(info, "Channel") == "3"
    assert manscdp.child_text(info, "Manufacturer") == "vms-sim" and manscdp.child_text(info, "Firmware")


def test_record_info_covers_the_range_except_the_card_gaps(udp_env):
    p, sim = udp_env.platform, udp_env.sim
    start, end = NOW - 7200, NOW - 600
    sn, resp = p.query(D1, "RecordInfo", target=channel(1, 1), fields=[
        ("StartTime", sim.format_time(start)), ("EndTime", sim.format_time(end)), ("Type", "all")])
    assert resp.status == 200

    def complete():
        pages = p.answers(D1, "RecordInfo", sn)
        got = sum(int(manscdp.child(r.root, "RecordList").get("Num")) for r in pages)
        total = int(manscdp.child_text(pages[0].root, "SumNum")) if pages else -1
        return pages if pages and got == total else None

    pages = p.wait(complete, 5)
    ranges = []
    for page in pages:
        assert manscdp.command(page.root)[2] == channel(1, 1)
        for item in manscdp.child(page.root, "RecordList"):
            ranges.append((sim.parse_time(manscdp.child_text(item, "StartTime")),
                           sim.parse_time(manscdp.child_text(item, "EndTime"))))
    ranges.sort()
    merged: list[list[float]] = []
    for a, b in ranges:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    assert merged == [[start, GAP[0]], [GAP[1], end]]


def test_the_device_side_digest_returns_the_opaque_and_answers_rfc_2069_challenges():
    """digest.authorization (the device side): a challenge's opaque goes back unchanged (RFC 2617 3.2.2;
    it was dropped, and a platform that sends one refuses the answer), and a challenge without qop is
    answered without nc/cnonce."""
    uri = f"sip:{SERVER_ID}@{DOMAIN}"
    answer = parse_digest(authorization(f'Digest realm="{DOMAIN}", nonce="abc", qop="auth", opaque="x1,y"',
                                        "REGISTER", uri, D1, PASSWORD, nc=3, cnonce="c"))
    assert answer["opaque"] == "x1,y" and answer["nc"] == "00000003"
    assert answer["response"] == digest_response(D1, DOMAIN, PASSWORD, "REGISTER", uri, "abc", "auth", "00000003", "c")
    old_style = parse_digest(authorization(f'Digest realm="{DOMAIN}", nonce="abc"', "REGISTER", uri, D1, PASSWORD))
    assert "qop" not in old_style and "nc" not in old_style and "opaque" not in old_style
    assert old_style["response"] == digest_response(D1, DOMAIN, PASSWORD, "REGISTER", uri, "abc")


# -- live media ---------------------------------------------------------------------------------------------

def test_live_over_udp_is_ps_h264_with_pcma_at_the_frame_rate(udp_env):
    p, sim = udp_env.platform, udp_env.sim
    sink = RtpSink("udp")
    try:
        call = p.invite(D1, channel(1, 1), sink.port, "udp", ssrc="0200000011")
        assert call.answer.status == 200
        sdp = call.sdp
        text = call.answer.body.decode()
        assert sdp.purpose == "Play" and sdp.ssrc == "0200000011" and sdp.host == HOST and not sdp.tcp
        assert "a=sendonly" in text and "a=rtpmap:96 PS/90000" in text and sdp.payload_types == (96,)
        assert call.answer.header("Content-Type").lower() == "application/sdp"
        sink.wait_packets(1, 3)
        time.sleep(3)
        session = sim.status()[D1]["sessions"][0]
        assert session["purpose"] == "Play" and session["transport"] == "udp" and session["packets"] > 0
        assert p.bye(call).status == 200
        time.sleep(0.3)
        count = sink.count()
        time.sleep(0.5)
        assert sink.count() == count, "BYE stops the media"
        assert sim.status()[D1]["sessions"] == []
        assert p.bye(call).status == 481, "the dialog is gone"
    finally:
        sink.close()
    packets = [pk for _, pk, _ in sink.packets]
    assert {pk.payload_type for pk in packets} == {96} and {pk.ssrc for pk in packets} == {200000011}
    assert {addr[1] for _, _, addr in sink.packets} == {sdp.port}, "sent from the answered port"
    seqs = [pk.sequence for pk in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False)), "continuous sequence"
    # one timestamp per frame, the marker on its last packet
    for a, b in zip(packets, packets[1:], strict=False):
        if a.timestamp != b.timestamp:
            assert a.marker, "the last packet of a frame carries the marker"
    assert 0.8 * FPS <= frame_rate(sink) <= 1.25 * FPS
    codecs, frames, pts, audio = demux(sink.ps())
    assert codecs == {"video": "h264", "audio": "pcm_alaw"}
    assert frames >= 2.5 * FPS and audio >= 100
    steps = {b - a for a, b in zip(pts, pts[1:], strict=False)}
    assert steps == {90000 // FPS}


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_live_hevc_over_tcp_both_directions(udp_env, mode):
    """tcp-passive: the platform listens and the device connects out (crosses NAT); tcp-active: the
    device listens on the port it answers and the platform connects."""
    p, sim = udp_env.platform, udp_env.sim
    sink = RtpSink(mode)
    try:
        call = p.invite(D2, channel(2, 1), sink.port, f"tcp-{mode}", ssrc="0200000021")
        assert call.answer.status == 200 and call.sdp.tcp and call.sdp.proto == "TCP/RTP/AVP"
        assert call.sdp.setup == ("active" if mode == "passive" else "passive")
        if mode == "active":
            sink.connect((call.sdp.host, call.sdp.port))
        sink.wait_packets(1, 5)
        time.sleep(2)
        assert sim.status()[D2]["sessions"][0]["transport"] == f"tcp-{mode}"
        if mode == "passive":
            assert sink.peers and sink.peers[0][1] == call.sdp.port, "the device connects from its answered port"
        assert p.bye(call).status == 200
    finally:
        sink.close()
    codecs, frames, pts, audio = demux(sink.ps())
    assert codecs == {"video": "hevc"} and frames >= 1.5 * FPS and audio == 0
    assert 0.7 * FPS <= frame_rate(sink) <= 1.3 * FPS


class PipeDemux(threading.Thread):
    """PyAV reading the PS a MediaReceiver writes into a pipe, as the recorder does."""

    def __init__(self, read_fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = read_fd
        self.codecs: dict[str, str] = {}
        self.frames = 0
        self.audio = 0
        self.frame_times: list[float] = []
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            # container_options, never options=: PyAV 16.1.0 segfaults on options= for PS input
            with av.open(f"pipe:{self.fd}", format="mpeg",
                         container_options={"probesize": "100000", "analyzeduration": "1000000"}) as container:
                for packet in container.demux():
                    if not packet.size:
                        continue
                    self.codecs[packet.stream.type] = packet.stream.codec_context.name
                    if packet.stream.type == "video":
                        decoded = len(packet.decode())
                        self.frames += decoded
                        self.frame_times += [time.monotonic()] * decoded
                    else:
                        self.audio += 1
        except Exception as exc:  # noqa: BLE001 - the test reports it
            self.error = exc
        finally:
            os.close(self.fd)


@pytest.mark.parametrize("transport", ["udp", "tcp-passive"])
def test_media_receiver_takes_the_stream_through_a_pipe_and_follows_a_rebind(udp_env, transport):
    """The platform's own receiving end (vms.gb28181.media) and PyAV on a pipe, as the recorder reads it.
    A NAT rebinding moves the device's media to a new source port: over UDP the receiver re-locks onto it
    and the frames go on; over TCP the connection is lost and the receiver ends the session."""
    p, sim = udp_env.platform, udp_env.sim
    read_fd, write_fd = make_media_pipe()
    rx = MediaReceiver(transport, HOST, (31000, 31200), write_fd, expected_ssrc=200000051, name="sim")
    rx.start()
    reader = PipeDemux(read_fd)
    try:
        call = p.invite(D1, channel(1, 1), rx.port, transport, ssrc="0200000051")
        assert call.answer.status == 200 and rx.wait_first_packet(3)
        p.wait(lambda: reader.frames >= FPS, 5)
        source = rx.source
        sim.fault(D1, "rebind")
        rebound = time.monotonic()
        if transport == "udp":  # the receiver re-locks onto the new source port once the old one is silent
            p.wait(lambda: rx.source != source and reader.frame_times and reader.frame_times[-1] > rebound + 0.5,
                   6)
            assert p.bye(call).status == 200
        else:  # the device's connection is gone: this receiver ends the session (the platform plays again)
            p.wait(lambda: rx.ended is not None, 3)
            assert rx.ended[0] == "media_closed"
            assert p.bye(call).status in (200, 481)  # 481: the device gave up reconnecting and hung up first
    finally:
        rx.stop()
        reader.join(5)
    assert reader.error is None and reader.codecs == {"video": "h264", "audio": "pcm_alaw"}
    assert reader.frames >= FPS and reader.audio > 0
    assert rx.stats["malformed"] == 0 and rx.stats["dropped_ssrc"] == 0 and rx.stats["unexpected_ssrc"] == 0
    if transport == "udp":
        assert rx.stats["source_changes"] == 1


# -- faults ------------------------------------------------------------------------------------------------

def test_rebind_moves_sip_and_media_to_new_ports(udp_env):
    p, sim = udp_env.platform, udp_env.sim
    sink = RtpSink("udp")
    call = None
    try:
        call = p.invite(D3, channel(3, 1), sink.port, "udp", ssrc="0200000031")
        sink.wait_packets(20, 5)
        sip_before = p.where[D3]
        media_before = sink.packets[-1][2]
        before = time.monotonic()
        assert "rebound" in sim.fault(D3, "rebind")
        rebound_at = time.monotonic()

        # A MESSAGE the device sent from the old port just before the rebind may arrive after `before`
        # (CI once saw one): wait for the keepalive the rebind sends, from a new port, and require that
        # nothing comes from the old port after it.
        def from_new_port() -> list:
            return [r for r in p.seen("MESSAGE", D3, "Keepalive", since=before) if r.addr[1] != sip_before[1]]

        after = p.wait(from_new_port, 3)[0]  # times out (fails) if the SIP port did not move
        assert not [r for r in p.seen("MESSAGE", D3, since=max(after.t, rebound_at + 0.2))
                    if r.addr[1] == sip_before[1]], "SIP from the old port after the rebind"
        # ...which the device does not know of: behind a NAT its Via and Contact keep its own port, so
        # the platform must answer where the requests come from (rport), not where they say
        assert after.msg.via.port == sip_before[1] and after.msg.via.params.get("rport", "x") is None
        assert p.where[D3] != sip_before
        time.sleep(1)
        sources = [addr for t, _, addr in sink.packets if t > before + 0.2]
        assert sources and set(sources) == {sources[0]} and sources[0] != media_before, "media from a new port"
        # the SIP dialog still works through the new port
        bye_answer, call = p.bye(call), None
        assert bye_answer is not None and bye_answer.status == 200
    finally:
        if call is not None:  # a failed assertion must not leave the session to the next test (shared device)
            p.bye(call)
        sink.close()
    seqs = [pk.sequence for _, pk, _ in sink.packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False)), "media continues"


def test_device_bye_and_wrong_ssrc(udp_env):
    p, sim = udp_env.platform, udp_env.sim
    sink = RtpSink("udp")
    try:
        call = p.invite(D3, channel(3, 1), sink.port, "udp", ssrc="0200000032")
        sink.wait_packets(5, 5)
        assert "BYE sent on 1" in sim.fault(D3, "bye")
        bye = p.wait(lambda: [r for r in p.seen("BYE") if r.msg.call_id == call.invite.call_id], 3)[0].msg
        assert bye.from_.tag == call.answer.to.tag and bye.to.tag == call.invite.from_.tag
        assert sim.status()[D3]["sessions"] == []

        sim.fault(D3, "wrong-ssrc")
        call = p.invite(D3, channel(3, 1), sink.port, "udp", ssrc="0200000033")
        assert call.sdp.ssrc == "0200000034", "the answer names the SSRC it really uses"
        p.wait(lambda: any(pk.ssrc == 200000034 for _, pk, _ in sink.packets), 3)
        p.bye(call)
        sim.fault(D3, "wrong-ssrc", "hidden")
        call = p.invite(D3, channel(3, 1), sink.port, "udp", ssrc="0200000035")
        assert call.sdp.ssrc == "0200000035", "hidden: the answer repeats the offer"
        p.wait(lambda: any(pk.ssrc == 200000036 for _, pk, _ in sink.packets), 3)
        assert not any(pk.ssrc == 200000035 for _, pk, _ in sink.packets)
        p.bye(call)
        sim.fault(D3, "right-ssrc")
        call = p.invite(D3, channel(3, 1), sink.port, "udp", ssrc="0200000037")
        p.wait(lambda: any(pk.ssrc == 200000037 for _, pk, _ in sink.packets), 3)
        p.bye(call)
    finally:
        sink.close()


def test_drop_media_keeps_the_session_and_resumes_on_a_keyframe(udp_env):
    p, sim = udp_env.platform, udp_env.sim
    sink = RtpSink("udp")
    try:
        call = p.invite(D3, channel(3, 1), sink.port, "udp", ssrc="0200000038")
        sink.wait_packets(5, 5)
        sim.fault(D3, "drop-media")
        time.sleep(0.2)
        count = sink.count()
        time.sleep(1.2)
        assert sink.count() == count, "no RTP while dropped"
        assert sim.status()[D3]["sessions"][0]["state"] == "sending"
        sim.fault(D3, "resume-media")
        sink.wait_packets(count + 5, 3)
        first = sink.packets[count][1]
        assert first.payload[:4] == b"\x00\x00\x01\xba" and b"\x00\x00\x01\xbc" in first.payload, \
            "resumes with a keyframe pack (system header and PSM)"
        p.bye(call)
    finally:
        sink.close()


def test_offline_online_unregister_garbage_and_malformed_input(udp_env):
    p, sim = udp_env.platform, udp_env.sim
    sink = RtpSink("udp")
    try:
        call = p.invite(D3, channel(3, 1), sink.port, "udp", ssrc="0200000039")
        sink.wait_packets(5, 5)
        # garbage: malformed SIP and RTP reach the platform, the device goes on
        before = len(p.junk)
        assert "garbage" in sim.fault(D3, "garbage")
        p.wait(lambda: len(p.junk) >= before + 3, 3)
        time.sleep(0.3)
        assert sink.bad >= 1 and any(pk.payload_type == 127 for _, pk, _ in sink.packets)
        # malformed input from the platform: logged and dropped
        for junk in (b"\x00\xff" * 50, b"INVITE nonsense\r\n\r\n", b"MESSAGE sip:x SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\n",
                     b"MESSAGE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4:5\r\nFrom: <sip:a@b>\r\nTo: <sip:c@d>\r\n"
                     b"Call-ID: 1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 12\r\n\r\n<Query><&&&>"):
            p.send_raw(junk, p.where[D3])
        sn, resp = p.query(D3, "DeviceInfo")
        assert resp.status == 200 and p.wait(lambda: p.answers(D3, "DeviceInfo", sn), 3)

        # offline: silent
        sim.fault(D3, "offline")
        off = time.monotonic()
        time.sleep(0.3)
        count = sink.count()
        query = p.new_request("MESSAGE", D3, body=manscdp.build("Query", "Catalog", 99, D3),
                              content_type="Application/MANSCDP+xml")
        p.send(D3, query, timeout=0)
        time.sleep(1.5)
        assert sink.count() == count and not p.seen("MESSAGE", D3, since=off + 0.2)
        assert not p.answers(D3, "Catalog", 99) and (query.call_id, query.cseq[0], "MESSAGE") not in p.responses
        assert not [k for k in p.responses if k[0] == call.invite.call_id and k[2] == "BYE"]
        assert sim.status()[D3]["registered"] is False and sim.status()[D3]["sessions"] == []
        # online: a new registration dialog
        sim.fault(D3, "online")
        new = p.wait(lambda: [r for r in p.seen("REGISTER", D3, since=off)], 3)[0]
        assert new.msg.call_id not in {r.msg.call_id for r in p.seen("REGISTER", D3) if r.t < off}
        p.wait(lambda: sim.status()[D3]["registered"], 3)
        p.wait(lambda: p.seen("MESSAGE", D3, "Keepalive", since=new.t), 3)
        # unregister
        un = time.monotonic()
        assert "unregistered (200)" in sim.fault(D3, "unregister")
        assert p.seen("REGISTER", D3, since=un)[-1].msg.header("Expires") == "0"
        time.sleep(1.5)
        assert not p.seen("MESSAGE", D3, "Keepalive", since=un + 0.2), "no keepalives while unregistered"
        sim.fault(D3, "register")
        p.wait(lambda: sim.status()[D3]["registered"], 3)
    finally:
        sink.close()


def test_mutated_requests_never_break_a_device(udp_env, caplog):
    """Hundreds of damaged INVITEs, MESSAGEs, INFOs and BYEs (bytes flipped, cut, lines dropped or repeated):
    each is answered or dropped, nothing raises inside the device, and it answers a query afterwards."""
    p = udp_env.platform
    rng = random.Random(28181)
    invite = p.new_request("INVITE", D2, uri_user=channel(2, 1), content_type="APPLICATION/SDP", body=sdp_offer(
        device_id=D2, media_host=HOST, media_port=9, transport="udp", ssrc="0200000061")).encode()
    message = p.new_request("MESSAGE", D2, content_type="Application/MANSCDP+xml", body=manscdp.build(
        "Query", "RecordInfo", 7, channel(2, 1), [("StartTime", "2020-01-01T00:00:00"), ("EndTime", "x")])).encode()
    info = p.new_request("INFO", D2, uri_user=channel(2, 1), content_type="Application/MANSRTSP",
                         body=b"PLAY RTSP/1.0\r\nCSeq: 2\r\nScale: abc\r\nRange: npt=-5-\r\n").encode()
    bye = p.new_request("BYE", D2, uri_user=channel(2, 1)).encode()

    def mutate(data: bytes) -> bytes:
        kind = rng.randrange(4)
        if kind == 0:
            out = bytearray(data)
            for _ in range(rng.randint(1, 6)):
                out[rng.randrange(len(out))] = rng.randrange(256)
            return bytes(out)
        if kind == 1:
            return data[:rng.randrange(len(data))]
        lines = data.split(b"\r\n")
        i = rng.randrange(len(lines))
        return b"\r\n".join(lines[:i] + lines[i + 1:] if kind == 2 else lines[:i] + [lines[i]] * 2 + lines[i:])

    caplog.set_level("WARNING", logger="vms.simulate.gb28181")
    # and some damage chosen by hand: a URI that is not SIP, impossible SDP, unreadable query fields
    for data in (invite.replace(f"INVITE sip:{channel(2, 1)}@{DOMAIN}".encode(), b"INVITE tel:110", 1),
                 invite.replace(b"m=video 9 ", b"m=video 99999 ", 1), invite.replace(b"m=video 9 ", b"m=video x ", 1),
                 invite.replace(b"s=Play", b"s=Playback", 1),
                 message.replace(b"<SN>7</SN>", b"<SN>seven</SN>", 1).replace(b"2020-01-01T00:00:00", b"9999-99-99"),
                 info, bye):
        call_id = sip.parse_message(invite).call_id if data.startswith(b"INVITE") else None
        for original in (sip.parse_message(m).call_id for m in (invite, message, info, bye)):
            data = data.replace(original.encode(), sip.new_call_id(HOST).encode())  # not a retransmission
        p.send_raw(data, p.where[D2])
        assert call_id is None or call_id.encode() not in data
    for _ in range(100):
        for data in (invite, message, info, bye):
            p.send_raw(mutate(data), p.where[D2])
        time.sleep(0.002)  # within the device's socket buffer
    time.sleep(0.5)
    sn, resp = p.query(D2, "DeviceInfo")
    assert resp.status == 200 and p.wait(lambda: p.answers(D2, "DeviceInfo", sn), 3)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], "an exception escaped"
    assert [r for r in caplog.records if "dropped" in r.getMessage()], "the damage is logged"


# -- playback -------------------------------------------------------------------------------------------------

def test_download_sends_the_range_fast_then_media_status_121(udp_env):
    """...while a live session of the same channel goes on (several sessions per channel)."""
    p, sim = udp_env.platform, udp_env.sim
    sink, live_sink = RtpSink("udp"), RtpSink("udp")
    try:
        live = p.invite(D1, channel(1, 2), live_sink.port, "udp", ssrc="0200000040")
        live_sink.wait_packets(1, 3)
        start_s, end_s = NOW - 500, NOW - 492
        t0 = time.monotonic()
        call = p.invite(D1, channel(1, 2), sink.port, "udp", ssrc="1200000041", purpose="Download",
                        start_s=start_s, end_s=end_s, speed=4)
        assert call.answer.status == 200 and call.sdp.purpose == "Download"
        assert (call.sdp.start_s, call.sdp.end_s) == (start_s, end_s)
        status = p.wait(lambda: [r for r in p.seen("MESSAGE", D1, "MediaStatus") if r.t > t0], 6)[0]
        took = status.t - t0
        assert manscdp.command(status.root)[2] == channel(1, 2)
        assert manscdp.child_text(status.root, "NotifyType") == "121"
        assert took < 4, f"8 s at x4 took {took:.1f} s"
        sessions = {x["call_id"]: x for x in sim.status()[D1]["sessions"]}
        assert sessions[call.invite.call_id]["state"] == "finished", "waits for the platform's BYE"
        assert sessions[live.invite.call_id]["state"] == "sending" and live_sink.count() > 20
        assert p.bye(call).status == 200 and p.bye(live).status == 200
    finally:
        sink.close()
        live_sink.close()
    _, frames, pts, audio = demux(sink.ps())
    assert pts[0] == 0 and abs((pts[-1] - pts[0]) / 90000 - 8) < 0.2 and audio > 0
    assert frames >= 7 * FPS


def test_playback_over_a_card_gap_skips_it(udp_env):
    p = udp_env.platform
    sink = RtpSink("udp")
    try:
        start_s, end_s = GAP[0] - 1, GAP[1] + 1
        t0 = time.monotonic()
        call = p.invite(D1, channel(1, 3), sink.port, "udp", ssrc="1200000042", purpose="Playback",
                        start_s=start_s, end_s=end_s)
        assert call.answer.status == 200
        p.wait(lambda: [r for r in p.seen("MESSAGE", D1, "MediaStatus") if r.t > t0], 5)
        p.bye(call)
        gap_call = p.invite(D1, channel(1, 3), sink.port, "udp", ssrc="1200000043", purpose="Playback",
                            start_s=GAP[0] + 10, end_s=GAP[0] + 20)
        assert gap_call.answer.status == 404, "nothing on the card"
    finally:
        sink.close()
    _, _, pts, _ = demux(sink.ps(1200000042 & 0xFFFFFFFF))
    jumps = [b - a for a, b in zip(pts, pts[1:], strict=False) if b - a > 90000]
    assert len(jumps) == 1 and abs(jumps[0] / 90000 - 1800) < 2, "the timestamps jump over the gap"


def test_playback_pause_play_scale_and_seek_by_info(udp_env):
    p = udp_env.platform
    sink = RtpSink("udp")

    def info(call: Call, text: str) -> SipMessage | None:
        call.cseq += 1
        return p.send(call.dev, p.new_request(
            "INFO", call.dev, uri_user=call.channel, from_=call.invite.header("From"), to=call.answer.header("To"),
            call_id=call.invite.call_id, cseq=call.cseq, content_type="Application/MANSRTSP", body=text.encode()))

    try:
        call = p.invite(D1, channel(1, 1), sink.port, "udp", ssrc="1200000044", purpose="Playback",
                        start_s=NOW - 900, end_s=NOW - 800)
        sink.wait_packets(10, 3)
        assert info(call, "PAUSE RTSP/1.0\r\nCSeq: 1\r\nPauseTime: now\r\n").status == 200
        time.sleep(0.2)
        paused = sink.count()
        time.sleep(0.8)
        assert sink.count() == paused, "paused"
        assert info(call, "PLAY RTSP/1.0\r\nCSeq: 2\r\nRange: npt=60-\r\nScale: 2.0\r\n").status == 200
        sink.wait_packets(paused + 10, 3)
        resumed = time.monotonic()
        time.sleep(1.5)
        with sink.cond:
            after = [pk for t, pk, _ in sink.packets if t >= resumed]
        assert p.bye(call).status == 200
    finally:
        sink.close()
    _, _, pts, _ = demux(sink.ps())
    assert any(abs(b - 60 * 90000) < 90000 for b in pts), "the seek to npt=60 moved the timestamps"
    seconds = (after[-1].timestamp - after[0].timestamp) / 90000
    assert 2.2 <= seconds <= 3.6, f"Scale 2: 1.5 s of wall time carried {seconds:.1f} s of media"


def test_wrong_password_gets_403_and_retries_no_faster_than_every_10_s(udp_env):
    p, sim = udp_env.platform, udp_env.sim
    assert sim.status()[D4]["registered"] is False
    p.wait(lambda: len([r for r in p.seen("REGISTER", D4) if r.msg.header("Authorization")]) >= 2, 15)
    tries = [r.t for r in p.seen("REGISTER", D4) if r.msg.header("Authorization")]
    assert all(b - a >= 9.9 for a, b in zip(tries, tries[1:], strict=False)), tries
    assert sim.status()[D4]["last_register_status"] == 403
    assert not p.seen("MESSAGE", D4, "Keepalive")


# -- SIP over TCP -------------------------------------------------------------------------------------------

def test_sip_over_tcp_register_query_invite_and_rebind(clips):
    platform = Platform("tcp")
    dev, _ = ids(7)
    spec = GbDeviceSpec(dev, [(channel(7, 1), RARE)], PASSWORD, clips["h264"], "h264", FPS, "pcmu")
    sink = RtpSink("passive")
    with GbSimulator([spec], ("127.0.0.1", platform.port), SERVER_ID, DOMAIN, sip_transport="tcp",
                     keepalive_seconds=1.0) as sim:
        try:
            assert sim.status()[dev]["registered"]
            reg = platform.seen("REGISTER", dev)[-1].msg
            assert reg.via.transport == "TCP"
            platform.wait(lambda: platform.seen("MESSAGE", dev, "Keepalive"), 3)
            sn, resp = platform.query(dev, "Catalog")
            assert resp.status == 200
            page = platform.wait(lambda: platform.answers(dev, "Catalog", sn), 3)[0]
            assert manscdp.catalog_page(page.root).items[0].name == RARE
            call = platform.invite(dev, channel(7, 1), sink.port, "tcp-passive", ssrc="0200000071")
            assert call.answer.status == 200
            sink.wait_packets(30, 5)
            conn_before = platform.where[dev]
            peers_before = len(sink.peers)
            before = time.monotonic()
            sim.fault(dev, "rebind")
            platform.wait(lambda: [r for r in platform.seen("REGISTER", dev, since=before)
                                   if r.msg.header("Authorization")], 5)
            platform.wait(lambda: sim.status()[dev]["registered"], 3)
            assert platform.where[dev] != conn_before, "a new connection from a new port"
            platform.wait(lambda: len(sink.peers) == peers_before + 1, 3)  # the media connection again
            count = sink.count()
            sink.wait_packets(count + 10, 3)
            assert platform.bye(call).status == 200
        finally:
            sink.close()
            platform.close()
    ps = sink.ps()
    codecs, frames, _, audio = demux(ps)
    assert codecs["video"] == "h264" and frames >= FPS and audio > 0
    # G.711U is PSM stream type 0x91 on stream 0xC0 (GB/T 28181 annex C). FFmpeg maps 0x91 to pcm_mulaw
    # only for its "imkh_cctv" flavour and otherwise guesses mp2: a platform must map 0x91 itself.
    psm = ps.index(b"\x00\x00\x01\xbc")
    assert b"\x91\xc0" in ps[psm:psm + 40]
def test_sip_over_tcp_refused_and_hung_up_on_still_retries_no_faster_than_every_10_s(clips):
    """A platform that closes the connection after its 403: the device reconnects, but registers again only
    10 s after the refusal."""
    platform = Platform("tcp", hang_up_on_refusal=True)
    dev, _ = ids(8)
    spec = GbDeviceSpec(dev, [(channel(8, 1), "x")], "wrong", clips["h264"], "h264", FPS)
    with GbSimulator([spec], ("127.0.0.1", platform.port), SERVER_ID, DOMAIN, sip_transport="tcp") as sim:
        try:
            assert sim.status()[dev]["last_register_status"] == 403
            platform.wait(lambda: len([r for r in platform.seen("REGISTER", dev)
                                       if r.msg.header("Authorization")]) >= 2, 13)
            tries = [r.t for r in platform.seen("REGISTER", dev) if r.msg.header("Authorization")]
            assert tries[1] - tries[0] >= 9.9
            assert len({r.addr for r in platform.seen("REGISTER", dev)}) >= 2, "a new connection each time"
        finally:
            platform.close()


# -- the command line ---------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
VMS = [sys.executable, "-m", "vms.cli"] if not (Path(sys.executable).parent / "vms").exists() else [
    str(Path(sys.executable).parent / "vms")]


@pytest.mark.slow
def test_cli_prints_the_urls_takes_faults_and_exits_0_on_sigterm(tmp_path, simulator_cache):
    platform = Platform("udp")
    (tmp_path / "none.yaml").write_text("{}\n")
    # PYTHONPATH: this checkout's code, not the one the virtualenv's editable install points at
    env = {**os.environ, "VMS_DATA_DIR": str(tmp_path / "data"), "VMS_CONFIG": str(tmp_path / "none.yaml"),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [*VMS, "simulate", "--gb28181", "2", "--server", f"127.0.0.1:{platform.port}", "--server-id", SERVER_ID,
         "--domain", DOMAIN, "--password", PASSWORD, "--content", "pattern", "--width", "320", "--height", "240",
         "--fps", str(FPS), "--audio", "pcma", "--cache-dir", str(simulator_cache)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        d1, c1 = ids(1)
        d2, c2 = ids(2)
        assert lines == [f"gb28181://{d1}/{c1}", f"gb28181://{d2}/{c2}"]
        serving = proc.stderr.readline()
        control_port = int(re.search(r"fault control on 127\.0\.0\.1:(\d+)", serving).group(1))
        platform.wait(lambda: {d1, d2} <= {r.device for r in platform.seen("REGISTER")
                                           if r.msg.header("Authorization")}, 10)
        out = subprocess.run([*VMS, "simulate", "gb-fault", "stop-keepalive", d2, "--control-port",
                              str(control_port)], capture_output=True, text=True, env=env, timeout=30)
        assert out.returncode == 0 and "keepalives of" in out.stdout, out.stderr
        # the line protocol itself (each vms command costs seconds of imports on a loaded machine)
        with socket.create_connection(("127.0.0.1", control_port), timeout=10) as conn, \
                conn.makefile("rwb", buffering=0) as f:
            f.write(b"status\n")
            status = f.readline().decode().split()
            f.write(b"rebind 00000000000000000000\n")
            unknown = f.readline().decode()
            f.write(b"rebind " + d1.encode() + b"\n")
            rebound = f.readline().decode()
        assert status[0] == "ok" and f"{d2}=registered,sessions:0,port:" in status[2]
        assert status[2].endswith(",keepalive-stopped") and status[1].startswith(f"{d1}=registered,")
        assert unknown.startswith("error unknown device")
        assert rebound.startswith(f"ok {d1} rebound: SIP port ")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0 and time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        platform.close()
