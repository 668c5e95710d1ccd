"""The GB/T 28181 source of a camera session (vms.gb28181.source): its control link's watcher, its open and
its close, against fakes (no SIP server) and against a GbServer in this process."""

from __future__ import annotations

import math
import socket
import threading
import time

from vms.gb28181 import source as gb_source
from vms.gb28181.control import encode
from vms.gb28181.source import GbSource, _ControlLink


class _FakeReceiver:
    def __init__(self) -> None:
        self.ended: tuple[str, str] | None = None
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()


class _FakeContainer:
    def close(self) -> None:
        pass


def _link_pair() -> tuple[_ControlLink, socket.socket]:
    ours, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    link = _ControlLink.__new__(_ControlLink)
    link.sock = ours
    link._buffer = b""
    return link, server


def test_a_quiet_control_link_does_not_end_a_stream_after_an_hour(monkeypatch) -> None:
    """The SIP server says nothing on a stream's control link while the stream goes well. The watcher read
    it with a one-hour deadline and took the deadline for the server gone: every GB camera's stream was
    cut (a gap, a reconnect) once an hour."""
    clock = [time.monotonic()]

    def fast_monotonic() -> float:
        clock[0] += 1800.0  # half an hour passes at every look at the clock
        return clock[0]

    monkeypatch.setattr(gb_source.time, "monotonic", fast_monotonic)
    link, server = _link_pair()
    receiver = _FakeReceiver()
    src = GbSource(_FakeContainer(), receiver, link, -1, "call-1", "test")  # type: ignore[arg-type]
    try:
        assert not receiver.stopped.wait(1.5), "the stream was ended with nothing said on its control link"
        assert src.end_reason() is None
        server.sendall(encode({"event": "ended", "reason": "device_bye", "detail": "BYE"}))
        assert receiver.stopped.wait(3)
        assert src.end_reason() == ("device_bye", "BYE")
    finally:
        src._read_fd = None
        src.close()
        server.close()


def test_the_server_going_away_still_ends_the_stream() -> None:
    link, server = _link_pair()
    receiver = _FakeReceiver()
    src = GbSource(_FakeContainer(), receiver, link, -1, "call-1", "test")  # type: ignore[arg-type]
    try:
        server.close()
        assert receiver.stopped.wait(3)
        assert src.end_reason() == ("gb28181_unavailable", "the connection to the SIP server ended")
    finally:
        src._read_fd = None
        src.close()



def test_reading_a_link_closed_under_the_reader_is_its_end() -> None:
    """close() closes the control socket under the watcher thread: when it came between two recv()s, the
    next settimeout() failed with EBADF outside the read's error handling, and the thread died with a
    traceback in the log (at a reconnect of a GB camera)."""
    link, server = _link_pair()
    link.close()
    try:
        assert link.read(math.inf) is None
    finally:
        server.close()
