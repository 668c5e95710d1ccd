"""The alerts API (issue 20) over the real app and database: town scoping, acknowledge (reminders stop),
mute, maintenance windows, and the channels (described without their keys, a test message really sent
to a local robot)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_api_helpers import add_user, login

from vms.api.app import create_app
from vms.core.settings import Settings
from vms.db.models import Alert, AlertDelivery, AlertMaintenance, DeliveryState

MIN = 60_000
ROBOT_KEY = "a1b2c3d4-5e6f-4711-8899-robotkeysecret"  # must never appear in an answer


class RobotReceiver:
    """A WeCom-like group robot on 127.0.0.1: records each POST and answers {"errcode": <errcode>}."""

    def __init__(self, errcode: int = 0) -> None:
        self.errcode = errcode
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"path": self.path, "body": json.loads(body or b"null")})
                answer = json.dumps({"errcode": receiver.errcode, "errmsg": "ok" if not receiver.errcode else
                                     "invalid webhook url"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, key: str = ROBOT_KEY) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/cgi-bin/webhook/send?key={key}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def robot() -> Iterator[RobotReceiver]:
    r = RobotReceiver()
    yield r
    r.close()


def alert_settings(base: dict, robot: RobotReceiver) -> dict:
    """`base` plus three WeCom channels at the local robot: "ops" (the right key, every town), "wrongkey"
    (平海镇 only) and "twotowns" (平海镇 and 平山街道)."""
    return {**base, "alerts": {"channels": [
        {"name": "ops", "type": "wecom", "url": robot.url(), "min_severity": "info"},
        {"name": "wrongkey", "type": "wecom", "url": robot.url("wrong-" + ROBOT_KEY), "towns": ["平海镇"]},
        {"name": "twotowns", "type": "wecom", "url": robot.url(), "towns": ["平海镇", "平山街道"],
         "min_severity": "critical"},
    ]}}


@pytest.fixture
def settings(tmp_path, robot) -> Settings:
    """The shared settings (data and footage in tmp_path) with the local robot's channels: the `api` and
    `db` fixtures take these."""
    return Settings.model_validate(alert_settings(
        {"data_dir": str(tmp_path / "data"),
         "storage": {"volumes": [{"name": "main", "path": str(tmp_path / "recordings")}]}}, robot))


def add_alert(database, now: int, town: str | None, station_id: str | None, rule: str = "camera_offline",
              state: str = "firing", **extra) -> int:
    with database.session() as s:
        a = Alert(key=f"{rule}:{station_id or 'server'}:{now}:{extra.get('since_ms', 0)}", rule=rule,
                  severity=extra.pop("severity", "major"), station_id=station_id, town=town,
                  title=f"{station_id or '服务器'}：测试告警", detail="详情", state=state,
                  since_ms=extra.pop("since_ms", now - 20 * MIN), fired_ms=extra.pop("fired_ms", now - 15 * MIN),
                  resolved_ms=now - MIN if state == "resolved" else None, one_shot=False, notified=True,
                  reminders=1, next_reminder_ms=now + 30 * MIN if state == "firing" else None, updated_ms=now,
                  **extra)
        s.add(a)
        s.flush()
        return a.id


def add_delivery(database, alert_id: int | None, kind: str, state: str, now: int, channel: str = "ops") -> int:
    with database.session() as s:
        d = AlertDelivery(alert_id=alert_id, channel=channel, kind=kind, severity="major", state=state,
                          attempts=1 if state == DeliveryState.SENT else 0, created_ms=now - 10 * MIN,
                          next_attempt_ms=now + MIN, sent_ms=now - 10 * MIN if state == DeliveryState.SENT else None,
                          items=1)
        s.add(d)
        s.flush()
        return d.id


def test_town_user_sees_and_handles_only_their_towns_alerts(api, db, clock):
    now = clock.now_ms()
    mine = add_alert(db, now, "平海镇", "pinghai-town")
    other = add_alert(db, now, "平山街道", "pingshan-town")
    server = add_alert(db, now, None, None, rule="disk_low")
    old = add_alert(db, now, "平海镇", "pinghai-town", rule="camera_fault", state="resolved",
                    fired_ms=now - 100 * MIN, since_ms=now - 110 * MIN)
    op_ph, admin, viewer = login(api, "op_ph"), login(api, "admin"), login(api, "view")

    body = api.get("/api/alerts", headers=op_ph).json()
    assert {a["id"] for a in body["alerts"]} == {mine, old} and body["count"] == 2
    item = next(a for a in body["alerts"] if a["id"] == mine)
    assert item["rule_label"] == "摄像机离线/未录像" and item["station_name"] and item["town"] == "平海镇"
    assert item["since"].endswith("+08:00") and item["since_ms"] == now - 20 * MIN and item["resolved"] is None
    # Another town's alert and the server's own: as if they did not exist, for reading and for acting.
    for alert_id in (other, server):
        r = api.get(f"/api/alerts/{alert_id}", headers=op_ph)
        assert r.status_code == 404 and r.json()["code"] == "alert_not_found" and "不存在" in r.json()["detail"]
        r = api.post(f"/api/alerts/{alert_id}/ack", json={"note": "x"}, headers=op_ph)
        assert r.status_code == 404
        assert api.post(f"/api/alerts/{alert_id}/mute", json={"minutes": 30}, headers=op_ph).status_code == 404
    with db.session() as s:
        assert s.get(Alert, other).acked_ms is None and s.get(Alert, other).muted_until_ms is None
    assert api.post(f"/api/alerts/{mine}/ack", headers=op_ph).status_code == 200

    # Every town: all four, newest first; filters and paging.
    everything = api.get("/api/alerts", headers=admin).json()
    assert [a["id"] for a in everything["alerts"]] == sorted([mine, other, server, old], reverse=True)
    assert {a["id"] for a in api.get("/api/alerts?state=firing", headers=admin).json()["alerts"]} == {
        mine, other, server}
    assert [a["id"] for a in api.get("/api/alerts?state=resolved", headers=admin).json()["alerts"]] == [old]
    assert [a["id"] for a in api.get("/api/alerts?rule=disk_low", headers=admin).json()["alerts"]] == [server]
    assert {a["id"] for a in api.get("/api/alerts?town=平海镇", headers=admin).json()["alerts"]} == {mine, old}
    assert {a["id"] for a in api.get("/api/alerts?station_id=pingshan-town", headers=admin).json()["alerts"]} == {
        other}
    since = api.get("/api/alerts", params={"since": str(now - 50 * MIN)}, headers=admin).json()
    assert old not in {a["id"] for a in since["alerts"]} and since["count"] == 3
    page = api.get("/api/alerts?limit=2", headers=admin).json()
    assert page["count"] == 2 and page["next_before_id"] is not None
    rest = api.get(f"/api/alerts?limit=2&before_id={page['next_before_id']}", headers=admin).json()
    assert [a["id"] for a in page["alerts"] + rest["alerts"]] == [a["id"] for a in everything["alerts"]]
    assert api.get("/api/alerts?limit=501", headers=admin).status_code == 422
    assert api.get("/api/alerts?since=yesterday", headers=admin).json()["code"] == "time_invalid"

    # A viewer reads alerts but does not handle them.
    assert api.get(f"/api/alerts/{server}", headers=viewer).status_code == 200
    assert api.post(f"/api/alerts/{server}/ack", headers=viewer).status_code == 403


@pytest.fixture
def any_api(any_db, clock, tmp_path, robot) -> Iterator[tuple[TestClient, object]]:
    """The app over an empty migrated database on each backend (SQLite and PostgreSQL), with an operator."""
    settings = Settings.model_validate(alert_settings(
        {"data_dir": str(tmp_path / "data"), "database_url": any_db.url,
         "storage": {"volumes": [{"name": "main", "path": str(tmp_path / "recordings")}]}}, robot))
    add_user(any_db, "op", "operator", clock.now_ms())
    with TestClient(create_app(settings, any_db, clock)) as client:
        yield client, any_db


def test_ack_stops_the_reminders_on_both_databases(any_api, clock):
    api, db = any_api
    now = clock.now_ms()
    alert_id = add_alert(db, now, "平海镇", "pinghai-town")
    firing = add_delivery(db, alert_id, "firing", DeliveryState.SENT, now)
    reminder = add_delivery(db, alert_id, "reminder", DeliveryState.QUEUED, now)
    op = login(api, "op")

    clock.advance(5)
    r = api.post(f"/api/alerts/{alert_id}/ack", json={"note": "  已派人去平海镇检查  "}, headers=op)
    assert r.status_code == 200, r.text
    assert r.json()["acked_by"] == "op" and r.json()["ack_note"] == "已派人去平海镇检查"
    with db.session() as s:
        a = s.get(Alert, alert_id)
        assert a.acked_ms == clock.now_ms() and a.acked_by == "op" and a.next_reminder_ms is None
        assert s.get(AlertDelivery, reminder).state == DeliveryState.DROPPED  # queued reminder: not sent any more
        assert s.get(AlertDelivery, firing).state == DeliveryState.SENT
    detail = api.get(f"/api/alerts/{alert_id}", headers=op).json()
    assert [(d["kind"], d["state"]) for d in detail["deliveries"]] == [("firing", "sent"), ("reminder", "dropped")]
    assert detail["deliveries"][0]["sent"].endswith("+08:00")
    assert api.get("/api/alerts/999999", headers=op).status_code == 404
    assert api.post("/api/alerts/1/ack", json={"note": "x" * 501}, headers=op).status_code == 422

    with db.session() as s:
        s.get(Alert, alert_id).state = "resolved"
    r = api.post(f"/api/alerts/{alert_id}/ack", headers=op)
    assert r.status_code == 409 and r.json()["code"] == "alert_not_firing" and "已结束" in r.json()["detail"]


def test_mute_checks_its_minutes(api, db, clock, settings):
    now = clock.now_ms()
    alert_id = add_alert(db, now, "平海镇", "pinghai-town")
    reminder = add_delivery(db, alert_id, "reminder", DeliveryState.QUEUED, now)
    op = login(api, "op")
    too_long = settings.alerts.mute_max_hours * 60 + 1
    for minutes in (0, -5, 0.5, too_long):
        r = api.post(f"/api/alerts/{alert_id}/mute", json={"minutes": minutes}, headers=op)
        assert r.status_code == 422 and r.json()["code"] == "mute_minutes_invalid", (minutes, r.text)
        assert "静音时长须在 1 分钟到" in r.json()["detail"]
    assert api.post(f"/api/alerts/{alert_id}/mute", json={"minutes": "lots"}, headers=op).status_code == 422
    with db.session() as s:
        assert s.get(Alert, alert_id).muted_until_ms is None

    r = api.post(f"/api/alerts/{alert_id}/mute", json={"minutes": 90}, headers=op)
    assert r.status_code == 200 and r.json()["muted_until_ms"] == now + 90 * MIN and r.json()["muted_by"] == "op"
    with db.session() as s:
        assert s.get(AlertDelivery, reminder).state == DeliveryState.DROPPED
    r = api.delete(f"/api/alerts/{alert_id}/mute", headers=op)
    assert r.status_code == 200 and r.json()["muted_until_ms"] is None
    with db.session() as s:
        assert s.get(Alert, alert_id).muted_until_ms is None

    resolved = add_alert(db, now, "平海镇", "pinghai-v01", state="resolved")
    r = api.post(f"/api/alerts/{resolved}/mute", json={"minutes": 30}, headers=op)
    assert r.status_code == 409 and "无法静音" in r.json()["detail"]


def test_maintenance_windows_are_checked_and_scoped(api, db, clock):
    now = clock.now_ms()
    op, op_ph, viewer = login(api, "op"), login(api, "op_ph"), login(api, "view")
    hour = 60 * MIN

    def post(headers, **body):
        body.setdefault("reason", "供电线路检修")
        body.setdefault("start", str(now))
        body.setdefault("end", str(now + 2 * hour))
        return api.post("/api/alerts/maintenance", json=body, headers=headers)

    refusals = [
        (post(op, station_id="pinghai-town", town="平海镇"), 400, "maintenance_scope_both", "不能同时指定"),
        (post(op, town="平海镇", end=str(now - hour)), 400, "maintenance_reversed", "须晚于开始时间"),
        (post(op, town="平海镇", end=str(now + 8 * 24 * hour)), 400, "maintenance_too_long", "最多 7 天"),
        (post(op, town="平海镇", start=str(now - 3 * hour), end=str(now - hour)), 400, "maintenance_in_past",
         "已经过去"),
        (post(op, town="火星镇"), 400, "town_unknown", "未知的镇"),
        (post(op, station_id="no-such-station"), 404, "station_not_found", "不存在"),
        (post(op, town="平海镇", reason=" "), 400, "maintenance_reason", "维护原因"),
        (post(op, town="平海镇", start="next tuesday"), 400, "time_invalid", "不是时间"),
        # A town user: not another town, its station, nor everything.
        (post(op_ph, town="平山街道"), 403, "maintenance_forbidden", "无权"),
        (post(op_ph, station_id="pingshan-town"), 404, "station_not_found", "不存在"),
        (post(op_ph), 403, "maintenance_forbidden", "全县"),
    ]
    for r, status, code, text in refusals:
        assert (r.status_code, r.json().get("code")) == (status, code), r.text
        assert text in r.json()["detail"], r.text
    assert post(viewer, town="平海镇").status_code == 403
    with db.session() as s:
        assert s.scalar(select(AlertMaintenance.id)) is None

    running = post(op_ph, station_id="pinghai-town")
    assert running.status_code == 201, running.text
    assert running.json()["scope"] == "station" and running.json()["state"] == "active"
    assert running.json()["created_by"] == "op_ph"
    future = post(op_ph, town="平海镇", start=str(now + 3 * hour), end=str(now + 4 * hour)).json()
    county = post(op, start=str(now + hour)).json()
    elsewhere = post(op, town="平山街道").json()
    assert county["scope"] == "all" and future["state"] == "future"

    # "maintenance" is not an alert id; a town user sees their towns' windows and the county's.
    mine = api.get("/api/alerts/maintenance", headers=op_ph)
    assert mine.status_code == 200
    assert [w["id"] for w in mine.json()] == [running.json()["id"], county["id"], future["id"]]
    assert len(api.get("/api/alerts/maintenance", headers=op).json()) == 4
    assert api.delete(f"/api/alerts/maintenance/{elsewhere['id']}", headers=op_ph).status_code == 404
    r = api.delete(f"/api/alerts/maintenance/{county['id']}", headers=op_ph)
    assert r.status_code == 403 and r.json()["code"] == "maintenance_forbidden"

    clock.advance(600)
    later = clock.now_ms()
    ended = api.delete(f"/api/alerts/maintenance/{running.json()['id']}", headers=op_ph)
    assert ended.status_code == 200 and ended.json()["end_ms"] == later and ended.json()["state"] == "past"
    assert api.delete(f"/api/alerts/maintenance/{future['id']}", headers=op_ph).status_code == 200
    with db.session() as s:
        assert s.get(AlertMaintenance, running.json()["id"]).end_ms == later  # kept, ended now
        assert s.get(AlertMaintenance, future["id"]) is None  # never began: gone
    again = api.delete(f"/api/alerts/maintenance/{running.json()['id']}", headers=op_ph)
    assert again.status_code == 409 and again.json()["code"] == "maintenance_over"
    assert [w["id"] for w in api.get("/api/alerts/maintenance", headers=op_ph).json()] == [county["id"]]
    past = api.get("/api/alerts/maintenance?include_past=true", headers=op_ph).json()
    assert [w["id"] for w in past] == [running.json()["id"], county["id"]]


def test_channels_are_described_without_keys_and_a_test_message_is_really_sent(api, db, robot):
    admin, op, viewer = login(api, "admin"), login(api, "op"), login(api, "view")
    bodies = []

    r = api.get("/api/alerts/channels", headers=op)
    bodies.append(r.text)
    assert r.status_code == 200
    described = {c["name"]: c for c in r.json()}
    assert set(described) == {"ops", "wrongkey", "twotowns"} and described["ops"]["type"] == "wecom"
    assert described["wrongkey"]["towns"] == ["平海镇"]
    assert "127.0.0.1" in described["ops"]["target"] and "key=***" in described["ops"]["target"]
    assert api.get("/api/alerts/channels", headers=viewer).status_code == 403
    assert api.post("/api/alerts/channels/ops/test", headers=op).status_code == 403

    r = api.post("/api/alerts/channels/ops/test", headers=admin)
    bodies.append(r.text)
    assert r.status_code == 200 and r.json()["ok"] is True and r.json()["error"] is None, r.text
    assert len(robot.requests) == 1 and robot.requests[0]["path"].endswith(f"key={ROBOT_KEY}")
    assert "测试" in json.dumps(robot.requests[0]["body"], ensure_ascii=False)
    with db.session() as s:
        d = s.get(AlertDelivery, r.json()["delivery_id"])
        assert (d.channel, d.kind, d.state, d.attempts, d.alert_id) == ("ops", "test", DeliveryState.SENT, 1, None)

    robot.errcode = 93000  # the robot refuses the key
    r = api.post("/api/alerts/channels/wrongkey/test", headers=admin)
    bodies.append(r.text)
    assert r.status_code == 200 and r.json()["ok"] is False and "93000" in r.json()["error"], r.text
    with db.session() as s:
        d = s.get(AlertDelivery, r.json()["delivery_id"])
        assert d.state == DeliveryState.FAILED and "93000" in (d.last_error or "")

    r = api.post("/api/alerts/channels/nosuch/test", headers=admin)
    bodies.append(r.text)
    assert r.status_code == 404 and r.json()["code"] == "channel_not_found" and "ops" in r.json()["detail"]
    r = api.post("/api/alerts/channels/ops/test", headers=admin)  # again at once: refused, nothing sent
    bodies.append(r.text)
    assert r.status_code == 429 and r.json()["code"] == "channel_test_too_soon"
    for body in bodies:
        assert ROBOT_KEY not in body and "robotkeysecret" not in body


def test_a_town_user_sees_only_the_channels_of_their_towns(api, db, clock):
    add_user(db, "admin_ph", "admin", clock.now_ms(), towns=["平海镇"])
    everything = api.get("/api/alerts/channels", headers=login(api, "op")).json()
    assert [c["name"] for c in everything] == ["ops", "wrongkey", "twotowns"]
    # 平海镇's operator: not "ops" (every town's alerts) nor "twotowns" (平山街道's too).
    mine = api.get("/api/alerts/channels", headers=login(api, "op_ph"))
    assert mine.status_code == 200 and [c["name"] for c in mine.json()] == ["wrongkey"]
    # A town-limited admin tests only their towns' channels; the others are "not found".
    admin_ph = login(api, "admin_ph")
    for name in ("ops", "twotowns"):
        r = api.post(f"/api/alerts/channels/{name}/test", headers=admin_ph)
        assert r.status_code == 404 and r.json()["code"] == "channel_not_found", r.text
        assert "已配置：wrongkey" in r.json()["detail"] and "ops" not in r.json()["detail"].split("；")[1]


def test_a_channel_is_tested_at_most_once_in_ten_seconds(api, db, clock, robot):
    admin = login(api, "admin")
    assert api.post("/api/alerts/channels/ops/test", headers=admin).json()["ok"] is True
    for waited, retry_after in ((0, "10"), (9.5, "1")):
        clock.advance(waited)
        r = api.post("/api/alerts/channels/ops/test", headers=admin)
        assert r.status_code == 429 and r.json()["code"] == "channel_test_too_soon", r.text
        assert r.headers["Retry-After"] == retry_after and "秒后再试" in r.json()["detail"]
    # Another channel is not held back; a failed attempt counts as an attempt.
    robot.errcode = 93000
    assert api.post("/api/alerts/channels/twotowns/test", headers=admin).json()["ok"] is False
    assert api.post("/api/alerts/channels/twotowns/test", headers=admin).status_code == 429
    assert len(robot.requests) == 2
    with db.session() as s:
        assert s.query(AlertDelivery).filter(AlertDelivery.kind == "test").count() == 2  # refusals: no row
    clock.advance(0.5)
    assert api.post("/api/alerts/channels/ops/test", headers=admin).status_code == 200
    assert len(robot.requests) == 3


def test_a_batched_delivery_shows_whether_its_digest_went(api, db, clock):
    now = clock.now_ms()
    alert_id = add_alert(db, now, "平海镇", "pinghai-town")
    other = add_alert(db, now, "平海镇", "pinghai-v01")
    sent_digest = add_delivery(db, None, "digest", DeliveryState.SENT, now)
    waiting_digest = add_delivery(db, None, "digest", DeliveryState.QUEUED, now, channel="wrongkey")
    carried = add_delivery(db, alert_id, "firing", DeliveryState.BATCHED, now)
    waiting = add_delivery(db, alert_id, "reminder", DeliveryState.BATCHED, now, channel="wrongkey")
    direct = add_delivery(db, alert_id, "resolved", DeliveryState.SENT, now)
    add_delivery(db, other, "firing", DeliveryState.BATCHED, now)
    with db.session() as s:
        s.get(AlertDelivery, carried).digest_id = sent_digest
        s.get(AlertDelivery, waiting).digest_id = waiting_digest
    detail = api.get(f"/api/alerts/{alert_id}", headers=login(api, "op")).json()
    rows = {d["id"]: d for d in detail["deliveries"]}
    assert list(rows) == [carried, waiting, direct]
    assert (rows[carried]["state"], rows[carried]["digest_id"], rows[carried]["digest_state"]) == (
        "batched", sent_digest, "sent")
    assert rows[carried]["digest_sent_ms"] == now - 10 * MIN and rows[carried]["digest_sent"].endswith("+08:00")
    assert (rows[waiting]["digest_state"], rows[waiting]["digest_sent_ms"], rows[waiting]["digest_sent"]) == (
        "queued", None, None)
    assert (rows[direct]["digest_state"], rows[direct]["digest_sent_ms"]) == (None, None)


def test_maintenance_cannot_start_in_the_past_and_open_windows_are_capped(api, db, clock):
    now = clock.now_ms()
    op = login(api, "op")

    def post(start: int, end: int):
        return api.post("/api/alerts/maintenance", headers=op,
                        json={"town": "平海镇", "start": str(start), "end": str(end), "reason": "供电线路检修"})

    r = post(now - 11 * MIN, now + 60 * MIN)  # would silence alerts raised and told 11 minutes ago
    assert r.status_code == 400 and r.json()["code"] == "maintenance_in_past", r.text
    assert "不能追溯" in r.json()["detail"]
    r = post(now - 6 * 24 * 60 * MIN, now + 60 * MIN)
    assert r.status_code == 400 and r.json()["code"] == "maintenance_in_past"
    assert post(now - 9 * MIN, now + 60 * MIN).status_code == 201  # a form filled in a few minutes ago
    assert post(now + MIN, now + MIN + 7 * 24 * 60 * MIN).status_code == 201  # 7 days: still allowed

    with db.session() as s:  # 497 more open windows, and ended ones (they do not count)
        s.add_all([AlertMaintenance(town="平海镇", start_ms=now + i, end_ms=now + 60 * MIN, reason="x",
                                    created_by="op", created_ms=now) for i in range(497)])
        s.add_all([AlertMaintenance(town="平海镇", start_ms=now - 90 * MIN, end_ms=now - 30 * MIN, reason="x",
                                    created_by="op", created_ms=now) for _ in range(20)])
    last = post(now + MIN, now + 60 * MIN)
    assert last.status_code == 201, last.text  # the 500th
    r = post(now + MIN, now + 60 * MIN)
    assert r.status_code == 409 and r.json()["code"] == "maintenance_too_many" and "最多 500 个" in r.json()["detail"]
    assert api.delete(f"/api/alerts/maintenance/{last.json()['id']}", headers=op).status_code == 200
    assert post(now + MIN, now + 60 * MIN).status_code == 201
