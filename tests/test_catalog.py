"""The station catalogue: the shipped file, validation with line numbers, idempotent import, listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import STATIONS_YAML
from vms.catalog.loader import load_catalog
from vms.catalog.store import import_catalog, list_stations, station_public_dict
from vms.catalog.towns import TOWN_NAMES
from vms.catalog.urls import mask_url
from vms.core.errors import ConfigError

VMS = str(Path(sys.executable).with_name("vms"))


def test_shipped_catalogue_has_every_station_of_the_plan():
    specs = load_catalog(STATIONS_YAML)
    assert len(specs) == 139
    town_level = [s for s in specs if s.level == "town"]
    assert len(town_level) == 16 and {s.town for s in town_level} == set(TOWN_NAMES)
    assert len(TOWN_NAMES) == 16
    assert all(s.name == f"惠东县{s.town}电子商务服务站" for s in town_level)
    villages = [s for s in specs if s.level == "village"]
    assert len(villages) == 123
    assert all(s.name.startswith(f"惠东县{s.town}") and s.name.endswith("电子商务服务点") for s in villages)
    # Names not yet supplied by the county are marked, never passed off as real.
    assert all(s.placeholder_name and "待定" in s.name for s in villages)
    assert len({s.id for s in specs}) == 139
    assert all(s.id.isascii() for s in specs)


BAD = """\
stations:
  - id: baihua-town
    name: 惠东县白花镇电子商务服务站
    level: town
    town: 白花镇
  - id: baihua-town
    name: 惠东县白花镇电子商务服务站
    level: town
    town: 白花镇
  - id: x-v01
    name: 惠东县火星镇某村电子商务服务点
    level: village
    town: 火星镇
  - id: baihua-v01
    name: 惠东县白花镇某村电子商务服务点
    level: village
    town: 白花镇
    business_hours: "18:00-08:00"
    camera:
      main_url: "http://admin:hunter2@10.0.0.1/stream"
  - id: Bad_ID
    name: 惠东县白花镇某村电子商务服务点
    level: village
    town: 白花镇
    colour: red
"""


def test_validation_reports_each_problem_with_its_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_catalog(path)
    problems = e.value.problems
    text = "\n".join(problems)
    assert f"{path}:6: duplicate station id 'baihua-town' (first on line 2)" in problems
    assert f"{path}:13: station x-v01: town: unknown town '火星镇'" in text
    assert f"{path}:18: station baihua-v01: business_hours:" in text and "结束早于开始" in text
    assert f"{path}:20: station baihua-v01: camera.main_url: scheme must be rtsp://, rtsps:// or gb28181://" in text
    assert f"{path}:21: station Bad_ID: id:" in text
    assert f"{path}:25: station Bad_ID: colour: unknown key" in text
    assert "hunter2" not in text  # a bad URL is described, never echoed


@pytest.mark.slow  # vms commands as processes
def test_validate_command_touches_no_database(tmp_path):
    env = {**os.environ, "VMS_DATA_DIR": str(tmp_path / "data")}
    env.pop("VMS_CONFIG", None)
    ok = subprocess.run([VMS, "stations", "validate", str(STATIONS_YAML)], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "139 stations (16 town, 123 village)" in ok.stdout
    path = tmp_path / "bad.yaml"
    path.write_text(BAD, encoding="utf-8")
    bad = subprocess.run([VMS, "stations", "validate", str(path)], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and f"{path}:6: duplicate station id" in bad.stderr
    assert not (tmp_path / "data").exists()


def test_import_is_idempotent_and_reports_changes(any_db, tmp_path):
    specs = load_catalog(STATIONS_YAML)
    with any_db.session() as s:
        first = import_catalog(s, specs)
    assert len(first.added) == 139
    with any_db.session() as s:
        again = import_catalog(s, specs)
    assert (again.added, again.changed, again.disabled, again.unchanged) == ([], {}, [], 139)
    data = yaml.safe_load(STATIONS_YAML.read_text(encoding="utf-8"))
    data["stations"] = [st for st in data["stations"] if st["id"] != "gangkou-v07"]
    for st in data["stations"]:
        if st["id"] == "baihua-town":
            st["business_hours"] = "09:00-17:30"
            st["camera"] = {"main_url": "rtsp://admin:s3cret@192.0.2.10:554/Streaming/Channels/101"}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with any_db.session() as s:
        rep = import_catalog(s, load_catalog(changed))
    assert rep.added == [] and rep.disabled == ["gangkou-v07"]
    assert set(rep.changed["baihua-town"]) == {"business_hours", "main_url"}
    with any_db.session() as s:
        rows = {r.id: r for r in list_stations(s)}
        assert len(rows) == 139 and not rows["gangkou-v07"].enabled
        shown = station_public_dict(rows["baihua-town"])
    assert shown["camera"]["main_url"] == "rtsp://***@192.0.2.10:554/Streaming/Channels/101"
    assert "s3cret" not in json.dumps(shown)


@pytest.mark.slow  # vms commands as processes
def test_list_command_json_and_filters(tmp_path):
    env = {**os.environ, "VMS_DATA_DIR": str(tmp_path / "data")}
    env.pop("VMS_CONFIG", None)
    subprocess.run([VMS, "db", "upgrade"], env=env, check=True, capture_output=True)
    subprocess.run([VMS, "stations", "import", str(STATIONS_YAML)], env=env, check=True, capture_output=True)
    out = subprocess.run([VMS, "stations", "list", "--town", "白花镇", "--format", "json"], env=env,
                         capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    assert len(rows) == 9 and {r["town"] for r in rows} == {"白花镇"}
    assert {"id", "name", "level", "town", "poverty_village", "enabled"} <= set(rows[0])
    assert rows[0]["level"] == "town"
    out = subprocess.run([VMS, "stations", "list", "--level", "town", "--format", "json"], env=env,
                         capture_output=True, text=True, check=True)
    assert len(json.loads(out.stdout)) == 16
    bad = subprocess.run([VMS, "stations", "list", "--town", "火星镇"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown town" in bad.stderr


def test_mask_url_hides_user_and_password():
    assert mask_url("rtsp://admin:p%40ss@10.1.2.3:554/h264") == "rtsp://***@10.1.2.3:554/h264"
    assert mask_url("rtsp://10.1.2.3/h264") == "rtsp://10.1.2.3/h264"
