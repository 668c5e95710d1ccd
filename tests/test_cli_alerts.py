"""`vms alerts` from the command line over a configured installation (settings file, SQLite with the
catalogue): the list as JSON, a test message really sent to a local robot, channels without their keys,
ack and maintenance windows."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from test_api_alerts import MIN, ROBOT_KEY, RobotReceiver, add_alert, add_delivery
from typer.testing import CliRunner

from vms.cli import app
from vms.cli import context as cli_context
from vms.core.settings import load_settings
from vms.db.engine import Database
from vms.db.models import AlertDelivery, AlertMaintenance, DeliveryState


@pytest.fixture
def robot():
    r = RobotReceiver()
    yield r
    r.close()


@pytest.fixture
def site(tmp_path, monkeypatch, robot, catalogue_db_template):
    """vms.yaml with two WeCom channels at the local robot ("ops" and "wrongkey") and the catalogue database."""
    config = {
        "data_dir": str(tmp_path / "data"),
        "storage": {"volumes": [{"name": "main", "path": str(tmp_path / "recordings")}]},
        "alerts": {"channels": [{"name": "ops", "type": "wecom", "url": robot.url()},
                                {"name": "wrongkey", "type": "wecom", "url": robot.url("wrong-" + ROBOT_KEY)}]},
    }
    (tmp_path / "vms.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    monkeypatch.setenv("VMS_CONFIG", str(tmp_path / "vms.yaml"))
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    path = Path(settings.db_url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(catalogue_db_template, path)
    db = Database(settings.db_url)
    yield db
    cli_context.database.cache_clear()
    cli_context.settings.cache_clear()
    db.dispose()


def vms(*args: str):
    cli_context.settings.cache_clear()
    cli_context.database.cache_clear()
    return CliRunner().invoke(app, list(args))


def now_ms() -> int:
    return int(time.time() * 1000)  # the commands use the system clock


def test_list_as_json_has_the_fields_in_local_time(site):
    now = now_ms()
    firing = add_alert(site, now, "平海镇", "pinghai-town", acked_by="zhang", acked_ms=now - MIN)
    resolved = add_alert(site, now, None, None, rule="disk_low", state="resolved")

    r = vms("alerts", "list", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [a["id"] for a in rows] == [resolved, firing]
    for field in ("id", "rule", "severity", "station_id", "town", "state", "title", "since", "fired", "resolved",
                  "acked_by"):
        assert all(field in a for a in rows), field
    first = rows[1]
    assert (first["rule"], first["station_id"], first["town"], first["state"], first["acked_by"]) == (
        "camera_offline", "pinghai-town", "平海镇", "firing", "zhang")
    assert first["since"].endswith("+08:00") and first["resolved"] is None and rows[0]["resolved"].endswith("+08:00")

    firing_only = json.loads(vms("alerts", "list", "--state", "firing", "--format", "json").stdout)
    assert [a["id"] for a in firing_only] == [firing]
    assert len(json.loads(vms("alerts", "list", "--limit", "1", "--format", "json").stdout)) == 1
    table = vms("alerts", "list")
    assert table.exit_code == 0 and "2 alerts" in table.output and "acked by zhang" in table.output
    bad = vms("alerts", "list", "--state", "open")
    assert bad.exit_code == 2 and "firing, resolved, all" in bad.output


def test_test_sends_through_the_channel_and_never_prints_the_key(site, robot):
    outputs = []
    ok = vms("alerts", "test", "ops")
    outputs.append(ok.output)
    assert ok.exit_code == 0, ok.output
    assert len(ok.stdout.strip().splitlines()) == 1 and "sent through ops" in ok.stdout
    assert len(robot.requests) == 1 and robot.requests[0]["path"].endswith(f"key={ROBOT_KEY}")
    with site.session() as s:
        rows = list(s.query(AlertDelivery).filter(AlertDelivery.kind == "test"))
        assert [(d.channel, d.state, d.attempts) for d in rows] == [("ops", DeliveryState.SENT, 1)]

    robot.errcode = 93000
    failed = vms("alerts", "test", "wrongkey")
    outputs.append(failed.output)
    assert failed.exit_code == 1 and "failed" in failed.output and "93000" in failed.output
    with site.session() as s:
        assert s.query(AlertDelivery).filter(AlertDelivery.channel == "wrongkey").one().state == DeliveryState.FAILED

    unknown = vms("alerts", "test", "sms")
    outputs.append(unknown.output)
    assert unknown.exit_code == 2 and "no alert channel 'sms'" in unknown.output
    assert "configured: ops, wrongkey" in unknown.output
    assert len(robot.requests) == 2

    for args in (("alerts", "channels"), ("alerts", "channels", "--format", "json")):
        listed = vms(*args)
        outputs.append(listed.output)
        assert listed.exit_code == 0 and "ops" in listed.output and "key=***" in listed.output
    assert {c["name"] for c in json.loads(outputs[-1])} == {"ops", "wrongkey"}
    for out in outputs:
        assert ROBOT_KEY not in out and "robotkeysecret" not in out


def test_ack_and_maintenance_windows(site):
    now = now_ms()
    alert_id = add_alert(site, now, "平海镇", "pinghai-town")
    reminder = add_delivery(site, alert_id, "reminder", DeliveryState.QUEUED, now)
    r = vms("alerts", "ack", str(alert_id), "--note", "已派人", "--by", "li")
    assert r.exit_code == 0 and f"alert {alert_id} acknowledged (by li)" in r.output
    with site.session() as s:
        assert s.get(AlertDelivery, reminder).state == DeliveryState.DROPPED
    missing = vms("alerts", "ack", "99999")
    assert missing.exit_code == 2 and "告警 99999 不存在" in missing.output
    resolved = add_alert(site, now, "平海镇", "pinghai-v01", state="resolved")
    assert "已结束" in vms("alerts", "ack", str(resolved)).output

    too_long = vms("alerts", "maintenance", "add", "--town", "平海镇", "--start", "2099-01-01T08:00",
                   "--end", "2099-01-20T08:00", "--reason", "检修")
    assert too_long.exit_code == 2 and "最多 7 天" in too_long.output
    both = vms("alerts", "maintenance", "add", "--town", "平海镇", "--station", "pinghai-town",
               "--start", "2099-01-01T08:00", "--end", "2099-01-01T10:00", "--reason", "检修")
    assert both.exit_code == 2 and "不能同时指定" in both.output
    added = vms("alerts", "maintenance", "add", "--station", "pinghai-town", "--start", "2099-01-01T08:00",
                "--end", "2099-01-01T10:00", "--reason", "更换摄像机", "--by", "li")
    assert added.exit_code == 0 and "for pinghai-town from 2099-01-01T08:00:00" in added.output
    listed = json.loads(vms("alerts", "maintenance", "list", "--format", "json").stdout)
    assert [(w["station_id"], w["state"], w["created_by"]) for w in listed] == [("pinghai-town", "future", "li")]
    ended = vms("alerts", "maintenance", "end", str(listed[0]["id"]))
    assert ended.exit_code == 0 and "deleted" in ended.output
    with site.session() as s:
        assert s.query(AlertMaintenance).count() == 0
    assert vms("alerts", "maintenance", "end", str(listed[0]["id"])).exit_code == 2


def test_ids_and_names_out_of_range_are_refused_without_a_traceback(site):
    alert_id = add_alert(site, now_ms(), "平海镇", "pinghai-town")
    for args, text in [
        (("alerts", "ack", str(2**63)), "Invalid value for 'alert_id'"),  # beyond 64 bits
        (("alerts", "ack", "0"), "Invalid value for 'alert_id'"),
        (("alerts", "ack", str(alert_id), "--by", "x" * 65), "--by: a name of 1 to 64 characters"),
        (("alerts", "ack", str(alert_id), "--by", "  "), "--by: a name of 1 to 64 characters"),
        (("alerts", "ack", str(alert_id), "--note", "x" * 501), "--note: at most 500 characters"),
        (("alerts", "maintenance", "end", str(2**63)), "Invalid value for 'window_id'"),
        (("alerts", "maintenance", "end", str(2**31)), "Invalid value for 'window_id'"),  # a 32-bit column
        (("alerts", "maintenance", "add", "--town", "平海镇", "--start", "2099-01-01T08:00", "--end",
          "2099-01-01T10:00", "--reason", "检修", "--by", "x" * 65), "--by: a name of 1 to 64 characters"),
    ]:
        r = vms(*args)
        assert r.exit_code == 2 and text in r.output, (args, r.output, r.exception)
        assert not isinstance(r.exception, Exception), r.exception  # a clean exit, not a traceback
    with site.session() as s:
        assert s.query(AlertMaintenance).count() == 0
    r = vms("alerts", "ack", str(alert_id), "--by", "x" * 64)
    assert r.exit_code == 0 and f"(by {'x' * 64})" in r.output


def test_a_channel_is_tested_at_most_once_in_ten_seconds(site, robot):
    assert vms("alerts", "test", "ops").exit_code == 0
    again = vms("alerts", "test", "ops")
    assert again.exit_code == 1 and "秒后再试" in again.output and "ops" in again.output
    assert len(robot.requests) == 1
    with site.session() as s:
        assert s.query(AlertDelivery).filter(AlertDelivery.kind == "test").count() == 1
    assert vms("alerts", "test", "wrongkey").exit_code == 0 and len(robot.requests) == 2  # another channel: sent
