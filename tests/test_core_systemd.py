"""systemd notifications never block their sender (the ingest supervisor's watch thread)."""

from __future__ import annotations

import socket
import threading

from vms.core.systemd import SystemdNotifier


def test_notifications_never_block_when_systemd_does_not_read(tmp_path):
    """A datagram to a full AF_UNIX queue blocks a blocking sender: the supervisor's watch thread, which
    restarts dead and hung workers and feeds the watchdog, stopped with it."""
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
        done = threading.Event()
        sent: list[bool] = []

        def feed() -> None:
            for _ in range(5000):  # far more than the receiver's queue holds
                sent.append(notifier.notify("WATCHDOG=1"))
            done.set()

        threading.Thread(target=feed, daemon=True).start()
        assert done.wait(15), "a notification blocked while systemd's socket was full"
        assert sent[0] and not all(sent)  # the first ones arrived, the rest were dropped, not waited for
        assert receiver.recv(64) == b"WATCHDOG=1"
    finally:
        receiver.close()


def test_no_socket_no_notification():
    assert SystemdNotifier({}).notify("READY=1") is False
