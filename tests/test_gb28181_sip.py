"""The GB/T 28181 message layer: SIP as devices send it, digest, MANSCDP bodies, SDP."""

from __future__ import annotations

import pytest

from vms.gb28181 import manscdp, sdp
from vms.gb28181.digest import DigestServer, authorization
from vms.gb28181.sip import SipError, StreamSplitter, parse_message, response_to

DEVICE = "44132300001320000001"
REGISTER = (
    "REGISTER sip:44132300002000000001@4413230000 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1\r\n"
    f"From: <sip:{DEVICE}@4413230000>;tag=123\r\n"
    f"To: <sip:{DEVICE}@4413230000>\r\n"
    "Call-ID: abc\r\nCSeq: 1 REGISTER\r\n"
    f"Contact: <sip:{DEVICE}@192.168.1.64:5060>\r\nExpires: 3600\r\nl: 0\r\n\r\n").encode()


def test_gb_uris_with_a_numeric_domain_parse():
    msg = parse_message(REGISTER)
    assert msg.method == "REGISTER"
    assert msg.from_.uri.user == DEVICE and msg.from_.uri.host == "4413230000"
    assert msg.from_.tag == "123"
    assert msg.cseq == (1, "REGISTER")
    assert msg.header("content-length") == "0"  # compact "l" read as Content-Length


def test_bare_lf_folded_lines_and_a_gbk_body_byte_count():
    body = "<?xml version=\"1.0\" encoding=\"GB2312\"?><Notify><Name>萳村</Name></Notify>".encode("gb18030")
    text = REGISTER.decode().replace("REGISTER", "MESSAGE").replace("l: 0", f"l: {len(body)}")
    text = text.replace("\r\n", "\n").replace("Call-ID: abc\n", "Call-ID:\n abc\n")
    msg = parse_message(text.encode() + body + b"trailing junk of the datagram")
    assert msg.call_id == "abc"
    assert msg.body == body  # Content-Length counts bytes, the rest is dropped


@pytest.mark.parametrize("raw, problem", [
    (b"GARBAGE\r\n\r\n", "start line"),
    (REGISTER.replace(b"CSeq: 1 REGISTER\r\n", b""), "CSeq"),
    (REGISTER.replace(b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE"), "does not match"),
    (REGISTER.replace(b"l: 0", b"l: 99"), "Content-Length 99"),
    (REGISTER.replace(b"l: 0", b"l: -1"), "Content-Length"),
    (REGISTER[:60], "blank line"),
    (b"X" * 70_000, "larger than"),
])
def test_malformed_messages_say_what_is_wrong(raw, problem):
    with pytest.raises(SipError, match=problem):
        parse_message(raw)


def test_tcp_stream_is_split_by_content_length():
    body = b"<Notify/>"
    one = REGISTER.replace(b"l: 0", f"l: {len(body)}".encode()) + body
    splitter = StreamSplitter()
    data = b"\r\n\r\n" + one + one + one[:30]
    out = []
    for i in range(0, len(data), 7):  # arbitrary TCP chunks
        out += splitter.feed(data[i:i + 7])
    assert out == [one, one]
    assert splitter.feed(one[30:]) == [one]


def test_response_carries_where_the_request_really_came_from():
    resp = response_to(parse_message(REGISTER), 200, to_tag="t1", received=("203.0.113.9", 40000))
    text = resp.encode().decode()
    assert "rport=40000" in text and "received=203.0.113.9" in text
    assert f"To: <sip:{DEVICE}@4413230000>;tag=t1" in text


def test_digest_right_wrong_and_replayed():
    server = DigestServer("4413230000")
    challenge = server.challenge(DEVICE)
    uri = "sip:44132300002000000001@4413230000"
    good = authorization(challenge, "REGISTER", uri, DEVICE, "12345678", nc=1)
    assert server.verify(good, "REGISTER", DEVICE, "12345678").ok
    replay = server.verify(good, "REGISTER", DEVICE, "12345678")
    assert not replay.ok and replay.stale and replay.problem == "nonce replayed"
    assert server.verify(authorization(challenge, "REGISTER", uri, DEVICE, "12345678", nc=2),
                         "REGISTER", DEVICE, "12345678").ok  # a refresh with the next count
    wrong = server.verify(authorization(challenge, "REGISTER", uri, DEVICE, "nope", nc=3), "REGISTER", DEVICE,
                          "12345678")
    assert not wrong.ok and not wrong.stale and wrong.problem == "wrong password"
    other = DigestServer("4413230000")  # another process's nonce: challenged again, not accepted
    forged = other.verify(authorization(challenge, "REGISTER", uri, DEVICE, "12345678", nc=9), "REGISTER", DEVICE,
                          "12345678")
    assert not forged.ok and forged.stale
    someone_else = authorization(challenge, "REGISTER", uri, "44132300001320000002", "12345678")
    assert not server.verify(someone_else, "REGISTER", DEVICE, "12345678").ok


def test_digest_nonce_expires():
    now = [1000.0]
    server = DigestServer("4413230000", clock=lambda: now[0])
    challenge = server.challenge(DEVICE)
    now[0] += 601
    verdict = server.verify(authorization(challenge, "REGISTER", "sip:x@y", DEVICE, "pw"), "REGISTER", DEVICE, "pw")
    assert not verdict.ok and verdict.stale and verdict.problem == "nonce expired"


def test_catalog_body_in_gb18030_with_a_rare_character_and_a_bare_ampersand():
    raw = ('<?xml version="1.0" encoding="GB2312"?>\r\n<Response><CmdType>Catalog</CmdType><SN>7</SN>'
           '<DeviceID>44132300001320000001</DeviceID><SumNum>3</SumNum><DeviceList Num="1"><Item>'
           '<DeviceID>44132300001310000001</DeviceID><Name>萳村服务站&1号</Name><Status>ON</Status></Item>'
           '</DeviceList></Response>').encode("gb18030")
    page = manscdp.catalog_page(manscdp.parse_body(raw))
    assert (page.sn, page.sum_num) == (7, 3)
    assert page.items[0].name == "萳村服务站&1号" and page.items[0].status == "ON"
    utf8 = raw.decode("gb18030").encode("utf-8")  # a device switched to UTF-8 that still declares GB2312
    assert manscdp.catalog_page(manscdp.parse_body(utf8)).items[0].name == "萳村服务站&1号"


@pytest.mark.parametrize("raw", [
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><x>&b;</x>',
    b'<!DOCTYPE x SYSTEM "http://example.com/x.dtd"><x/>',
    b"<Notify><unclosed></Notify>",
    b"<a>" * 10 + b"\xff\xfe",
])
def test_hostile_or_broken_xml_is_refused(raw):
    with pytest.raises(manscdp.ManscdpError):
        manscdp.parse_body(raw)
    with pytest.raises(manscdp.ManscdpError, match="larger than"):
        manscdp.parse_body(b"<x>" + b"a" * (manscdp.MAX_BODY_BYTES + 1) + b"</x>")


def test_sdp_offer_and_an_answer_that_ignores_our_ssrc():
    offer = sdp.offer(device_id="44132300002000000001", media_host="10.0.0.1", media_port=30002,
                      transport="tcp-passive", ssrc=sdp.ssrc_for("4413230000", 17))
    text = offer.decode()
    assert "m=video 30002 TCP/RTP/AVP 96 98 99" in text and "a=setup:passive" in text
    assert "y=0323000017" in text and "s=Play" in text
    answer = sdp.parse(b"v=0\r\no=x 0 0 IN IP4 192.168.1.64\r\ns=Play\r\nc=IN IP4 192.168.1.64\r\nt=0 0\r\n"
                       b"m=video 15060 TCP/RTP/AVP 96\r\na=sendonly\r\na=setup:active\r\na=rtpmap:96 PS/90000\r\n"
                       b"y=0999999999\r\nf=v/2/5/25/1/4096a/1/8/1\r\n")
    assert (answer.host, answer.port, answer.tcp, answer.setup) == ("192.168.1.64", 15060, True, "active")
    assert answer.ssrc == "0999999999" and answer.format_line and answer.rtpmap == {96: "PS/90000"}
    with pytest.raises(sdp.SdpError):
        sdp.parse(b"v=0\r\ns=Play\r\n")
