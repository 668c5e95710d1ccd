"""systemd's notify protocol (sd_notify): READY, STOPPING and the watchdog's keep-alive.

One datagram to the socket systemd names in NOTIFY_SOCKET. Written here rather than taken from a
library: python-systemd needs libsystemd's headers and a compiler at install time, the small PyPI
clients are unmaintained, and the protocol is this one send (see sd_notify(3)). Without NOTIFY_SOCKET
(not started by systemd, or Type= is not notify) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address = address
        usec = env.get("WATCHDOG_USEC", "")
        # systemd asks for a keep-alive at least every WatchdogSec; sending twice as often is its advice.
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        # Made here, not at the first notification: the supervisor's watch thread and the stop thread both
        # notify. Non-blocking: a datagram to a peer whose queue is full blocks the sender, and the sender
        # is the supervisor's watch thread, which restarts dead workers; a lost keep-alive is followed by
        # the next one within half the watchdog interval.
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._failures = 0  # in a row

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        if self.address is None or self._sock is None:
            return False
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:  # BlockingIOError included: systemd is not reading its socket
            self._failures += 1
            if self._failures == 1 or self._failures % 100 == 0:
                log.warning("systemd notification %r failed (%d in a row): %s", message, self._failures, exc)
            return False
        self._failures = 0
        return True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")


def feed_watchdog_forever(notifier: SystemdNotifier) -> None:
    """A daemon thread that keeps systemd's watchdog fed (for a process with nothing else to vouch for)."""
    interval = notifier.watchdog_interval_s
    if interval is None:
        return
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(interval):
            notifier.watchdog()

    threading.Thread(target=feed, name="systemd-watchdog", daemon=True).start()
