"""Turns one camera stream's packets into contiguous segments, and every hole into a gap row.

Time (see docs/design/time.md): within one connection a segment's wall start is anchored on the
receive clock, and everything after it advances by the stream's own timestamps, made monotonic
(a missing, repeated, backwards or huge dts step counts as one frame). Consecutive segments of a
connection are therefore contiguous. Each segment's wall length is its media length slewed toward
the receive clock by at most 0.5 %, so a drifting camera clock never opens a hole or an overlap.
When the receive clock runs more than RESYNC_MS ahead of the footage (a camera clock reset, or the
machine's clock stepped forward), the next segment is re-anchored on it, with a `clock_jump` gap for
the hole. When it runs more than RESYNC_MS behind (the machine's clock stepped back), segments catch
up instead: each one's wall length is half its media length until the footage is back within
RESYNC_MS of the clock. A new segment never starts before the previous one ends, so segments of one
camera never overlap and never have negative length; a divergence is noticed within a status
interval and cuts the segment at the next keyframe.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import av
from sqlalchemy import delete
from sqlalchemy.orm import Session

from vms.core.clock import Clock
from vms.db.models import Segment
from vms.recording.audio import G711, G711ToAac, audio_status
from vms.recording.avtypes import time_base, video_codec
from vms.recording.fmp4 import playable_length, probe_segment
from vms.recording.h26x import HEAD_BYTES, parameter_sets_annexb, sequence_parameter_set
from vms.recording.index import IndexWriter
from vms.recording.layout import segment_rel_path
from vms.recording.repair import trim_and_probe
from vms.recording.segment_file import SegmentFile
from vms.recording.volumes import VolumeSet

log = logging.getLogger(__name__)

SUPPORTED_VIDEO = ("h264", "hevc")
# After a cut, the previous segment stays open for the audio of its last moments, which comes after
# the keyframe that cut it (transcoded audio by the encoder's lag, ~0.26 s; a camera's own audio by
# its packet interleaving), until audio of the new segment comes, or the video has gone this far.
AUDIO_LATE_S = 2.0
# Audio packets kept while no segment is open (about a second of G.711 or AAC).
PREROLL_PACKETS = 64
MAX_SLEW = 0.005
RESYNC_MS = 10_000
CATCH_UP = 2  # while footage runs ahead of the receive clock, its wall time advances at 1/CATCH_UP speed
MAX_STEP_S = 5.0  # a dts step larger than this within one connection is a camera clock jump
# The native copier reports what it copied at each keyframe and at least this often (stream seconds).
# The camera's health is judged from these reports (a frame recorded within stall_seconds, checked
# each second by the watchdog): 2 s was tried, and it left only ~1 s of margin at the 3-4 s stall
# times the tests use, for no CPU gain measurable at 139 cameras (docs/benchmarks-history.md, session 10).
BATCH_SECONDS = 1
# The burst of packets buffered during connect is over well within this much stream time; after it,
# a segment's start is no longer pulled back (and the native copier may take over).
PULLBACK_S = 10.0


@dataclass
class _OpenSegment:
    file: SegmentFile
    volume: str
    rel_path: str
    start_ms: int
    start_pos: int  # stream position (ticks) of its first packet
    audio_base: float  # stream seconds of the first video packet, for aligning audio
    frames: int = 0
    keyframes: int = 0
    first_of_connection: bool = False
    gap_before: int | None = None  # token of the gap this segment ended (reopened if it fails)
    gap_before_reason: str | None = None
    gap_before_start: int = 0
    published_start_ms: int = 0
    catch_up: bool = False  # filed at 1/CATCH_UP wall speed (the receive clock stepped back)
    # Wall ms after the start of stream position rel: (rel * tb_num * 1000 + wall_half) // wall_den.
    tb_num: int = 1
    wall_den: int = 1000
    wall_half: int = 500

    def wall_ms(self, rel: int) -> int:
        return (rel * self.tb_num * 1000 + self.wall_half) // self.wall_den
    audio_next: int = 0  # audio timestamps written must reach this (strictly increasing)
    end_ms: int = 0  # once cut, while it waits for its last audio: its wall end and media length
    media_ms: int = 0
    armed: object = None  # the copier last armed to write into this segment (see StreamRecorder.arm)


def _delete_segment_row(volume: str, path: str) -> Callable[[Session], None]:
    """For the index writer's thread, later: the segment's volume and path bound now."""
    def delete_row(session: Session) -> None:
        session.execute(delete(Segment).where(Segment.volume == volume, Segment.path == path))
    return delete_row


class StreamRecorder:
    """One camera stream. Not thread-safe: driven by its camera session's thread."""

    def __init__(self, station_id: str, volumes: VolumeSet, tz: ZoneInfo, index: IndexWriter, clock: Clock,
                 segment_seconds: float = 60.0, stream: str = "main", last_end_ms: int | None = None,
                 previous_volume: str | None = None, keep_audio: bool = True) -> None:
        self.station_id = station_id
        self.stream = stream
        self.volumes = volumes
        self.tz = tz
        self.index = index
        self.clock = clock
        self.segment_seconds = segment_seconds
        self.volume = volumes.place(station_id, previous_volume)
        self.last_end_ms = last_end_ms  # wall end of the newest footage of this stream
        self._gap_token: int | None = None
        self._gap_reason: str | None = None
        self._gap_detail: str | None = None  # as last written to the open gap's row (None: not known)
        self._gap_start = 0
        self._seg: _OpenSegment | None = None
        self._video: av.video.stream.VideoStream | None = None
        # The segments' audio: the camera's stream (copied), its transcoder (G.711), or None.
        self._audio: av.audio.stream.AudioStream | G711ToAac | None = None
        self._transcoder: G711ToAac | None = None
        self.keep_audio = keep_audio
        self.audio_status: str | None = None  # for the camera status, see audio.audio_status
        self._tail: _OpenSegment | None = None  # the segment before a cut, still taking its audio
        self._audio_ticks_per_second = 1.0
        self._needs_parameter_sets = False
        self._preroll: deque[av.Packet] = deque(maxlen=PREROLL_PACKETS)  # audio while no segment is open
        self._tb_num, self._tb_den = 1, 90000
        self._segment_ticks = int(segment_seconds * 90000)
        self._max_step_ticks = int(MAX_STEP_S * 90000)
        self._pullback_ticks = int(PULLBACK_S * 90000)
        self._second_ticks = 90000
        self._pos = 0
        self._last_dts: int | None = None
        self._frame_ticks = 0
        self._force_cut = False
        self._video_parameters: dict | None = None
        self._disk_retry_at = 0.0
        self._catching_up = False
        # Segments a write error left on a volume that could not be written then: (segment, the end its
        # row was given, or None if it has no row).
        self._unfinished: list[tuple[_OpenSegment, int | None]] = []
        self.segments_written = 0
        self.bytes_written = 0

    # --- gaps ---
    def note_failure(self, reason: str, detail: str | None = None) -> None:
        """Footage is not flowing, for this reason: open (or re-reason) the current gap."""
        now = self.clock.now_ms()
        if reason == "stalled" and self._gap_reason == "disk_error" and self._gap_token is not None:
            # A recorder that cannot write looks stalled to the watchdog (no footage reaches the disk),
            # which may reconnect the camera: the disk is still why footage is missing.
            return
        if self._gap_token is not None and self._gap_reason == reason:
            # A camera that keeps failing the same way (every few seconds through a long outage)
            # writes nothing more.
            if detail and detail != self._gap_detail:
                self.index.update_gap(self._gap_token, detail=detail)
                self._gap_detail = detail
            return
        if self._gap_token is not None:
            # The reason changed: the old gap ends now and the new one starts there.
            start = max(now, self._gap_start)
            self.index.close_gap(self._gap_token, start)
        else:
            # A gap starts where footage ends (which the slew may put a few ms after `now`).
            start = self.last_end_ms if self.last_end_ms is not None else now
        self._gap_token = self.index.open_gap(self.station_id, start, reason, detail, self.stream)
        self._gap_reason = reason
        self._gap_detail = detail
        self._gap_start = start

    def start_run(self, open_gap: tuple[int, str, int] | None, unclean_reason: str = "ingest_stopped",
                  unclean_detail: str = "the previous run ended without a clean stop") -> None:
        """At ingest start: continue the gap a clean shutdown (or a hung worker) left open (id, reason,
        start), or explain the hole a killed run left, so that the time until the first new segment is
        never bare."""
        self._gap_detail = None
        if open_gap is not None:
            self._gap_token = self.index.adopt_row(open_gap[0])
            self._gap_reason = open_gap[1]
            self._gap_start = open_gap[2]
            if self.last_end_ms is not None and self._gap_start != self.last_end_ms:
                # Opened by a watcher (an ingest_hung gap) at the last frame it saw, while crash repair
                # kept footage up to the last whole fragment: the gap starts where the footage ends,
                # leaving neither a bare hole nor an overlap.
                self._gap_start = self.last_end_ms
                self.index.update_gap(self._gap_token, start_ms=self._gap_start)
        elif self.last_end_ms is not None:
            self._gap_token = self.index.open_gap(self.station_id, self.last_end_ms, unclean_reason,
                                                  unclean_detail, self.stream)
            self._gap_reason = unclean_reason
            self._gap_start = self.last_end_ms

    def _close_gap(self, at_ms: int) -> int | None:
        """End the open gap where footage starts again; returns its token so the end can follow the
        segment's start if that is pulled back (see video_packet)."""
        token = self._gap_token
        if token is not None:
            self.index.close_gap(token, at_ms)
            self._gap_token = self._gap_reason = self._gap_detail = None
        return token

    # --- connection ---
    def begin(self, video: av.video.stream.VideoStream, audio: av.audio.stream.AudioStream | None) -> None:
        codec = video.codec_context.name
        if codec not in SUPPORTED_VIDEO:
            raise ValueError(f"unsupported video codec {codec}")
        self._video = video
        # fMP4 writes its header before the first packet: parameter sets the camera sends only in-band
        # (none in the SDP) are taken from each segment's first keyframe (_start_segment).
        self._needs_parameter_sets = sequence_parameter_set(video.codec_context.extradata or b"", codec) is None
        self._open_audio(audio)
        self._preroll.clear()
        # Integer arithmetic per packet (Fractions cost more than the mux itself).
        tb = time_base(video)
        self._tb_num, self._tb_den = tb.numerator, tb.denominator
        rate = video.average_rate or video.guessed_rate or 15
        self._frame_ticks = max(1, round(self._tb_den / (float(rate) * self._tb_num)))
        self._segment_ticks = int(self.segment_seconds * self._tb_den / self._tb_num)
        self._max_step_ticks = int(MAX_STEP_S * self._tb_den / self._tb_num)
        self._pullback_ticks = int(PULLBACK_S * self._tb_den / self._tb_num)
        self._second_ticks = max(1, self._tb_den // self._tb_num)
        self._video_parameters = None
        self._pos = 0
        self._last_dts = None

    def _open_audio(self, audio: av.audio.stream.AudioStream | None) -> None:
        self._audio = self._transcoder = None
        if audio is None:
            self.audio_status = audio_status(None, self.keep_audio)
            return
        acodec = audio.codec_context.name
        status = self.audio_status = audio_status(acodec, self.keep_audio)
        tb = time_base(audio)
        self._audio_ticks_per_second = tb.denominator / tb.numerator
        if status.startswith("dropped"):
            why = "ingest.audio is drop" if not self.keep_audio else "MP4 cannot hold it"
            log.info("%s: audio %s is not recorded (%s); recording video only", self.station_id, acodec, why)
            return
        if acodec in G711:
            try:
                self._transcoder = G711ToAac(audio)
            except (ValueError, av.error.FFmpegError) as exc:
                log.warning("%s: cannot transcode %s audio to AAC (%s); recording video only",
                            self.station_id, acodec, exc)
                self.audio_status = f"dropped: {acodec}"
                return
            self._audio = self._transcoder
            self._audio_ticks_per_second = self._transcoder.rate  # its packets' time base: 1/rate
        else:
            self._audio = audio

    def _ticks_to_ms(self, ticks: int) -> int:
        return (ticks * self._tb_num * 1000 + self._tb_den // 2) // self._tb_den

    def video_packet(self, pkt: av.Packet) -> int | None:
        """Record one video packet; returns its wall time in ms, or None if it was not recorded
        (no timestamp yet, or waiting for the first keyframe). Runs for every packet: each packet
        attribute is read once and the common case makes no Python call."""
        dts = pkt.dts
        pts = pkt.pts
        if dts is None:
            if pts is None:
                return None  # the first packet after connect can lack both
            dts = pts
        last = self._last_dts
        self._last_dts = dts
        if last is None:
            step = 0
        else:
            step = dts - last
            if step <= 0 or step > self._max_step_ticks:
                step = self._frame_ticks
        pos = self._pos = self._pos + step
        key = pkt.is_keyframe

        seg = self._seg
        if seg is None:
            if not key:
                return None
            if self.clock.monotonic() < self._disk_retry_at:
                return None
            seg = self._start_segment(pkt)
            if seg is None:
                return None
        elif key and (self._force_cut or pos - seg.start_pos >= self._segment_ticks):
            self._force_cut = False
            seg = self._cut(seg, pkt)
            if seg is None:
                return None

        rel = pos - seg.start_pos
        if seg.first_of_connection:
            if rel < self._pullback_ticks:
                # Packets buffered during connect arrive in a burst: no packet can be captured after
                # it was received, so pull the start back to the earliest receive-time bound.
                bound = self.clock.now_ms() - self._ticks_to_ms(rel)
                floor = self.last_end_ms if self.last_end_ms is not None else bound
                if seg.gap_before is not None:
                    floor = max(floor, seg.gap_before_start)  # never before the gap it ends starts
                if bound < seg.start_ms and bound >= floor:
                    seg.start_ms = bound
            else:
                seg.first_of_connection = False
        f = seg.file
        pkt.stream = f.video_stream
        pkt.dts = rel
        pkt.pts = rel + pts - dts if pts is not None and pts > dts else rel
        try:
            f.mux(pkt)
        except OSError as exc:
            self._disk_failure(exc)
            return None
        seg.frames += 1
        if key:
            seg.keyframes += 1
        return seg.start_ms + (rel * self._tb_num * 1000 + seg.wall_half) // seg.wall_den

    def audio_packet(self, pkt: av.Packet) -> None:
        """Record one packet of the camera's audio (copied, or transcoded to AAC) in the segment its
        time falls in, aligned on the segment's first video packet (`audio_base`)."""
        if self._audio is None:
            return
        seg = self._seg or self._tail
        if seg is None:
            # No segment yet: a camera's audio often comes before the video of the same moment, so
            # the first segment may want what came just before its first keyframe.
            self._preroll.append(pkt)
            if self._transcoder is not None:
                self._transcoder.reset()  # start again, aligned, with the next segment
            return
        if self._preroll:
            early, self._preroll = list(self._preroll), deque(maxlen=PREROLL_PACKETS)
            for p in early:
                self._record_audio(p, seg)
        self._record_audio(pkt, seg)

    def _record_audio(self, pkt: av.Packet, seg: _OpenSegment) -> None:
        transcoder = self._transcoder
        if transcoder is None:
            self._write_audio(pkt)
            return
        try:
            # A new encoding starts at the segment's first frame: no audio before the video.
            encoded = transcoder.push(pkt, not_before=round(seg.audio_base * transcoder.rate))
        except (av.error.FFmpegError, ValueError) as exc:
            # The audio must not cost the video: start the encoding again with the next packet.
            log.debug("%s: audio packet dropped: %s", self.station_id, exc)
            transcoder.reset()
            return
        for out in encoded:
            self._write_audio(out)

    def _write_audio(self, pkt: av.Packet) -> None:
        dts = pkt.dts if pkt.dts is not None else pkt.pts
        if dts is None:
            return
        # In the audio's own time base (integers: no Fraction per packet).
        per_second = self._audio_ticks_per_second
        seg = self._seg
        if seg is not None and dts >= (base := round(seg.audio_base * per_second)):
            if self._tail is not None:
                self._close_tail()  # the audio has passed the cut: the segment before is complete
        else:
            seg = self._tail  # the last moments of the segment before the cut
            if seg is None or dts < (base := round(seg.audio_base * per_second)):
                return  # before the first frame of any segment open
        ts = dts - base
        if ts < seg.audio_next:
            return  # not after what the segment already has (a repeat, or a restarted encoder's priming)
        pts = ts + max(0, (pkt.pts if pkt.pts is not None else dts) - dts)
        try:
            seg.file.write_audio(pkt, ts, pts)
        except OSError as exc:
            self._disk_failure(exc)
            return
        except (av.error.FFmpegError, ValueError) as exc:
            # A bad audio timestamp must not cost the video: drop the packet.
            log.debug("%s: audio packet dropped: %s", self.station_id, exc)
            return
        seg.audio_next = ts + 1

    # --- the native copier (native_copy.pyx, driven by copier.py) ---
    def arm(self, copier) -> None:
        """Before each pump: let the copier continue the open segment's timeline, or make it hand
        every packet over when there is none (or its start may still move)."""
        seg = self._seg
        if seg is None or seg.first_of_connection or not seg.frames:
            copier.disarm()
            return
        if copier.armed and copier.pos == self._pos and copier.last_dts == self._last_dts and seg.armed is copier:
            # Still armed for this segment, and no packet went through Python since: the arguments
            # would be the same (the steps and tick lengths are the connection's). Arming builds a
            # Fraction and reads a dozen attributes, before each of ~1.5 pumps a second per camera.
            return
        copier.arm(seg.file.container, seg.file.video_stream, seg.start_pos, self._pos, self._last_dts,
                   self._max_step_ticks, self._frame_ticks, BATCH_SECONDS * self._second_ticks)
        seg.armed = copier

    def absorb(self, copier) -> tuple[int, int]:
        """After a pump that copied packets: take the timeline back; returns the wall ms of the first
        and the last packet copied."""
        self._pos = copier.pos
        self._last_dts = copier.last_dts
        seg = self._seg
        assert seg is not None, "the copier copies only into an open segment (see arm)"
        seg.frames += copier.copied
        start, to_ms = seg.start_ms, seg.wall_ms
        return start + to_ms(copier.first_rel), start + to_ms(copier.last_rel)

    def kept(self, copier) -> list:
        """The packets the copier kept (all of the open segment: it drops them at each keyframe, and
        segments start at keyframes) with their wall ms, as video_packet returns it; none if the
        segment is gone (a disk failure closed it)."""
        kept = copier.kept()
        seg = self._seg
        if seg is None:
            return []
        start, to_ms = seg.start_ms, seg.wall_ms
        return [(pkt, start + to_ms(rel)) for pkt, rel in kept]

    def copy_failed(self, copier) -> None:
        """The copier could not mux a packet: as a failed mux in video_packet, which has already
        counted the packet in the timeline (absorb() has not run if it was the pump's first)."""
        self._pos = copier.pos
        self._last_dts = copier.last_dts
        try:
            av.error.err_check(copier.write_error)
        except OSError as exc:
            self._disk_failure(exc)

    def _start_segment(self, pkt: av.Packet, start_ms: int | None = None, first: bool = True,
                       catch_up: bool = False) -> _OpenSegment | None:
        if start_ms is None:
            now = self.clock.now_ms()
            start_ms = now if self.last_end_ms is None else max(now, self.last_end_ms)
            if self._gap_token is not None:
                start_ms = max(start_ms, self._gap_start)
            # Footage already filed ahead of the clock (it stepped back): never before its end.
            catch_up = start_ms - now > RESYNC_MS
        video = self._video
        assert video is not None, "packets come only after begin()"
        first_ts = pkt.dts if pkt.dts is not None else pkt.pts
        assert first_ts is not None, "video_packet records no packet without a timestamp"
        parameters = self._video_parameters
        if parameters is None and self._needs_parameter_sets:
            in_band = parameter_sets_annexb(bytes(memoryview(pkt)[:HEAD_BYTES]), video.codec_context.name)
            if in_band:
                parameters = {"extradata": in_band}
        while True:
            rel_path = segment_rel_path(self.station_id, start_ms, self.tz, self.stream)
            try:
                self.volumes.mark(self.volume)
                f = SegmentFile(self.volumes.file_path(self.volume, rel_path), video, self._audio,
                                parameters)
                break
            except FileExistsError:
                start_ms += 1  # two segments cannot share a millisecond; never overwrite footage
            except OSError as exc:
                self._disk_failure(exc)  # the open gap stays open (or becomes a disk_error gap)
                return None
        if self._unfinished:
            self._finish_unfinished()
        # Only now that footage is on its way does the gap before it end.
        gap_token, gap_reason, gap_start = self._gap_token, self._gap_reason, self._gap_start
        self._close_gap(start_ms)
        wall_den = self._tb_den * (CATCH_UP if catch_up else 1)
        vctx = video.codec_context
        width, height = vctx.width or None, vctx.height or None
        if self._video_parameters:
            width, height = self._video_parameters["width"], self._video_parameters["height"]
        self._seg = _OpenSegment(f, self.volume, rel_path, start_ms, self._pos,
                                 audio_base=float(first_ts * time_base(pkt)),
                                 first_of_connection=first, gap_before=gap_token, gap_before_reason=gap_reason,
                                 gap_before_start=gap_start, published_start_ms=start_ms, catch_up=catch_up,
                                 tb_num=self._tb_num, wall_den=wall_den, wall_half=wall_den // 2)
        if catch_up != self._catching_up:
            self._catching_up = catch_up
            if catch_up:
                log.warning("%s: footage runs %.0f s ahead of the clock (it stepped back?): filed at 1/%d speed "
                            "until it is within %d s", self.station_id, (start_ms - self.clock.now_ms()) / 1000,
                            CATCH_UP, RESYNC_MS // 1000)
            else:
                log.warning("%s: footage caught up with the clock", self.station_id)
        self.index.open_segment(
            station_id=self.station_id, stream=self.stream, volume=self.volume, path=rel_path,
            start_ms=start_ms, end_ms=start_ms, duration_ms=0, bytes=0, codec=vctx.name,
            width=width, height=height, has_audio=self._audio is not None,
            state="growing",
        )
        return self._seg

    def _publish_start(self, seg: _OpenSegment) -> None:
        if seg.start_ms != seg.published_start_ms:
            seg.published_start_ms = seg.start_ms
            if seg.gap_before is not None:
                self.index.close_gap(seg.gap_before, seg.start_ms)

    def _finish(self, seg: _OpenSegment, media_ticks: int, clean: bool = True, audio_follows: bool = False) -> int:
        """Close, fsync, then index as complete. Returns the segment's wall end. With audio_follows
        (a cut, while audio is recorded) the file stays open for the audio of its last moments, which
        comes after the keyframe that cut it, and is closed by _close_tail."""
        self._seg = None
        self._publish_start(seg)
        media_ms = self._ticks_to_ms(media_ticks)
        expected_end = seg.start_ms + media_ms
        now = self.clock.now_ms()
        err = now - expected_end
        if seg.catch_up:
            # Filed at 1/CATCH_UP speed, as its packets' wall times said; it may end later, up to where
            # the clock is (the footage has caught up), never shorter.
            end_ms = max(seg.start_ms + seg.wall_ms(media_ticks), min(now, expected_end))
        elif err < -RESYNC_MS:
            # The footage runs far ahead of the receive clock (the clock stepped back): this segment
            # keeps the wall times its packets were given; the next ones catch up (_cut).
            end_ms = expected_end
        elif err > RESYNC_MS:
            end_ms = expected_end  # far behind: _cut re-anchors the next segment with a clock_jump gap
        else:
            end_ms = max(seg.start_ms, round(expected_end + max(-MAX_SLEW * media_ms, min(MAX_SLEW * media_ms, err))))
        if self._tail is not None:
            self._close_tail()
        if audio_follows and clean:
            seg.end_ms, seg.media_ms = end_ms, media_ms
            self._tail = seg
            self.last_end_ms = end_ms
            # Its row already shows where it ends (the next one starts there).
            self.index.update_segment(seg.volume, seg.rel_path, start_ms=seg.start_ms, end_ms=end_ms,
                                      duration_ms=media_ms, bytes=seg.file.size(), frames=seg.frames,
                                      keyframes=seg.keyframes)
            return end_ms
        return self._close(seg, end_ms, media_ms, clean)

    def _close_tail(self) -> None:
        seg, self._tail = self._tail, None
        if seg is not None:
            self._close(seg, seg.end_ms, seg.media_ms, clean=True, latest=False)

    def _close(self, seg: _OpenSegment, end_ms: int, media_ms: int, clean: bool, latest: bool = True) -> int:
        """The second half of _finish. `latest`: no segment has started after this one (else the
        footage after it is not this segment's to describe)."""
        try:
            if not clean:
                raise OSError("segment abandoned after a write error")
            size = seg.file.close()
        except Exception as exc:  # noqa: BLE001 - any failure: keep what reached the disk, measured
            log.error("%s: closing %s failed: %s", self.station_id, seg.rel_path, exc)
            return self._keep_what_reached_disk(seg, durable=seg.file.abandon(), latest=latest, cut_end=end_ms)
        self.index.update_segment(seg.volume, seg.rel_path, start_ms=seg.start_ms, end_ms=end_ms,
                                  duration_ms=media_ms, bytes=size, frames=seg.frames,
                                  keyframes=seg.keyframes, state="complete")
        self.segments_written += 1
        self.bytes_written += size
        if latest:
            self.last_end_ms = end_ms
        return end_ms

    def _keep_what_reached_disk(self, seg: _OpenSegment, durable: bool, latest: bool = True,
                                cut_end: int | None = None) -> int:
        """After a failed write: index the playable part of the segment as complete, or remove it if
        there is none. On a volume that cannot be written now (read-only after a disk error: the torn
        tail cannot be cut off, and what was not fsynced may never reach the disk), the playable part
        is measured without writing and indexed as still `growing`, never complete; it is finished once
        the volume takes a new segment again (or by crash repair), and what did not survive becomes a
        disk_error gap then. `latest` False: a segment already cut (kept open for its last audio), whose
        successor starts at `cut_end`: what it loses becomes a closed disk_error gap up to there, and
        where footage ends is not its to move. Returns where footage ends."""
        path = seg.file.path
        parked = not durable
        try:
            if parked:
                raise OSError("its data could not be synced to the disk")
            probe = trim_and_probe(path) if path.exists() else None
            if probe is None:
                path.unlink(missing_ok=True)
            size = path.stat().st_size if probe is not None else 0
        except OSError as exc:
            log.error("%s: cannot finish %s now (%s); it is finished when the volume can be written again",
                      self.station_id, seg.rel_path, exc)
            parked = True
            try:
                size = playable_length(path)
                probe = probe_segment(path, size) if size else None
            except Exception as probe_exc:  # noqa: BLE001 - unreadable too: nothing is indexed as playable
                log.error("%s: cannot read %s: %s", self.station_id, seg.rel_path, probe_exc)
                probe = None
            if probe is not None and probe.frames == 0:
                probe = None
            self._unfinished.append((seg, seg.start_ms + probe.duration_ms if probe is not None else None))
        if probe is None:
            self.index.call(_delete_segment_row(seg.volume, seg.rel_path))
            if not latest:
                # Cut before it failed: the next segment already starts at its end.
                if cut_end is not None and cut_end > seg.start_ms:
                    self.index.add_closed_gap(self.station_id, seg.start_ms, cut_end, "disk_error",
                                              "closing the segment failed", self.stream)
            elif seg.gap_before is not None:
                # Nothing was recorded after all: the gap this segment ended goes on.
                self.index.update_gap(seg.gap_before, end_ms=None)
                self._gap_token, self._gap_reason = seg.gap_before, seg.gap_before_reason
                self._gap_detail = None
                self._gap_start = seg.gap_before_start
            return self.last_end_ms if self.last_end_ms is not None else seg.start_ms
        end_ms = seg.start_ms + probe.duration_ms
        self.index.update_segment(seg.volume, seg.rel_path, start_ms=seg.start_ms, end_ms=end_ms,
                                  duration_ms=probe.duration_ms, bytes=size, frames=probe.frames,
                                  keyframes=probe.keyframes, state="growing" if parked else "complete")
        if not parked:
            self.segments_written += 1
            self.bytes_written += size
            if not latest and cut_end is not None and end_ms < cut_end:
                self.index.add_closed_gap(self.station_id, end_ms, cut_end, "disk_error",
                                          "closing the segment failed", self.stream)
        if latest:
            self.last_end_ms = end_ms
        return end_ms

    def _finish_unfinished(self) -> None:
        """The volume takes files again: finish the segments a write error left on it, from what is
        really on the disk now."""
        waiting, self._unfinished = self._unfinished, []
        for seg, indexed_end in waiting:
            path = seg.file.path
            try:
                probe = trim_and_probe(path) if path.exists() else None
                if probe is None:
                    path.unlink(missing_ok=True)
            except OSError as exc:
                log.error("%s: still cannot finish %s: %s", self.station_id, seg.rel_path, exc)
                self._unfinished.append((seg, indexed_end))
                continue
            if indexed_end is None:
                if probe is not None:  # unreadable then, readable now: `vms recordings check --repair` indexes it
                    log.warning("%s: %s is readable again but not indexed", self.station_id, seg.rel_path)
                continue
            kept_end = seg.start_ms + (probe.duration_ms if probe is not None else 0)
            if probe is None:
                self.index.call(_delete_segment_row(seg.volume, seg.rel_path))
            else:
                size = path.stat().st_size
                self.index.update_segment(seg.volume, seg.rel_path, start_ms=seg.start_ms, end_ms=kept_end,
                                          duration_ms=probe.duration_ms, bytes=size, frames=probe.frames,
                                          keyframes=probe.keyframes, state="complete")
                self.segments_written += 1
                self.bytes_written += size
            if kept_end < indexed_end:
                # What the page cache showed after the error never reached the disk.
                self.index.add_closed_gap(self.station_id, kept_end, indexed_end, "disk_error",
                                          "footage written just before the volume failed did not survive it",
                                          self.stream)
            log.warning("%s: finished %s after the volume failed: %.1f s kept of %.1f s", self.station_id,
                        seg.rel_path, (kept_end - seg.start_ms) / 1000, (indexed_end - seg.start_ms) / 1000)

    def _cut(self, seg: _OpenSegment, pkt: av.Packet) -> _OpenSegment | None:
        end_ms = self._finish(seg, self._pos - seg.start_pos, audio_follows=self._audio is not None)
        now = self.clock.now_ms()
        start_ms = end_ms
        if now - end_ms > RESYNC_MS:
            # The stream's clock fell far behind the receive clock (a camera clock reset, or the machine's
            # clock stepped forward): re-anchor.
            self.index.add_closed_gap(self.station_id, end_ms, now, "clock_jump",
                                      f"stream time {round((now - end_ms) / 1000)} s behind the receive clock",
                                      self.stream)
            start_ms = now
        return self._start_segment(pkt, start_ms, first=False, catch_up=end_ms - now > RESYNC_MS)

    def change_parameters(self, keyframe: av.Packet) -> tuple[int, int]:
        """The camera changed resolution (new SPS) at this keyframe: later segments of this
        connection carry the new parameters. Returns the new (width, height)."""
        assert self._video is not None, "packets come only after begin()"
        codec = self._video.codec_context.name
        data = bytes(keyframe)
        decoder = video_codec(codec, "r")
        frames = decoder.decode(av.Packet(data))
        if not frames:
            raise ValueError("the keyframe with new parameters does not decode")
        self._video_parameters = {"width": frames[0].width, "height": frames[0].height,
                                  "extradata": parameter_sets_annexb(data, codec)}
        if self._seg is not None:
            self._force_cut = True
        return frames[0].width, frames[0].height

    def progress(self) -> None:
        """Publish the growing segment's extent (called every few seconds)."""
        seg = self._seg
        if self._tail is not None and (seg is None or self._pos - seg.start_pos > AUDIO_LATE_S * self._second_ticks):
            self._close_tail()  # the audio that the segment before was waiting for is not coming
        if seg is None:
            return
        self._publish_start(seg)
        media_ticks = self._pos - seg.start_pos
        wall_end = seg.start_ms + seg.wall_ms(media_ticks)
        self.index.update_segment(seg.volume, seg.rel_path, start_ms=seg.start_ms, end_ms=wall_end,
                                  duration_ms=self._ticks_to_ms(media_ticks), bytes=seg.file.size(),
                                  frames=seg.frames, keyframes=seg.keyframes)
        # The receive clock is read here, not per packet: if it stepped (NTP) or the stream stopped
        # advancing, cut at the next keyframe, where _cut re-anchors or starts catching up.
        off = self.clock.now_ms() - wall_end
        if off > RESYNC_MS or (off < -RESYNC_MS and not seg.catch_up and not seg.first_of_connection):
            self._force_cut = True

    def end(self, reason: str, detail: str | None = None) -> None:
        """The connection is over: finish the open segment and open a gap with the reason."""
        if self._transcoder is not None:
            # The audio taken but not yet encoded (up to two AAC frames, 0.26 s) is not lost.
            try:
                for pkt in self._transcoder.flush():
                    self._write_audio(pkt)
            except (av.error.FFmpegError, ValueError) as exc:
                log.warning("%s: the audio encoder failed at the end: %s", self.station_id, exc)
        self._close_tail()
        if self._seg is not None:
            self._finish(self._seg, self._pos - self._seg.start_pos + self._frame_ticks)
        self.note_failure(reason, detail)

    def stop(self) -> None:
        """Ingest is stopping: finish the segment; the gap stays open until a later run records."""
        self.end("ingest_stopped", "ingest stopped")

    def _disk_failure(self, exc: OSError) -> None:
        log.error("%s: cannot write footage on volume %s: %s", self.station_id, self.volume, exc)
        if self._seg is not None:
            seg = self._seg
            self._finish(seg, max(0, self._pos - seg.start_pos), clean=False)
        self._close_tail()
        self._disk_retry_at = self.clock.monotonic() + 5.0
        self.note_failure("disk_error", str(exc))

    def check_volume(self) -> bool:
        """Called when nothing has been recorded for a while: if the volume cannot take footage (read-only,
        full, or its disk gone), record it as the disk error it is (FFmpeg may not have reported a failed
        write yet) and return True; False if the volume looks writable (the camera is at fault)."""
        if self._gap_reason == "disk_error":
            return True
        root = self.volumes.root(self.volume)
        try:
            if not self.volumes.is_available(self.volume):
                raise OSError(errno.ENOENT, "the volume's marker is gone (disk unmounted?)", str(root))
            st = os.statvfs(root)
            if st.f_flag & os.ST_RDONLY:
                raise OSError(errno.EROFS, "the volume is read-only", str(root))
            if st.f_bavail * st.f_frsize < 1024 * 1024:
                raise OSError(errno.ENOSPC, "no space left on the volume", str(root))
        except OSError as exc:
            self._disk_failure(exc)
            return True
        return False

    def footage_bytes(self) -> int:
        """Bytes of footage this recorder got onto the disk, as the filesystem says: what its finished
        segments hold plus the open segment's file size. Any thread may call it: it is the watchdog's
        evidence that footage really reaches the disk (frames muxed into a buffer on a full disk do not).
        `bytes_written` is read before `_seg`: a segment finishing in between is then counted once or
        not at all (never twice), so the figure may dip but never jumps ahead."""
        finished = self.bytes_written
        seg = self._seg
        if seg is None:
            return finished
        try:
            return finished + os.stat(seg.file.path).st_size
        except OSError:
            return finished

    @property
    def gap_open(self) -> bool:
        """A gap is open: footage is not flowing, for a reason already recorded."""
        return self._gap_token is not None

    @property
    def gap_reason(self) -> str | None:
        """The open gap's reason (e.g. disk_error), if one is open."""
        return self._gap_reason

    @property
    def recording(self) -> bool:
        return self._seg is not None

    @property
    def records_audio(self) -> bool:
        """The connection's audio goes into the segments (set by begin())."""
        return self._audio is not None
