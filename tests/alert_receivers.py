"""Receivers for the alert channels' tests, on 127.0.0.1: robots that answer like WeCom's and DingTalk's group
robots (HTTP 200 with an errcode; key, signature, keyword and rate checks), a generic webhook receiver that
verifies the HMAC signature, and an SMTP server (aiosmtpd) with optional AUTH, STARTTLS or TLS.

They check what the real receivers check, independently of vms's code (the signatures are recomputed here
from the documented recipes), so a channel that signs wrongly is refused here as it would be there. Only
accepted messages land in `.received`; every request, accepted or not, is in `.requests`.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import hashlib
import hmac
import ipaddress
import json
import math
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from collections import deque
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

HOST = "127.0.0.1"
PATHS = {"wecom": "/cgi-bin/webhook/send", "dingtalk": "/robot/send", "webhook": "/hooks/vms"}
KEY_PARAMS = {"wecom": "key", "dingtalk": "access_token", "webhook": "token"}
WECOM_MAX_BYTES = 4096
AUTH_WITHOUT_TLS_WARNING = "ignore:Requiring AUTH while not requiring TLS:UserWarning"


def _reuse_port_socket(port: int) -> socket.socket:
    """A socket bound (not listening) to port with SO_REUSEPORT: it holds the port while the receiver is down
    (connections to it are refused) and lets the next listener bind beside it before it lets go."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((HOST, port))
    return s


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow answer still sleeping does not hold up close()
    allow_reuse_address = True
    receiver: RobotReceiver

    def server_bind(self) -> None:
        # SO_REUSEPORT so that down()/up() can hand the port over without ever letting go of it.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout test) is expected, not worth a traceback


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        status, headers, payload = self.server.receiver._answer(self.path, dict(self.headers.items()), raw)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RobotReceiver:
    """kind "wecom" | "dingtalk" | "webhook". `url` is the full address a channel is configured with (with the
    key, access_token or token). Faults: fail_next(n, status), errcode_next(n, code), delay_seconds, down()/up().
    Use as a context manager, or call close()."""

    def __init__(self, kind: str = "wecom", key: str | None = None, secret: str | None = None,
                 keyword: str | None = None, per_minute: int = 20) -> None:
        assert kind in PATHS, kind
        self.kind = kind
        self.key = key if key is not None else secrets.token_hex(16)
        self.secret = secret
        self.keyword = keyword
        self.per_minute = per_minute
        self.delay_seconds = 0.0
        self.received: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._accepted_at: deque[float] = deque()
        self._fail: deque[tuple[int, dict[str, str]]] = deque()
        self._errcodes: deque[int] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._hold: socket.socket | None = None
        self._server = self._serve(0)
        self.port: int = self._server.server_address[1]

    # -- lifecycle
    def _serve(self, port: int) -> _Server:
        server = _Server((HOST, port), _Handler)
        server.receiver = self
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name=f"{self.kind}-receiver").start()
        return server

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{PATHS[self.kind]}?{KEY_PARAMS[self.kind]}={self.key}"

    def url_with_key(self, key: str) -> str:
        return f"http://{HOST}:{self.port}{PATHS[self.kind]}?{KEY_PARAMS[self.kind]}={key}"

    def down(self) -> None:
        """Refuse connections (as a stopped or unreachable receiver does), keeping the port for up()."""
        assert self._hold is None, "already down"
        self._hold = _reuse_port_socket(self.port)
        self._server.shutdown()
        self._server.server_close()

    def up(self) -> None:
        assert self._hold is not None, "not down"
        self._server = self._serve(self.port)
        self._hold.close()
        self._hold = None

    def close(self) -> None:
        self._closing.set()
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        else:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> RobotReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults
    def fail_next(self, n: int, status: int = 500, headers: dict[str, str] | None = None) -> None:
        """The next n requests get this HTTP status (and headers, e.g. Retry-After)."""
        with self._lock:
            self._fail.extend([(status, dict(headers or {}))] * n)

    def errcode_next(self, n: int, code: int) -> None:
        """The next n requests get HTTP 200 with this errcode (a webhook: this HTTP status)."""
        with self._lock:
            self._errcodes.extend([code] * n)

    # -- answering
    def _robot(self, code: int, msg: str) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps({"errcode": code, "errmsg": msg}).encode()
        return 200, {"Content-Type": "application/json"}, body

    def _answer(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.delay_seconds:
            self._closing.wait(self.delay_seconds)
        parts = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(parts.query)
        with self._lock:
            answer = self._decide(parts.path, query, headers, raw)
            self.requests.append({"path": path, "headers": headers, "raw": raw, "answer": answer})
            return answer

    def _refuse(self, errcode: int, msg: str, status: int) -> tuple[int, dict[str, str], bytes]:
        if self.kind == "webhook":
            return status, {"Content-Type": "text/plain"}, msg.encode()
        return self._robot(errcode, msg)

    def _decide(self, path: str, query: dict[str, list[str]], headers: dict[str, str],
                raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._fail:
            status, extra = self._fail.popleft()
            return status, extra, b"injected failure"
        if self._errcodes:
            code = self._errcodes.popleft()
            if self.kind == "webhook":
                return code, {}, b"injected status"
            return self._robot(code, "injected errcode")
        if path != PATHS[self.kind]:
            return 404, {}, b"not found"
        if query.get(KEY_PARAMS[self.kind]) != [self.key]:
            if self.kind == "wecom":
                return self._robot(93000, "invalid webhook url, hint: [1700000000_1_abc]")
            if self.kind == "dingtalk":
                return self._robot(300001, "token is not exist")
            return 401, {}, b"bad token"
        if self.kind == "dingtalk" and self.secret is not None:
            refused = self._dingtalk_sign_problem(query)
            if refused:
                return self._robot(310000, refused)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return self._refuse(40035, "invalid json", 400)
        text = self._text(body)
        if text is None:
            return self._refuse(40008, "invalid message type", 400)
        if self.kind == "wecom" and len(text.encode("utf-8")) > WECOM_MAX_BYTES:
            return self._robot(40058, "markdown.content exceed max length 4096")
        if self.kind == "dingtalk" and self.keyword and self.keyword not in text:
            return self._robot(310000, "keywords not in content")
        # The robots' limit: per_minute accepted messages in any 60 s.
        now = time.monotonic()
        while self._accepted_at and now - self._accepted_at[0] >= 60:
            self._accepted_at.popleft()
        if len(self._accepted_at) >= self.per_minute:
            if self.kind == "wecom":
                return self._robot(45009, "api freq out of limit")
            if self.kind == "dingtalk":
                return self._robot(130101, "send too fast, exceed 20 times per minute")
            wait = math.ceil(60 - (now - self._accepted_at[0]))
            return 429, {"Retry-After": str(wait)}, b"too many requests"
        self._accepted_at.append(now)
        if self.kind == "webhook":
            self.received.append({"body": body, "headers": headers, "raw": raw,
                                  "verified": self._webhook_verified(headers, raw)})
            return 200, {"Content-Type": "text/plain"}, b"ok"
        self.received.append(body)
        return self._robot(0, "ok")

    def _text(self, body: Any) -> str | None:
        """The text a robot shows (what its keyword and length checks read); None when the body is not a
        message this robot knows."""
        if not isinstance(body, dict):
            return None
        if self.kind == "webhook":
            return ""
        msgtype = body.get("msgtype")
        if msgtype == "markdown":
            field = "content" if self.kind == "wecom" else "text"
        elif msgtype == "text":
            field = "content"
        else:
            return None
        value = (body.get(msgtype) or {}).get(field)
        return value if isinstance(value, str) else None

    def _dingtalk_sign_problem(self, query: dict[str, list[str]]) -> str | None:
        assert self.secret is not None
        ts, sign = query.get("timestamp", [""])[0], query.get("sign", [""])[0]
        if not ts.isdigit() or not sign:
            return "sign not match, more: [missing timestamp or sign]"
        if abs(time.time() * 1000 - int(ts)) > 3600 * 1000:
            return "invalid timestamp"
        digest = hmac.new(self.secret.encode(), f"{ts}\n{self.secret}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), sign):
            return "sign not match"
        return None

    def _webhook_verified(self, headers: dict[str, str], raw: bytes) -> bool | None:
        if self.secret is None:
            return None
        ts = headers.get("X-VMS-Timestamp", "")
        expected = "sha256=" + hmac.new(self.secret.encode(), ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
        return ts.isdigit() and hmac.compare_digest(expected, headers.get("X-VMS-Signature", ""))


def refused_port() -> tuple[socket.socket, int]:
    """A port nobody listens on, held (bound, not listening) for as long as the socket is open: connections
    to it are refused. Never bind+close+reuse: another test could take the port in between."""
    s = _reuse_port_socket(0)
    return s, s.getsockname()[1]


def silent_port() -> tuple[socket.socket, int]:
    """A port that accepts connections (the kernel's backlog) and never says anything: the SMTP greeting or
    the HTTP answer never comes."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    s.listen(8)
    return s, s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------- SMTP

def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(cert, key) PEM files for 127.0.0.1 and localhost, valid now for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vms test smtp")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _PortZeroController(Controller):
    """aiosmtpd's Controller on port 0: it binds the port it was given, then connects to that port to start
    the SMTP protocol, so with 0 it must learn the port the kernel chose before that connection."""

    def _create_server(self) -> Any:
        async def create() -> Any:
            server = await self.loop.create_server(self._factory_invoker, host=self.hostname, port=self.port,
                                                   ssl=self.ssl_context)
            self.port = server.sockets[0].getsockname()[1]
            return server
        return create()


class _SmtpHandler:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        refusal = self.receiver.refuse_rcpt.get(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.receiver.received.append({"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                                       "message": message, "login": session.auth_data and session.auth_data.login,
                                       "tls": session.ssl is not None})
        return "250 Message accepted for delivery"


class SmtpReceiver:
    """An SMTP server on 127.0.0.1 (aiosmtpd, port 0). security: "none", "starttls" (STARTTLS required) or
    "ssl" (TLS from the first byte), the latter two with a self-signed certificate for 127.0.0.1 written to
    cert_dir (clients trust it through SSL_CERT_FILE). With user/password, AUTH is required.
    `.received`: dicts with mail_from, rcpt_tos, message (an EmailMessage), login, tls.
    `.refuse_rcpt`: address -> SMTP reply, e.g. "550 5.1.1 no such user".
    AUTH without STARTTLS makes aiosmtpd warn (UserWarning "Requiring AUTH while not requiring TLS"): a test
    doing that filters it (AUTH_WITHOUT_TLS_WARNING)."""

    def __init__(self, security: str = "none", user: str | None = None, password: str | None = None,
                 cert_dir: Path | None = None) -> None:
        self.security = security
        self.user, self.password = user, password
        self.received: list[dict[str, Any]] = []
        self.refuse_rcpt: dict[str, str] = {}
        self.cert_path: Path | None = None
        kwargs: dict[str, Any] = {}
        if security in ("ssl", "starttls"):
            assert cert_dir is not None, "TLS needs a directory for the certificate"
            self.cert_path, key_path = self_signed_cert(cert_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert_path, key_path)
            if security == "ssl":
                kwargs["ssl_context"] = context
            else:
                kwargs.update(tls_context=context, require_starttls=True)
        if user is not None:
            # aiosmtpd knows of TLS only when it came by STARTTLS: on "ssl" it would hide AUTH if TLS were required.
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=security == "starttls")
        self.controller = _PortZeroController(_SmtpHandler(self), hostname=HOST, port=0, **kwargs)
        self.controller.start()
        self.port: int = self.controller.port

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user
              and auth_data.password.decode() == self.password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def close(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------- raw-socket faults

class _RawSocketServer:
    """A server on a raw socket of 127.0.0.1 (port 0): each connection is answered by `_answer` on a thread
    of its own. `.client_gone` is set when a client closed its connection."""

    def __init__(self, name: str) -> None:
        self.client_gone = threading.Event()
        self._closing = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self._sock.listen(8)
        self.port: int = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True, name=name).start()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closing.set()
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawAnswerer(_RawSocketServer):
    """A receiver on a raw socket that answers every request badly, for the channels' total deadline and
    answer cap. mode "trickle": HTTP 200, chunked, one byte every `interval` seconds, forever; "huge": HTTP 200
    with `size` bytes of body, sent as fast as the client takes them (chunked, or with a Content-Length when
    declare_length). `.sent` counts the body bytes the kernel took (the client cannot have read more);
    `.client_gone` is set when the client closed the connection."""

    def __init__(self, mode: str, interval: float = 0.5, size: int = 100 * 1024 * 1024,
                 declare_length: bool = False) -> None:
        assert mode in ("trickle", "huge"), mode
        self.mode, self.interval, self.size, self.declare_length = mode, interval, size, declare_length
        self.sent = 0
        super().__init__(f"raw-{mode}")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{PATHS['wecom']}?key=raw-answerer-key"

    def _answer(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.recv(65536)
                if self.mode == "trickle":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    while not self._closing.wait(self.interval):
                        conn.sendall(b"1\r\n \r\n")
                        self.sent += 1
                    return
                length = (b"Content-Length: %d\r\n" % self.size if self.declare_length
                          else b"Transfer-Encoding: chunked\r\n")
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + length + b"\r\n")
                block = b" " * (1 << 20)
                frame = block if self.declare_length else b"%x\r\n" % len(block) + block + b"\r\n"
                for _ in range(self.size // len(block)):
                    if self._closing.is_set():
                        return
                    conn.sendall(frame)
                    self.sent += len(block)
                if not self.declare_length:
                    conn.sendall(b"0\r\n\r\n")
                conn.recv(1)  # wait for the client to close
        except OSError:
            pass
        finally:
            self.client_gone.set()



class TricklingSmtp(_RawSocketServer):
    """An SMTP-like server on a raw socket: it greets at once, then answers EHLO with a multi-line reply sent
    one byte every `interval` seconds, for ever. Every socket read of the client gets something well within
    its timeout; the conversation never ends. `.client_gone` is set when the client closed the connection."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        super().__init__("trickling-smtp")

    def _answer(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.sendall(b"220 slow.example.cn ESMTP\r\n")
                conn.recv(1024)  # EHLO
                while not self._closing.wait(self.interval):
                    for byte in b"250-slow.example.cn\r\n":
                        conn.sendall(bytes([byte]))
                        if self._closing.wait(self.interval):
                            return
        except OSError:
            pass
        finally:
            self.client_gone.set()

