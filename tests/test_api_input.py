"""Odd input never makes a 500: times out of range or in other scripts' digits, endless digit runs, far
past and far future, for every role; over-long console file names. Each is a 4xx naming the problem."""

from __future__ import annotations

from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from test_api_helpers import add_user, login

from vms.analysis.calibration import parse_calibration
from vms.api.app import create_app
from vms.core.timetext import EARLIEST_MS, LATEST_MS, TimeTextError, parse_time_text
from vms.db.models import Station

SID = "pingshan-town"
GOOD_START, GOOD_END = "2025-12-31T10:00", "2025-12-31T10:05"

# (value, expected code): each of these was a 500 (OverflowError, OSError EOVERFLOW, ValueError of
# int() past 4,300 digits or of '²'.isdigit()) before times were checked.
ODD_TIMES = [
    ("99999999999999999999", "time_out_of_range"),
    ("²²²²²²²²²²", "time_invalid"),
    ("٢٠٢٥-١٢-٣١T10:00", "time_invalid"),
    ("0001-01-01T00:00:00", "time_out_of_range"),
    ("0001-01-01T00:00:00+14:00", "time_out_of_range"),
    ("9999-12-31T23:59:59.999999", "time_out_of_range"),
    ("9999-12-31T23:59:59-12:00", "time_out_of_range"),
    ("0000000000", "time_out_of_range"),
    ("-1767225600000", "time_invalid"),
    ("9" * 4300, None),  # refused by the length limit of the field (422) before anything reads it
    ("9" * 5000, None),
]
USERS = [("admin", "admin", None), ("op", "operator", None), ("aud", "auditor", None), ("view", "viewer", None),
         ("op_ph", "operator", ["平海镇"])]


@pytest.fixture
def client(settings, db, clock) -> Iterator[TestClient]:
    """The app with one user of each role; server errors come back as 500s instead of raising here."""
    for name, role, towns in USERS:
        add_user(db, name, role, clock.now_ms(), towns=towns)
    with TestClient(create_app(settings, db, clock), raise_server_exceptions=False) as c:
        yield c


def _requests(value: str) -> list[tuple[str, str, dict]]:
    """Every place a time is read from a request, with `value` in one of its time fields."""
    hold = {"station_id": SID, "start": GOOD_START, "end": GOOD_END, "reason": "case 7"}
    return [
        ("GET", f"/api/stations/{SID}/timeline", {"params": {"start": value, "end": GOOD_END}}),
        ("GET", f"/api/stations/{SID}/timeline", {"params": {"start": GOOD_START, "end": value}}),
        ("POST", f"/api/stations/{SID}/playback", {"json": {"start": value, "end": GOOD_END, "reason": "case 7"}}),
        ("POST", "/api/exports", {"json": {"station_id": SID, "start": GOOD_START, "end": value,
                                           "reason": "case 7"}}),
        ("POST", "/api/holds", {"json": {**hold, "start": value}}),
        ("POST", "/api/holds", {"json": {**hold, "expires": value}}),
        ("GET", "/api/access-log", {"params": {"since": value}}),
        ("GET", "/api/access-log", {"params": {"until": value}}),
    ]


def test_odd_times_are_4xx_naming_the_parameter_for_every_role(client):
    seen_codes: set[str] = set()
    for username, _role, _towns in USERS:
        headers = login(client, username)
        client.cookies.clear()
        for value, code in ODD_TIMES:
            for method, path, kwargs in _requests(value):
                r = client.request(method, path, headers=headers, **kwargs)
                assert 400 <= r.status_code < 500, (username, method, path, value[:40], r.status_code, r.text[:300])
                if username != "admin":
                    continue  # other roles may be refused first (403, or 404 for another town)
                body = r.json()
                if code is None:
                    assert r.status_code == 422 and "最多 64 个字符" in r.json()["detail"], r.text[:300]
                    continue
                assert r.status_code == 400 and body["code"] == code, (path, value, r.text)
                # The message names the parameter and shows the value, cut short.
                name = next(k for k, v in (kwargs.get("params") or kwargs.get("json")).items() if v == value)
                assert body["detail"].startswith(f"{name}='{value[:40]}"), body["detail"]
                seen_codes.add(body["code"])
    assert seen_codes == {"time_invalid", "time_out_of_range"}


def test_odd_audit_days_and_months_are_400(client):
    headers = login(client, "aud")
    for path in ("/api/audits/daily?day=9999-12-31", "/api/audits/daily?day=0001-01-01",
                 "/api/audits/daily?day=٢٠٢٥-٠١-٠١", "/api/audits/monthly?month=9999-12",
                 "/api/audits/monthly?month=0000-01", "/api/audits/monthly?month=٢٠٢٥-٠١",
                 f"/api/stations/{SID}/audits?start=9999-12-30&end=9999-12-31"):
        r = client.get(path, headers=headers)
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        assert "年份须在 2000 至 2099 之间" in r.json()["detail"] or "须为 YYYY-MM" in r.json()["detail"]


def test_times_at_the_edges_of_the_range(client):
    headers = login(client, "admin")
    # The range itself is usable: a timeline at its first and last minute answers (empty).
    for start, end in (("2000-01-01T00:00:00Z", "2000-01-01T00:01:00Z"),
                       (str(LATEST_MS - 60_000), str(LATEST_MS - 1))):
        r = client.get(f"/api/stations/{SID}/timeline", headers=headers, params={"start": start, "end": end})
        assert r.status_code == 200 and r.json()["recorded"] == [], r.text
    r = client.get(f"/api/stations/{SID}/timeline", headers=headers,
                   params={"start": str(LATEST_MS - 60_000), "end": str(LATEST_MS)})
    assert r.status_code == 400 and r.json()["code"] == "time_out_of_range"


def test_parse_time_text_accepts_ascii_times_in_range_only():
    tz = ZoneInfo("Asia/Shanghai")
    assert parse_time_text("2026-01-01T08:00:00", tz) == 1_767_225_600_000
    assert parse_time_text(" 1767225600000 ", tz, epoch_ms=True) == 1_767_225_600_000
    assert parse_time_text(str(EARLIEST_MS), tz, epoch_ms=True) == EARLIEST_MS
    for text, epoch_ms, kind in (("1767225600000", False, "invalid"),  # epoch ms only where allowed
                                 (str(EARLIEST_MS - 1), True, "out_of_range"), ("1" * 14, True, "out_of_range"),
                                 ("", True, "invalid"), ("２０２６-01-01", True, "invalid"),
                                 ("2026-01-01T08:00:00" + " " * 50 + "x", True, "invalid")):
        with pytest.raises(TimeTextError) as info:
            parse_time_text(text, tz, epoch_ms=epoch_ms)
        assert info.value.kind == kind, text


def test_console_file_names_never_reach_the_file_system(client):
    # 253 characters: stat() of it failed with ENAMETOOLONG, a 500 with an 80-line traceback, no login needed.
    for name in ("a" * 253 + ".js", "a" * 5000 + ".css", "nothere.js"):
        r = client.get(f"/console/{name}")
        assert r.status_code == 404 and r.json()["code"] == "not_found", r.text[:200]
    r = client.get("/console/app.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]


def test_calibration_is_validated_by_the_analysis_model(client, db):
    """PATCH stored any JSON as the calibration (its check imported a class that does not exist and
    swallowed the ImportError); the analysis then refused it and ran without it, privacy masks included."""
    headers = login(client, "admin")
    mask = {"points": [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]], "name": "neighbour's door"}
    for bad, named in (({"privacy_masks": [{"points": [[0, 0], [1.5, 0], [1, 1]]}]}, "outside the picture"),
                       ({"privacy_mask": [mask]}, "privacy_mask"),  # misspelt: the masks would be lost
                       ({"privacy_masks": [mask], "overrides": {"hysteresis_minutes": 3}}, "hysteresis_minutes"),
                       ({"zones": "everywhere"}, "zones")):
        r = client.patch(f"/api/stations/{SID}", headers=headers, json={"calibration": bad})
        assert r.status_code == 422 and r.json()["code"] == "calibration_invalid", r.text
        assert r.json()["detail"].startswith("标定无效") and named in r.json()["detail"], r.text
    with db.session() as s:
        assert s.get(Station, SID).calibration is None  # nothing stored by the refused requests
    r = client.patch(f"/api/stations/{SID}", headers=headers, json={"calibration": {"privacy_masks": [mask]}})
    assert r.status_code == 200, r.text
    with db.session() as s:
        stored = s.get(Station, SID).calibration
    # What the analysis will read: the mask, as given.
    assert parse_calibration(stored).privacy_masks[0].points == [(0.0, 0.0), (0.5, 0.0), (0.5, 0.5)]
    assert r.json()["calibration"]["privacy_masks"][0]["name"] == "neighbour's door"
