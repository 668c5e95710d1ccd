"""The local link between an ingest worker and the SIP server: JSON lines over a Unix socket.

The SIP server runs in the main process (it owns the SIP port and the devices' registrations); the media
is received in the worker that records the camera, so no footage crosses a process boundary. A worker
asks for a stream (`play`: device, channel, our media port and transport) and gets the device's answer
or the reason it cannot have one; the server tells it when the stream ends on the device's side
(`ended`: device_bye, keepalive_lost, unregistered); the worker says `bye`, or just closes the
connection (a worker that dies closes it too): the server then hangs up the device's stream.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MAX_LINE = 64 * 1024
MAX_SOCKET_PATH = 100


def control_address(data_dir: Path | str) -> str:
    """`<data_dir>/run/gb28181.sock`, or an abstract socket named after it when the path is too long."""
    path = (Path(data_dir) / "run" / "gb28181.sock").resolve()
    text = str(path)
    if len(text.encode()) <= MAX_SOCKET_PATH:
        return text
    return "\0vms-gb28181-" + hashlib.sha1(text.encode()).hexdigest()[:20]


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def decode(line: bytes) -> dict[str, Any]:
    value = json.loads(line.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("a control message is a JSON object")
    return value
