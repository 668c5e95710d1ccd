"""Delivery of alert messages: WeCom and DingTalk group robots, a generic signed webhook, and e-mail.

A channel sends one message, or several as one digest, in ONE request or ONE e-mail, and says how it went
(SendResult); the outbox decides about retries, rate limits and quiet hours. A channel never raises for a
network or receiver problem, and never lets a secret (a robot's key in its URL, a signing secret, an SMTP
password) reach an error, a log line, a repr or describe(): httpx's own messages and log lines carry the
full URL, so every text that leaves here goes through the channel's scrubber, and httpx's logger is given a
filter that masks URLs. A send takes at most timeout_seconds (HTTP) or 3 x timeout_seconds (an SMTP
conversation) in all, however slowly the receiver answers, and reads at most 64 KiB of an answer.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import httpx

from vms.alerts.messages import KIND_LABELS, SEVERITY_LABELS, AlertMessage, SendResult
from vms.core.settings import AlertChannelSettings, AlertSettings

log = logging.getLogger(__name__)

# WeCom's markdown content may hold 4096 bytes of UTF-8 (robot documentation).
WECOM_MAX_BYTES = 4096
# DingTalk documents no byte limit for markdown; long texts are cut or refused in practice, so stay well under
# the WeCom figure (the @mobiles and the keyword are counted in).
DINGTALK_MAX_BYTES = 3800
# The @mobiles of a DingTalk message take at most this much of it (about 70 phones): the rest is the message.
DINGTALK_MENTION_MAX_BYTES = DINGTALK_MAX_BYTES // 4
SEVERITY_RANK = {"info": 0, "minor": 1, "major": 2, "critical": 3}
# On these severities the robots @ the channel's mention_mobiles.
MENTION_SEVERITIES = {"major", "critical"}

WECOM_FREQ_LIMIT = 45009  # api freq out of limit: 20 messages a minute per robot
WECOM_INVALID_URL = 93000  # invalid webhook url: the key is wrong or the robot was removed
WECOM_FREQ_RETRY_S = 60.0
DINGTALK_THROTTLED = {130101, 410100}  # send too fast: DingTalk then refuses the robot for 10 minutes
DINGTALK_THROTTLE_RETRY_S = 600.0
# Answers about the robot's set-up (sign, keyword or IP refused; token unknown; robot stopped; group
# dissolved): nothing changes until someone edits the settings, so retrying only adds to the rate limit.
DINGTALK_PERMANENT = {310000, 300001, 400013, 400101, 400102}
DEFAULT_RETRY_AFTER_S = 60.0
MAX_RETRY_AFTER_S = 24 * 3600.0
# A receiver's answer is a few hundred bytes of JSON: more than this is not read (a failed, retryable send).
ANSWER_MAX_BYTES = 64 * 1024
# An SMTP conversation is several round trips (greeting, EHLO, STARTTLS and EHLO again, AUTH, MAIL, one RCPT
# per address, DATA, the message, QUIT), each allowed timeout_seconds by the socket: the whole conversation
# is given this many times timeout_seconds.
SMTP_SESSION_FACTOR = 3

# The paths a masked URL shows (the robots' own, whose key is a query value); any other path is /***.
_SHOWN_PATHS = {"", "/", "/cgi-bin/webhook/send", "/robot/send"}
# Path segments the scrubber removes from texts: long ones, or ones with digits in them (a token's look).
_PATH_TOKEN = re.compile(r"(?=[^/]*[0-9])[A-Za-z0-9_.=~-]{20,}|[^/]{16,}")
# A URL inside a text; not its closing parenthesis ("... (https://host/***)").
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()]+")


# ---------------------------------------------------------------------------------------------------- masking

def mask_secret_url(url: str) -> str:
    """scheme://host[:port], the path only when it is a known robot's (WeCom's /cgi-bin/webhook/send, DingTalk's
    /robot/send: their key is a query value) and /*** otherwise, every query value and the userinfo replaced by
    ***. The fragment is dropped. Any other path may be the secret itself (Telegram's /bot<token>/sendMessage,
    Home Assistant's /api/webhook/<secret word>, Slack's, Feishu's, Discord's hooks): it is never shown."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = ""
    if parts.query:
        names = [p.partition("=")[0] for p in parts.query.split("&") if p]
        query = "?" + "&".join(f"{n}=***" for n in names)
    path = parts.path if parts.path in _SHOWN_PATHS else "/***"
    return f"{parts.scheme}://{netloc}{path}{query}"


def _mask_urls_in(text: str) -> str:
    return _URL_IN_TEXT.sub(lambda m: mask_secret_url(m.group(0)), text)


class _MaskUrlsFilter(logging.Filter):
    """httpx logs every request at INFO with its full URL ("HTTP Request: POST https://…?key=…"): mask it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix; let logging report it
            return True
        masked = _mask_urls_in(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def _install_log_filter() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _MaskUrlsFilter) for f in logger.filters):
        logger.addFilter(_MaskUrlsFilter())


_install_log_filter()


def _secret_fragments(s: AlertChannelSettings) -> list[str]:
    """Every string that must not appear in a text this channel gives out, longest first."""
    out: list[str] = []
    if s.url is not None:
        url = s.url.get_secret_value()
        out.append(url)
        try:
            parts = urllib.parse.urlsplit(url)
            # Fragments of the URL: the shortest would garble every error ("?v=1" replacing each "1"), and a
            # value of three characters is no secret anyway.
            pieces = [parts.netloc.rpartition("@")[0]] if "@" in parts.netloc else []
            pieces += [value for _, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
            pieces += [p.partition("=")[2] for p in parts.query.split("&")]
            if parts.path not in _SHOWN_PATHS:  # the path may be the secret (a token, a secret word)
                pieces.append(parts.path)
                pieces += [seg for seg in parts.path.split("/") if _PATH_TOKEN.fullmatch(seg)]
            out.extend(x for x in pieces if len(x) >= 4)
        except ValueError:
            pass
    for secret in (s.secret, s.smtp_password):
        if secret is not None:
            out.append(secret.get_secret_value())
    # As they appear inside URLs and quoted texts too.
    out += [urllib.parse.quote_plus(x) for x in out] + [urllib.parse.quote(x, safe="") for x in out]
    return sorted({x for x in out if x}, key=len, reverse=True)


_T = TypeVar("_T")


def _bounded(work: Callable[[threading.Event], _T], seconds: float, name: str) -> _T | None:
    """work(stop) in a daemon thread: its result, or None when it has not finished within seconds (stop is
    then set, for work to give up at its next chance; the thread is left to finish or fail on its own). An
    exception of work is raised here."""
    box: list[tuple[bool, Any]] = []
    stop = threading.Event()

    def run() -> None:
        try:
            box.append((True, work(stop)))
        except BaseException as exc:  # handed to the caller (or dropped when it stopped waiting)
            box.append((False, exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        stop.set()
        return None
    finished, value = box[0]
    if not finished:
        raise value
    return value


# --------------------------------------------------------------------------------------------------- rendering

def _local(ms: int, tz: ZoneInfo, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return datetime.fromtimestamp(ms / 1000, tz).strftime(fmt)


def _label(m: AlertMessage) -> str:
    kind = KIND_LABELS.get(m.kind, m.kind)
    if m.kind == "resolved":
        return f"【{kind}】"
    return f"【{kind}·{SEVERITY_LABELS.get(m.severity, m.severity)}】"


def message_title(m: AlertMessage) -> str:
    """【告警·重要】平山镇服务站：摄像机离线, 【恢复】平山镇服务站：摄像机离线."""
    return _label(m) + m.title


def _tone(m: AlertMessage) -> str:
    return "info" if m.kind == "resolved" else "warning"


@dataclass(frozen=True)
class _Style:
    """How one receiver writes the same lines: WeCom markdown, DingTalk (standard) markdown, plain text."""

    sep: str
    heading: Callable[[str, str], str]  # (title, tone)
    field: Callable[[str, str], str]  # (label, value)
    town: Callable[[str, int], str]  # (town, count)
    item: Callable[[str, str, str], str]  # (label, rest, tone)


STYLES: dict[str, _Style] = {
    # Standard markdown folds single newlines into one paragraph (DingTalk does): a blank line between lines.
    "markdown": _Style(
        sep="\n\n",
        heading=lambda t, _tone: f"### {t}",
        field=lambda k, v: f"**{k}**：{v}",
        town=lambda t, n: f"**{t}**（{n} 条）",
        item=lambda label, rest, _tone: f"- {label}{rest}",
    ),
    # WeCom shows newlines as they are and has three font colours: warning (orange) for alerts, info (green)
    # for recoveries.
    "wecom": _Style(
        sep="\n",
        heading=lambda t, tone: f'<font color="{tone}">**{t}**</font>',
        field=lambda k, v: f"> {k}：{v}",
        town=lambda t, n: f"**{t}**（{n} 条）",
        item=lambda label, rest, tone: f'<font color="{tone}">{label}</font>{rest}',
    ),
    "plain": _Style(
        sep="\n",
        heading=lambda t, _tone: t,
        field=lambda k, v: f"{k}：{v}",
        town=lambda t, n: f"{t}（{n} 条）：",
        item=lambda label, rest, _tone: f"  - {label}{rest}",
    ),
}


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest start of text within max_bytes of UTF-8, never half a character."""
    if max_bytes <= 0:
        return ""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _station(m: AlertMessage) -> str | None:
    if m.station_name and m.station_id:
        return f"{m.station_name}（{m.station_id}）"
    return m.station_name or m.station_id


def _single_lines(m: AlertMessage, tz: ZoneInfo, st: _Style) -> tuple[list[str], str | None]:
    lines = []
    station = _station(m)
    if station:
        lines.append(st.field("站点", station))
    if m.town:
        lines.append(st.field("乡镇", m.town))
    lines.append(st.field("开始时间", _local(m.since_ms, tz)))
    lines.append(st.field("消息时间", m.local_time))
    return lines, (m.detail or None)


def _digest_item(m: AlertMessage, tz: ZoneInfo, st: _Style) -> str:
    # Compact: the time of day, with the date only when it is not the message's day.
    ms = m.at_ms if m.kind == "resolved" else m.since_ms
    same_day = _local(ms, tz, "%Y-%m-%d") == _local(m.at_ms, tz, "%Y-%m-%d")
    when = _local(ms, tz, "%H:%M" if same_day else "%m-%d %H:%M")
    when += " 恢复" if m.kind == "resolved" else " 起"
    where = f"{m.station_id}，{when}" if m.station_id else when
    return st.item(_label(m), f"{m.title}（{where}）", _tone(m))


def _digest_groups(messages: Sequence[AlertMessage]) -> list[tuple[str, list[AlertMessage]]]:
    """By town (the towns with the worst messages first), each town's messages by severity, worst first."""
    towns: dict[str, list[AlertMessage]] = {}
    for m in messages:
        towns.setdefault(m.town or "县级/系统", []).append(m)
    for items in towns.values():
        items.sort(key=lambda m: (-SEVERITY_RANK.get(m.severity, 0), m.kind == "resolved", m.since_ms))
    return sorted(towns.items(), key=lambda kv: (-max(SEVERITY_RANK.get(m.severity, 0) for m in kv[1]), kv[0]))


def _summary_line(messages: Sequence[AlertMessage]) -> str:
    counts: dict[str, int] = {}
    for m in messages:
        counts[m.kind] = counts.get(m.kind, 0) + 1
    kinds = [k for k in ("firing", "reminder", "resolved", "test") if k in counts]
    parts = [f"{KIND_LABELS.get(k, k)} {counts[k]} 条" for k in kinds]
    latest = max(messages, key=lambda m: m.at_ms)
    return f"共 {len(messages)} 条：{'，'.join(parts)}；消息时间 {latest.local_time}"


def digest_title(n: int) -> str:
    return f"【汇总】{n} 条告警消息"


def _render(messages: Sequence[AlertMessage], tz: ZoneInfo, style: str, *, heading: bool = False,
            heading_prefix: str = "", suffix: str = "", max_bytes: int | None = None) -> tuple[str, str]:
    """(title, text): text is the heading (when asked), the body lines, then suffix; within max_bytes of UTF-8
    with the suffix kept whole. A digest that does not fit loses whole lines from its end (the least severe)
    and says how many messages it left out; a single message loses the end of its detail."""
    if not messages:
        raise ValueError("nothing to render")
    st = STYLES[style]
    single = len(messages) == 1
    title = message_title(messages[0]) if single else digest_title(len(messages))
    head = [st.heading(heading_prefix + title, _tone(messages[0]) if single else "warning")] if heading else []
    tail = [suffix] if suffix else []

    def size(lines: list[str]) -> int:
        return _nbytes(st.sep.join(lines))

    def cut_before_tail(lines: list[str], mark: str) -> str:
        # The last resort: the text before the suffix is cut, the suffix stays whole (DingTalk @s a phone only
        # when its @mobile is in the text).
        assert max_bytes is not None
        text = st.sep.join(lines)
        room = max_bytes - (size([""] + tail) if tail else 0)
        if _nbytes(text) > room:
            text = _cut_utf8(text, room - _nbytes(mark)) + mark
        text = st.sep.join([text] + tail)
        return text if _nbytes(text) <= max_bytes else _cut_utf8(text, max_bytes)  # a suffix over the limit

    if single:
        fields, detail = _single_lines(messages[0], tz, st)
        lines = head + fields + ([detail] if detail else []) + tail
        if max_bytes is None or size(lines) <= max_bytes:
            return title, st.sep.join(lines)
        if detail:
            # Room for the detail once everything else is counted ("……" marks the cut).
            room = max_bytes - size(head + fields + [""] + tail) - _nbytes("……")
            lines = head + fields + [_cut_utf8(detail, room) + "……"] + tail
        text = st.sep.join(lines)
        if _nbytes(text) > max_bytes:  # a title or fields beyond the limit: cut the text itself
            text = cut_before_tail(lines[:len(lines) - len(tail)], "……")
        return title, text

    groups = _digest_groups(messages)
    body = [_summary_line(messages)]
    for town, items in groups:
        body.append(st.town(town, len(items)))
        body.extend(_digest_item(m, tz, st) for m in items)
    full = head + body + tail
    if max_bytes is None or size(full) <= max_bytes:
        return title, st.sep.join(full)

    # Greedy, in order, whole lines: the footer is reserved at its longest (every message left out).
    footer_longest = f"……另有 {len(messages)} 条，详见控制台"
    sep_n = _nbytes(st.sep)
    used = size(head + [_summary_line(messages)])
    budget = max_bytes - _nbytes(footer_longest) - sep_n - (sep_n + _nbytes(suffix) if suffix else 0)
    out = head + [_summary_line(messages)]
    shown = 0
    done = False
    for town, items in groups:
        town_line: str | None = st.town(town, len(items))
        for m in items:
            add = ([town_line] if town_line else []) + [_digest_item(m, tz, st)]
            cost = sum(sep_n + _nbytes(x) for x in add)
            if used + cost > budget:
                done = True
                break
            out += add
            used += cost
            shown += 1
            town_line = None
        if done:
            break
    out.append(f"……另有 {len(messages) - shown} 条，详见控制台")
    text = st.sep.join(out + tail)
    if _nbytes(text) > max_bytes:  # only when the heading and summary alone are over the limit
        text = cut_before_tail(out, "")
    return title, text


def render_text(messages: Sequence[AlertMessage], tz: ZoneInfo, *, style: str = "markdown",
                max_bytes: int | None = None) -> tuple[str, str]:
    """(title, body) in Chinese: the title alone (e-mail subject, DingTalk's notification line) and the body
    without it. One message: 站点, 乡镇, 开始时间, 消息时间, then the detail. Several: 【汇总】N 条告警消息 and
    one line per message, grouped by town. style: markdown (DingTalk), wecom, plain (e-mail)."""
    return _render(messages, tz, style, max_bytes=max_bytes)


# ------------------------------------------------------------------------------------------------- the channels

class Channel(Protocol):
    name: str
    type: str  # wecom | dingtalk | webhook | email
    settings: AlertChannelSettings

    def send(self, messages: Sequence[AlertMessage], delivery_id: int) -> SendResult:
        """One message (len 1) or a digest (len > 1) as ONE request or ONE e-mail. Never raises for a network
        or receiver problem: returns SendResult(ok=False, error=..., retry_after_s=..., permanent=...)."""
        ...

    def describe(self) -> dict[str, Any]:
        """name, type, target (the masked address), towns, min_severity, quiet_hours, max_per_minute."""
        ...


class _BaseChannel:
    type = ""
    # The robots say in their answer whether they took the message (errcode); a webhook's 2xx status says
    # it all, and its body is never read (a big one would otherwise fail a message the receiver took).
    reads_answer = True

    def __init__(self, settings: AlertChannelSettings, tz: ZoneInfo) -> None:
        self.name = settings.name
        self.settings = settings
        self.tz = tz
        self._secrets = _secret_fragments(settings)

    # -- what a channel shows
    def target(self) -> str:
        url = self.settings.url.get_secret_value() if self.settings.url else ""
        return mask_secret_url(url)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"name": self.name, "type": self.type, "target": self.scrub(self.target()), "towns": list(s.towns),
                "min_severity": s.min_severity, "quiet_hours": s.quiet_hours, "max_per_minute": s.max_per_minute}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.scrub(self.target())}>"

    def scrub(self, text: str) -> str:
        """text without any of this channel's secrets, and with any URL in it masked."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _mask_urls_in(text)

    # -- sending
    def send(self, messages: Sequence[AlertMessage], delivery_id: int) -> SendResult:
        if not messages:
            raise ValueError("send needs at least one message")
        started = time.monotonic()
        try:
            result = self._send(messages, delivery_id)
        except Exception as exc:  # a bug or a surprise from a library: still an answer, never a raise
            result = SendResult(ok=False, error=f"{type(exc).__name__}: {exc}")
        if result.error:
            result = SendResult(ok=result.ok, error=self.scrub(result.error)[:500],
                                retry_after_s=result.retry_after_s, permanent=result.permanent)
        took = time.monotonic() - started
        if result.ok:
            log.debug("alert channel %s: delivery %d sent (%d message(s), %.2f s)", self.name, delivery_id,
                      len(messages), took)
        else:
            log.warning("alert channel %s: delivery %d not sent (%s%s): %s", self.name, delivery_id,
                        "permanent" if result.permanent else "retryable",
                        f", retry after {result.retry_after_s:g} s" if result.retry_after_s else "", result.error)
        return result

    def _send(self, messages: Sequence[AlertMessage], delivery_id: int) -> SendResult:
        raise NotImplementedError

    # -- HTTP
    def _post(self, url: str, content: bytes, headers: dict[str, str]) -> httpx.Response | SendResult:
        """The receiver's answer (its body read whole only for a 2xx status, and at most ANSWER_MAX_BYTES of
        it), or the SendResult of a request that got none (errors name the masked URL). The whole exchange
        (connect, send, answer) takes at most timeout_seconds: httpx's timeouts are per operation (a receiver
        sending one byte a second would hold a send forever), so it runs in a thread waited on that long."""
        total = self.settings.timeout_seconds
        deadline = time.monotonic() + total
        answer = _bounded(lambda stop: self._exchange(url, content, headers, deadline, stop), total,
                          f"alert-{self.name}")
        if answer is None:
            return self._timed_out(url)
        return answer

    def _timed_out(self, url: str) -> SendResult:
        return SendResult(ok=False, error=f"timeout after {self.settings.timeout_seconds:g} s ({mask_secret_url(url)})")

    def _exchange(self, url: str, content: bytes, headers: dict[str, str], deadline: float,
                  stop: threading.Event) -> httpx.Response | SendResult:
        masked = mask_secret_url(url)
        too_large = SendResult(ok=False, error=f"answer too large (over {ANSWER_MAX_BYTES // 1024} KiB) ({masked})")
        # Each phase (connect, write, pool, every read) within the whole; _post stops waiting at the deadline.
        timeout = httpx.Timeout(self.settings.timeout_seconds)
        # identity: the answer's bytes as sent, so the cap is on what is read, not on what it inflates to.
        headers = {"User-Agent": "vms-alerts/1", "Accept-Encoding": "identity", **headers}
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False) as client, \
                    client.stream("POST", url, content=content, headers=headers) as resp:
                kept = [(k, v) for k, v in resp.headers.multi_items()
                        if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")]
                if not 200 <= resp.status_code < 300:
                    # The status and headers decide (Retry-After); an error page is not read.
                    return httpx.Response(resp.status_code, headers=kept)
                if not self.reads_answer:
                    return httpx.Response(resp.status_code, headers=kept)
                declared = resp.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > ANSWER_MAX_BYTES:
                    return too_large
                body = bytearray()
                for chunk in resp.iter_raw():
                    body += chunk
                    if len(body) > ANSWER_MAX_BYTES:
                        return too_large
                    if stop.is_set() or time.monotonic() > deadline:
                        return self._timed_out(url)
                return httpx.Response(resp.status_code, headers=kept, content=bytes(body))
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return SendResult(ok=False, error=f"{type(exc).__name__} ({masked})", permanent=True)
        except httpx.TimeoutException:
            return self._timed_out(url)
        except httpx.HTTPError as exc:
            # str(exc) may hold the URL: the scrubber in send() removes it again, this names only the masked one.
            return SendResult(ok=False, error=f"{type(exc).__name__}: {self.scrub(str(exc))} ({masked})")

    @staticmethod
    def _status_result(resp: httpx.Response) -> SendResult:
        """A non-success HTTP status: 429 waits as asked, 408 and 5xx retry, other 4xx and 3xx are the set-up."""
        code = resp.status_code
        error = f"HTTP {code}"
        if code == 429:
            return SendResult(ok=False, error=error, retry_after_s=_retry_after(resp.headers.get("Retry-After")))
        if code == 408 or code >= 500 or code < 300:
            return SendResult(ok=False, error=error)
        return SendResult(ok=False, error=error + (" (redirect: configure the final address)" if code < 400 else ""),
                          permanent=True)


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds or as an HTTP date; 60 s when absent or unreadable."""
    if not value:
        return DEFAULT_RETRY_AFTER_S
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_S
        if when.tzinfo is None:
            return DEFAULT_RETRY_AFTER_S
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 1.0), MAX_RETRY_AFTER_S)


def _robot_answer(resp: httpx.Response) -> tuple[int, str] | SendResult:
    """(errcode, errmsg) of a robot's HTTP 200 answer; a robot says what went wrong in errcode, not in the status."""
    if resp.status_code != 200:
        return _BaseChannel._status_result(resp)
    try:
        body = resp.json()
        code = int(body["errcode"])
    except (ValueError, KeyError, TypeError):
        return SendResult(ok=False, error="HTTP 200 without an errcode (not a robot's answer)")
    return code, str(body.get("errmsg", ""))[:200]


class WeComChannel(_BaseChannel):
    """企业微信群机器人: markdown to the robot's full URL (…/cgi-bin/webhook/send?key=…)."""

    type = "wecom"

    def _send(self, messages: Sequence[AlertMessage], delivery_id: int) -> SendResult:
        _, content = _render(messages, self.tz, "wecom", heading=True, max_bytes=WECOM_MAX_BYTES)
        payload = {"msgtype": "markdown", "markdown": {"content": content}}
        assert self.settings.url is not None  # the settings refuse a wecom channel without one
        answer = self._post(self.settings.url.get_secret_value(), _json_bytes(payload),
                            {"Content-Type": "application/json"})
        if isinstance(answer, SendResult):
            return answer
        parsed = _robot_answer(answer)
        if isinstance(parsed, SendResult):
            return parsed
        code, errmsg = parsed
        if code == 0:
            return SendResult(ok=True)
        error = f"WeCom errcode {code}: {errmsg}"
        if code == WECOM_FREQ_LIMIT:
            return SendResult(ok=False, error=error, retry_after_s=WECOM_FREQ_RETRY_S)
        # 93000 (wrong key) and the 4xxxx family (bad request, content too long, ...): the set-up or our text.
        return SendResult(ok=False, error=error, permanent=code == WECOM_INVALID_URL or 40000 < code < 50000)


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """The robot's 加签: quote_plus(base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")))."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest))


class DingTalkChannel(_BaseChannel):
    """钉钉自定义机器人: markdown, signed when the robot has a 加签 secret, with the keyword when it has one."""

    type = "dingtalk"

    def _url(self) -> str:
        # Built fresh for every send from the stored URL: appending to a stored URL grows it until DingTalk
        # answers "uri too large", and a signature is only good for an hour.
        assert self.settings.url is not None  # the settings refuse a dingtalk channel without one
        url = self.settings.url.get_secret_value()
        if self.settings.secret is None:
            return url
        ts = int(time.time() * 1000)
        sign = dingtalk_sign(self.settings.secret.get_secret_value(), ts)
        return f"{url}{'&' if '?' in url else '?'}timestamp={ts}&sign={sign}"

    def _send(self, messages: Sequence[AlertMessage], delivery_id: int) -> SendResult:
        s = self.settings
        wanted = list(s.mention_mobiles) if any(m.severity in MENTION_SEVERITIES for m in messages) else []
        # DingTalk @s a phone only when it is both in at.atMobiles and written in the text: the text keeps its
        # @mobiles whole however it is cut (_render reserves them), as many as fit in their share.
        mobiles: list[str] = []
        for phone in wanted:
            if _nbytes(" ".join(f"@{p}" for p in [*mobiles, phone])) > DINGTALK_MENTION_MAX_BYTES:
                break
            mobiles.append(phone)
        suffix = " ".join(f"@{p}" for p in mobiles)
        prefix = f"{s.keyword} " if s.keyword else ""
        title, text = _render(messages, self.tz, "markdown", heading=True, heading_prefix=prefix, suffix=suffix,
                              max_bytes=DINGTALK_MAX_BYTES)
        payload = {"msgtype": "markdown", "markdown": {"title": prefix + title, "text": text},
                   "at": {"atMobiles": mobiles, "isAtAll": False}}
        answer = self._post(self._url(), _json_bytes(payload), {"Content-Type": "application/json"})
        if isinstance(answer, SendResult):
            return answer
        parsed = _robot_answer(answer)
        if isinstance(parsed, SendResult):
            return parsed
        code, errmsg = parsed
        if code == 0:
            return SendResult(ok=True)
        error = f"DingTalk errcode {code}: {errmsg}"
        if code in DINGTALK_THROTTLED:
            return SendResult(ok=False, error=error, retry_after_s=DINGTALK_THROTTLE_RETRY_S)
        return SendResult(ok=False, error=error, permanent=code in DINGTALK_PERMANENT)


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def webhook_alert(m: AlertMessage, tz: ZoneInfo) -> dict[str, Any]:
    """One message as the webhook's JSON object."""
    return {"alert_id": m.alert_id, "station_id": m.station_id, "station_name": m.station_name, "town": m.town,
            "rule": m.rule, "severity": m.severity, "state": m.state, "kind": m.kind, "title": m.title,
            "detail": m.detail, "since_ms": m.since_ms, "since_local": _local(m.since_ms, tz), "at_ms": m.at_ms,
            "local_time": m.local_time}


def webhook_body(messages: Sequence[AlertMessage], delivery_id: int, channel: str, tz: ZoneInfo) -> dict[str, Any]:
    alerts = [webhook_alert(m, tz) for m in messages]
    body: dict[str, Any] = {"delivery_id": delivery_id, "channel": channel, "digest": len(alerts) > 1,
                            "count": len(alerts), "alerts": alerts}
    if len(alerts) == 1:
        # A one-line script reads body["station_id"], body["state"] without looking into the list.
        body.update({k: v for k, v in alerts[0].items() if k not in body})
    return body


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>: the timestamp is signed so a recorded request
    cannot be replayed later with a fresh X-VMS-Timestamp."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookChannel(_BaseChannel):
    """A generic webhook: the messages as JSON, with X-VMS-Delivery (receivers drop duplicates by it) and, when
    the channel has a secret, X-VMS-Signature over the timestamp and the exact body bytes."""

    type = "webhook"
    reads_answer = False

    def _send(self, messages: Sequence[AlertMessage], delivery_id: int) -> SendResult:
        body = _json_bytes(webhook_body(messages, delivery_id, self.name, self.tz))
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-VMS-Delivery": str(delivery_id), "X-VMS-Timestamp": ts}
        if self.settings.secret is not None:
            headers["X-VMS-Signature"] = webhook_signature(self.settings.secret.get_secret_value(), ts, body)
        assert self.settings.url is not None  # the settings refuse a webhook channel without one
        answer = self._post(self.settings.url.get_secret_value(), body, headers)
        if isinstance(answer, SendResult):
            return answer
        if 200 <= answer.status_code < 300:
            return SendResult(ok=True)
        return self._status_result(answer)


class EmailChannel(_BaseChannel):
    """E-mail over SMTP: subject the title, a plain UTF-8 body, one e-mail to every address in mail_to."""

    type = "email"

    def target(self) -> str:
        s = self.settings
        scheme = {"ssl": "smtps", "starttls": "smtp+starttls", "none": "smtp"}[s.smtp_security]
        return f"{scheme}://{s.smtp_host}:{s.smtp_port} -> {', '.join(s.mail_to)}"

    def build(self, messages: Sequence[AlertMessage], delivery_id: int) -> EmailMessage:
        s = self.settings
        assert s.mail_from is not None  # the settings refuse an email channel without one
        title, body = render_text(messages, self.tz, style="plain")
        msg = EmailMessage()
        msg["Subject"] = title
        msg["From"] = s.mail_from
        msg["To"] = ", ".join(s.mail_to)
        msg["Date"] = email.utils.format_datetime(datetime.now(self.tz))  # +0800: the time operators live in
        # Given the domain: without it make_msgid asks the resolver for this host's name, which can hang.
        msg["Message-ID"] = email.utils.make_msgid(f"vms-{delivery_id}", domain=s.mail_from.rpartition("@")[2] or None)
        msg["X-VMS-Delivery"] = str(delivery_id)
        msg.set_content(body + "\n", charset="utf-8")
        return msg

    def _send(self, messages: Sequence[AlertMessage], delivery_id: int) -> SendResult:
        s = self.settings
        msg = self.build(messages, delivery_id)
        # Every socket operation has timeout_seconds, but a server answering slowly (a byte at a time, each
        # command just within it) could hold the conversation for ever: it runs in a thread waited on for
        # SMTP_SESSION_FACTOR x timeout_seconds. Past that the send is failed (retryable) and the connection
        # shut down so the thread ends soon; the server may still have taken the message by then, so a
        # retry can deliver it twice (at least once, as every channel).
        limit = s.timeout_seconds * SMTP_SESSION_FACTOR
        held: list[smtplib.SMTP] = []
        result = _bounded(lambda stop: self._converse(msg, delivery_id, held), limit, f"alert-{self.name}")
        if result is not None:
            return result
        for smtp in held:
            if smtp.sock is not None:
                try:
                    smtp.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return SendResult(ok=False, error=f"SMTP 会话超时: not done within {limit:g} s "
                                          f"({s.smtp_host}:{s.smtp_port})")

    def _converse(self, msg: EmailMessage, delivery_id: int, held: list[smtplib.SMTP]) -> SendResult:
        """One SMTP conversation sending msg; held gets the connection (for _send to shut it down)."""
        s = self.settings
        assert s.smtp_host is not None  # the settings refuse an email channel without one
        where = f"{s.smtp_host}:{s.smtp_port}"
        try:
            context = ssl.create_default_context()
            smtp: smtplib.SMTP
            # Made unconnected and held first: connect() waits for the greeting, which may be the slow part.
            if s.smtp_security == "ssl":
                smtp = smtplib.SMTP_SSL(timeout=s.timeout_seconds, context=context)
            else:
                smtp = smtplib.SMTP(timeout=s.timeout_seconds)
            # connect() does not set the name TLS verifies (the constructor does, with the host given to it).
            smtp._host = s.smtp_host  # type: ignore[attr-defined]
            held.append(smtp)
            with smtp:
                code, greeting = smtp.connect(s.smtp_host, s.smtp_port)
                if code != 220:  # as smtplib.SMTP(host) does
                    raise smtplib.SMTPConnectError(code, greeting)
                if s.smtp_security == "starttls":
                    smtp.starttls(context=context)
                if s.smtp_user:
                    smtp.login(s.smtp_user, s.smtp_password.get_secret_value() if s.smtp_password else "")
                refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            # Every address refused for good (5xx): no retry helps; all 4xx (greylisting, a full mailbox): later.
            temporary = bool(codes) and all(400 <= c < 500 for c in codes)
            return SendResult(ok=False, error=f"SMTPRecipientsRefused: {_smtp_codes(exc.recipients)} ({where})",
                              permanent=not temporary)
        except smtplib.SMTPAuthenticationError as exc:
            return SendResult(ok=False, error=f"SMTPAuthenticationError: {exc.smtp_code} ({where})", permanent=True)
        except smtplib.SMTPNotSupportedError as exc:
            # STARTTLS or AUTH that the server does not offer: the settings must change.
            return SendResult(ok=False, error=f"SMTPNotSupportedError: {exc} ({where})", permanent=True)
        except smtplib.SMTPResponseException as exc:
            raw = exc.smtp_error
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            return SendResult(ok=False, error=f"{type(exc).__name__}: {exc.smtp_code} {text[:200]} ({where})",
                              permanent=exc.smtp_code >= 500)
        except ssl.SSLCertVerificationError as exc:
            return SendResult(ok=False, error=f"SSLCertVerificationError: {exc.verify_message} ({where})",
                              permanent=True)
        except (smtplib.SMTPException, OSError) as exc:
            # Disconnected, refused, timed out, TLS broken mid-way: the server may be back later.
            return SendResult(ok=False, error=f"{type(exc).__name__}: {str(exc) or 'no detail'} ({where})")
        if refused:
            log.warning("alert channel %s: delivery %d refused by some recipients: %s", self.name, delivery_id,
                        _smtp_codes(refused))
        return SendResult(ok=True)


def _smtp_codes(recipients: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(f"{addr} {code}" for addr, (code, _) in recipients.items())


CHANNEL_TYPES: dict[str, type[_BaseChannel]] = {
    "wecom": WeComChannel, "dingtalk": DingTalkChannel, "webhook": WebhookChannel, "email": EmailChannel}


def make_channel(settings: AlertChannelSettings, tz: ZoneInfo) -> Channel:
    return CHANNEL_TYPES[settings.type](settings, tz)


def make_channels(alerts: AlertSettings, tz: ZoneInfo) -> dict[str, Channel]:
    """Every configured channel by name (webhook_url as the channel named "webhook")."""
    return {c.name: make_channel(c, tz) for c in alerts.all_channels()}
