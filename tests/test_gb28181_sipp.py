"""SIPp (Debian's sip-tester) acting as a GB/T 28181 device against the platform's SIP server in this process.

The scenarios are in tests/sipp/: a device that registers through the 401 digest challenge with SIPp's own
digest code, sends a Keepalive and a Catalog answer in GB2312-declared bodies and unregisters
(gb_device_register.xml, over UDP and over TCP), and one that answers the challenge with the wrong password
and then sends a keepalive anyway (gb_device_wrong_password.xml). The platform's own queries to a device that
registers are answered by the out-of-call scenario gb_platform_queries.xml. SIPp's exit code and its
statistics file say whether each scenario ran as written; the database says what the platform made of it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.gb28181_support import DOMAIN, SERVER_ID, accept, channel_rows, device_row, running_gb_server, wait_for
from vms.db.engine import Database
from vms.db.migrate import upgrade

pytestmark = [pytest.mark.slow]  # starts SIPp processes

SCENARIOS = Path(__file__).resolve().parent / "sipp"
# The credentials written in the scenarios' [authentication] (SIPp takes them literally).
GOOD_DEVICE, GOOD_PASSWORD = "44132300001329000001", "gb-sipp-pw1"
BAD_DEVICE, BAD_DEVICE_PASSWORD = "44132300001329000002", "gb-sipp-pw2"


def _sipp() -> str:
    path = shutil.which("sipp")
    if path is None:
        reason = "sipp is not on PATH (Debian package sip-tester; scripts/bootstrap.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gb-db") / "vms.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    db = Database(url)
    with db.engine.connect() as c:
        c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
    return path


def _run_sipp(work: Path, server_port: int, scenario: str, device: str, transport: str) -> dict[str, str]:
    """One call of `scenario` as `device`; SIPp's exit code must be 0 (every call succeeded). Returns the
    last line of its statistics file as {column: value}."""
    stats, errors, messages = work / "stats.csv", work / "errors.log", work / "messages.log"
    kind = socket.SOCK_STREAM if transport == "t1" else socket.SOCK_DGRAM
    cmd = [_sipp(), f"127.0.0.1:{server_port}", "-sf", str(SCENARIOS / scenario),
           "-oocsf", str(SCENARIOS / "gb_platform_queries.xml"),
           "-key", "gb_server", SERVER_ID, "-key", "gb_domain", DOMAIN, "-key", "gb_device", device,
           "-i", "127.0.0.1", "-p", str(_free_port(kind)), "-t", transport, "-m", "1", "-nostdin",
           "-timeout", "30s", "-timeout_error", "-recv_timeout", "10000",
           "-trace_stat", "-stf", str(stats), "-trace_err", "-error_file", str(errors),
           "-trace_msg", "-message_file", str(messages)]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, errors="replace", timeout=60,
                          stdin=subprocess.DEVNULL)
    log = errors.read_text(errors="replace") if errors.exists() else ""
    trace = messages.read_text(errors="replace")[-6000:] if messages.exists() else ""
    assert proc.returncode == 0, (f"sipp exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
                                  f"{log}\n{trace}")
    header, *rows = [line for line in stats.read_text().splitlines() if line.strip()]
    return dict(zip(header.split(";"), rows[-1].split(";"), strict=False))


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_sipp_device_registers_keeps_alive_sends_its_catalog_and_unregisters(tmp_path, template, transport):
    with running_gb_server(tmp_path, template) as gb:
        accept(gb, GOOD_DEVICE, GOOD_PASSWORD)
        stats = _run_sipp(tmp_path, gb.port, "gb_device_register.xml", GOOD_DEVICE, transport)
        assert (stats["SuccessfulCall(C)"], stats["FailedCall(C)"]) == ("1", "0"), stats
        assert int(stats["AutoAnswered(C)"]) >= 2, stats  # the platform's DeviceInfo and Catalog queries, by -oocsf
        assert gb.stats["registered"] == 1 and gb.stats["keepalives"] == 1 and gb.stats["malformed"] == 0
        assert not gb.online(GOOD_DEVICE)  # Expires: 0 at the end
        row = wait_for(lambda: (r := device_row(gb, GOOD_DEVICE)).state == "offline" and r, what="unregistered")
        assert row.refused_reason == "unregistered" and row.transport == ("TCP" if transport == "t1" else "UDP")
        # the GB2312-declared catalog, "萳" outside GB2312 as devices write it, a bare & as Hikvision does
        assert channel_rows(gb, GOOD_DEVICE) == {"44132300001319000001": "平山镇服务站",
                                                 "44132300001319000002": "萳村服务站&1号"}


def test_sipp_device_with_the_wrong_password_is_forbidden(tmp_path, template):
    with running_gb_server(tmp_path, template) as gb:
        accept(gb, BAD_DEVICE, BAD_DEVICE_PASSWORD)
        stats = _run_sipp(tmp_path, gb.port, "gb_device_wrong_password.xml", BAD_DEVICE, "u1")
        assert (stats["SuccessfulCall(C)"], stats["FailedCall(C)"]) == ("1", "0"), stats
        assert stats["AutoAnswered(C)"] == "0"  # never registered: never queried
        assert not gb.online(BAD_DEVICE)
        assert gb.stats["refused"] == 1 and gb.stats["registered"] == 0 and gb.stats["keepalives"] == 0
        row = wait_for(lambda: device_row(gb, BAD_DEVICE), what="row")
        assert row.state != "online" and "wrong password" in (row.refused_reason or "")
