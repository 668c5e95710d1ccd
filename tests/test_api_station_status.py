"""Station status as the API lists it (issue 19): towns in the county's order, and a disabled station shown
as disabled (停用) everywhere, never counted among the offline cameras."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from sqlalchemy import select
from test_api_helpers import login

from vms.catalog.store import list_stations
from vms.catalog.towns import TOWN_NAMES
from vms.db.models import CameraStatus, Station
from vms.ingest.health import ReportedState

STATIONS_YAML = Path(__file__).resolve().parents[1] / "config" / "stations.yaml"




def _catalogue_towns() -> list[str]:
    """The towns in the order the catalogue file lists their stations."""
    towns: list[str] = []
    for st in yaml.safe_load(STATIONS_YAML.read_text("utf-8"))["stations"]:
        if st["town"] not in towns:
            towns.append(st["town"])
    return towns


def _in_order_of_appearance(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def test_towns_are_listed_in_the_catalogues_order_not_by_unicode(api, db):
    catalogue = _catalogue_towns()
    assert catalogue == TOWN_NAMES  # the county's order, the same in the file and in vms.catalog.towns
    assert sorted(catalogue) != catalogue  # (Unicode order would put 吉隆镇 first)
    headers = login(api, "admin")

    body = api.get("/api/stations", headers=headers).json()
    towns = [st["town"] for st in body["stations"]]
    assert _in_order_of_appearance(towns) == catalogue
    # Each town's stations together, its own (镇级) station first, then its villages by id.
    assert len(_in_order_of_appearance(towns)) == len(set(towns))
    pingshan = [st["id"] for st in body["stations"] if st["town"] == "平山街道"]
    assert pingshan[0] == "pingshan-town" and pingshan[1:] == sorted(pingshan[1:])
    # Filtered lists keep the order.
    villages = api.get("/api/stations", headers=headers, params={"level": "village"}).json()["stations"]
    assert _in_order_of_appearance([st["town"] for st in villages]) == catalogue

    # The retention status lists its stations the same way; so does the catalogue query the CLI uses.
    footage = api.get("/api/retention/status", headers=headers).json()["stations"]
    assert _in_order_of_appearance([st["town"] for st in footage]) == catalogue
    with db.session() as s:
        assert _in_order_of_appearance([st.town for st in list_stations(s)]) == catalogue

    # A user's towns come back in the county's order, whatever order they were given in.
    r = api.post("/api/users", headers=headers, json={
        "username": "town-op", "password": "a long enough password 1", "role": "operator",
        "towns": ["港口", "平海镇", "平山街道"]})
    assert r.status_code in (200, 201), r.text
    assert r.json()["towns"] == ["平山街道", "平海镇", "港口"]


DISABLED = ("pingshan-v01", "pingshan-v02", "pingshan-v03")


def test_a_disabled_station_is_disabled_not_offline_in_every_count(api, db, clock):
    """Three disabled stations, as the recording node leaves them: its last status gone stale (it stopped
    recording them without a word), still fresh (disabled a moment ago), or never reported. An enabled
    station whose node went silent is the offline one to compare with."""
    now = clock.now_ms()
    stale, fresh, never = DISABLED
    with db.session() as s:
        for st in s.scalars(select(Station).where(Station.id.in_(DISABLED))):
            st.enabled = False
        s.add(CameraStatus(station_id=stale, node="n1", state="streaming", fps=15.0, updated_ms=now - 600_000,
                           last_packet_ms=now - 600_000))
        s.add(CameraStatus(station_id=fresh, node="n1", state="streaming", fps=15.0, updated_ms=now,
                           last_packet_ms=now - 500))
        s.add(CameraStatus(station_id="pingshan-v04", node="n1", state="streaming", fps=15.0,
                           updated_ms=now - 600_000, last_packet_ms=now - 600_000))
        enabled_count = s.query(Station).filter(Station.enabled.is_(True)).count()
    headers = login(api, "admin")

    stations = {st["id"]: st for st in api.get("/api/stations", headers=headers).json()["stations"]}
    for sid in DISABLED:
        cam = stations[sid]["camera"]
        assert (stations[sid]["enabled"], cam["state"], cam["online"]) == (False, "disabled", False), (sid, cam)
        detail = api.get(f"/api/stations/{sid}", headers=headers).json()
        assert detail["camera"]["state"] == "disabled" and detail["enabled"] is False
    assert stations["pingshan-v04"]["camera"]["state"] == "offline"
    offline = api.get("/api/stations", headers=headers, params={"state": "offline"}).json()["stations"]
    assert [st["id"] for st in offline] == ["pingshan-v04"]
    disabled = api.get("/api/stations", headers=headers, params={"state": "disabled"}).json()["stations"]
    assert sorted(st["id"] for st in disabled) == sorted(DISABLED)

    health = api.get("/api/health").json()["cameras"]
    assert health["enabled"] == enabled_count == 139 - len(DISABLED)
    assert health["not_recording"] == enabled_count  # nothing records here; the disabled are not among them
    assert health["by_state"].get("offline") == 1 and "disabled" not in health["by_state"], health

    metrics = api.get("/metrics", headers=headers).text

    def gauge(name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in metrics.splitlines():
            m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
            if m and (m.group(1) or "") == want:
                return float(m.group(2))
        raise AssertionError(f"no {name}{{{want}}} in /metrics")

    for sid in DISABLED:
        assert gauge("vms_camera_state", state=ReportedState.DISABLED, station=sid, town="平山街道") == 1
        assert gauge("vms_camera_state", state=ReportedState.OFFLINE, station=sid, town="平山街道") == 0
    assert gauge("vms_camera_state", state=ReportedState.OFFLINE, station="pingshan-v04", town="平山街道") == 1
    assert gauge("vms_cameras_enabled") == enabled_count
    assert gauge("vms_cameras_not_recording") == enabled_count
