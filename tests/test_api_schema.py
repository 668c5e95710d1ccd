"""Property-based run of every operation in /openapi.json (schemathesis): no input gives a 5xx."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from sqlalchemy import select
from test_api_helpers import add_segments, add_user

from vms.api.accounts import issue_session
from vms.api.app import create_app
from vms.api.schemas import TIME_FORMAT
from vms.db.models import CameraStatus, User
from vms.recording.volumes import VolumeSet

pytestmark = pytest.mark.slow  # hundreds of generated requests (schemathesis): not in scripts/test.sh --fast

EXAMPLES_PER_OPERATION = 12


def _iso(when: datetime, offset_minutes: int | None) -> str:
    if offset_minutes is not None:
        when = when.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    return when.isoformat()


_OFFSETS = st.none() | st.integers(-14 * 60, 14 * 60)
# What the API's time fields (format local-time-or-epoch-ms) are given: times it can serve, and what
# broke it before (issue 17): numeric strings of any length, far-past and far-future times (year 1 with
# a +14:00 offset is before the first instant datetime can hold), digits of other scripts.
ODD_AND_ORDINARY_TIMES = st.one_of(
    st.builds(_iso, st.datetimes(datetime(2025, 12, 1), datetime(2026, 1, 2)), _OFFSETS),
    st.integers(-(10**25), 10**25).map(str),
    st.integers(0, 10**40).map(lambda n: str(n).zfill(13)),
    st.builds(_iso, st.datetimes(datetime(1, 1, 1), datetime(1999, 12, 31)), _OFFSETS),
    st.builds(_iso, st.datetimes(datetime(2100, 1, 1), datetime(9999, 12, 31, 23, 59, 59)), _OFFSETS),
    st.sampled_from(["0001-01-01T00:00:00", "9999-12-31T23:59:59.999999", "²²²²²²²²²²", "١٧٦٧٢٢٥٦٠٠٠٠٠",
                     "0000000000", str(int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000))]),
)


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
    codes: dict[str, int] = {}
    schemathesis.openapi.format(TIME_FORMAT, ODD_AND_ORDINARY_TIMES)
    with TestClient(app):  # runs the lifespan once
        schema = schemathesis.openapi.from_asgi("/openapi.json", app,
                                                headers={"Authorization": f"Bearer {fresh_token()}"})
        operations = [r.ok() for r in schema.get_all_operations()]
        assert len(operations) >= 25
        for op in operations:
            @given(case=op.as_strategy(), real_station=st.booleans())
            @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                                 suppress_health_check=list(HealthCheck), derandomize=True)
            def run(case, real_station: bool) -> None:
                if real_station:
                    # Half the cases name the station with footage: a random id stops at its 404, before
                    # the times, ranges and files of the operation are looked at.
                    if "station_id" in (case.path_parameters or {}):
                        case.path_parameters["station_id"] = "pingshan-town"
                    if isinstance(case.body, dict) and "station_id" in case.body:
                        case.body["station_id"] = "pingshan-town"
                response = case.call(headers={"Authorization": f"Bearer {fresh_token()}"})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 400:
                    code = response.json().get("code") or "-"
                    codes[code] = codes.get(code, 0) + 1
                documented = str(response.status_code) in case.operation.definition.raw.get("responses", {})
                if response.status_code >= 500 and not documented:  # e.g. a snapshot's 503 "camera stalled"
                    failures.append((case.method, case.formatted_path, case.query, case.body,
                                     response.status_code, response.text[:300]))

            run()
    assert not failures, failures[:5]
    # The run reached past authentication and validation, not only 4xx answers.
    assert statuses.get(200, 0) + statuses.get(201, 0) >= 30, statuses
    # The odd times reached the time checks.
    assert codes.get("time_out_of_range", 0) >= 5 and codes.get("time_invalid", 0) >= 1, codes
    print(statuses, codes)
