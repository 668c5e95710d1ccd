"""The platform's GB/T 28181 SIP server (vms.gb28181.server.GbServer) attacked and driven over the wire.

The server runs in this process on 127.0.0.1 (any port) over a migrated SQLite file; devices are raw UDP and
TCP sockets sending SIP built with vms.gb28181.sip/digest (tests/gb28181_support.py), and the streams are
asked for through the control socket as an ingest worker does. Registration and its digest, NAT rebinding,
keepalives, paged catalogs in GB18030, retransmissions, the rate limit, garbage at the SIP layer, and the
INVITE's timeout, refusal, late answer and hang-up.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.gb28181_support import (
    DOMAIN,
    MANSCDP,
    PASSWORD,
    REGISTRAR,
    SERVER_ID,
    Control,
    Device,
    accept,
    channel_id,
    channel_rows,
    device_id,
    device_row,
    running_gb_server,
    wait_for,
)
from vms.db.engine import Database
from vms.db.migrate import upgrade
from vms.db.models import GbDevice
from vms.gb28181.digest import authorization, parse_digest
from vms.gb28181.server import GbServer
from vms.gb28181.sip import SipMessage, new_tag

DEV1, DEV2, DEV3 = device_id(1), device_id(2), device_id(3)
CH1 = channel_id(1)
GB_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A migrated, empty SQLite file, made once: each server starts from a copy."""
    path = tmp_path_factory.mktemp("gb-db") / "vms.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    db = Database(url)
    with db.engine.connect() as c:
        c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
    return path


@pytest.fixture
def gb(tmp_path, template) -> Iterator[GbServer]:
    with running_gb_server(tmp_path, template) as server:
        yield server


@pytest.fixture
def devices() -> Iterator[list[Device]]:
    made: list[Device] = []
    yield made
    for d in made:
        d.close()


def _device(gb: GbServer, devices: list[Device], ident: str, **kwargs) -> Device:
    d = Device(gb, ident, **kwargs)
    devices.append(d)
    return d


def _registered(gb: GbServer, devices: list[Device], ident: str = DEV1, **kwargs) -> Device:
    accept(gb, ident)
    d = _device(gb, devices, ident, **kwargs)
    assert d.register().status == 200
    return d


# -- registration ----------------------------------------------------------------------------------------

def test_register_without_authorization_is_challenged_with_digest(gb, devices):
    accept(gb, DEV1)
    d = _device(gb, devices, DEV1)
    resp = d.transact(d.build("REGISTER"))
    assert resp.status == 401
    challenge = resp.header("WWW-Authenticate") or ""
    assert challenge.startswith("Digest ")
    fields = parse_digest(challenge)
    assert fields["realm"] == DOMAIN and fields["qop"] == "auth" and fields["algorithm"] == "MD5"
    assert fields["nonce"] and "stale" not in fields
    assert "received=127.0.0.1" in (resp.header("Via") or "") and f"rport={d.port}" in (resp.header("Via") or "")
    assert not gb.online(DEV1)


def test_right_digest_registers_with_date_expires_and_the_row_online(gb, devices):
    accept(gb, DEV1)
    d = _device(gb, devices, DEV1)
    resp = d.register(expires=3600, extra=[("X-GB-Ver", "3.0")])
    assert resp.status == 200
    assert GB_DATE.match(resp.header("Date") or ""), resp.header("Date")
    assert resp.header("Expires") == "3600"
    assert resp.header("X-GB-Ver") == "3.0"
    assert f"{DEV1}@127.0.0.1:{d.port}" in (resp.header("Contact") or "")
    assert gb.online(DEV1)
    row = wait_for(lambda: (r := device_row(gb, DEV1)) is not None and r.state == "online" and r, what="row online")
    assert (row.host, row.port, row.transport, row.gb_version) == ("127.0.0.1", d.port, "UDP", "3.0")
    assert row.expires_ms - row.registered_ms == 3600 * 1000
    # a new registration is followed by the device's info and catalog queries, to where it registered from
    assert d.wait_request("MESSAGE", cmd="DeviceInfo") is not None
    assert d.wait_request("MESSAGE", cmd="Catalog") is not None


def test_wrong_password_is_forbidden_and_the_row_says_why(gb, devices):
    accept(gb, DEV1)
    d = _device(gb, devices, DEV1)
    assert d.register(password="not-the-password").status == 403
    assert not gb.online(DEV1)
    row = wait_for(lambda: (r := device_row(gb, DEV1)) is not None and r.refused_reason and r, what="reason")
    assert "wrong password" in row.refused_reason and row.state != "online"
    # an unknown device with a wrong password: listed as refused, for the reason
    other = _device(gb, devices, DEV2)
    assert other.register(password="guess").status == 403
    row2 = wait_for(lambda: device_row(gb, DEV2), what="refused row")
    assert row2.state == "refused" and not row2.accepted and "wrong password" in row2.refused_reason


def test_a_replayed_authorization_is_challenged_again_not_accepted(gb, devices):
    accept(gb, DEV1)
    d = _device(gb, devices, DEV1)
    first = d.challenge()
    auth = authorization(first.header("WWW-Authenticate") or "", "REGISTER", REGISTRAR, DEV1, PASSWORD, nc=1)
    assert d.transact(d.build("REGISTER", auth=auth)).status == 200
    wait_for(lambda: gb.stats["registered"] == 1, what="registered counted")
    # the same Authorization (nonce and nc) in a new request, from the device or someone who saw it
    replay = d.transact(d.build("REGISTER", auth=auth))
    assert replay.status == 401
    assert parse_digest(replay.header("WWW-Authenticate") or "").get("stale", "").upper() == "TRUE"
    spoof = _device(gb, devices, DEV1)  # another source address (port) replaying it
    assert spoof.transact(spoof.build("REGISTER", auth=auth)).status == 401
    assert gb.links[DEV1].port == d.port and gb.stats["registered"] == 1
    # the next nonce count of the same nonce is a refresh
    nc2 = authorization(first.header("WWW-Authenticate") or "", "REGISTER", REGISTRAR, DEV1, PASSWORD, nc=2)
    assert d.transact(d.build("REGISTER", auth=nc2)).status == 200


def test_register_without_expires_is_a_bad_request(gb, devices):
    accept(gb, DEV1)
    d = _device(gb, devices, DEV1)
    resp = d.transact(d.build("REGISTER", expires=None))
    assert resp.status == 400
    assert not gb.online(DEV1)


def test_expires_below_the_minimum_is_423_with_min_expires(gb, devices):
    accept(gb, DEV1)
    d = _device(gb, devices, DEV1)
    resp = d.register(expires=30)
    assert resp.status == 423 and resp.header("Min-Expires") == "60"
    assert not gb.online(DEV1)


def test_expires_zero_unregisters(gb, devices):
    d = _registered(gb, devices)
    wait_for(lambda: device_row(gb, DEV1).state == "online", what="online")
    resp = d.register(expires=0)
    assert resp.status == 200 and resp.header("Expires") == "0"
    assert not gb.online(DEV1)
    row = wait_for(lambda: (r := device_row(gb, DEV1)).state == "offline" and r, what="offline")
    assert row.refused_reason == "unregistered"


def test_a_huge_expires_is_shortened_not_a_server_error(gb, devices):
    """RFC 3261 10.3: the registrar may shorten an expiry. A device asking for 10^20 s used to get a 200 and
    then a 500 (SQLite cannot store the expiry in ms), with its row never marked online."""
    accept(gb, DEV1)
    d = _device(gb, devices, DEV1)
    resp = d.register(expires=10 ** 20)
    assert resp.status == 200
    granted = int(resp.header("Expires") or "0")
    assert 60 <= granted <= 7 * 86400
    assert d.next(lambda m: not m.is_request and m.status >= 300, timeout=0.5) is None  # no second answer
    row = wait_for(lambda: (r := device_row(gb, DEV1)).state == "online" and r, what="online")
    assert row.expires_ms - row.registered_ms == granted * 1000


def test_a_long_gb_version_fits_the_database(tmp_path, template, any_db_url, devices):
    """X-GB-Ver goes into an 8-character column: a vendor's longer string made PostgreSQL refuse the row's
    update after the 200 had gone out (then a 500 as well), the device online in memory only."""
    with running_gb_server(tmp_path, None, database_url=any_db_url) as gb:
        accept(gb, DEV1)
        d = _device(gb, devices, DEV1)
        assert d.register(extra=[("X-GB-Ver", "3.0-build-20240101")]).status == 200
        assert d.next(lambda m: not m.is_request and m.status >= 300, timeout=0.5) is None
        row = wait_for(lambda: (r := device_row(gb, DEV1)).state == "online" and r, what="online")
        assert row.gb_version == "3.0-buil"


def test_unknown_device_with_the_right_password_is_refused_and_listed(gb, devices):
    d = _device(gb, devices, DEV3)  # not accepted, no station names it
    assert d.register().status == 403
    assert not gb.online(DEV3)
    row = wait_for(lambda: device_row(gb, DEV3), what="listed")
    assert row.state == "refused" and not row.accepted
    assert "unknown device" in row.refused_reason
    # an admin accepts it: it registers
    accept(gb, DEV3)
    assert d.register().status == 200 and gb.online(DEV3)


def test_a_station_url_makes_the_device_known(gb, devices):
    from vms.db.models import Station
    with gb.db.session() as s:
        s.add(Station(id="gb-test", name="GB test", level="village", town="test", main_url=f"gb28181://{DEV2}/{channel_id(2)}"))
    d = _device(gb, devices, DEV2)
    assert d.register().status == 200 and gb.online(DEV2)


def test_a_device_id_that_is_not_20_ascii_digits_is_refused(gb, devices):
    """Unicode digits pass str.isdigit(): a fullwidth ID must not become a device row."""
    fullwidth = "".join(chr(0xFF10 + int(c)) for c in DEV1)
    d = _device(gb, devices, fullwidth)
    assert d.transact(d.build("REGISTER")).status == 400
    with gb.db.session() as s:
        assert s.execute(select(GbDevice)).first() is None


# -- NAT, keepalive, MESSAGE --------------------------------------------------------------------------------

def test_keepalive_from_a_new_port_moves_the_device_and_later_requests_follow(gb, devices):
    d = _registered(gb, devices)
    assert d.wait_request("MESSAGE", cmd="Catalog") is not None
    old_port = d.port
    d.rebind()  # the NAT gave the device a new source port
    assert d.port != old_port
    assert d.transact(d.keepalive_message()).status == 200
    assert gb.links[DEV1].port == d.port
    # a catalog on demand (through the control socket) goes to the new port
    control = Control(gb)
    try:
        control.send({"op": "catalog", "id": "c1", "device": DEV1})
        assert d.wait_request("MESSAGE", cmd="Catalog") is not None
        assert control.recv() == {"id": "c1", "ok": True}
        # and so does an INVITE
        control.send({"op": "play", "id": "s1", "device": DEV1, "channel": CH1, "transport": "udp",
                      "port": 30000})
        invite = d.wait_request("INVITE")
        assert invite is not None and invite.uri == f"sip:{CH1}@127.0.0.1:{d.port}"
        d.answer(invite, 486)
        assert control.recv()["reason"] == "invite_refused"
    finally:
        control.close()
    # the database learns the new address too (written every few seconds)
    wait_for(lambda: device_row(gb, DEV1).port == d.port, timeout=8, what="port in the database")
    # after an unregister, a registration from yet another port is a new one: its catalog query goes there
    assert d.register(expires=0).status == 200
    d.rebind()
    assert d.register().status == 200
    assert d.wait_request("MESSAGE", cmd="Catalog") is not None


def test_message_from_an_unregistered_device_is_forbidden(gb, devices):
    accept(gb, DEV1)
    d = _device(gb, devices, DEV1)
    resp = d.transact(d.keepalive_message())
    assert resp.status == 403
    assert gb.stats["keepalives"] == 0


def test_a_keepalive_naming_a_registered_device_from_another_host_does_not_move_it(gb, devices):
    """MESSAGEs carry no credentials: anyone who knows a device's ID can send one. A keepalive may move a
    device to a new port (NAT rebinding), but a new host needs an authenticated REGISTER: else one forged
    datagram would send the device's next INVITE (and so the station's footage) to the forger."""
    d = _registered(gb, devices)
    forger = _device(gb, devices, DEV1, host="127.0.0.2")
    resp = forger.transact(forger.keepalive_message())
    assert resp.status == 403
    assert (gb.links[DEV1].host, gb.links[DEV1].port) == ("127.0.0.1", d.port)
    tcp_forger = _device(gb, devices, DEV1, host="127.0.0.2", tcp=True)
    assert tcp_forger.transact(tcp_forger.keepalive_message()).status == 403
    link = gb.links[DEV1]
    assert (link.host, link.port, link.transport) == ("127.0.0.1", d.port, "UDP")
    # the device itself re-registering from the new host is believed
    moved = _device(gb, devices, DEV1, host="127.0.0.2")
    assert moved.register().status == 200
    assert (gb.links[DEV1].host, gb.links[DEV1].port) == ("127.0.0.2", moved.port)


def test_port_zero_takes_one_free_over_udp_and_tcp(tmp_path, template, devices, monkeypatch):
    """With sip_port 0 the UDP port the system gives may be taken over TCP (a client socket's port: about
    one start in a hundred here), and the server failed to start; it now tries another port."""
    real = asyncio.start_server
    ports: list[int] = []

    async def first_taken(client, host, port, **kwargs):
        ports.append(port)
        if len(ports) == 1:
            raise OSError(errno.EADDRINUSE, "address already in use")
        return await real(client, host, port, **kwargs)

    monkeypatch.setattr(asyncio, "start_server", first_taken)
    with running_gb_server(tmp_path, template) as gb:
        assert len(ports) == 2 and gb.port == ports[1]
        for tcp in (False, True):
            d = _device(gb, devices, DEV1, tcp=tcp)
            assert d.transact(d.build("REGISTER")).status == 401


def _catalog_page(device: str, sn: int, total: int, items: list[tuple[str, str]]) -> bytes:
    inner = "".join(f"<Item>\r\n<DeviceID>{cid}</DeviceID>\r\n<Name>{name}</Name>\r\n<Manufacturer>test</Manufacturer>"
                    f"\r\n<Status>ON</Status>\r\n<ParentID>{device}</ParentID>\r\n</Item>\r\n" for cid, name in items)
    body = (f'<?xml version="1.0" encoding="GB2312"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n'
            f"<DeviceID>{device}</DeviceID>\r\n<SumNum>{total}</SumNum>\r\n<DeviceList Num=\"{len(items)}\">\r\n"
            f"{inner}</DeviceList>\r\n</Response>\r\n")
    return body.encode("gb18030")


def test_catalog_in_pages_in_gb18030_is_stored_complete(gb, devices):
    d = _registered(gb, devices)
    query = d.wait_request("MESSAGE", cmd="Catalog")
    assert query is not None
    sn = int(re.search(rb"<SN>(\d+)</SN>", query.body).group(1))
    names = {channel_id(1, 1): "萳村服务站", channel_id(1, 2): "㵘湖村电商站𠀀", channel_id(1, 3): "龍山镇&1号"}
    pages = [list(names.items())[:2], list(names.items())[2:]]
    assert "㵘".encode("gb18030") == b"\x82\x31\xe0\x37"  # four bytes: outside GBK
    assert d.transact(d.build("MESSAGE", body=_catalog_page(DEV1, sn, 3, pages[0]), content_type=MANSCDP)).status == 200
    time.sleep(0.3)
    assert channel_rows(gb, DEV1) == {}  # not complete yet: nothing stored
    assert d.transact(d.build("MESSAGE", body=_catalog_page(DEV1, sn, 3, pages[1]), content_type=MANSCDP)).status == 200
    assert wait_for(lambda: channel_rows(gb, DEV1) == names, what=f"channels {names}")


def test_a_catalog_without_a_count_never_removes_channels(gb, devices):
    """SumNum 0 (or missing) with items: each page is not taken for the whole list (which would drop the
    channels of the other pages); they are all kept."""
    d = _registered(gb, devices)
    query = d.wait_request("MESSAGE", cmd="Catalog")
    assert query is not None
    sn = int(re.search(rb"<SN>(\d+)</SN>", query.body).group(1))
    first, second = {channel_id(1, 1): "一号"}, {channel_id(1, 2): "二号"}
    for page in (first, second):
        body = _catalog_page(DEV1, sn, 0, list(page.items()))
        assert d.transact(d.build("MESSAGE", body=body, content_type=MANSCDP)).status == 200
    time.sleep(0.3)
    assert channel_rows(gb, DEV1) == {}  # not counted as complete
    server_catalogs = gb._catalogs
    for collector in server_catalogs.values():
        collector.started_mono -= 60  # the pages stopped long ago: what came is stored
    assert wait_for(lambda: channel_rows(gb, DEV1) == {**first, **second}, what="both pages kept")


def test_refused_devices_listed_are_bounded(tmp_path, monkeypatch):
    from vms.db.engine import Database
    from vms.db.migrate import upgrade
    from vms.gb28181 import registry

    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    db = Database(url)
    monkeypatch.setattr(registry, "MAX_REFUSED", 3)
    for n in range(1, 6):
        registry.note_refused(db, device_id(n), "203.0.113.9", 5060, "UDP", "unknown device", n * 1000)
    with db.session() as s:
        from sqlalchemy import select

        from vms.db.models import GbDevice
        kept = sorted(s.scalars(select(GbDevice.device_id)))
    assert kept == [device_id(3), device_id(4), device_id(5)]  # the most recently seen
    db.dispose()


def test_keepalive_loss_marks_the_device_offline(tmp_path, template, devices):
    with running_gb_server(tmp_path, template, keepalive_interval_seconds=0.5, keepalive_missed=3) as gb:
        d = _registered(gb, devices)
        for _ in range(4):  # kept alive while it sends
            time.sleep(0.3)
            assert d.transact(d.keepalive_message()).status == 200
        assert gb.online(DEV1)
        wait_for(lambda: gb.stats["keepalives"] == 4, what="4 keepalives")
        row = wait_for(lambda: (r := device_row(gb, DEV1)).state == "offline" and r, timeout=5, what="offline")
        assert "no keepalive" in row.refused_reason
        assert not gb.online(DEV1)
        assert d.transact(d.keepalive_message()).status == 403  # it must register again


# -- transactions and flooding -------------------------------------------------------------------------------

def test_a_retransmitted_register_gets_the_same_answer_once(gb, devices):
    accept(gb, DEV1)
    d = _device(gb, devices, DEV1)
    first = d.challenge()
    auth = authorization(first.header("WWW-Authenticate") or "", "REGISTER", REGISTRAR, DEV1, PASSWORD)
    req = d.build("REGISTER", auth=auth)
    d.send(req)
    d.send(req)  # retransmitted before the answer came (the answer waits on the database): absorbed
    answers = []
    while (a := d.response_to(req, timeout=1.0)) is not None:
        answers.append(a)
    d.send(req)  # and after it: the answer again
    answers.append(d.response_to(req))
    assert 2 <= len(answers) <= 3 and all(a and a.status == 200 for a in answers), answers
    assert len({a.to.tag for a in answers}) == 1, "the same answer each time"
    assert gb.stats["registered"] == 1
    d.next(lambda m: False, timeout=1.0)  # read what came
    catalogs = [m for m in d.requests if b"<CmdType>Catalog</CmdType>" in m.body]
    assert len({m.call_id for m in catalogs}) == 1, "one catalog query, not one per copy"


def test_two_devices_that_reuse_a_branch_get_their_own_answers(gb, devices):
    """RFC 2543 devices send no branch, some stacks a constant one: the answer kept for retransmissions
    is the answer to that request (its Call-ID and sender), not to whoever used the branch."""
    accept(gb, DEV1)
    accept(gb, DEV2)
    a, b = _device(gb, devices, DEV1), _device(gb, devices, DEV2)
    for d in (a, b):
        req = d.build("REGISTER")
        req.set_header("Via", f"SIP/2.0/UDP 127.0.0.1:{d.port};rport;branch=z9hG4bK-constant")
        resp = d.transact(req)
        assert resp.status == 401 and resp.from_.uri.user == d.id


def test_the_rate_limit_drops_a_flood_and_others_still_get_answers(tmp_path, template, devices):
    with running_gb_server(tmp_path, template, requests_per_second=5) as gb:
        accept(gb, DEV1)
        flood = _device(gb, devices, DEV1)
        for _ in range(60):
            flood.send(flood.build("REGISTER"))
        answered = 0
        while flood.next(lambda m: not m.is_request, timeout=0.5) is not None:
            answered += 1
        # the burst (10) and what 5/s refilled while they were read (a loaded machine spreads them out)
        assert answered + gb.stats["rate_limited"] == 60 and answered <= 30, (answered, gb.stats)
        other = _device(gb, devices, DEV2, host="127.0.0.2")  # another address is not punished
        assert other.transact(other.build("REGISTER")).status == 401
        time.sleep(1.0)  # refilled: the flooder is answered again
        assert flood.transact(flood.build("REGISTER")).status == 401


# -- garbage at the SIP layer ----------------------------------------------------------------------------------

def _good_register_text(port: int, **over: str) -> str:
    lines = {
        "start": f"REGISTER {REGISTRAR} SIP/2.0",
        "Via": f"SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK{new_tag()}",
        "From": f"<sip:{DEV2}@{DOMAIN}>;tag=1", "To": f"<sip:{DEV2}@{DOMAIN}>", "Call-ID": "garbage-1",
        "CSeq": "1 REGISTER", "Expires": "3600", "Content-Length": "0"}
    lines.update(over)
    head = [lines.pop("start")] + [f"{k}: {v}" for k, v in lines.items()]
    return "\r\n".join(head) + "\r\n\r\n"


GARBAGE_UDP = {
    "random bytes": bytes(range(256)) * 3,
    "zeros": b"\x00\x01" * 100,
    "truncated": _good_register_text(1)[:70].encode(),
    "no blank line": _good_register_text(1).rstrip().encode(),
    "start line only": b"REGISTER sip:x SIP/2.0\r\n\r\n",
    "content-length past the datagram": _good_register_text(1, **{"Content-Length": "5000"}).encode() + b"<x/>",
    "negative content-length": _good_register_text(1, **{"Content-Length": "-4"}).encode(),
    "header without colon": _good_register_text(1).replace("Expires: 3600", "Expires 3600").encode(),
    "From without URI": _good_register_text(1, From="<>").encode(),
    "From unclosed": _good_register_text(1, From="<sip:1@2").encode(),
    "response garbage": b"SIP/2.0 200 OK\r\nVia: x\r\nCSeq: x\r\n\r\n",
    "CSeq method mismatch": _good_register_text(1, CSeq="1 INVITE").encode(),
    "200 headers": (_good_register_text(1)[:-2] + "".join(f"X-{i}: y\r\n" for i in range(200)) + "\r\n").encode(),
}


@pytest.mark.parametrize("name", list(GARBAGE_UDP))
def test_garbage_over_udp_is_counted_and_the_server_keeps_answering(gb, devices, name):
    _garbage_is_counted(gb, devices, GARBAGE_UDP[name], name)


def _garbage_is_counted(gb: GbServer, devices: list[Device], raw: bytes, name: str) -> None:
    sender = _device(gb, devices, DEV2)
    before = gb.stats["malformed"]
    sender.send(raw)
    sender.send(raw)
    wait_for(lambda: gb.stats["malformed"] >= before + 1, timeout=2, what=f"{name} counted as malformed")
    # whatever came back (a 400 at most), the server goes on
    d = _registered(gb, devices)
    assert gb.online(DEV1) and d.port


# What the parser used to let through as another exception than SipError: uncaught in the datagram callback
# (a traceback logged per datagram, nothing counted) and, over TCP, the end of the device's connection.
PARSER_TRAPS = {
    "binary in a header": _good_register_text(1).encode().replace(b"tag=1", b"tag=\xff\xfe\x00\x01"),
    "superscript digit in CSeq": _good_register_text(1, CSeq="\u00b2 REGISTER").encode(),
    "superscript digit in Content-Length": _good_register_text(1, **{"Content-Length": "\u00b2"}).encode(),
    "superscript digit in the Via port": _good_register_text(1, Via="SIP/2.0/UDP 127.0.0.1:\u00b9;branch=z9hG4bKx")
    .encode(),
    "empty Via": _good_register_text(1, Via="").encode(),
    "Via of commas": _good_register_text(1, Via=", ,").encode(),
    "response with an empty Via": b"SIP/2.0 200 OK\r\nFrom: <sip:a@b>\r\nTo: <sip:a@b>\r\nCall-ID: 1\r\n"
                                  b"CSeq: 1 INVITE\r\nVia: , \r\n\r\n",
}


@pytest.mark.parametrize("name", list(PARSER_TRAPS))
def test_sip_the_parser_choked_on_is_counted_as_malformed(gb, devices, name):
    _garbage_is_counted(gb, devices, PARSER_TRAPS[name], name)
    if name == "superscript digit in Content-Length":
        return  # over TCP a stream without a length cannot be framed: that connection ends
    # over TCP the connection goes on: the next message on it is answered
    tcp = socket.create_connection(("127.0.0.1", gb.port), timeout=5)
    try:
        tcp.sendall(PARSER_TRAPS[name] + _good_register_text(1).replace("UDP", "TCP").encode())
        assert tcp.recv(65536).startswith(b"SIP/2.0 401")
    finally:
        tcp.close()


def test_a_digest_with_non_ascii_is_forbidden_not_a_server_error(gb, devices):
    """hmac.compare_digest raises TypeError on non-ASCII text: that was a 500 and a logged traceback."""
    accept(gb, DEV1)
    d = _device(gb, devices, DEV1)
    first = d.challenge()
    nonce = parse_digest(first.header("WWW-Authenticate") or "")["nonce"]
    for auth in (f'Digest username="{DEV1}", realm="{DOMAIN}", nonce="{nonce}", uri="{REGISTRAR}", '
                 f'response="é{"0" * 31}", algorithm=MD5, qop=auth, nc=00000001, cnonce="x"',
                 f'Digest username="{DEV1}", realm="{DOMAIN}", nonce="{nonce}é", uri="{REGISTRAR}", '
                 f'response="{"0" * 32}", algorithm=MD5'):
        resp = d.transact(d.build("REGISTER", auth=auth))
        assert resp.status in (401, 403), resp.describe()
    assert not gb.online(DEV1)


def test_a_digest_over_a_nonce_we_never_gave_is_challenged_and_not_recorded(gb, devices):
    """A wrong answer over a nonce that is not ours (the sender never got our challenge: a forged source
    address) is challenged again; it used to be judged a wrong password and add a refused device row, so
    one spoofed datagram per ID could fill the device list."""
    d = _device(gb, devices, DEV2)
    forged = authorization(f'Digest realm="{DOMAIN}", nonce="{"0" * 40}", qop="auth"', "REGISTER", REGISTRAR, DEV2,
                           "guess")
    resp = d.transact(d.build("REGISTER", auth=forged))
    assert resp.status == 401
    time.sleep(0.3)
    assert device_row(gb, DEV2) is None
    assert d.register(password="guess").status == 403  # over our nonce, a wrong password is one
    assert "wrong password" in wait_for(lambda: device_row(gb, DEV2), what="refused row").refused_reason


HOSTILE_BODIES = {
    "billion laughs": b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;'
                      b'&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
                      b"<Notify><CmdType>Keepalive</CmdType><SN>&lol3;</SN></Notify>",
    "external entity": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                       b"<Notify><CmdType>Keepalive</CmdType><SN>&e;</SN></Notify>",
    "external DTD": b'<!DOCTYPE Notify SYSTEM "http://127.0.0.1:9/x.dtd"><Notify><CmdType>Keepalive</CmdType></Notify>',
    "not XML": b"\xff\xfe\x00garbage<<<",
    "unclosed": b"<Notify><CmdType>Keepalive</CmdType>",
    "deep nesting": b"<a>" * 5000 + b"</a>" * 5000,
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_xml_in_a_message_is_refused_and_counted(gb, devices, name):
    d = _registered(gb, devices)
    before = gb.stats["malformed"]
    resp = d.transact(d.build("MESSAGE", body=HOSTILE_BODIES[name], content_type=MANSCDP))
    if name == "deep nesting":  # well-formed, just not MANSCDP: taken and ignored
        assert resp.status == 200
    else:
        assert resp.status == 400
        assert gb.stats["malformed"] == before + 1
    assert gb.stats["keepalives"] == 0
    assert d.transact(d.keepalive_message()).status == 200
    wait_for(lambda: gb.stats["keepalives"] == 1, what="the keepalive after it taken")


def _tcp(gb: GbServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gb.port), timeout=5)


def _closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_garbage_over_tcp_is_counted_and_the_connection_closed(gb, devices):
    before = gb.stats["malformed"]
    # an endless header: never a blank line
    endless = _tcp(gb)
    endless.sendall(_good_register_text(1)[:-4].encode())
    try:
        for _ in range(20):
            endless.sendall(b"X-More: " + b"a" * 8000 + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert _closed_by_server(endless)
    # a 70 KB message (Content-Length and body)
    big = _tcp(gb)
    try:
        big.sendall(_good_register_text(1, **{"Content-Length": str(70_000)}).encode() + b"x" * 70_000)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert _closed_by_server(big)
    # a bad Content-Length on a stream
    bad_length = _tcp(gb)
    bad_length.sendall(_good_register_text(1, **{"Content-Length": "lots"}).encode())
    assert _closed_by_server(bad_length)
    # a message that does not parse is dropped, the connection goes on
    sloppy = _tcp(gb)
    sloppy.sendall(b"HELLO\r\n\r\n" + _good_register_text(1, **{"CSeq": "1 INVITE"}).encode())
    good = _good_register_text(1)
    sloppy.sendall(good.replace("UDP", "TCP").encode())
    sloppy.settimeout(3)
    assert sloppy.recv(65536).startswith(b"SIP/2.0 401")
    for s in (endless, big, bad_length, sloppy):
        s.close()
    assert gb.stats["malformed"] >= before + 5
    d = _registered(gb, devices, tcp=True)
    assert gb.links[DEV1].transport == "TCP" and d.port


def test_a_tcp_connection_that_never_finishes_a_message_is_closed(tmp_path, template):
    """A connection holding a half-sent header (or nothing) forever holds a file descriptor forever: a few
    thousand of them and the server cannot accept devices or open its database. One with no whole message
    for keepalive_interval x keepalive_missed (a TCP device sends a keepalive each interval) is closed."""
    with running_gb_server(tmp_path, template, keepalive_interval_seconds=0.5, keepalive_missed=2) as gb:
        idle, slow = _tcp(gb), _tcp(gb)
        slow.sendall(b"REGISTER sip:x SIP/2.0\r\n")
        started = time.monotonic()
        for _ in range(10):  # trickled, a byte at a time
            time.sleep(0.2)
            try:
                slow.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
        assert _closed_by_server(idle, timeout=5) and _closed_by_server(slow, timeout=5)
        assert time.monotonic() - started < 6


# -- INVITE through the control socket ----------------------------------------------------------------------

ANSWER_SDP = (b"v=0\r\no=" + CH1.encode() + b" 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
              b"m=video 15060 RTP/AVP 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\ny=0323000001\r\n")


def _play(control: Control, session: str = "s1", device: str = DEV1) -> None:
    control.send({"op": "play", "id": session, "device": device, "channel": CH1, "transport": "udp",
                  "port": 30000})


@pytest.fixture
def control(gb) -> Iterator[Control]:
    c = Control(gb)
    yield c
    c.close()


def test_an_invite_never_answered_times_out(gb, devices, control):
    d = _registered(gb, devices)
    _play(control)
    invite = d.wait_request("INVITE")
    assert invite is not None and invite.header("Subject", ).startswith(f"{CH1}:")
    assert b"m=video 30000 RTP/AVP" in invite.body
    answer = control.recv(timeout=5)
    assert (answer["id"], answer["ok"], answer["reason"]) == ("s1", False, "invite_timeout")
    # it was sent again meanwhile (UDP, T1 = 0.5 s), with the same branch
    d.next(lambda m: False, timeout=0.2)
    again = [m for m in d.requests if m.method == "INVITE" and m.call_id == invite.call_id]
    assert again and all(m.via.branch == invite.via.branch for m in again)
    assert gb.dialogs == {}


def test_an_invite_answered_486_is_refused_and_acked(gb, devices, control):
    d = _registered(gb, devices)
    _play(control)
    invite = d.wait_request("INVITE")
    busy = d.answer(invite, 486)
    answer = control.recv()
    assert (answer["ok"], answer["reason"]) == (False, "invite_refused") and "486" in answer["detail"]
    ack = d.wait_request("ACK")
    assert ack is not None and ack.call_id == invite.call_id and ack.via.branch == invite.via.branch
    assert ack.to.tag == busy.to.tag and ack.cseq == (1, "ACK")
    assert gb.dialogs == {}


def test_an_invite_answered_after_the_timeout_is_acked_and_hung_up(gb, devices, control):
    d = _registered(gb, devices)
    _play(control)
    invite = d.wait_request("INVITE")
    assert control.recv(timeout=5)["reason"] == "invite_timeout"
    ok = d.answer(invite, 200, body=ANSWER_SDP, content_type="APPLICATION/SDP")
    ack = d.wait_request("ACK")
    bye = d.wait_request("BYE")
    assert ack is not None and bye is not None
    assert ack.call_id == bye.call_id == invite.call_id
    assert bye.to.tag == ok.to.tag and bye.cseq == (2, "BYE")
    d.answer(bye, 200)


def test_an_answered_invite_and_the_worker_going_away_hangs_up(gb, devices, control):
    d = _registered(gb, devices)
    _play(control)
    invite = d.wait_request("INVITE")
    ok = d.answer(invite, 200, body=ANSWER_SDP, content_type="APPLICATION/SDP")
    answer = control.recv()
    assert answer["ok"] and answer["call"] == invite.call_id and answer["port"] == 15060
    assert answer["answered_ssrc"] == 323000001
    ack = d.wait_request("ACK")
    assert ack is not None and ack.to.tag == ok.to.tag
    assert invite.call_id in gb.dialogs
    control.close()  # the worker died
    bye = d.wait_request("BYE")
    assert bye is not None and bye.call_id == invite.call_id and bye.to.tag == ok.to.tag
    d.answer(bye, 200)
    wait_for(lambda: gb.dialogs == {}, what="dialog gone")


def test_the_worker_going_away_during_the_invite_hangs_up_a_late_answer(gb, devices, control):
    d = _registered(gb, devices)
    _play(control)
    invite = d.wait_request("INVITE")
    control.close()  # gone before the device answered
    time.sleep(2.0)  # past the INVITE timeout
    ok = d.answer(invite, 200, body=ANSWER_SDP, content_type="APPLICATION/SDP")
    assert d.wait_request("ACK") is not None, "the device's answer was left unacknowledged"
    bye = d.wait_request("BYE")
    assert bye is not None and bye.to.tag == ok.to.tag


def test_an_answer_with_an_unusable_sdp_is_hung_up(gb, devices, control):
    """A media port written with a non-ASCII digit ("15²060") passed str.isdigit() and broke int() in the
    SDP parser: the worker never got an answer and the device's stream was never hung up."""
    d = _registered(gb, devices)
    _play(control)
    invite = d.wait_request("INVITE")
    d.answer(invite, 200, body=ANSWER_SDP.replace(b"15060", "15²060".encode()), content_type="APPLICATION/SDP")
    while "ok" not in (answer := control.recv()):  # an "ended" event may come first
        assert answer["reason"] == "bad_stream"
    assert (answer["ok"], answer["reason"]) == (False, "bad_stream")
    assert d.wait_request("ACK") is not None
    bye = d.wait_request("BYE")
    assert bye is not None and bye.call_id == invite.call_id
    d.answer(bye, 200)


def test_the_device_hanging_up_ends_the_stream_for_the_worker(gb, devices, control):
    d = _registered(gb, devices)
    _play(control)
    invite = d.wait_request("INVITE")
    ok = d.answer(invite, 200, body=ANSWER_SDP, content_type="APPLICATION/SDP")
    assert control.recv()["ok"]
    bye = d.build("BYE", f"sip:{SERVER_ID}@127.0.0.1:{gb.port}", call_id=invite.call_id, cseq=1)
    bye.set_header("From", ok.header("To") or "")
    bye.set_header("To", invite.header("From") or "")
    assert d.transact(bye).status == 200
    ended = control.recv()
    assert (ended["event"], ended["reason"], ended["call"]) == ("ended", "device_bye", invite.call_id)
    assert d.transact(d.build("BYE", call_id="no-such-call")).status == 481


def test_play_for_an_unregistered_device_is_refused_locally(gb, control):
    _play(control, device=DEV2)
    answer = control.recv()
    assert (answer["ok"], answer["reason"]) == (False, "unregistered")
    control.send({"op": "dance", "id": "x"})
    assert control.recv()["reason"] == "bad_request"


def test_sip_messages_after_all_this_still_parse_as_sip(gb, devices):
    """The answers the server writes parse with our own parser (a sanity check of the test's harness)."""
    d = _registered(gb, devices)
    resp = d.transact(d.build("OPTIONS", f"sip:{SERVER_ID}@127.0.0.1:{gb.port}"))
    assert isinstance(resp, SipMessage) and resp.status == 200


def test_a_bye_from_elsewhere_or_outside_the_dialog_does_not_end_the_stream(gb, devices, control):
    """A BYE was matched by its Call-ID alone: anyone who could reach the SIP port with it (another device,
    a host on the path) ended the stream, and the recording had a gap. It must come from the device's
    address and name our dialog's tag."""
    d = _registered(gb, devices)
    _play(control)
    invite = d.wait_request("INVITE")
    ok = d.answer(invite, 200, body=ANSWER_SDP, content_type="APPLICATION/SDP")
    assert control.recv()["ok"]
    other = _device(gb, devices, DEV2, host="127.0.0.2")
    forged = other.build("BYE", f"sip:{SERVER_ID}@127.0.0.1:{gb.port}", call_id=invite.call_id, cseq=1)
    forged.set_header("From", ok.header("To") or "")
    forged.set_header("To", invite.header("From") or "")
    assert other.transact(forged).status == 481
    wrong_tag = d.build("BYE", f"sip:{SERVER_ID}@127.0.0.1:{gb.port}", call_id=invite.call_id, cseq=1)
    wrong_tag.set_header("From", ok.header("To") or "")
    wrong_tag.set_header("To", f"<sip:{SERVER_ID}@{DOMAIN}>;tag=not-ours")
    assert d.transact(wrong_tag).status == 481
    assert invite.call_id in gb.dialogs
    bye = d.build("BYE", f"sip:{SERVER_ID}@127.0.0.1:{gb.port}", call_id=invite.call_id, cseq=2)
    bye.set_header("From", ok.header("To") or "")
    bye.set_header("To", invite.header("From") or "")
    assert d.transact(bye).status == 200
    assert control.recv()["reason"] == "device_bye"
