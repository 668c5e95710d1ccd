"""`vms analyze`: the live detector run over a video file, for evaluation and for tuning a station.

decode="keyframes" feeds the file's packets through StationAnalysisObserver exactly as the ingest
does (only keyframes are decoded, when the sample schedule says so). decode="all" decodes every
frame and samples on the same schedule, without the keyframe-size signal: for short clips whose
keyframes are further apart than the sample interval wanted. Raw streams (H.264/HEVC/MPEG
elementary streams) carry no timing: frame times are index / fps_assumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import av
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vms.analysis.calibration import StationCalibration
from vms.analysis.detector import (
    ActivityFound,
    Event,
    FaultClosed,
    FaultOpened,
    FaultSeverity,
    Sampled,
    StateChanged,
    StationDetector,
)
from vms.analysis.observer import StationAnalysisObserver, business_hours_check, frame_planes
from vms.analysis.sampling import SampleSchedule
from vms.analysis.sink import Resumed
from vms.core.clock import SimulatedClock
from vms.core.errors import ConfigError, VmsError
from vms.core.settings import AnalysisSettings
from vms.core.yamlfile import line_of, load_with_lines

RAW_FORMATS = {"h264", "hevc", "mpegvideo", "mpeg1video", "m4v", "mjpeg", "rawvideo", "h263"}


class StationConfig(BaseModel):
    """The --station-config file: a station's calibration and settings overrides for one run."""

    model_config = ConfigDict(extra="forbid")

    calibration: StationCalibration = Field(default_factory=StationCalibration)
    overrides: dict[str, Any] = Field(default_factory=dict, description="analysis settings for this run")
    business_hours: str | None = None
    start: datetime | None = Field(default=None, description="wall time of the file's first frame")


def load_station_config(path: Path) -> StationConfig:
    data, lines = load_with_lines(path)
    try:
        cfg = StationConfig.model_validate(data or {})
        if cfg.overrides:  # validated like calibration overrides, with the file's line in errors
            StationCalibration(overrides=cfg.overrides)
        return cfg
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            line = line_of(lines, loc) if loc else None
            where = f"{path}:{line}" if line else str(path)
            problems.append(f"{where}: {'.'.join(map(str, loc)) or '(top level)'}: {e['msg']}")
        raise ConfigError(problems) from None


@dataclass
class _Collect:
    events: list

    def submit(self, station_id: str, events: Sequence[Event | Resumed]) -> None:
        self.events.extend(events)


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except FileNotFoundError:
        raise VmsError(f"{path}: file not found") from None
    except av.error.FFmpegError as exc:
        raise VmsError(f"{path}: not a video FFmpeg can read ({exc})") from None


def analyse_file(
    path: Path,
    cfg: AnalysisSettings,
    calibration: StationCalibration | None = None,
    fps_assumed: float = 25.0,
    decode: Literal["keyframes", "all"] = "keyframes",
    in_business_hours: Callable[[int], bool] | None = None,
    start_ms: int = 0,
) -> Iterator[Event]:
    """Every detector event of the file, in order; times are ms (start_ms + time in the file)."""
    if fps_assumed <= 0:
        raise VmsError(f"--fps-assumed must be positive, got {fps_assumed}")
    container = _open(path)
    try:
        if not container.streams.video:
            raise VmsError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        tb = stream.time_base
        raw = container.format.name.split(",")[0] in RAW_FORMATS or tb is None
        calibration = calibration or StationCalibration()

        def when(index: int, pts: int | None) -> int:
            if raw or pts is None or tb is None:
                return start_ms + round(index * 1000 / fps_assumed)
            return start_ms + round(float(pts * tb) * 1000)

        if decode == "keyframes":
            sink = _Collect([])
            observer = StationAnalysisObserver("offline", cfg, sink, SimulatedClock(), calibration,
                                               None, in_business_hours)
            observer.on_connect(stream, start_ms)
            index, last = 0, start_ms
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                last = when(index, packet.pts)
                observer.on_packet(packet, last)
                index += 1
                yield from sink.events
                sink.events.clear()
            if observer.samples == 0:  # a file that cannot be analysed says so (exit 1), never nothing
                if observer.decode_failures:
                    raise VmsError(f"{path}: cannot be analysed: none of {observer.decode_failures} keyframes "
                                   f"tried could be decoded ({observer.last_decode_error})")
                raise VmsError(f"{path}: cannot be analysed: its video stream has no keyframe")
            yield from observer.detector.finish(last + 1000 // max(1, int(fps_assumed)))
            return

        detector = StationDetector(cfg, calibration, None, in_business_hours)
        cc = stream.codec_context
        yield from detector.connected(start_ms, cc.width or 0, cc.height or 0)
        stream.thread_type = "AUTO"
        schedule = SampleSchedule(detector.cfg)
        pkt_index = frame_index = 0
        last = start_ms
        for packet in container.demux(stream):
            if packet.size:
                detector.packet(when(pkt_index, packet.pts), packet.size, packet.is_keyframe)
                pkt_index += 1
            for frame in packet.decode():
                if not isinstance(frame, av.VideoFrame):  # (a video stream's packets: never)
                    continue
                t = when(frame_index, frame.pts)
                frame_index += 1
                last = t
                if schedule.due(t, None, detector.unsettled):
                    schedule.taken(t)
                    y, u, v = frame_planes(frame)
                    yield from detector.frame(t, y, u, v)
        if frame_index == 0:
            raise VmsError(f"{path}: cannot be analysed: no frame could be decoded")
        yield from detector.finish(last + round(1000 / fps_assumed))
    except av.error.FFmpegError as exc:
        raise VmsError(f"{path}: decoding failed: {exc}") from None
    finally:
        container.close()


def events_to_json(events: Iterator[Event], start_ms: int = 0) -> Iterator[dict]:
    """The JSON lines of `vms analyze`: samples, state changes, activity episodes, faults (seconds)."""
    def s(ms: int | None) -> float | None:
        return None if ms is None else round((ms - start_ms) / 1000, 3)

    open_faults: dict[str, dict] = {}
    for e in events:
        if isinstance(e, Sampled):
            yield {"type": "sample", "t": s(e.t_ms), "vote": e.vote, **e.features}
        elif isinstance(e, StateChanged):
            yield {"type": "state", "t": s(e.t_ms), "state": e.state}
        elif isinstance(e, ActivityFound):
            yield {"type": "activity", "start": s(e.start_ms), "end": s(e.end_ms), "peak": e.peak}
        elif isinstance(e, FaultOpened):
            open_faults[e.kind] = {"type": "fault", "kind": e.kind, "start": s(e.start_ms), "end": None,
                                   "severity": e.severity, "detail": e.detail}
        elif isinstance(e, FaultSeverity) and e.kind in open_faults:
            open_faults[e.kind]["severity"] = e.severity
        elif isinstance(e, FaultClosed) and e.kind in open_faults:
            rec = open_faults.pop(e.kind)
            rec["end"] = s(e.end_ms)
            yield rec
    for rec in open_faults.values():
        yield {**rec, "ongoing": True}


def business_hours_for(config: StationConfig, tz) -> Callable[[int], bool] | None:
    return business_hours_check(config.business_hours, tz)
