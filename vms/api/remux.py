"""Footage for a time range as one MP4, by copying packets from the stored segments (no decode, no
transcode). Used by playback and exports.

- The output starts at the keyframe at or before the requested start (a player cannot begin mid-GOP),
  and stops before the first video packet at or after the requested end.
- Output time 0 is that keyframe. Segment boundaries up to MAX_JOIN_GAP_MS apart are kept as they are;
  longer gaps (camera offline) are collapsed so that the video does not freeze for hours. `spans` maps
  video offsets back to wall time.
- If the stream changes codec or picture size mid-range (camera replaced or reconfigured), the output
  stops there and `truncated` says why; the caller can ask for the rest separately.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from fractions import Fraction
from pathlib import Path

import av
from sqlalchemy import select
from sqlalchemy.orm import Session

from vms.api.errors import local_time
from vms.db.models import Segment
from vms.recording.avtypes import time_base
from vms.recording.segment_file import add_copy_stream
from vms.recording.volumes import VolumeSet

log = logging.getLogger(__name__)

MAX_JOIN_GAP_MS = 1500


@dataclass(frozen=True)
class SourceSegment:
    id: int
    path: Path
    start_ms: int
    end_ms: int
    state: str
    codec: str | None = None  # as the recorder indexed it (null in rows older than the column)


@dataclass
class Span:
    video_offset_ms: int
    wall_start_ms: int
    wall_end_ms: int


@dataclass
class RemuxResult:
    path: Path
    bytes: int
    first_ms: int  # wall time of the first frame (the keyframe at or before the start asked for)
    last_ms: int  # wall time just after the last frame
    duration_ms: int
    segments: int
    video_packets: int
    spans: list[Span] = field(default_factory=list)
    truncated: str | None = None
    skipped: list[str] = field(default_factory=list)
    codec: str = ""  # of the video: FFmpeg's name (h264, hevc)


class NoFootage(Exception):
    """Nothing recorded in the range (or every file in it is unreadable)."""


class RemuxCancelled(Exception):
    pass


def find_segments(session: Session, volumes: VolumeSet, station_id: str, start_ms: int,
                  end_ms: int) -> list[SourceSegment]:
    """Main-stream segments overlapping [start, end), oldest first; their files resolved safely."""
    rows = session.execute(
        select(Segment.id, Segment.volume, Segment.path, Segment.start_ms, Segment.end_ms, Segment.state,
               Segment.codec)
        .where(Segment.station_id == station_id, Segment.stream == "main",
               Segment.state.in_(("growing", "complete")),
               Segment.start_ms < end_ms, Segment.end_ms > start_ms)
        .order_by(Segment.start_ms)
    ).all()
    out = []
    for seg_id, volume, rel, s, e, state, codec in rows:
        try:
            path = volumes.file_path(volume, rel)
        except (KeyError, ValueError) as exc:
            log.warning("segment %s skipped: %s", seg_id, exc)
            continue
        out.append(SourceSegment(seg_id, path, s, e, state, codec))
    return out


@dataclass
class _Buffered:
    packet: av.Packet
    kind: str  # video | audio
    wall: Fraction  # seconds
    dts_delta: int  # pts - dts in the packet's time base


def remux_range(sources: list[SourceSegment], start_ms: int, end_ms: int, out_path: Path,
                progress: Callable[[float], None] | None = None,
                cancelled: Callable[[], bool] | None = None, tz: tzinfo = UTC) -> RemuxResult:
    """Write footage of [start_ms, end_ms) to out_path (MP4, moov first). Raises NoFootage. `tz`: the zone
    of the times in `truncated` (operators read it)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".part")
    writer = _Writer(tmp)
    start_s = Fraction(start_ms, 1000)
    end_s = Fraction(end_ms, 1000)
    span_s = max(end_s - start_s, Fraction(1, 1000))
    gop: list[_Buffered] = []
    started = False
    done = False
    first_kind: tuple | None = None
    skipped: list[str] = []
    truncated = None
    used = 0
    try:
        for src in sources:
            if done:
                break
            try:
                container = av.open(str(src.path), "r")
            except (OSError, av.error.FFmpegError) as exc:
                skipped.append(f"segment {src.id}: {type(exc).__name__}")
                continue
            with container:
                if not container.streams.video:
                    skipped.append(f"segment {src.id}: no video stream")
                    continue
                vin = container.streams.video[0]
                ain = container.streams.audio[0] if container.streams.audio else None
                kind = (vin.codec_context.name, vin.codec_context.width, vin.codec_context.height)
                if first_kind is None:
                    first_kind = kind
                    writer.open(vin, ain)
                elif kind != first_kind:
                    was = f"{first_kind[0]} {first_kind[1]}x{first_kind[2]}"
                    truncated = (f"摄像机码流于 {local_time(src.start_ms, tz)} 由 {was} 变为 "
                                 f"{kind[0]} {kind[1]}x{kind[2]}，之后的录像请另行调取")
                    break
                used += 1
                writer.begin_segment(Fraction(src.start_ms, 1000))
                origin: Fraction | None = None
                streams = [vin] + ([ain] if ain is not None and writer.has_audio else [])
                try:
                    for pkt in container.demux(streams):
                        if pkt.dts is None or pkt.size == 0:
                            continue
                        is_video = pkt.stream.index == vin.index
                        rel = pkt.dts * pkt.time_base
                        if origin is None:
                            if not is_video:
                                continue  # no audio before the first video packet of a segment
                            origin = rel
                        wall = Fraction(src.start_ms, 1000) + rel - origin
                        item = _Buffered(pkt, "video" if is_video else "audio", wall,
                                         (pkt.pts - pkt.dts) if pkt.pts is not None else 0)
                        if not started:
                            if is_video and pkt.is_keyframe and (wall <= start_s or not gop):
                                gop = [item]
                                if wall >= start_s:
                                    started = True
                            elif gop:
                                if is_video and wall >= start_s:
                                    started = True
                                gop.append(item)
                            if started:
                                if gop[-1].wall >= end_s and gop[-1] is not gop[0]:
                                    gop.pop()
                                    done = True
                                for b in gop:
                                    writer.write(b)
                                gop = []
                                if done:
                                    break
                            continue
                        if is_video and wall >= end_s:
                            done = True
                            break
                        if not is_video and wall >= end_s:
                            continue
                        writer.write(item)
                        if is_video and progress is not None and writer.video_packets % 200 == 0:
                            progress(min(0.99, float((wall - start_s) / span_s)))
                            if cancelled is not None and cancelled():
                                raise RemuxCancelled()
                except (av.error.InvalidDataError, av.error.EOFError, EOFError) as exc:
                    # A growing or crash-cut file ends with an incomplete fragment: keep what came before.
                    log.info("segment %s ends early: %s", src.id, exc)
        if not started and gop:
            for b in gop:  # the range ends inside the first GOP found: it is still the footage asked for
                writer.write(b)
        if writer.video_packets == 0:
            raise NoFootage("此时段没有可播放的录像")
        result = writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.abandon()
        tmp.unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(1.0)
    return RemuxResult(path=out_path, bytes=out_path.stat().st_size, first_ms=result[0], last_ms=result[1],
                       duration_ms=result[2], segments=used, video_packets=writer.video_packets,
                       spans=writer.spans, truncated=truncated, skipped=skipped,
                       codec=first_kind[0] if first_kind else "")


class _Writer:
    """The output container; maps wall time to output time, collapsing long gaps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.container: av.container.OutputContainer | None = None
        self.has_audio = False
        self.video_packets = 0
        self.spans: list[Span] = []
        self._w0: Fraction | None = None  # wall of output time 0
        self._collapsed = Fraction(0)
        self._last_wall_end: Fraction | None = None  # wall just after the last video frame
        self._frame = Fraction(1, 15)
        self._last_dts: dict[str, int] = {}
        self._pending_segment_start: Fraction | None = None

    def open(self, vin, ain) -> None:
        container = self.container = av.open(str(self.path), "w", format="mp4", options={"movflags": "+faststart"})
        self.vout = add_copy_stream(container, vin)
        self.aout: av.stream.Stream | None = None
        if ain is not None:
            try:
                self.aout = add_copy_stream(container, ain)
                self.has_audio = True
            except (ValueError, av.error.FFmpegError):
                self.aout = None  # an audio codec MP4 cannot hold: keep the video

    def begin_segment(self, seg_start: Fraction) -> None:
        self._pending_segment_start = seg_start

    def _out_seconds(self, wall: Fraction) -> Fraction:
        assert self._w0 is not None, "output time starts at the first video packet written"
        return wall - self._w0 - self._collapsed

    def write(self, b: _Buffered) -> None:
        if self._w0 is None:
            if b.kind != "video":
                return
            self._w0 = b.wall
            self.spans.append(Span(0, int(b.wall * 1000), int(b.wall * 1000)))
        if b.kind == "video":
            gap = b.wall - self._last_wall_end if self._last_wall_end is not None else Fraction(0)
            if gap > Fraction(MAX_JOIN_GAP_MS, 1000):
                # Collapse the gap to one frame and open a new span.
                self._collapsed += gap
                offset = int(self._out_seconds(b.wall) * 1000)
                self.spans.append(Span(offset, int(b.wall * 1000), int(b.wall * 1000)))
            if b.packet.duration:
                self._frame = b.packet.duration * time_base(b.packet)
            self._last_wall_end = b.wall + self._frame
            self.spans[-1].wall_end_ms = int(self._last_wall_end * 1000)
            b.packet.stream = self.vout
        else:
            if self.aout is None or b.wall < self._w0:
                return
            b.packet.stream = self.aout
        dts = round(self._out_seconds(b.wall) / time_base(b.packet))
        last = self._last_dts.get(b.kind)
        if last is not None and dts <= last:
            dts = last + 1
        self._last_dts[b.kind] = dts
        b.packet.dts = dts
        b.packet.pts = dts + b.dts_delta
        assert self.container is not None, "packets come after open()"
        self.container.mux(b.packet)
        if b.kind == "video":
            self.video_packets += 1

    def close(self) -> tuple[int, int, int]:
        """Only after a video packet was written (remux() checks)."""
        assert self.container is not None and self._w0 is not None and self._last_wall_end is not None
        self.container.close()
        self.container = None
        first = int(self._w0 * 1000)
        last = int(self._last_wall_end * 1000)
        duration = int(self._out_seconds(self._last_wall_end) * 1000)
        return first, last, duration

    def abandon(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # the file is deleted anyway
                pass
            self.container = None
