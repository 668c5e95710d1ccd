"""A GB/T 28181 camera as a source of the ordinary recording path (vms.ingest.sources), in the worker.

Per connection: a media receiver on one of our media ports (vms.gb28181.media), a request to the SIP
server over the control socket to INVITE the device to that port, then PyAV reading the PS the receiver
writes into a pipe. From there the session, recorder, analysis and live tap are those of an RTSP camera.
Why a stream ended (the device's BYE, its keepalives lost, no media) comes from the SIP server or the
receiver and becomes the gap's reason.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import struct
import threading
import time
import uuid
from typing import Any

import av
import av.container

from vms.catalog.urls import parse_gb28181_url
from vms.core.settings import Settings
from vms.gb28181.control import MAX_LINE, control_address, decode, encode
from vms.gb28181.media import CONNECT_TIMEOUT, MediaReceiver, expected_ssrc, make_media_pipe
from vms.ingest.sources import OpenedSource, SourceOpener, SourceUnavailable

log = logging.getLogger(__name__)

# PS has no header to speak of: the streams are found by reading packets. Enough for a keyframe with its
# PSM (a 2 Mbps camera's keyframe is ~150 KB), bounded in time by the receiver's no-media deadline.
PROBE_OPTIONS = {"probesize": "1000000", "analyzeduration": "2000000", "fflags": "-genpts"}
# The probe is given this long after no_media_seconds: a device that keeps sending a packet now and then
# without ever making a stream (the receiver's no-media end never comes) must not hold the open for ever.
PROBE_SLACK_S = 5.0
# How long the answer to a play may take after the INVITE's own timeout (the SIP server answers then).
ANSWER_SLACK_S = 5.0


class _ControlLink:
    """One connection to the SIP server per stream: closing it (or dying) hangs the stream up."""

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        if hasattr(socket, "SO_PEERCRED"):
            creds = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid not in (os.geteuid(), 0):
                self.sock.close()
                raise OSError(f"the GB28181 control socket belongs to uid {uid}")
        self._buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

    def read(self, deadline: float, stop: threading.Event | None = None) -> dict[str, Any] | None:
        """The next message, or None at end of connection or when `deadline` (monotonic; math.inf: none)
        passes (or `stop` is set: looked at twice a second). close() from another thread ends a read."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                return None
            try:
                # (inside: close() from another thread makes settimeout fail too.) Without a stop to watch,
                # no periodic wake-up: a stream's watcher waits here for hours.
                if stop is not None:
                    self.sock.settimeout(min(remaining, 0.5))
                else:
                    self.sock.settimeout(None if math.isinf(remaining) else remaining)
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not data:
                return None
            self._buffer += data
            if len(self._buffer) > MAX_LINE:
                return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            return decode(line)
        except ValueError:
            return {}

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread (close does not)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class GbSource:
    def __init__(self, container: av.container.InputContainer, receiver: MediaReceiver, link: _ControlLink,
                 read_fd: int, call_id: str, name: str) -> None:
        self.container = container
        self.receiver = receiver
        self.link = link
        self.call_id = call_id
        self.name = name
        self._read_fd: int | None = read_fd
        self._ended: tuple[str, str] | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._events = threading.Thread(target=self._watch, name=f"gb-control-{name}", daemon=True)
        self._events.start()

    def _watch(self) -> None:
        """The SIP server's word on this stream: when the device hangs up or goes offline, end the stream
        (the receiver closes the pipe; the recorder sees its end). The server says nothing while a stream
        goes well, for hours: the wait has no deadline (one would be taken for the server gone)."""
        while not self._closed:
            message = self.link.read(math.inf)
            if message is None:
                if not self._closed:
                    self._ended = self._ended or ("gb28181_unavailable", "the connection to the SIP server ended")
                    self.receiver.stop()
                return
            if message.get("event") == "ended":
                self._ended = (str(message.get("reason") or "stream_ended"), str(message.get("detail") or ""))
                self.receiver.stop()

    def end_reason(self) -> tuple[str, str] | None:
        if self._ended is not None:
            return self._ended
        return self.receiver.ended

    def interrupt(self) -> None:
        self.receiver.stop()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.link.send({"op": "bye", "call": self.call_id})
        except OSError:
            pass
        self.link.close()
        self.receiver.stop()
        if self._read_fd is not None:
            fd, self._read_fd = self._read_fd, None
            try:
                os.close(fd)  # FFmpeg's pipe: protocol leaves the descriptor open
            except OSError:
                pass


def open_gb_source(settings: Settings, url: str, transport: str, stop: threading.Event) -> GbSource:
    cfg = settings.gb28181
    try:
        device_id, channel_id = parse_gb28181_url(url)
    except ValueError as exc:
        raise SourceUnavailable("bad_url", str(exc)) from None
    media_transport = "udp" if transport == "udp" else cfg.media_transport
    name = channel_id[-6:]
    try:
        link = _ControlLink(control_address(settings.data_dir), timeout=5)
    except OSError as exc:
        raise SourceUnavailable("gb28181_unavailable", f"the GB28181 SIP server does not answer ({exc}); "
                                "is gb28181.enabled set on the server that runs the workers?") from None
    read_fd, write_fd = make_media_pipe()
    try:
        receiver = MediaReceiver(media_transport, cfg.media_bind, cfg.media_ports, write_fd,
                                 no_media_seconds=cfg.no_media_seconds, name=name)
    except OSError as exc:
        link.close()
        for fd in (read_fd, write_fd):
            os.close(fd)
        raise SourceUnavailable("no_media_port", f"no free media port in {cfg.media_ports[0]}-"
                                                 f"{cfg.media_ports[1]}: {exc}") from None
    request_id = uuid.uuid4().hex
    try:
        link.send({"op": "play", "id": request_id, "device": device_id, "channel": channel_id,
                   "transport": media_transport, "port": receiver.port, "purpose": "Play"})
        answer = link.read(time.monotonic() + cfg.invite_timeout_seconds + ANSWER_SLACK_S, stop)
    except OSError as exc:
        answer = None
        log.debug("gb28181 control: %s", exc)
    if not answer or not answer.get("ok"):
        receiver.stop()
        link.close()
        os.close(read_fd)
        if stop.is_set():
            raise SourceUnavailable("ingest_stopped", "ingest stopped")
        if not answer:
            raise SourceUnavailable("gb28181_unavailable", "the GB28181 SIP server did not answer the request")
        raise SourceUnavailable(str(answer.get("reason") or "invite_refused"), str(answer.get("detail") or ""))
    try:
        if media_transport == "tcp-active":
            receiver.connect(str(answer.get("host")), int(answer.get("port") or 0))
        receiver.expected_ssrc = expected_ssrc(answer)
        receiver.start()
    except (OSError, ValueError, RuntimeError) as exc:
        receiver.stop()
        try:
            link.send({"op": "bye", "call": answer.get("call")})
        except OSError:  # the SIP server is gone: it hung up the stream itself
            pass
        link.close()
        os.close(read_fd)
        raise SourceUnavailable("no_media", f"cannot reach the device's media port: {exc}") from None
    source_name = f"{device_id}/{channel_id}"
    # Returns once the probe has read the streams; a device that sends nothing makes the receiver end
    # (no_media_seconds) and close the pipe, which ends the probe. The guard ends it too (by stopping the
    # receiver: the pipe closes) at a stop of the session, or when the probe outlives its deadline.
    probing, fired = threading.Event(), threading.Event()
    guard = threading.Thread(target=_guard_probe, name=f"gb-probe-{name}", daemon=True,
                             args=(receiver, stop, probing, fired,
                                   time.monotonic() + cfg.no_media_seconds + PROBE_SLACK_S))
    guard.start()
    try:
        container = av.open(f"pipe:{read_fd}", format="mpeg", container_options=PROBE_OPTIONS)
    except Exception as exc:  # noqa: BLE001 - the reason comes from the receiver when it knows it
        probing.set()
        guard.join()
        ended = receiver.ended
        receiver.stop()
        try:
            link.send({"op": "bye", "call": answer.get("call")})
        except OSError:
            pass
        link.close()
        os.close(read_fd)
        if stop.is_set():
            raise SourceUnavailable("ingest_stopped", "ingest stopped") from None
        if ended is not None:
            raise SourceUnavailable(*ended) from None
        if fired.is_set():
            raise SourceUnavailable("bad_stream", f"the media of {source_name} made no stream PyAV can read within "
                                                  f"{cfg.no_media_seconds + PROBE_SLACK_S:g} s") from None
        raise SourceUnavailable("bad_stream", f"the media of {source_name} is not a PS stream PyAV can read: "
                                              f"{exc}") from None
    probing.set()
    guard.join()
    source = GbSource(container, receiver, link, read_fd, str(answer.get("call")), name)
    if stop.is_set():  # opened on what came before the stop: not recorded, the session is ending
        container.close()
        source.close()
        raise SourceUnavailable("ingest_stopped", "ingest stopped")
    # (Opened just as the probe's deadline stopped the receiver: what it read is recorded, then the
    # stream ends.)
    return source


def _guard_probe(receiver: MediaReceiver, stop: threading.Event, probing: threading.Event,
                 fired: threading.Event, deadline: float) -> None:
    """Until the probe is over (`probing` set): at a stop, or at `deadline` (monotonic), stop the receiver,
    which closes the pipe the probe reads (and set `fired`)."""
    while not probing.wait(0.1):
        if stop.is_set() or time.monotonic() >= deadline:
            fired.set()
            receiver.stop()
            return


def make_gb_source_opener(settings: Settings) -> SourceOpener:
    """The worker's opener for gb28181:// cameras (named in WorkerSpec.source_openers)."""

    def open_source(url: str, transport: str, stop: threading.Event) -> OpenedSource:
        return open_gb_source(settings, url, transport, stop)

    cfg = settings.gb28181
    # The longest an open takes (the session's connect deadline, past which its worker is judged hung):
    # the INVITE's answer, a tcp-active connect, the probe.
    open_source.open_seconds = (cfg.invite_timeout_seconds + ANSWER_SLACK_S + CONNECT_TIMEOUT  # type: ignore[attr-defined]
                                + cfg.no_media_seconds + PROBE_SLACK_S)
    return open_source
