"""A camera's state, judged from evidence a stuck thread cannot fake.

The camera thread says what it is doing (`reported`): connecting, streaming, in backoff. It cannot
be trusted to say when it is stuck: a thread that hangs keeps the last thing it said. So the state
that is published is judged by other threads (the worker's watchdog and status publisher) from
evidence only a working recorder produces:

- the recorded-frame counter, which the camera thread raises only after the recorder wrote a frame;
  the watchdog's tick notes when it last moved (`progress_mono`);
- whether the packet loop still turns: it answers the attention flag the watchdog raises every
  status interval (`loop_alive_mono`);
- for the states that must end by themselves (connecting has a deadline, a backoff a delay), the
  time by which they should have ended (`expected_until`).

A camera that reports streaming but recorded nothing for `stall_s` is `stalled` (the watchdog then
shuts its connection down, which ends a blocked read); still nothing `hung_grace_s` later with a loop
that no longer turns, or a state that outlived its deadline by `hung_grace_s`, is `hung`: its thread is
stuck where no socket can reach it, and only restarting the worker process frees the camera (see
vms.ingest.worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from vms.catalog.urls import mask_text
from vms.db.models import CameraStatus


class CameraState(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"  # waiting before the next connection attempt
    STALLED = "stalled"  # says streaming, recorded nothing for stall_seconds
    HUNG = "hung"  # stuck: no progress long after the watchdog acted, or a state past its deadline
    FAILED = "failed"  # the session's thread ended on an internal error (restarted by the worker)
    STOPPED = "stopped"


class ReportedState(StrEnum):
    """The states the API and the CLI report besides a CameraState, when the recording node's own
    report cannot be used (see reported_camera_state)."""

    OFFLINE = "offline"  # the node stopped reporting the camera without saying it stopped recording it
    DISABLED = "disabled"  # the station is disabled
    UNKNOWN = "unknown"  # no report yet


@dataclass(frozen=True)
class HealthEvidence:
    reported: CameraState  # what the camera thread last said
    progress_mono: float  # monotonic time a recorded frame was last seen (or reading began)
    expected_until: float | None  # monotonic time by which `reported` should have ended, if it must end
    loop_alive_mono: float = 0.0  # monotonic time the packet loop last answered the watchdog


def judge_state(evidence: HealthEvidence, now_mono: float, stall_s: float, hung_grace_s: float) -> CameraState:
    """The state to publish: what the thread reports, unless the evidence says otherwise."""
    reported = evidence.reported
    if reported is CameraState.STREAMING:
        idle = now_mono - evidence.progress_mono
        if idle <= stall_s:
            return CameraState.STREAMING
        if idle <= stall_s + hung_grace_s or now_mono - evidence.loop_alive_mono <= stall_s:
            # Not recording; but a loop that still turns (packets that cannot be written: a full disk)
            # is not stuck, and restarting its worker would not help.
            return CameraState.STALLED
        return CameraState.HUNG
    if evidence.expected_until is not None and now_mono > evidence.expected_until + hung_grace_s:
        return CameraState.HUNG
    return reported


# A camera_status row older than this many status intervals means the node stopped reporting the camera
# (the API's status and the alert rules both judge by it).
STALE_STATUS_INTERVALS = 3


def reported_camera_state(cam: CameraStatus | None, enabled: bool, now: int, stale_ms: int, stall_ms: int) -> dict:
    """A camera's state as the API and the CLI report it, from its camera_status row. Even what the
    recording node published is checked against its evidence: `streaming` only with a frame recorded
    within stall_ms, and no rates for a camera that is not streaming."""
    if not enabled:
        return {"state": ReportedState.DISABLED, "reason": "station disabled", "online": False,
                "last_packet_ms": cam.last_packet_ms if cam else None}
    if cam is None:
        return {"state": ReportedState.UNKNOWN, "reason": "no status reported", "online": False}
    fresh = now - cam.updated_ms <= stale_ms
    state, reason, detail = cam.state, cam.reason, mask_text(cam.detail) if cam.detail else None
    if not fresh and cam.state != CameraState.STOPPED:
        # The node stopped reporting without saying it stopped this camera: it is not recording it.
        silent_s = (now - cam.updated_ms) // 1000
        state, reason, detail = ReportedState.OFFLINE, "no_status", f"no status from node {cam.node} for {silent_s} s"
    if state == CameraState.STREAMING and (cam.last_packet_ms is None or now - cam.last_packet_ms > stall_ms):
        age = "never" if cam.last_packet_ms is None else f"{(now - cam.last_packet_ms) // 1000} s ago"
        state, reason, detail = CameraState.STALLED, "stalled", f"last frame recorded {age}"
    online = state == CameraState.STREAMING
    return {"state": state, "reason": reason, "online": online, "detail": detail, "node": cam.node,
            "fps": cam.fps if online else None, "bitrate_bps": cam.bitrate_bps if online else None,
            "codec": cam.codec, "width": cam.width, "height": cam.height, "audio": cam.audio,
            "last_packet_ms": cam.last_packet_ms,
            "reconnects": cam.reconnects, "updated_ms": cam.updated_ms}
