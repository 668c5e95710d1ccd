"""The state enums (issue 17 item 11) are the strings stored and answered before: StrEnum members, so no
schema or API change."""

import json
import typing

from vms.analysis.calibration import LabelledLook
from vms.api.routers.metrics import CAMERA_STATES
from vms.db.models import ExportState, OpenState
from vms.ingest.health import CameraState, ReportedState


def test_the_enums_are_the_stored_strings():
    assert [s.value for s in OpenState] == ["open", "closed", "unknown"]
    assert set(typing.get_args(LabelledLook.model_fields["label"].annotation)) == {OpenState.OPEN, OpenState.CLOSED}
    assert [s.value for s in ExportState] == ["queued", "running", "done", "failed", "expired"]
    assert list(CAMERA_STATES) == ["connecting", "streaming", "backoff", "stalled", "hung", "failed", "stopped",
                                   "offline", "disabled", "unknown"]
    assert json.dumps({"state": ReportedState.OFFLINE, "camera": CameraState.STALLED}) == \
        '{"state": "offline", "camera": "stalled"}'
    assert f"{OpenState.CLOSED}" == "closed" and OpenState.OPEN == "open"
