"""Prometheus metrics: per-camera health from camera_status, plus every counter registered in this
process's default registry (retention deletions, process figures). Admins or API keys with `metrics`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import select

from vms.api import permissions as P
from vms.api.accounts import Principal
from vms.api.deps import Ctx, require
from vms.api.status import health_summary, status_cache
from vms.db.models import CameraStatus
from vms.ingest.health import CameraState, ReportedState

router = APIRouter(tags=["metrics"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CAMERA_STATES = (*CameraState, *ReportedState)


class _CameraCollector:
    def __init__(self, stations: list[dict], counters: dict[str, CameraStatus]) -> None:
        self.stations = stations
        self.counters = counters

    def collect(self):
        labels = ["station", "town"]
        state = GaugeMetricFamily("vms_camera_state", "1 for the camera's current state", labels=labels + ["state"])
        up = GaugeMetricFamily("vms_camera_online", "1 if streaming with a fresh status", labels=labels)
        rec = GaugeMetricFamily("vms_camera_recording", "1 if a segment is being written", labels=labels)
        fps = GaugeMetricFamily("vms_camera_fps", "frames per second received", labels=labels)
        br = GaugeMetricFamily("vms_camera_bitrate_bps", "bits per second received", labels=labels)
        rc = GaugeMetricFamily("vms_camera_reconnects", "reconnects since the session started", labels=labels)
        sw = GaugeMetricFamily("vms_camera_segments_written", "segments written by the session", labels=labels)
        bw = GaugeMetricFamily("vms_camera_bytes_written", "bytes written by the session", labels=labels)
        faults = GaugeMetricFamily("vms_camera_active_faults", "faults still open", labels=labels)
        for st in self.stations:
            lv = [st["id"], st["town"]]
            cam = st["camera"]
            for s in CAMERA_STATES:
                state.add_metric(lv + [s], 1.0 if cam["state"] == s else 0.0)
            up.add_metric(lv, 1.0 if cam["online"] else 0.0)
            rec.add_metric(lv, 1.0 if st["recording"] else 0.0)
            faults.add_metric(lv, float(len(st["faults"])))
            row = self.counters.get(st["id"])
            if row is not None:
                # The checked figures (no rates for a camera that is not streaming), not the raw row.
                fps.add_metric(lv, float(cam.get("fps") or 0.0))
                br.add_metric(lv, float(cam.get("bitrate_bps") or 0.0))
                rc.add_metric(lv, float(row.reconnects or 0))
                sw.add_metric(lv, float(row.segments_written or 0))
                bw.add_metric(lv, float(row.bytes_written or 0))
        summary = health_summary(self.stations)
        enabled = GaugeMetricFamily("vms_cameras_enabled", "cameras of enabled stations")
        enabled.add_metric([], float(summary["enabled"]))
        missing = GaugeMetricFamily("vms_cameras_not_recording", "enabled cameras not recording right now")
        missing.add_metric([], float(summary["not_recording"]))
        stuck = GaugeMetricFamily("vms_cameras_stuck", "enabled cameras the recorder itself fails (hung, or no status "
                                                       "from their recording node)")
        stuck.add_metric([], float(summary["stuck"]))
        yield from (state, up, rec, fps, br, rc, sw, bw, faults, enabled, missing, stuck)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
def metrics(ctx: Ctx, _p: Annotated[Principal, Depends(require(P.METRICS))]) -> Response:
    stations = status_cache(ctx).get()
    with ctx.database.session() as s:
        counters = {c.station_id: c for c in s.scalars(select(CameraStatus))}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_CameraCollector(stations, counters))
    try:
        import vms.retention.metrics  # noqa: F401  registers the retention counters in REGISTRY
    except ImportError:
        pass
    body = generate_latest(registry) + generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE)
