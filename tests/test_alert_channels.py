"""The alert channels (issue 20) against receivers that behave like the real ones (tests/alert_receivers.py):
WeCom and DingTalk robots (errcode in an HTTP 200, key, signature, keyword, rate and length checks), a
webhook receiver verifying the HMAC signature, and an SMTP server (aiosmtpd) with AUTH, STARTTLS and TLS."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from zoneinfo import ZoneInfo

import pytest
from alert_receivers import (
    AUTH_WITHOUT_TLS_WARNING,
    RawAnswerer,
    RobotReceiver,
    SmtpReceiver,
    TricklingSmtp,
    refused_port,
    silent_port,
)
from pydantic import ValidationError

from vms.alerts.channels import (
    Channel,
    make_channel,
    make_channels,
    mask_secret_url,
    render_text,
)
from vms.alerts.messages import AlertMessage, SendResult
from vms.core.settings import AlertChannelSettings, AlertSettings

TZ = ZoneInfo("Asia/Shanghai")
SINCE_MS = 1717200000000  # 2024-06-01 00:00:00 UTC = 08:00:00 in Shanghai
AT_MS = SINCE_MS + 5 * 60_000
SECRET_DT = "SEC" + "d1n6" * 16
SECRET_HOOK = "hook-secret-7f3a9c"
SMTP_PASSWORD = "smtp-pa55-w0rd-91"
TOWNS = ["平山镇", "多祝镇", "白花镇", "梁化镇"]
SEVERITIES = ["minor", "major", "critical", "info"]


def msg(i: int = 1, severity: str = "major", kind: str = "firing", town: str | None = "平山镇",
        detail: str | None = "08:00 起收不到画面，请检查摄像机电源和网络。") -> AlertMessage:
    name = f"{town or '县中心'}服务站{i}" if i != 1 else "平山镇服务站"
    return AlertMessage(kind=kind, rule="camera_offline", severity=severity, title=f"{name}：摄像机离线",
                        detail=detail, station_id=f"HD-{i:03d}", station_name=name, town=town, since_ms=SINCE_MS,
                        at_ms=AT_MS, local_time="2024-06-01 08:05:00", alert_id=100 + i)


def many(n: int) -> list[AlertMessage]:
    return [msg(i + 2, SEVERITIES[i % 4], "resolved" if i % 7 == 0 else "firing", TOWNS[i % 4]) for i in range(n)]


def channel(kind: str, url: str | None = None, **kw) -> Channel:
    fields = {"name": f"{kind}-1", "type": kind, "url": url, **kw}
    return make_channel(AlertChannelSettings(**fields), TZ)


def email_channel(port: int, security: str = "none", **kw) -> Channel:
    fields = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": security, "mail_from": "vms@example.cn",
              "mail_to": ["ops@example.cn", "duty@example.cn"], "timeout_seconds": 3, **kw}
    return channel("email", **fields)


@pytest.fixture
def receivers():
    made: list[RobotReceiver] = []

    def make(kind: str, **kw) -> RobotReceiver:
        made.append(RobotReceiver(kind, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


# ------------------------------------------------------------------------------------------------------- WeCom

def test_wecom_single_message_is_chinese_markdown_with_station_and_local_times(receivers):
    robot = receivers("wecom")
    ch = channel("wecom", robot.url)
    assert ch.send([msg()], delivery_id=1) == SendResult(ok=True)
    assert ch.send([msg(kind="resolved")], delivery_id=2).ok
    first, resolved = robot.received
    assert first["msgtype"] == "markdown"
    content = first["markdown"]["content"]
    assert content.startswith('<font color="warning">**【告警·重要】平山镇服务站：摄像机离线**</font>')
    assert "平山镇服务站（HD-001）" in content and "乡镇：平山镇" in content
    assert "开始时间：2024-06-01 08:00:00" in content  # since_ms in Asia/Shanghai, not UTC
    assert "消息时间：2024-06-01 08:05:00" in content
    assert "请检查摄像机电源和网络" in content
    assert resolved["markdown"]["content"].startswith('<font color="info">**【恢复】平山镇服务站：摄像机离线**</font>')


def test_wecom_digest_of_200_messages_fits_4096_bytes_and_says_what_it_left_out(receivers):
    # The receiver refuses content over 4096 bytes (errcode 40058) as WeCom does.
    robot = receivers("wecom")
    result = channel("wecom", robot.url).send(many(200), delivery_id=3)
    assert result.ok, result
    content = robot.received[0]["markdown"]["content"]
    assert len(content.encode("utf-8")) <= 4096
    assert "【汇总】200 条告警消息" in content.splitlines()[0]
    items = [line for line in content.splitlines() if "HD-" in line]
    assert 10 < len(items) < 200
    assert content.endswith(f"……另有 {200 - len(items)} 条，详见控制台")
    # The most severe first: every critical item shown comes before any minor one.
    ranks = [2 if "紧急" in line else 1 if "重要" in line else 0 for line in items]
    assert ranks[0] == 2 and "紧急" in items[0]


def test_a_digest_that_fits_is_whole_grouped_by_town_worst_first():
    messages = [msg(2, "minor", town="多祝镇"), msg(3, "critical", town="白花镇"), msg(4, "major", town="多祝镇"),
                msg(5, "info", kind="resolved", town="白花镇"), msg(6, "minor", town=None)]
    title, body = render_text(messages, TZ, style="plain")
    assert title == "【汇总】5 条告警消息"
    lines = body.splitlines()
    assert lines[0].startswith("共 5 条：告警 4 条，恢复 1 条")
    towns = [line for line in lines if line.endswith("条）：")]
    assert towns == ["白花镇（2 条）：", "多祝镇（2 条）：", "县级/系统（1 条）："]
    order = [line.split("（")[1].split("，")[0] for line in lines if "HD-" in line]
    assert order == ["HD-003", "HD-005", "HD-004", "HD-002", "HD-006"]
    assert "另有" not in body and "**" not in body


def test_cutting_to_a_byte_limit_never_splits_a_character():
    detail = "摄像机画面长时间无变化，可能是镜头被遮挡或画面冻结；" * 40
    for limit in range(300, 700, 7):
        for messages in ([msg(detail=detail)], many(60)):
            _, text = render_text(messages, TZ, style="wecom", max_bytes=limit)
            assert len(text.encode("utf-8")) <= limit
            if len(messages) == 1:
                kept = text.splitlines()[-1]
                assert kept.endswith("……") and detail.startswith(kept[:-2])  # whole characters of the detail
            else:
                assert text.splitlines()[-1].startswith("……另有 ")


# ---------------------------------------------------------------------------------------------------- DingTalk

def test_dingtalk_signed_with_keyword_and_mentions_on_major(receivers):
    robot = receivers("dingtalk", secret=SECRET_DT, keyword="监控告警")
    ch = channel("dingtalk", robot.url, secret=SECRET_DT, keyword="监控告警", mention_mobiles=["13800000001"])
    assert ch.send([msg(severity="major")], delivery_id=1).ok  # the receiver checks sign, timestamp and keyword
    assert ch.send([msg(severity="minor")], delivery_id=2).ok
    assert ch.send(many(30), delivery_id=3).ok
    major, minor, digest = robot.received
    assert major["msgtype"] == "markdown"
    assert major["markdown"]["title"] == "监控告警 【告警·重要】平山镇服务站：摄像机离线"
    text = major["markdown"]["text"]
    assert "监控告警" in text and "HD-001" in text and "2024-06-01 08:00:00" in text
    # DingTalk @s a phone only when it is in both at.atMobiles and the text.
    assert major["at"] == {"atMobiles": ["13800000001"], "isAtAll": False} and text.endswith("@13800000001")
    assert minor["at"]["atMobiles"] == [] and "@138" not in minor["markdown"]["text"]
    assert "【汇总】30 条告警消息" in digest["markdown"]["title"]
    # The URL is built fresh each time: one timestamp and one sign, never appended to the stored URL.
    for request in robot.requests:
        assert request["path"].count("timestamp=") == 1 and request["path"].count("sign=") == 1
    assert ch.settings.url is not None and "sign=" not in ch.settings.url.get_secret_value()


def _assert_mentions_whole(sent: dict, max_bytes: int = 3800) -> list[str]:
    text = sent["markdown"]["text"]
    mobiles = sent["at"]["atMobiles"]
    assert mobiles and len(text.encode("utf-8")) <= max_bytes
    # Every phone in atMobiles is written whole at the end of the text, or DingTalk does not @ it.
    assert text.endswith(" ".join(f"@{p}" for p in mobiles)), text[-200:]
    return mobiles


def test_dingtalk_mentions_survive_the_cut_of_a_long_message(receivers):
    robot = receivers("dingtalk", keyword="监控告警")
    ch = channel("dingtalk", robot.url, keyword="监控告警", mention_mobiles=["13800000001", "13800000002"])
    # A title and station name beyond the limit on their own: the text is cut before the @mobiles.
    long = msg(severity="critical")
    long = dataclasses.replace(long, title="摄像机离线" * 300, station_name="平山镇服务站" * 100)
    assert ch.send([long], delivery_id=1).ok
    assert _assert_mentions_whole(robot.received[0]) == ["13800000001", "13800000002"]


def test_dingtalk_mentions_survive_the_cut_of_a_digest(receivers):
    # More phones than fit beside a digest: those written whole in the text are the ones in atMobiles.
    robot = receivers("dingtalk", keyword="监控告警")
    phones = [f"139{i:08d}" for i in range(300)]
    ch = channel("dingtalk", robot.url, keyword="监控告警", mention_mobiles=phones)
    assert ch.send(many(200), delivery_id=2).ok
    digest = robot.received[0]
    shown = _assert_mentions_whole(digest)
    assert 30 < len(shown) < 300 and shown == phones[:len(shown)]
    text = digest["markdown"]["text"]
    assert "另有" in text and "HD-" in text  # still a digest with some of its lines


def test_dingtalk_refusals_of_sign_and_keyword_are_permanent(receivers):
    robot = receivers("dingtalk", secret=SECRET_DT, keyword="监控告警")
    wrong_secret = channel("dingtalk", robot.url, secret="SEC" + "0" * 64, keyword="监控告警")
    no_keyword = channel("dingtalk", robot.url, secret=SECRET_DT)
    unsigned = channel("dingtalk", robot.url, keyword="监控告警")
    for ch in (wrong_secret, no_keyword, unsigned):
        result = ch.send([msg()], delivery_id=1)
        assert not result.ok and result.permanent and "310000" in (result.error or ""), result
    assert robot.received == []


# -------------------------------------------------------------------------------------------------- errcodes

@pytest.mark.parametrize(("kind", "code", "retry_after", "permanent"), [
    ("wecom", 45009, 60, False),
    ("wecom", 93000, None, True),
    ("wecom", 40008, None, True),
    ("wecom", -1, None, False),  # system busy
    ("dingtalk", 130101, 600, False),
    ("dingtalk", 310000, None, True),
    ("dingtalk", 300001, None, True),
    ("dingtalk", -1, None, False),
])
def test_an_http_200_with_an_errcode_is_not_success(receivers, kind, code, retry_after, permanent):
    robot = receivers(kind)
    ch = channel(kind, robot.url)
    robot.errcode_next(1, code)
    result = ch.send([msg()], delivery_id=1)
    assert not result.ok and result.retry_after_s == retry_after and result.permanent is permanent, result
    assert str(code) in (result.error or "")
    assert ch.send([msg()], delivery_id=1).ok  # the next answer is errcode 0
    assert len(robot.received) == 1


@pytest.mark.parametrize("kind", ["wecom", "dingtalk", "webhook"])
def test_a_wrong_key_is_permanent(receivers, kind):
    robot = receivers(kind)
    result = channel(kind, robot.url_with_key("not-the-key")).send([msg()], delivery_id=1)
    assert not result.ok and result.permanent and result.retry_after_s is None, result
    assert robot.received == []


@pytest.mark.parametrize(("kind", "retry_after"), [("wecom", 60), ("dingtalk", 600), ("webhook", None)])
def test_over_the_robots_rate_the_channel_is_told_when_to_retry(receivers, kind, retry_after):
    robot = receivers(kind, per_minute=3)
    ch = channel(kind, robot.url)
    assert all(ch.send([msg(i)], delivery_id=i).ok for i in range(3))
    result = ch.send([msg(4)], delivery_id=4)
    assert not result.ok and not result.permanent, result
    if retry_after is None:  # the webhook's 429 says how long in Retry-After (the oldest leaves in ~60 s)
        assert result.retry_after_s is not None and 50 <= result.retry_after_s <= 60
    else:
        assert result.retry_after_s == retry_after
    assert len(robot.received) == 3


@pytest.mark.parametrize(("kind", "status", "permanent"), [
    ("wecom", 500, False), ("wecom", 404, True), ("dingtalk", 502, False), ("dingtalk", 403, True),
    ("webhook", 503, False), ("webhook", 408, False), ("webhook", 400, True), ("webhook", 410, True),
])
def test_http_statuses(receivers, kind, status, permanent):
    robot = receivers(kind)
    robot.fail_next(1, status)
    result = channel(kind, robot.url).send([msg()], delivery_id=1)
    assert not result.ok and result.permanent is permanent and f"HTTP {status}" in (result.error or ""), result


def test_a_webhook_429_waits_as_asked_and_any_2xx_is_success(receivers):
    robot = receivers("webhook")
    ch = channel("webhook", robot.url)
    robot.fail_next(1, 429, {"Retry-After": "7"})
    robot.fail_next(1, 429)
    assert ch.send([msg()], delivery_id=1).retry_after_s == 7
    assert ch.send([msg()], delivery_id=1).retry_after_s == 60
    robot.errcode_next(1, 204)
    assert ch.send([msg()], delivery_id=1).ok


# ----------------------------------------------------------------------------------------------------- webhook

def test_webhook_one_message_fields_at_top_level_and_signed(receivers):
    robot = receivers("webhook", secret=SECRET_HOOK)
    ch = channel("webhook", robot.url, secret=SECRET_HOOK)
    assert ch.send([msg()], delivery_id=42).ok
    assert ch.send([msg(kind="resolved")], delivery_id=43).ok
    got, resolved = robot.received
    assert got["verified"] is True  # HMAC-SHA256 over "<timestamp>." + the exact body bytes
    assert got["headers"]["X-VMS-Delivery"] == "42" and got["headers"]["Content-Type"] == "application/json"
    assert abs(int(got["headers"]["X-VMS-Timestamp"]) - time.time()) < 60
    body = got["body"]
    assert body["delivery_id"] == 42 and body["channel"] == "webhook-1"
    assert body["digest"] is False and body["count"] == 1
    assert (body["station_id"], body["rule"], body["state"], body["local_time"]) == (
        "HD-001", "camera_offline", "firing", "2024-06-01 08:05:00")
    assert body["since_local"] == "2024-06-01 08:00:00" and body["since_ms"] == SINCE_MS
    assert body["title"] == "平山镇服务站：摄像机离线" and body["alert_id"] == 101 and body["town"] == "平山镇"
    assert body["alerts"] == [{k: body[k] for k in body["alerts"][0]}]
    assert "平山镇".encode() in got["raw"]  # UTF-8, not \u escapes
    assert resolved["body"]["state"] == "resolved" and resolved["verified"] is True


def test_webhook_digest_and_signature_checks(receivers):
    robot = receivers("webhook", secret=SECRET_HOOK)
    assert channel("webhook", robot.url, secret=SECRET_HOOK).send(many(5), delivery_id=7).ok
    assert channel("webhook", robot.url, secret="another-secret").send([msg()], delivery_id=8).ok
    assert channel("webhook", robot.url).send([msg()], delivery_id=9).ok
    digest, wrong, unsigned = robot.received
    assert digest["verified"] is True
    body = digest["body"]
    assert body["digest"] is True and body["count"] == 5 and len(body["alerts"]) == 5 and "station_id" not in body
    assert {a["station_id"] for a in body["alerts"]} == {f"HD-{i + 2:03d}" for i in range(5)}
    assert wrong["verified"] is False  # the receiver's check is a real one
    assert unsigned["verified"] is False and "X-VMS-Signature" not in unsigned["headers"]


# ---------------------------------------------------------------------------------------- slow, down, secrets

@pytest.mark.parametrize("kind", ["wecom", "dingtalk", "webhook"])
def test_a_slow_receiver_is_a_quick_retryable_failure(receivers, kind):
    robot = receivers(kind)
    robot.delay_seconds = 5
    started = time.monotonic()
    result = channel(kind, robot.url, timeout_seconds=0.3).send([msg()], delivery_id=1)
    assert time.monotonic() - started < 2
    assert not result.ok and not result.permanent and "timeout after 0.3 s" in (result.error or ""), result


def _send_within(ch: Channel, seconds: float) -> tuple[SendResult | None, float]:
    """(the result, how long the send took), or (None, ...) when it had not returned after seconds: the test
    waits no longer than that whatever the channel does."""
    box: list[SendResult] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: box.append(ch.send([msg()], delivery_id=1)), daemon=True)
    thread.start()
    thread.join(seconds)
    return (box[0] if box else None), time.monotonic() - started


def test_a_trickling_answer_is_cut_at_the_total_timeout():
    # One byte every 0.4 s: each read is well within the timeout, the whole answer never ends.
    with RawAnswerer("trickle", interval=0.4) as server:
        result, took = _send_within(channel("wecom", server.url, timeout_seconds=1), 6)
        assert result is not None, "the send did not return"
        assert took < 2, took
        assert not result.ok and not result.permanent and "timeout after 1 s" in (result.error or ""), result
        assert server.client_gone.wait(3)  # the connection is given up, not left reading


@pytest.mark.parametrize("declare_length", [False, True])
def test_a_huge_answer_is_not_read(declare_length):
    # 100 MB of answer: the channel reads at most 64 KiB of it and calls the send failed (retryable).
    with RawAnswerer("huge", size=100 * 1024 * 1024, declare_length=declare_length) as server:
        result, took = _send_within(channel("wecom", server.url, timeout_seconds=5), 10)
        assert result is not None, "the send did not return"
        assert not result.ok and not result.permanent and "answer too large" in (result.error or ""), result
        assert took < 3, took
        assert server.client_gone.wait(3)
        # What the server got into the kernel's buffers before the client closed: a few MB at most, not 100.
        assert server.sent < 20 * 1024 * 1024, server.sent


def test_a_webhook_that_took_the_message_succeeds_whatever_its_answer_body():
    # A 2xx is a webhook's whole answer: a 100 MB body after it is not read, and the message counts as
    # delivered (failing it would send it again to a receiver that has it).
    with RawAnswerer("huge", size=100 * 1024 * 1024) as server:
        url = f"http://127.0.0.1:{server.port}/hook"
        result, took = _send_within(channel("webhook", url, timeout_seconds=5), 10)
        assert result is not None and result.ok, result
        assert took < 3, took
        assert server.sent < 20 * 1024 * 1024, server.sent


@pytest.mark.parametrize("kind", ["wecom", "dingtalk", "webhook"])
def test_a_receiver_down_is_retryable_and_up_again_works(receivers, kind):
    robot = receivers(kind)
    ch = channel(kind, robot.url, timeout_seconds=2)
    robot.down()
    result = ch.send([msg()], delivery_id=1)
    assert not result.ok and not result.permanent and "ConnectError" in (result.error or ""), result
    robot.up()
    assert ch.send([msg()], delivery_id=1).ok and len(robot.received) == 1


def _assert_clean(ch: Channel, result: SendResult, caplog, secrets: list[str]) -> None:
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail.log"))
    for secret in secrets:
        for text in (result.error or "", ours, repr(ch), str(ch.describe())):
            assert secret not in text


@pytest.mark.filterwarnings(AUTH_WITHOUT_TLS_WARNING)
def test_secrets_are_never_in_errors_logs_repr_or_describe(receivers, caplog, tmp_path, monkeypatch):
    caplog.set_level(logging.DEBUG)  # httpx's request lines (INFO) and httpcore's traces (DEBUG) too
    token = "tok" + "9" * 30
    wecom = receivers("wecom", key=token)
    ding = receivers("dingtalk", key=token, secret=SECRET_DT)
    hook = receivers("webhook", key=token, secret=SECRET_HOOK)
    held, dead_port = refused_port()
    cases: list[tuple[Channel, object]] = []
    try:
        for robot, extra in ((wecom, {}), (ding, {"secret": SECRET_DT}), (hook, {"secret": SECRET_HOOK})):
            kind = robot.kind
            live = channel(kind, robot.url, timeout_seconds=0.3, **extra)
            cases.append((live, lambda: None))  # success: httpx logs the URL
            cases.append((live, lambda r=robot: r.fail_next(1, 500)))
            cases.append((live, lambda r=robot: r.errcode_next(1, 93000 if r.kind != "webhook" else 401)))
            cases.append((live, lambda r=robot: setattr(r, "delay_seconds", 2)))
            cases.append((channel(kind, robot.url.replace(str(robot.port), str(dead_port)), **extra), lambda: None))
            cases.append((channel(kind, robot.url.replace(str(robot.port), "99999"), **extra), lambda: None))
        for ch, arrange in cases:
            for r in (wecom, ding, hook):
                r.delay_seconds = 0
            arrange()  # type: ignore[operator]
            result = ch.send([msg()], delivery_id=5)
            _assert_clean(ch, result, caplog, [token, SECRET_DT, SECRET_HOOK])
        assert any("HTTP Request" in r.getMessage() and "=***" in r.getMessage() for r in caplog.records)
        assert sum(1 for r in caplog.records if r.name == "vms.alerts.channels" and r.levelname == "WARNING") >= 12
        # E-mail: a wrong password, a server down.
        with SmtpReceiver("starttls", user="vms", password="the-right-one", cert_dir=tmp_path) as smtp:
            monkeypatch.setenv("SSL_CERT_FILE", str(smtp.cert_path))
            ch = email_channel(smtp.port, "starttls", smtp_user="vms", smtp_password=SMTP_PASSWORD)
            result = ch.send([msg()], delivery_id=6)
            assert not result.ok and result.permanent and "SMTPAuthenticationError" in (result.error or ""), result
            _assert_clean(ch, result, caplog, [SMTP_PASSWORD])
        ch = email_channel(dead_port, "starttls", smtp_user="vms", smtp_password=SMTP_PASSWORD)
        result = ch.send([msg()], delivery_id=7)
        assert not result.ok and not result.permanent
        _assert_clean(ch, result, caplog, [SMTP_PASSWORD])
    finally:
        held.close()


def test_describe_shows_the_masked_target_and_the_settings_people_set(receivers):
    robot = receivers("wecom", key="abcdef123456")
    ch = channel("wecom", robot.url, towns=["平山镇"], min_severity="major", quiet_hours="22:00-07:00",
                 max_per_minute=15)
    assert ch.describe() == {"name": "wecom-1", "type": "wecom",
                             "target": f"http://127.0.0.1:{robot.port}/cgi-bin/webhook/send?key=***",
                             "towns": ["平山镇"], "min_severity": "major", "quiet_hours": "22:00-07:00",
                             "max_per_minute": 15}
    mail = email_channel(587, "starttls", smtp_user="vms", smtp_password=SMTP_PASSWORD).describe()
    assert mail["target"] == "smtp+starttls://127.0.0.1:587 -> ops@example.cn, duty@example.cn"


@pytest.mark.parametrize(("url", "masked"), [
    ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx",
     "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***"),
    ("https://oapi.dingtalk.com/robot/send?access_token=abc123&timestamp=1717200000000&sign=x%2By%3D",
     "https://oapi.dingtalk.com/robot/send?access_token=***&timestamp=***&sign=***"),
    ("http://user:pa55@hooks.example.cn:8443/vms/alerts?token=t0k#frag", "http://***@hooks.example.cn:8443/***?token=***"),
    # Only the robots' own paths are shown: any other path may be the secret.
    ("http://10.0.0.5:9000/alerts", "http://10.0.0.5:9000/***"),
    ("https://open.feishu.cn/open-apis/bot/v2/hook/0c7e5a2b-51f1-4c3e-9a4e-7d1f0f8e2a11", "https://open.feishu.cn/***"),
    ("http://hooks.example.cn/vms/county_alerts_webhook", "http://hooks.example.cn/***"),
    ("https://api.telegram.org/bot123456789:AAEhBP0av28xkZfXz5kTTGJtdVhJv2Z0aXQ/sendMessage?chat_id=1",
     "https://api.telegram.org/***?chat_id=***"),
    ("http://127.0.0.1:9/api/webhook/vms-alarm-hook-secretword?source=x", "http://127.0.0.1:9/***?source=***"),
    ("https://example.cn", "https://example.cn"),
    ("https://example.cn/", "https://example.cn/"),
    ("http://[::1/x?key=k", "***"),  # unparseable: nothing of it
])
def test_mask_secret_url(url, masked):
    assert mask_secret_url(url) == masked


@pytest.mark.parametrize(("path", "secret"), [
    ("/bot123456789:AAEhBP0av28xkZfXz5kTTGJtdVhJv2Z0aXQ/sendMessage?chat_id=1", "AAEhBP0av28xkZfXz5kTTGJtdVhJv2Z0aXQ"),
    ("/api/webhook/vms-alarm-hook-secretword?chat_id=1", "secretword"),
])
def test_a_secret_in_the_path_is_never_shown(caplog, path, secret):
    caplog.set_level(logging.DEBUG)
    held, dead_port = refused_port()
    try:
        ch = channel("webhook", f"http://127.0.0.1:{dead_port}{path}", timeout_seconds=2)
        result = ch.send([msg()], delivery_id=1)
    finally:
        held.close()
    assert not result.ok and f"(http://127.0.0.1:{dead_port}/***?chat_id=***)" in (result.error or ""), result
    assert ch.describe()["target"] == f"http://127.0.0.1:{dead_port}/***?chat_id=***"
    _assert_clean(ch, result, caplog, [secret])


def test_make_channels_by_name_from_the_settings():
    alerts = AlertSettings(webhook_url="http://127.0.0.1:9/hook?token=t", webhook_secret="s3",
                           channels=[AlertChannelSettings(name="county-wecom", type="wecom",
                                                          url="https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k"),
                                     AlertChannelSettings(name="mail", type="email", smtp_host="smtp.example.cn",
                                                          mail_from="vms@example.cn", mail_to=["a@example.cn"])])
    chans = make_channels(alerts, TZ)
    assert list(chans) == ["webhook", "county-wecom", "mail"]
    assert [c.type for c in chans.values()] == ["webhook", "wecom", "email"]
    assert chans["webhook"].settings.min_severity == "info" and chans["webhook"].name == "webhook"


# ------------------------------------------------------------------------------------------------------ e-mail

def test_email_plain_smtp_single_and_digest():
    with SmtpReceiver("none") as smtp:
        ch = email_channel(smtp.port)
        assert ch.send([msg()], delivery_id=11).ok
        assert ch.send(many(12), delivery_id=12).ok
        single, digest = smtp.received
    m = single["message"]
    assert m["Subject"] == "【告警·重要】平山镇服务站：摄像机离线"
    assert m["From"] == "vms@example.cn" and single["rcpt_tos"] == ["ops@example.cn", "duty@example.cn"]
    assert m["X-VMS-Delivery"] == "11" and m["Date"].endswith("+0800")
    body = m.get_content()
    assert "站点：平山镇服务站（HD-001）" in body and "开始时间：2024-06-01 08:00:00" in body
    assert "消息时间：2024-06-01 08:05:00" in body and "**" not in body and "<font" not in body
    assert digest["message"]["Subject"] == "【汇总】12 条告警消息"
    assert digest["message"].get_content().count("HD-") == 12


@pytest.mark.filterwarnings(AUTH_WITHOUT_TLS_WARNING)
def test_email_starttls_and_ssl_with_login(tmp_path, monkeypatch):
    for security in ("starttls", "ssl"):
        with SmtpReceiver(security, user="vms", password=SMTP_PASSWORD, cert_dir=tmp_path) as smtp:
            # The client verifies the server's certificate: trust the test's self-signed one.
            monkeypatch.setenv("SSL_CERT_FILE", str(smtp.cert_path))
            result = email_channel(smtp.port, security, smtp_user="vms", smtp_password=SMTP_PASSWORD).send(
                [msg()], delivery_id=1)
            assert result.ok, (security, result)
            assert smtp.received[0]["login"] == b"vms"
            assert smtp.received[0]["message"]["Subject"] == "【告警·重要】平山镇服务站：摄像机离线"


def test_email_certificate_not_trusted_is_permanent(tmp_path):
    with SmtpReceiver("ssl", cert_dir=tmp_path) as smtp:
        result = email_channel(smtp.port, "ssl").send([msg()], delivery_id=1)
        assert not result.ok and result.permanent and "SSLCertVerificationError" in (result.error or ""), result
        assert smtp.received == []


def test_email_refusals_and_outages():
    with SmtpReceiver("none") as smtp:
        ch = email_channel(smtp.port)
        smtp.refuse_rcpt = {"ops@example.cn": "550 5.1.1 no such user", "duty@example.cn": "550 5.1.1 no such user"}
        result = ch.send([msg()], delivery_id=1)
        assert not result.ok and result.permanent and "SMTPRecipientsRefused" in (result.error or ""), result
        smtp.refuse_rcpt = {"ops@example.cn": "450 4.2.0 greylisted", "duty@example.cn": "450 4.2.0 greylisted"}
        result = ch.send([msg()], delivery_id=1)
        assert not result.ok and not result.permanent, result
        # STARTTLS asked of a server without it: a setting to fix, not a retry.
        result = email_channel(smtp.port, "starttls").send([msg()], delivery_id=1)
        assert not result.ok and result.permanent, result
        assert smtp.received == []
    held, port = refused_port()
    quiet, quiet_port = silent_port()
    try:
        result = email_channel(port).send([msg()], delivery_id=1)
        assert not result.ok and not result.permanent and "ConnectionRefused" in (result.error or ""), result
        started = time.monotonic()
        result = email_channel(quiet_port, timeout_seconds=0.3).send([msg()], delivery_id=1)
        assert time.monotonic() - started < 2
        assert not result.ok and not result.permanent, result
    finally:
        held.close()
        quiet.close()


def test_a_slow_smtp_conversation_is_cut_at_three_times_the_timeout():
    # Each read gets a byte within 0.1 s (the socket's 0.5 s timeout never fires); the EHLO reply never ends.
    with TricklingSmtp(interval=0.1) as server:
        result, took = _send_within(email_channel(server.port, timeout_seconds=0.5), 6)
        assert result is not None, "the send did not return"
        assert 1.4 < took < 2.5, took  # 3 x timeout_seconds
        assert not result.ok and not result.permanent and "SMTP 会话超时" in (result.error or ""), result
        assert f"127.0.0.1:{server.port}" in (result.error or "")
        assert server.client_gone.wait(10)  # the connection is shut down, its thread ends


def test_short_url_values_do_not_garble_errors(receivers):
    # The scrubber replaces the URL's secret parts in error texts: not a "5" of "?v=5" in "HTTP 500".
    robot = receivers("webhook")
    robot.fail_next(1, 500)
    result = channel("webhook", robot.url + "&v=5").send([msg()], delivery_id=1)
    assert result.error is not None and result.error.startswith("HTTP 500"), result


# ---------------------------------------------------------------------------------------------------- settings

def test_smtp_login_without_encryption_is_refused():
    with pytest.raises(ValidationError, match="smtp_security none with smtp_user would send the password "
                                              "unencrypted: use ssl or starttls"):
        AlertChannelSettings(name="mail", type="email", smtp_host="smtp.example.cn", smtp_security="none",
                             smtp_user="vms", smtp_password=SMTP_PASSWORD, mail_from="vms@example.cn",
                             mail_to=["a@example.cn"])
    # none without a login (a relay on the LAN), and a login over TLS, are fine.
    for security, user in (("none", None), ("starttls", "vms"), ("ssl", "vms")):
        AlertChannelSettings(name="mail", type="email", smtp_host="smtp.example.cn", smtp_security=security,
                             smtp_user=user, mail_from="vms@example.cn", mail_to=["a@example.cn"])


@pytest.mark.parametrize("quiet", ["22:00-07:00", "00:00-06:30", "22:00-24:00", "23:59-00:00", "12:00-12:01"])
def test_quiet_hours_accepted(quiet):
    assert channel("webhook", "http://127.0.0.1:9/hooks/vms", quiet_hours=quiet).settings.quiet_hours == quiet


@pytest.mark.parametrize(("quiet", "complaint"), [
    ("22:00-24:59", "should match pattern"),  # only 24:00 is beyond 23:59
    ("22:00-24:01", "should match pattern"),
    ("24:00-07:00", "should match pattern"),  # 24:00 ends a range, it does not start one
    ("07:00-07:00", "starts and ends at the same time"),  # quiet all day: messages would wait forever
    ("00:00-24:00", "starts and ends at the same time"),
])
def test_quiet_hours_refused(quiet, complaint):
    with pytest.raises(ValidationError, match=complaint):
        AlertChannelSettings(name="w", type="webhook", url="http://127.0.0.1:9/hooks/vms", quiet_hours=quiet)
