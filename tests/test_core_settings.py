"""Settings: embedded defaults, file + environment, and errors that name file, line and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vms.core.clock import SimulatedClock
from vms.core.errors import ConfigError
from vms.core.settings import Settings, load_settings


def _load(tmp_path: Path, text: str | None, env: dict | None = None):
    path = tmp_path / "vms.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    return load_settings(path if text is not None else None, env=env or {})


def test_defaults_need_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert s.timezone == "Asia/Shanghai" and s.retention.days == 15
    assert s.storage.volumes[0].path == Path("recordings")
    assert s.db_url == f"sqlite:///{(tmp_path / 'data' / 'vms.db').resolve()}"
    assert s.ingest.segment_seconds == 60


def test_file_and_environment_merge(tmp_path):
    s = _load(tmp_path, "retention:\n  days: 30\n  per_town: {白花镇: 45}\n",
              env={"VMS_RETENTION__FLOOR_DAYS": "5", "VMS_DATABASE_URL": "postgresql:///vms?host=/run/pg",
                   "VMS_CONFIG": "ignored-here", "VMS_TEST_X": "not a setting"})
    assert s.retention.days == 30 and s.retention.per_town == {"白花镇": 45} and s.retention.floor_days == 5
    assert s.db_url == "postgresql+psycopg:///vms?host=/run/pg"


def test_unknown_key_names_file_line_and_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, "timezone: Asia/Shanghai\nretention:\n  days: 15\n  dayz: 30\n")
    assert e.value.problems == [f"{tmp_path / 'vms.yaml'}:4: retention.dayz: unknown key"]


def test_bad_values_are_all_reported_with_their_lines(tmp_path):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, "timezone: Mars/Olympus\ningest:\n  segment_seconds: 1\napi:\n  port: http\n")
    text = str(e.value)
    assert ":1: timezone: Value error, unknown time zone 'Mars/Olympus'" in text
    assert ":3: ingest.segment_seconds: Input should be greater than or equal to 2 (got 1)" in text
    assert ":5: api.port: Input should be a valid integer" in text


def test_environment_errors_name_the_variable(tmp_path):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, None, env={"VMS_RETENTION__DAYS": "fifteen"})
    assert str(e.value).startswith("environment VMS_RETENTION__DAYS: retention.days:")
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, None, env={"VMS_RETENTOIN__DAYS": "15"})
    assert "environment VMS_RETENTOIN__DAYS: retentoin: unknown key" in str(e.value)


def test_yaml_syntax_error_and_repeated_key(tmp_path):
    with pytest.raises(ConfigError, match=r"vms.yaml:3: invalid YAML: expected ',' or ']'"):
        _load(tmp_path, "a: 1\nb: [1, 2\n")
    with pytest.raises(ConfigError, match=r"vms.yaml:3: key 'retention.days' repeats the one on line 2"):
        _load(tmp_path, "retention:\n  days: 15\n  days: 30\n")


def test_volume_assignments_must_name_known_volumes(tmp_path):
    with pytest.raises(ConfigError, match="unknown volume 'disk9'"):
        _load(tmp_path, "storage:\n  volumes: [{name: disk1, path: /d1}]\n  assignments: {baihua-town: disk9}\n")


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_simulated_clock_moves_only_when_told():
    c = SimulatedClock(start_ms=1000)
    assert c.now_ms() == 1000
    c.sleep(2.5)
    assert c.now_ms() == 3500 and c.monotonic() == 2.5
    with pytest.raises(ValueError):
        c.set(10)


def test_commented_defaults_in_the_example_config_are_the_real_defaults():
    """config/vms.yaml shows every key commented with its default: uncommented, the file must validate and
    give the embedded defaults (a shortened soak interval or a stale value shown there would mislead)."""
    text = (Path(__file__).resolve().parents[1] / "config" / "vms.yaml").read_text(encoding="utf-8")
    shown = [re.sub(r"^# ?", "", line).split(" #")[0] for line in text.splitlines()
             if line.startswith("#   ") or re.match(r"^# [a-z0-9_]+:", line)]
    data = yaml.safe_load("\n".join(shown))
    assert {"ingest", "retention", "api", "analysis", "audit", "live"} <= set(data)
    assert Settings.model_validate(data).model_dump(mode="json") == Settings().model_dump(mode="json")


def test_interval_settings_are_validated(tmp_path):
    path = tmp_path / "vms.yaml"
    path.write_text("ingest:\n  reconcile_seconds: 0\naudit:\n  daily_every_minutes: -1\n"
                    "analysis:\n  calibration_reload_seconds: 0\napi:\n  maintenance_interval_seconds: 0\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    text = str(exc.value)
    for key in ("ingest.reconcile_seconds", "audit.daily_every_minutes", "analysis.calibration_reload_seconds",
                "api.maintenance_interval_seconds"):
        assert key in text, text


ROBOT_KEY = "693a91f6-7aaa-4bc4-97a0-0ec2b1fa5aaa"


@pytest.mark.parametrize(("text", "env", "where", "key"), [
    # a YAML typo (the closing bracket missing) in the variable: its whole text is the bad input
    (None, {"VMS_ALERTS__CHANNELS": '[{name: ops, type: wecom, '
                                    f'url: "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={ROBOT_KEY}"}}'},
     "environment VMS_ALERTS__CHANNELS", "alerts.channels"),
    # a channel written as a bare URL
    (f"alerts:\n  channels:\n    - https://oapi.dingtalk.com/robot/send?access_token={ROBOT_KEY}\n", {},
     "vms.yaml:3", "alerts.channels.0"),
    # alerts written as the URL
    (f"alerts: https://oapi.dingtalk.com/robot/send?access_token={ROBOT_KEY}\n", {}, "vms.yaml:1", "alerts"),
    # a town's overrides written as a URL
    (f"alerts:\n  per_town:\n    平海镇: https://x.example/?key={ROBOT_KEY}\n", {}, "vms.yaml:3",
     "alerts.per_town.平海镇"),
], ids=["env-yaml-typo", "channel-bare-url", "alerts-url", "per-town-url"])
def test_errors_under_alerts_never_echo_the_value(tmp_path, text, env, where, key):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text, env=env)
    message = str(e.value)
    assert ROBOT_KEY not in message and "got" not in message, message
    assert f"{where}: {key}: " in message, message


def test_errors_never_echo_a_url_with_userinfo_or_query(tmp_path):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, "database_url: mysql://vms:hunter2@db/vms\n")
    assert "hunter2" not in str(e.value) and ":1: database_url: " in str(e.value)
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, None, env={"VMS_DATABASE_URL": "mysql://db/vms?password=hunter2"})
    assert "hunter2" not in str(e.value) and "environment VMS_DATABASE_URL: database_url: " in str(e.value)
    with pytest.raises(ConfigError) as e:  # other values are still shown
        _load(tmp_path, "database_url: mysql://db/vms\n")
    assert "(got 'mysql://db/vms')" in str(e.value)
