"""Footage fetched after the fact into a gap: a camera's own recording (its SD card), played back to us
once the link is up again (GB/T 28181 Download), written as ordinary segments inside the gap.

Unlike the live recorder (recorder.py) there is no receive clock to anchor on: the stream was recorded
at the time it covers, so a packet's wall time is where the request started plus its media time since
the first packet. Nothing outside the gap is written (the footage around it is the live recording's,
and segments of one camera never overlap), a segment is closed, fsynced and only then indexed
complete (a crash leaves at most a file without a row, which crash repair indexes), and each segment
file is created exclusively, so nothing is ever overwritten. While written, a segment has a `.part` name:
crash repair (run by any ingest worker that starts) takes only `*.mp4` files for orphaned segments.

Video only: the audio of a card recording is left out (the live path keeps audio; a backfilled hour is
for seeing what happened).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import av
import av.container
from sqlalchemy import select

from vms.db.engine import Database
from vms.db.models import Segment
from vms.recording.avtypes import time_base
from vms.recording.layout import segment_rel_path
from vms.recording.recorder import SUPPORTED_VIDEO
from vms.recording.segment_file import SegmentFile
from vms.recording.volumes import VolumeSet, fsync_dir

log = logging.getLogger(__name__)

# A segment being written: not a name crash repair or `vms check` takes for a segment (*.mp4).
PART_SUFFIX = ".part"
MAX_STEP_S = 5.0  # as the live recorder: a larger dts step is a clock jump, counted as one frame


@dataclass
class BackfillResult:
    segments: int = 0
    filled_ms: int = 0  # footage written inside the gap
    first_ms: int | None = None
    last_ms: int | None = None


class BackfillWriter:
    def __init__(self, station_id: str, volumes: VolumeSet, tz: ZoneInfo, db: Database, node: str,
                 gap_start_ms: int, gap_end_ms: int, stream_start_ms: int, segment_seconds: float = 60.0,
                 previous_volume: str | None = None) -> None:
        if gap_end_ms <= gap_start_ms:
            raise ValueError(f"the gap ends ({gap_end_ms}) before it starts ({gap_start_ms})")
        self.station_id = station_id
        self.volumes = volumes
        self.tz = tz
        self.db = db
        self.node = node
        self.gap_start_ms, self.gap_end_ms = gap_start_ms, gap_end_ms
        self.stream_start_ms = stream_start_ms
        self.segment_ms = int(segment_seconds * 1000)
        self.volume = volumes.place(station_id, previous_volume)

    def write(self, container: av.container.InputContainer) -> BackfillResult:
        """Read the container to its end (or the gap's end) and file what falls inside the gap."""
        result = BackfillResult()
        if not container.streams.video:
            raise ValueError("the camera's recording has no video track")
        video = container.streams.video[0]
        if video.codec_context.name not in SUPPORTED_VIDEO:
            raise ValueError(f"video codec {video.codec_context.name} is not H.264 or H.265")
        tb = time_base(video)
        num, den = tb.numerator, tb.denominator
        max_step = int(MAX_STEP_S * den / num)
        frame = max(1, round(den / (float(video.average_rate or video.guessed_rate or 15) * num)))
        pos = 0  # monotonic media time of the stream, in ticks
        last_dts: int | None = None
        seg: _Backfilled | None = None
        try:
            try:
                for pkt in container.demux(video):
                    if not pkt.size:
                        continue
                    dts = pkt.dts if pkt.dts is not None else pkt.pts
                    if dts is None:
                        continue
                    if last_dts is not None:
                        step = dts - last_dts
                        pos += step if 0 < step <= max_step else frame
                    last_dts = dts
                    wall = self.stream_start_ms + (pos * num * 1000) // den
                    if wall >= self.gap_end_ms:
                        break  # the live recording goes on from here
                    key = pkt.is_keyframe
                    if seg is not None and key and wall - seg.start_ms >= self.segment_ms:
                        self._finish(seg, wall, result)
                        seg = None
                    if seg is None:
                        if not key or wall < self.gap_start_ms:
                            continue  # a segment starts on a keyframe inside the gap
                        seg = self._start(video, wall, pos, pkt)
                    rel = pos - seg.start_pos
                    pts = pkt.pts
                    seg.file.write_video(pkt, rel, rel + pts - pkt.dts if pts is not None and pkt.dts is not None
                                         and pts > pkt.dts else rel)
                    seg.frames += 1
                    seg.keyframes += int(key)
                    seg.last_wall = wall + (frame * num * 1000) // den
            except (av.error.FFmpegError, OSError) as exc:
                # A stream that breaks off (the device, the link): what was read so far is still filed
                # and counted below.
                log.warning("%s: the camera's recording broke off: %s", self.station_id, exc)
        finally:
            if seg is not None:
                self._finish(seg, min(seg.last_wall, self.gap_end_ms), result)
        return result

    def _start(self, video, wall: int, pos: int, pkt: av.Packet) -> _Backfilled:
        start = wall
        while True:
            rel_path = segment_rel_path(self.station_id, start, self.tz, "main")
            final = self.volumes.file_path(self.volume, rel_path)
            try:
                self.volumes.mark(self.volume)
                if final.exists():
                    raise FileExistsError(final)
                # Written under a name crash repair does not take for a segment (a worker starting meanwhile
                # repairs this station's recent files: it would index, even trim, the file being written).
                f = SegmentFile(final.with_name(final.name + PART_SUFFIX), video)
                return _Backfilled(f, rel_path, start, pos, video.codec_context)
            except FileExistsError:
                start += 1  # two segments cannot share a millisecond; never overwrite footage

    def _finish(self, seg: _Backfilled, end_ms: int, result: BackfillResult) -> None:
        end_ms = max(seg.start_ms + 1, min(end_ms, self.gap_end_ms))
        part = seg.file.path
        try:
            size = seg.file.close()  # closed and fsynced before it takes its name and the row says complete
        except OSError:
            part.unlink(missing_ok=True)
            raise
        ctx = seg.codec_context
        with self.db.session() as s:
            # The invariant, checked where it is kept: segments of one camera never overlap. The live
            # recording may have moved the gap's end (or crash repair filed something) since the gap
            # was read; what another segment already covers is not filed twice.
            other = s.execute(select(Segment.start_ms, Segment.end_ms).where(
                Segment.station_id == self.station_id, Segment.stream == "main", Segment.start_ms < end_ms,
                Segment.end_ms > seg.start_ms).order_by(Segment.start_ms).limit(1)).first()
            if other is not None:
                if other[0] <= seg.start_ms:
                    log.warning("%s: backfilled %s overlaps footage already filed: dropped", self.station_id,
                                seg.rel_path)
                    part.unlink(missing_ok=True)
                    return
                end_ms = other[0]  # the media runs past it: the row says where this footage hands over
            final = self.volumes.file_path(self.volume, seg.rel_path)
            try:
                os.link(part, final)  # its name, never over another file; the row commits next
            except FileExistsError:
                log.warning("%s: %s was filed meanwhile: the backfilled segment is dropped", self.station_id,
                            seg.rel_path)
                part.unlink(missing_ok=True)
                return
            part.unlink()
            fsync_dir(final.parent)
            s.add(Segment(station_id=self.station_id, stream="main", node=self.node, volume=self.volume,
                          path=seg.rel_path, start_ms=seg.start_ms, end_ms=end_ms,
                          duration_ms=end_ms - seg.start_ms, bytes=size, codec=ctx.name, width=ctx.width or None,
                          height=ctx.height or None, has_audio=False, state="complete", frames=seg.frames,
                          keyframes=seg.keyframes))
        result.segments += 1
        result.filled_ms += end_ms - seg.start_ms
        result.first_ms = seg.start_ms if result.first_ms is None else result.first_ms
        result.last_ms = end_ms


class _Backfilled:
    def __init__(self, file: SegmentFile, rel_path: str, start_ms: int, start_pos: int, codec_context) -> None:
        self.file = file
        self.rel_path = rel_path
        self.start_ms = start_ms
        self.start_pos = start_pos
        self.codec_context = codec_context
        self.frames = 0
        self.keyframes = 0
        self.last_wall = start_ms


def remove_unfinished(volumes: VolumeSet, tz: ZoneInfo, station_id: str, start_ms: int, end_ms: int) -> int:
    """Remove the `.part` files a backfill of [start_ms, end_ms) left when it was killed; how many."""
    removed = 0
    hour = start_ms - start_ms % 3600_000
    dirs = set()
    while hour <= end_ms:
        dirs.add(segment_rel_path(station_id, hour, tz, "main").rsplit("/", 1)[0])
        hour += 3600_000
    for volume in volumes.volumes:
        if not volumes.is_available(volume):
            continue
        for rel_dir in dirs:
            for path in (volumes.root(volume) / rel_dir).glob("*.mp4" + PART_SUFFIX):
                path.unlink(missing_ok=True)
                removed += 1
    return removed
