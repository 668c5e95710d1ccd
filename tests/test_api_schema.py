"""Property-based run of every operation in /openapi.json (schemathesis): no input gives a 5xx."""

from __future__ import annotations

import hypothesis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from sqlalchemy import select
from test_api_helpers import add_segments, add_user

from vms.api.accounts import issue_session
from vms.api.app import create_app
from vms.db.models import CameraStatus, User
from vms.recording.volumes import VolumeSet

EXAMPLES_PER_OPERATION = 12


def test_no_server_errors_for_generated_requests(settings, db, clock, clip):
    now = clock.now_ms()
    add_user(db, "admin", "admin", now)
    add_segments(db, VolumeSet.from_settings(settings), clip, "pingshan-town", now - 60_000, 3, settings.tz)
    with db.session() as s:
        s.add(CameraStatus(station_id="pingshan-town", node="n1", state="streaming", updated_ms=now))
        admin_id = s.scalar(select(User.id).where(User.username == "admin"))
    app = create_app(settings, db, clock)

    def fresh_token() -> str:
        # A new session per request: a generated logout or password change must not lock the run out.
        with db.session() as s:
            user = s.get(User, admin_id)
            user.disabled = False
            user.role = "admin"
            secret, _ = issue_session(s, user, clock.now_ms(), 1)
        return secret

    failures = []
    statuses: dict[int, int] = {}
    with TestClient(app):  # runs the lifespan once
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [r.ok() for r in schema.get_all_operations()]
        assert len(operations) >= 25
        for op in operations:
            @given(case=op.as_strategy())
            @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                                 suppress_health_check=list(HealthCheck), derandomize=True)
            def run(case) -> None:
                response = case.call(headers={"Authorization": f"Bearer {fresh_token()}"})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code >= 500:
                    failures.append((case.method, case.formatted_path, case.query, case.body,
                                     response.status_code, response.text[:300]))

            run()
    assert not failures, failures[:5]
    # The run reached past authentication and validation, not only 4xx answers.
    assert statuses.get(200, 0) + statuses.get(201, 0) >= 30, statuses
    print(statuses)
