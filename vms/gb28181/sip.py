"""SIP messages as GB/T 28181 devices send them: parsing, building, and the headers the platform uses.

Our own thin layer, not a SIP library: the libraries on PyPI either reject the URIs every GB device
sends (`sip:34020000001320000001@3402000000`: a numeric host that is not an IPv4 address) or drop the
SDP lines GB needs (docs/design/gb28181.md). So this parser is tolerant where devices are sloppy (bare
LF line ends, compact header names, folded lines, a Content-Length that disagrees with a datagram) and
strict where a mistake would mix up devices (one start line, one Call-ID, CSeq a number and a method).
Bodies stay bytes: their charset (GB2312, GBK, GB18030, UTF-8) is the body parser's business, and
Content-Length counts bytes.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 64 * 1024  # a SIP message larger than this is refused (GB messages are a few KB)
MAX_HEADERS = 100

COMPACT_NAMES = {
    "v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact", "l": "Content-Length",
    "c": "Content-Type", "s": "Subject", "k": "Supported", "e": "Content-Encoding",
}
# How headers are spelt when we write them (devices compare some case-sensitively).
CANONICAL = {name.lower(): name for name in (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length", "Content-Type", "Max-Forwards",
    "User-Agent", "Expires", "WWW-Authenticate", "Authorization", "Subject", "Date", "X-GB-Ver", "Allow",
    "Supported", "Route", "Record-Route", "Reason")}

REASONS = {
    100: "Trying", 180: "Ringing", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 486: "Busy Here", 488: "Not Acceptable Here",
    500: "Server Internal Error", 503: "Service Unavailable",
}

_START_REQUEST = re.compile(r"^([A-Z]+) (\S+) SIP/2\.0$")
_START_RESPONSE = re.compile(r"^SIP/2\.0 (\d{3})(?: (.*))?$")
_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # never in a header (RFC 3261 25.1): binary, not text


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²" and "５", which int() then refuses or reads."""
    return text.isascii() and text.isdigit()


class SipError(ValueError):
    """A message that cannot be understood; the text says what is wrong with it."""


@dataclass
class SipUri:
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    scheme: str = "sip"

    def __str__(self) -> str:
        text = f"{self.scheme}:"
        if self.user:
            text += f"{self.user}@"
        text += self.host
        if self.port:
            text += f":{self.port}"
        for key, value in self.params.items():
            text += f";{key}" if value is None else f";{key}={value}"
        return text


def parse_uri(text: str) -> SipUri:
    """sip:user@host[:port][;params]. The host may be a GB domain (ten digits), a name or an address."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() not in ("sip", "sips"):
        raise SipError(f"not a SIP URI: {text[:80]!r}")
    rest, _, headers = rest.partition("?")  # URI headers: not used by GB; dropped
    parts = rest.split(";")
    address, params = parts[0], _params(parts[1:])
    user: str | None = None
    if "@" in address:
        user, _, address = address.rpartition("@")
        user = user.split(":", 1)[0] or None  # a password in the URI is ignored
    host, port = _host_port(address)
    return SipUri(user, host, port, params, scheme.lower())


def _host_port(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if not text:
        raise SipError("URI without a host")
    if text.startswith("["):  # IPv6 reference
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    port: int | None = None
    if port_text:
        if not _is_number(port_text) or not 0 < int(port_text) < 65536:
            raise SipError(f"bad port {port_text!r}")
        port = int(port_text)
    return host, port


def _params(items: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        out[key.strip().lower()] = value.strip().strip('"') if sep else None
    return out


@dataclass
class NameAddr:
    """`"name" <sip:...>;tag=x` of From, To and Contact."""

    uri: SipUri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        text = f'"{self.display}" ' if self.display else ""
        text += f"<{self.uri}>"
        for key, value in self.params.items():
            text += f";{key}" if value is None else f";{key}={value}"
        return text


def parse_name_addr(text: str) -> NameAddr:
    text = text.strip()
    display: str | None = None
    if "<" in text:
        head, _, rest = text.partition("<")
        uri_text, sep, tail = rest.partition(">")
        if not sep:
            raise SipError(f"unclosed < in {text[:80]!r}")
        display = head.strip().strip('"') or None
        params = _params(tail.split(";")[1:])
    else:  # addr-spec form: parameters belong to the header, not the URI
        uri_text, *param_items = text.split(";")
        params = _params(param_items)
    return NameAddr(parse_uri(uri_text), display, params)


@dataclass
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")


def parse_via(text: str) -> Via:
    """The first Via value: `SIP/2.0/UDP host:port;branch=...;rport`."""
    values = split_header_values(text)
    if not values:
        raise SipError("empty Via")
    first = values[0]
    proto, _, rest = first.strip().partition(" ")
    pieces = proto.split("/")
    if len(pieces) != 3 or pieces[0].upper() != "SIP":
        raise SipError(f"bad Via {first[:80]!r}")
    sent_by, *param_items = rest.strip().split(";")
    host, port = _host_port(sent_by)
    return Via(pieces[2].upper(), host, port, _params(param_items))


def split_header_values(text: str) -> list[str]:
    """Comma-separated values of one header line, commas inside quotes or <> kept."""
    values, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and not quoted and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    return [v for v in values if v]


def canonical_name(name: str) -> str:
    name = name.strip()
    lower = name.lower()
    if lower in COMPACT_NAMES:
        return COMPACT_NAMES[lower]
    return CANONICAL.get(lower, name)


@dataclass
class SipMessage:
    """A request (method and uri set) or a response (status set). Header names are canonical."""

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def header(self, name: str) -> str | None:
        key = canonical_name(name).lower()
        for hname, value in self.headers:
            if hname.lower() == key:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        key = canonical_name(name).lower()
        return [value for hname, value in self.headers if hname.lower() == key]

    def set_header(self, name: str, value: str | int) -> None:
        """Replace every value of `name` with one value (appended at the end if absent)."""
        key = canonical_name(name)
        kept, placed = [], False
        for hname, old in self.headers:
            if hname.lower() == key.lower():
                if not placed:
                    kept.append((key, str(value)))
                    placed = True
            else:
                kept.append((hname, old))
        if not placed:
            kept.append((key, str(value)))
        self.headers = kept

    def add_header(self, name: str, value: str | int) -> None:
        self.headers.append((canonical_name(name), str(value)))

    @property
    def call_id(self) -> str:
        value = self.header("Call-ID")
        if not value:
            raise SipError("no Call-ID")
        return value.strip()

    @property
    def cseq(self) -> tuple[int, str]:
        value = self.header("CSeq")
        if not value:
            raise SipError("no CSeq")
        number, _, method = value.strip().partition(" ")
        if not _is_number(number) or not method.strip():
            raise SipError(f"bad CSeq {value[:40]!r}")
        return int(number), method.strip().upper()

    @property
    def from_(self) -> NameAddr:
        value = self.header("From")
        if not value:
            raise SipError("no From")
        return parse_name_addr(value)

    @property
    def to(self) -> NameAddr:
        value = self.header("To")
        if not value:
            raise SipError("no To")
        return parse_name_addr(value)

    @property
    def via(self) -> Via:
        value = self.header("Via")
        if not value:
            raise SipError("no Via")
        return parse_via(value)

    def encode(self) -> bytes:
        if self.is_request:
            start = f"{self.method} {self.uri} SIP/2.0"
        else:
            start = f"SIP/2.0 {self.status} {self.reason or REASONS.get(self.status or 0, '')}".rstrip()
        lines = [start]
        for name, value in self.headers:
            if name.lower() != "content-length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    def describe(self) -> str:
        """One line for logs: no body, no credentials."""
        if self.is_request:
            return f"{self.method} {self.uri}"
        return f"{self.status} {self.reason} ({self.header('CSeq') or '?'})"


def _split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """(head, rest) split at the blank line; None if there is none yet. Bare LF is accepted."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return None
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return data[:crlf], data[crlf + 4:]
    return data[:lf], data[lf + 2:]


def parse_message(data: bytes, datagram: bool = True) -> SipMessage:
    """One whole message. Over UDP the datagram is the message: a Content-Length larger than what came
    is an error, a smaller one trims the body (RFC 3261 18.3)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipError(f"message of {len(data)} bytes is larger than {MAX_MESSAGE_BYTES}")
    data = data.lstrip(b"\r\n")  # keep-alive CRLFs before a message
    split = _split_head(data)
    if split is None:
        raise SipError("no blank line after the headers")
    head, body = split
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("gb18030", errors="replace")  # a display name in GBK: keep going
    lines = text.replace("\r\n", "\n").split("\n")
    msg = _start_line(lines[0].strip())
    unfolded: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip()
        elif line.strip():
            unfolded.append(line)
    if len(unfolded) > MAX_HEADERS:
        raise SipError(f"more than {MAX_HEADERS} header lines")
    for line in unfolded:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name.strip()):
            raise SipError(f"bad header line {line[:60]!r}")
        if _CONTROL.search(value.strip()):
            raise SipError(f"control characters in header {name.strip()[:30]!r}")
        msg.headers.append((canonical_name(name), value.strip()))
    length_text = msg.header("Content-Length")
    if length_text is not None:
        if not _is_number(length_text.strip()):
            raise SipError(f"bad Content-Length {length_text[:20]!r}")
        length = int(length_text)
        if length > len(body):
            raise SipError(f"Content-Length {length} but only {len(body)} bytes of body")
        body = body[:length]
    elif not datagram:
        body = b""
    msg.body = body
    for needed in ("Via", "From", "To", "Call-ID", "CSeq"):
        if msg.header(needed) is None:
            raise SipError(f"no {needed} header")
    number, method = msg.cseq
    if msg.is_request and method != msg.method:
        raise SipError(f"CSeq method {method} does not match {msg.method}")
    msg.via  # noqa: B018 - checked here, so that no later use of it fails otherwise
    return msg


def _start_line(line: str) -> SipMessage:
    m = _START_REQUEST.match(line)
    if m:
        return SipMessage(method=m.group(1), uri=m.group(2))
    m = _START_RESPONSE.match(line)
    if m:
        return SipMessage(status=int(m.group(1)), reason=(m.group(2) or "").strip())
    raise SipError(f"not a SIP start line: {line[:80]!r}")


def _head_end(buffer: bytearray) -> tuple[int, int] | None:
    """(end of the headers, start of the body) in `buffer`, or None if the blank line has not come."""
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return None
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return crlf, crlf + 4
    return lf, lf + 2


class StreamSplitter:
    """Messages out of a TCP byte stream: headers up to the blank line, then Content-Length bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        while True:
            # CRLF keep-alives (RFC 5626) between messages
            while self._buffer[:2] == b"\r\n":
                del self._buffer[:2]
            while self._buffer[:1] == b"\n":
                del self._buffer[:1]
            head_end = _head_end(self._buffer)
            if head_end is None:
                if len(self._buffer) > MAX_MESSAGE_BYTES:
                    raise SipError(f"no end of headers within {MAX_MESSAGE_BYTES} bytes")
                return out
            head, head_len = bytes(self._buffer[:head_end[0]]), head_end[1]
            length = 0
            for line in head.split(b"\n"):
                name, sep, value = line.partition(b":")
                if sep and name.strip().lower() in (b"content-length", b"l"):
                    text = value.strip()
                    if not text.isdigit():
                        raise SipError("bad Content-Length on a stream")
                    length = int(text)
            if head_len + length > MAX_MESSAGE_BYTES:
                raise SipError(f"message of {head_len + length} bytes is larger than {MAX_MESSAGE_BYTES}")
            if len(self._buffer) < head_len + length:
                return out
            out.append(bytes(self._buffer[:head_len + length]))
            del self._buffer[:head_len + length]


# -- building ---------------------------------------------------------------------------------------

def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(10)}@{host}"


def response_to(request: SipMessage, status: int, reason: str | None = None, to_tag: str | None = None,
                received: tuple[str, int] | None = None) -> SipMessage:
    """A response carrying the request's Via (with received/rport filled for NAT), From, To (tagged),
    Call-ID and CSeq."""
    resp = SipMessage(status=status, reason=reason or REASONS.get(status, ""))
    for i, via in enumerate(request.header_values("Via")):
        if i == 0 and received is not None:
            via = _via_with_received(via, received)
        resp.add_header("Via", via)
    resp.add_header("From", request.header("From") or "")
    to = request.header("To") or ""
    if to_tag and ";tag=" not in to.replace(" ", "").lower():
        to = f"{to};tag={to_tag}"
    resp.add_header("To", to)
    resp.add_header("Call-ID", request.header("Call-ID") or "")
    resp.add_header("CSeq", request.header("CSeq") or "")
    return resp


def _via_with_received(via: str, received: tuple[str, int]) -> str:
    """RFC 3581: where the request really came from, so the device's NAT can route the answer."""
    first, *others = split_header_values(via)
    parts = first.split(";")
    out = [parts[0]]
    for item in parts[1:]:
        key = item.strip().split("=", 1)[0].lower()
        if key == "rport":
            out.append(f"rport={received[1]}")
        elif key != "received":
            out.append(item.strip())
    out.append(f"received={received[0]}")
    return ", ".join([";".join(out), *others])


def request(method: str, uri: str, *, via_host: str, via_port: int, transport: str, from_: str, to: str,
            call_id: str, cseq: int, branch: str | None = None, contact: str | None = None,
            body: bytes = b"", content_type: str | None = None, extra: list[tuple[str, str]] | None = None,
            user_agent: str = "vms") -> SipMessage:
    msg = SipMessage(method=method, uri=uri)
    msg.add_header("Via", f"SIP/2.0/{transport.upper()} {via_host}:{via_port};rport;branch={branch or new_branch()}")
    msg.add_header("From", from_)
    msg.add_header("To", to)
    msg.add_header("Call-ID", call_id)
    msg.add_header("CSeq", f"{cseq} {method}")
    msg.add_header("Max-Forwards", "70")
    if contact:
        msg.add_header("Contact", contact)
    for name, value in extra or []:
        msg.add_header(name, value)
    msg.add_header("User-Agent", user_agent)
    if content_type:
        msg.add_header("Content-Type", content_type)
    msg.body = body
    return msg
