"""SIP digest authentication (RFC 2617 / 3261 22.4, MD5) for device registration, both sides.

GB/T 28181 devices authenticate REGISTER with MD5 digest; the 2022 edition names SM3, but devices in the
field and WVP use MD5, so MD5 is what is implemented. Nonces are stateless (a time and an HMAC over it
and the device ID under a secret of this process), so a challenge survives nothing and needs no table;
what is remembered is the highest nonce-count each nonce has been used with, so a replayed REGISTER
(same nonce and count) is challenged again instead of accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from vms.gb28181.sip import split_header_values

NONCE_LIFETIME_S = 600.0
MAX_TRACKED_NONCES = 10_000


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def parse_digest(header: str) -> dict[str, str]:
    """`Digest username="x", realm="y", ...` -> {name: value} (names lower case)."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    out: dict[str, str] = {}
    for item in split_header_values(rest):
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip().strip('"')
    return out


def digest_response(username: str, realm: str, password: str, method: str, uri: str, nonce: str,
                    qop: str | None = None, nc: str | None = None, cnonce: str | None = None) -> str:
    ha1 = md5_hex(f"{username}:{realm}:{password}")
    ha2 = md5_hex(f"{method}:{uri}")
    if qop:
        return md5_hex(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return md5_hex(f"{ha1}:{nonce}:{ha2}")


@dataclass
class DigestVerdict:
    ok: bool
    stale: bool = False  # a good response with an expired or replayed nonce: challenge again, not 403
    problem: str = ""


class DigestServer:
    def __init__(self, realm: str, clock=time.monotonic) -> None:
        self.realm = realm
        self._secret = secrets.token_bytes(16)
        self._clock = clock
        self._used: OrderedDict[str, int] = OrderedDict()  # nonce -> highest nc accepted (0: without qop)

    def _mac(self, stamp: str, device_id: str) -> str:
        return hmac.new(self._secret, f"{stamp}:{device_id}".encode(), hashlib.sha256).hexdigest()[:24]

    def nonce(self, device_id: str) -> str:
        stamp = f"{int(self._clock() * 1000):x}"
        return f"{stamp}{self._mac(stamp, device_id)}"

    def challenge(self, device_id: str, stale: bool = False) -> str:
        text = f'Digest realm="{self.realm}", nonce="{self.nonce(device_id)}", qop="auth", algorithm=MD5'
        return text + (", stale=TRUE" if stale else "")

    def verify(self, header: str | None, method: str, device_id: str, password: str) -> DigestVerdict:
        if not header:
            return DigestVerdict(False, problem="no Authorization")
        fields = parse_digest(header)
        nonce, response = fields.get("nonce", ""), fields.get("response", "")
        if not nonce or not response or "uri" not in fields:
            return DigestVerdict(False, problem="incomplete Authorization")
        if fields.get("username") != device_id:
            return DigestVerdict(False, problem=f"username {fields.get('username')!r} is not the device ID")
        if fields.get("algorithm", "MD5").upper() != "MD5":
            return DigestVerdict(False, problem=f"algorithm {fields.get('algorithm')} is not supported (MD5 only)")
        qop = fields.get("qop")
        if qop and qop.lower() != "auth":
            return DigestVerdict(False, problem=f"qop {qop} is not supported")
        if not (nonce.isascii() and response.isascii()):
            return DigestVerdict(False, problem="malformed Authorization")
        # Is the nonce ours and fresh? Judged before the password: an answer over a nonce we never gave out
        # (sent from a forged address, which our challenge never reached) is challenged, never a refusal.
        stamp, mac = nonce[:-24], nonce[-24:]
        try:
            issued_s = int(stamp, 16) / 1000
        except ValueError:
            return DigestVerdict(False, stale=True, problem="nonce not issued here")
        if not hmac.compare_digest(mac, self._mac(stamp, device_id)):
            return DigestVerdict(False, stale=True, problem="nonce not issued here")
        if not 0 <= self._clock() - issued_s <= NONCE_LIFETIME_S:
            return DigestVerdict(False, stale=True, problem="nonce expired")
        expected = digest_response(device_id, fields.get("realm", self.realm), password, method, fields["uri"],
                                   nonce, qop, fields.get("nc"), fields.get("cnonce"))
        if not hmac.compare_digest(expected, response.lower()):
            return DigestVerdict(False, problem="wrong password")
        if fields.get("realm", self.realm) != self.realm:
            return DigestVerdict(False, stale=True, problem=f"realm {fields.get('realm')!r} is not ours")
        try:
            count = int(fields.get("nc", "0"), 16) if qop else 0
        except ValueError:
            return DigestVerdict(False, problem="bad nonce count")
        last = self._used.get(nonce)
        if last is not None and count <= last:
            return DigestVerdict(False, stale=True, problem="nonce replayed")
        self._used[nonce] = count
        self._used.move_to_end(nonce)
        while len(self._used) > MAX_TRACKED_NONCES:
            self._used.popitem(last=False)
        return DigestVerdict(True)


def authorization(challenge: str, method: str, uri: str, username: str, password: str, nc: int = 1,
                  cnonce: str | None = None) -> str:
    """The device side: the Authorization header answering a WWW-Authenticate challenge."""
    fields = parse_digest(challenge)
    realm, nonce = fields.get("realm", ""), fields.get("nonce", "")
    qop = "auth" if "auth" in [q.strip() for q in fields.get("qop", "").split(",")] else None
    nc_text = f"{nc:08x}"
    cnonce = cnonce or secrets.token_hex(8)
    response = digest_response(username, realm, password, method, uri, nonce, qop, nc_text, cnonce)
    text = (f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5')
    if qop:
        text += f', qop=auth, nc={nc_text}, cnonce="{cnonce}"'
    if "opaque" in fields:  # RFC 2617 3.2.2: returned unchanged (platforms other than WVP send one)
        text += f', opaque="{fields["opaque"]}"'
    return text
