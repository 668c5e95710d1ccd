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
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self.address)
            return True
        except OSError as exc:
            log.warning("systemd notification %r failed: %s", message, exc)
            return False

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
