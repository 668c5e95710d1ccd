"""Who may be at the other end of a live tap connection. The tap's socket file is 0600, but the abstract
socket it falls back to for a long data_dir has no permissions: any local user could watch every camera,
or bind the name first and feed the relay a picture of their own. Both ends check SO_PEERCRED."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from vms.core.clock import SystemClock
from vms.live import protocol
from vms.live.protocol import StreamInfo, tap_address
from vms.live.relay import LiveHub, LiveUnavailable
from vms.live.tap import LiveTapServer

STATION = "pingshan-town"
STRANGER = 65534  # nobody


def deep_data_dir(tmp_path):
    data_dir = tmp_path / ("d" * 50) / ("e" * 50)
    assert tap_address(data_dir, STATION).startswith("\0"), "the test needs the abstract socket"
    return data_dir


@pytest.fixture
def tap(tmp_path):
    server = LiveTapServer(deep_data_dir(tmp_path), SystemClock())
    tap = server(STATION)
    assert tap is not None
    yield tap
    server.close()


def settle(condition, timeout=3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_the_tap_refuses_a_peer_of_another_user(tap, monkeypatch):
    with socket.socket(socket.AF_UNIX) as ours:
        ours.connect(tap.address)
        assert settle(lambda: len(tap.clients) == 1), "the service's own user is let in"
    assert settle(lambda: not tap.clients)

    monkeypatch.setattr(protocol, "trusted_uids", lambda: {-5}, raising=False)  # as if we were somebody else
    with socket.socket(socket.AF_UNIX) as other:
        other.connect(tap.address)
        other.settimeout(3)
        assert other.recv(16) == b"", "closed at once"
    assert not tap.clients


def test_the_relay_refuses_a_tap_name_bound_by_another_user(tmp_path, monkeypatch):
    data_dir = deep_data_dir(tmp_path)
    fake = StreamInfo(station=STATION, codec="h264", extradata=b"", width=320, height=240)
    with socket.socket(socket.AF_UNIX) as squatter:
        squatter.bind(tap_address(data_dir, STATION))
        squatter.listen(1)

        def serve() -> None:  # a picture of the squatter's own
            with contextlib.suppress(OSError):
                conn, _ = squatter.accept()
                with conn:
                    conn.sendall(fake.encode())
                    time.sleep(2)

        threading.Thread(target=serve, daemon=True).start()
        monkeypatch.setattr(protocol, "trusted_uids", lambda: {-5}, raising=False)  # the squatter is not us

        async def scenario() -> None:
            hub = LiveHub(data_dir, linger_s=0.2)
            with pytest.raises(LiveUnavailable):
                await hub.watch(STATION, wait_info_s=1)
            await hub.close()

        asyncio.run(scenario())


@pytest.mark.slow  # a subprocess
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_another_local_user_cannot_watch_through_the_abstract_socket(tap):
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "s.connect('\\0' + sys.argv[1])\n"
             "s.settimeout(3)\n"
             "print(len(s.recv(16)))\n")
    python = shutil.which("python3", path="/usr/bin:/bin")  # one the stranger may run (not the .venv's)
    if python is None:
        pytest.skip("no system python3 for the stranger")
    done = subprocess.run([python, "-c", probe, tap.address[1:]], user=STRANGER, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", "the tap closes the stranger's connection"
    assert not tap.clients
