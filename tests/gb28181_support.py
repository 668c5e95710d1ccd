"""A GB/T 28181 SIP server in this process and hand-driven devices for it: raw UDP and TCP sockets sending SIP
built with vms.gb28181.sip/digest, and the control socket the ingest workers use (tests/test_gb28181_server.py,
tests/test_gb28181_sipp.py)."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select

from vms.core.settings import Settings
from vms.db.engine import Database
from vms.db.migrate import upgrade
from vms.db.models import GbChannel, GbDevice
from vms.gb28181.digest import authorization
from vms.gb28181.server import GbServer
from vms.gb28181.sip import SipError, SipMessage, StreamSplitter, new_call_id, new_tag, parse_message, request
from vms.gb28181.views import accept_device

SERVER_ID, DOMAIN, PASSWORD = "44132300002000000001", "4413230000", "gb-server-pw1"
REGISTRAR = f"sip:{SERVER_ID}@{DOMAIN}"
MANSCDP = "Application/MANSCDP+xml"


def device_id(n: int) -> str:
    return f"{DOMAIN[:8]}00132{n:07d}"


def channel_id(n: int, k: int = 1) -> str:
    return f"{DOMAIN[:8]}00131{n:05d}{k:02d}"


def wait_for(pred: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)


def gb_settings(tmp_path: Path, database_url: str | None = None, **gb: Any) -> Settings:
    cfg = {"enabled": True, "sip_host": "127.0.0.1", "sip_port": 0, "server_id": SERVER_ID, "domain": DOMAIN,
           "password": PASSWORD, "keepalive_interval_seconds": 30, "keepalive_missed": 3,
           "register_expires_min_seconds": 60, "invite_timeout_seconds": 1.5, "requests_per_second": 1000}
    cfg.update(gb)
    return Settings.model_validate({
        "data_dir": str(tmp_path / "data"), "database_url": database_url,
        "storage": {"volumes": [{"name": "main", "path": str(tmp_path / "recordings")}]},
        "gb28181": cfg})


@contextmanager
def running_gb_server(tmp_path: Path, template: Path | None, database_url: str | None = None,
                      **gb: Any) -> Iterator[GbServer]:
    """A GbServer on 127.0.0.1 (any port) over a copy of a migrated SQLite file (`template`), or over
    `database_url`, migrated here."""
    settings = gb_settings(tmp_path, database_url, **gb)
    if database_url is None:
        assert template is not None
        path = Path(settings.db_url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
    else:
        upgrade(settings.db_url)
    db = Database(settings.db_url)
    server = GbServer(settings, db).start()
    try:
        yield server
    finally:
        server.stop()
        db.dispose()


def accept(server: GbServer, device: str, password: str | None = None) -> None:
    with server.db.session() as session:
        accept_device(session, device, password, int(time.time() * 1000))


def device_row(server: GbServer, device: str) -> GbDevice | None:
    with server.db.session() as s:
        row = s.get(GbDevice, device)
        if row is not None:
            s.expunge(row)
        return row


def channel_rows(server: GbServer, device: str) -> dict[str, str | None]:
    with server.db.session() as s:
        return {c.channel_id: c.name for c in s.execute(
            select(GbChannel).where(GbChannel.device_id == device)).scalars()}


class Device:
    """A hand-driven GB device: it sends what a test builds and reads what the platform sends. MESSAGE queries
    of the platform are answered 200 as they are read (and kept in `requests`); INVITE and BYE are left to
    the test."""

    def __init__(self, server: GbServer, ident: str, password: str = PASSWORD, host: str = "127.0.0.1",
                 tcp: bool = False) -> None:
        self.server_addr = ("127.0.0.1", server.port)
        self.id, self.password, self.host, self.tcp = ident, password, host, tcp
        self.call_id = new_call_id(host)
        self.tag = new_tag()
        self.cseq = 0
        self.requests: list[SipMessage] = []
        self.auto_answer = {"MESSAGE"}
        self._splitter = StreamSplitter()
        self._backlog: list[SipMessage] = []
        self._open()

    def _open(self) -> None:
        if self.tcp:
            self.sock = socket.create_connection(self.server_addr, timeout=5, source_address=(self.host, 0))
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((self.host, 0))
        self.port = self.sock.getsockname()[1]

    def rebind(self) -> None:
        """A NAT rebinding: the same device now sends from another source port."""
        old = self.sock
        self._open()
        old.close()

    def close(self) -> None:
        self.sock.close()

    # -- building ---------------------------------------------------------------------------------
    def build(self, method: str, uri: str = REGISTRAR, *, expires: int | None = 3600, auth: str | None = None,
              body: bytes = b"", content_type: str | None = None, extra: list[tuple[str, str]] | None = None,
              call_id: str | None = None, cseq: int | None = None) -> SipMessage:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        headers = list(extra or [])
        if method == "REGISTER" and expires is not None:
            headers.append(("Expires", str(expires)))
        if auth:
            headers.append(("Authorization", auth))
        aor = f"sip:{self.id}@{DOMAIN}"
        return request(method, uri, via_host=self.host, via_port=self.port, transport="TCP" if self.tcp else "UDP",
                       from_=f"<{aor}>;tag={self.tag}", to=f"<{aor}>" if method == "REGISTER" else f"<{REGISTRAR}>",
                       call_id=call_id or (self.call_id if method == "REGISTER" else new_call_id(self.host)),
                       cseq=cseq, contact=f"<sip:{self.id}@{self.host}:{self.port}>", body=body,
                       content_type=content_type, extra=headers, user_agent="test-device")

    def keepalive_message(self, sn: int = 1) -> SipMessage:
        body = ('<?xml version="1.0" encoding="GB2312"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n'
                f"<SN>{sn}</SN>\r\n<DeviceID>{self.id}</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n")
        return self.build("MESSAGE", body=body.encode("gb18030"), content_type=MANSCDP)

    # -- the wire -----------------------------------------------------------------------------------
    def send(self, data: SipMessage | bytes) -> None:
        raw = data.encode() if isinstance(data, SipMessage) else data
        if self.tcp:
            self.sock.sendall(raw)
        else:
            self.sock.sendto(raw, self.server_addr)

    def _read(self, timeout: float) -> SipMessage | None:
        if self._backlog:
            return self._backlog.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(70_000)
            except (TimeoutError, BlockingIOError):
                return None
            if self.tcp:
                if not data:
                    return None
                messages = self._splitter.feed(data)
                if not messages:
                    continue
                parsed = [parse_message(m, datagram=False) for m in messages]
                self._backlog.extend(parsed[1:])
                msg = parsed[0]
            else:
                try:
                    msg = parse_message(data)
                except SipError:
                    continue
            if msg.is_request:
                self.requests.append(msg)
                if msg.method in self.auto_answer:
                    self.answer(msg, 200)
            return msg

    def answer(self, req: SipMessage, status: int, body: bytes = b"", content_type: str | None = None,
               to_tag: str | None = None, contact: bool = True) -> SipMessage:
        from vms.gb28181.sip import response_to
        resp = response_to(req, status, to_tag=to_tag or (new_tag() if status > 100 else None))
        if contact and status < 300:
            resp.add_header("Contact", f"<sip:{self.id}@{self.host}:{self.port}>")
        if content_type:
            resp.add_header("Content-Type", content_type)
        resp.body = body
        self.send(resp)
        return resp

    def next(self, pred: Callable[[SipMessage], bool], timeout: float = 3.0) -> SipMessage | None:
        """The next message the platform sends that `pred` accepts (others are read and dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            msg = self._read(remaining)
            if msg is None:
                return None
            if pred(msg):
                return msg

    def response_to(self, req: SipMessage, timeout: float = 3.0) -> SipMessage | None:
        cseq, call_id = req.header("CSeq"), req.call_id
        return self.next(lambda m: not m.is_request and m.header("CSeq") == cseq and m.call_id == call_id,
                         timeout)

    def transact(self, req: SipMessage, timeout: float = 3.0) -> SipMessage:
        self.send(req)
        resp = self.response_to(req, timeout)
        assert resp is not None, f"no answer to {req.describe()}"
        return resp

    def wait_request(self, method: str, timeout: float = 3.0, cmd: str | None = None) -> SipMessage | None:
        def wanted(m: SipMessage) -> bool:
            return m.method == method and (cmd is None or f"<CmdType>{cmd}</CmdType>".encode() in m.body)
        for m in self.requests:
            if wanted(m):
                self.requests.remove(m)
                return m
        found = self.next(lambda m: m.is_request and wanted(m), timeout)
        if found is not None:
            self.requests.remove(found)
        return found

    # -- registration ------------------------------------------------------------------------------
    def challenge(self, expires: int = 3600) -> SipMessage:
        first = self.transact(self.build("REGISTER", expires=expires))
        assert first.status == 401, first.describe()
        return first

    def register(self, expires: int = 3600, password: str | None = None,
                 extra: list[tuple[str, str]] | None = None) -> SipMessage:
        """REGISTER, the 401, and REGISTER with the digest answer: the final answer."""
        first = self.challenge(expires)
        auth = authorization(first.header("WWW-Authenticate") or "", "REGISTER", REGISTRAR, self.id,
                             password or self.password)
        return self.transact(self.build("REGISTER", expires=expires, auth=auth, extra=extra))


class Control:
    """The ingest worker's end of the control socket (JSON lines)."""

    def __init__(self, server: GbServer) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(server.control_path)
        self.file = self.sock.makefile("rb")

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall((json.dumps(message) + "\n").encode())

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        line = self.file.readline()
        assert line, "the control connection closed"
        return json.loads(line)

    def close(self) -> None:
        self.file.close()
        self.sock.close()
