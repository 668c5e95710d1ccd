"""Gaps filled from the camera's own recording, once its link is back (GB/T 28181 RecordInfo + Download).

A village camera keeps recording on its SD card while its 4G link is down; when the link is back the
hole in the county's copy can be filled from there, which no NVR in the comparison does. Every
`backfill_scan_seconds` this service looks for closed gaps of GB cameras whose reason is a link outage,
asks the camera what its card holds of each (RecordInfo), fetches those pieces (INVITE `s=Download`,
`t=` in Unix seconds) through a media receiver of its own, and files them with the backfill writer
(vms.recording.backfill) inside the gap. The gap row keeps its reason and says it was filled, how much,
and from where. One backfill at a time for the whole server (the uplink of a village point is small, and
the live streams come first), each at the device's download speed `a=downloadspeed`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid

import av
from sqlalchemy import or_, select

from vms.core.settings import Settings
from vms.db.engine import Database
from vms.db.models import Gap, GbChannel, Segment, Station
from vms.gb28181.media import MediaReceiver, Transport, expected_ssrc, make_media_pipe
from vms.gb28181.server import GbServer, LocalOwner
from vms.gb28181.source import PROBE_OPTIONS
from vms.recording.backfill import BackfillWriter, remove_unfinished
from vms.recording.volumes import VolumeSet

log = logging.getLogger(__name__)

# A gap of these reasons is a link outage the camera may have recorded through (its card); a camera
# that was off, covered or misconfigured has nothing to give. bad_stream: the stream came back broken
# (seen when media resumed mid-stream after an outage on a loaded machine); the card's copy is whole.
LINK_REASONS = ("keepalive_lost", "unregistered", "no_media", "invite_timeout", "device_bye", "stalled",
                "stream_ended", "bad_stream", "gb28181_unavailable", "ingest_stopped", "ingest_hung", "unreachable",
                "timeout")
MIN_GAP_MS = 2000
# A gap is "filled" when the card gave this share of it, or all but SLACK_MS (a piece starts on the first
# keyframe inside the gap: up to a GOP of each piece's start is not filed, the live footage has it).
FILLED_SHARE = 0.9
SLACK_MS = 5000
DRAIN_QUIET_S = 1.0
DRAIN_MAX_S = 15.0


def _camera_url(session, station_id: str) -> str | None:
    url = session.scalar(select(Station.main_url).where(Station.id == station_id))
    if url and url.startswith("gb28181://"):
        return url
    row = session.execute(select(GbChannel.device_id, GbChannel.channel_id)
                          .where(GbChannel.station_id == station_id)).first()
    return f"gb28181://{row[0]}/{row[1]}" if row else None


class BackfillService:
    def __init__(self, settings: Settings, database: Database, server: GbServer) -> None:
        self.settings = settings
        self.cfg = settings.gb28181
        self.db = database
        self.server = server
        self.volumes = VolumeSet.from_settings(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gb28181-backfill", daemon=True)
        self.filled = 0  # gaps handled (tests, metrics)

    def start(self) -> BackfillService:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        self._reset_running()
        while not self._stop.wait(self.cfg.backfill_scan_seconds):
            try:
                for gap_id in self.candidates():
                    if self._stop.is_set():
                        return
                    self.fill(gap_id)
            except Exception:  # noqa: BLE001 - the next scan tries again
                log.exception("gb28181 backfill: scan failed")

    def _reset_running(self) -> None:
        """A backfill the previous run did not finish: with nothing filed yet it is tried again; with
        segments filed it stays as it is (partial): a second pass would file the same time twice."""
        with self.db.session() as s:
            for gap in s.execute(select(Gap).where(Gap.backfill == "running")).scalars():
                # The segment it was writing is in a `.part` file no one will finish.
                remove_unfinished(self.volumes, self.settings.tz, gap.station_id, gap.start_ms,
                                  gap.end_ms or gap.start_ms)
                filed = s.execute(select(Segment.start_ms, Segment.end_ms).where(
                    Segment.station_id == gap.station_id, Segment.start_ms >= gap.start_ms,
                    Segment.end_ms <= (gap.end_ms or gap.start_ms))).all()
                if filed:
                    gap.backfill, gap.filled_by = "partial", "camera_card"
                    gap.filled_ms = sum(b - a for a, b in filed)
                    gap.backfill_detail = "interrupted by a restart"
                else:
                    gap.backfill = None

    def candidates(self) -> list[int]:
        now_ms = int(time.time() * 1000)
        oldest = now_ms - int(self.cfg.backfill_max_age_hours * 3600_000)
        with self.db.session() as s:
            gb_stations = set(s.scalars(select(Station.id).where(or_(
                Station.main_url.like("gb28181://%"), Station.id.in_(
                    select(GbChannel.station_id).where(GbChannel.station_id.is_not(None)))))))
            rows = s.execute(select(Gap.id, Gap.station_id).where(
                Gap.end_ms.is_not(None), Gap.backfill.is_(None), Gap.stream == "main",
                Gap.reason.in_(LINK_REASONS), Gap.end_ms >= oldest, Gap.end_ms - Gap.start_ms >= MIN_GAP_MS,
                Gap.end_ms <= now_ms - int(self.cfg.backfill_delay_seconds * 1000))
                .order_by(Gap.end_ms.desc()).limit(50)).all()
            out = []
            for gap_id, sid in rows:
                if sid not in gb_stations:
                    continue
                # Only once the link is back: live footage after the whole outage (a long outage is a
                # row per reason, closed one after another while the link is still down).
                gap_end = s.scalar(select(Gap.end_ms).where(Gap.id == gap_id)) or 0
                # A complete segment: the first one of a connection may still pull its start (and the
                # gap's end) back while it is growing (recorder.py, PULLBACK_S).
                back = s.scalar(select(Segment.id).where(Segment.station_id == sid, Segment.stream == "main",
                                                         Segment.state == "complete", Segment.start_ms >= gap_end)
                                .limit(1))
                still_open = s.scalar(select(Gap.id).where(Gap.station_id == sid, Gap.end_ms.is_(None),
                                                           Gap.start_ms >= gap_end).limit(1))
                if back is not None and still_open is None:
                    out.append(gap_id)
        return out

    def _mark(self, gap_id: int, **values) -> None:
        with self.db.session() as s:
            gap = s.get(Gap, gap_id)
            if gap is not None:
                for key, value in values.items():
                    setattr(gap, key, value)

    def fill(self, gap_id: int) -> str:
        """Fill one gap as far as the camera's card allows; returns the gap's backfill state."""
        with self.db.session() as s:
            gap = s.get(Gap, gap_id)
            if gap is None or gap.end_ms is None:
                return "gone"
            station_id, start_ms, end_ms = gap.station_id, gap.start_ms, gap.end_ms
            url = _camera_url(s, station_id)
            gap.backfill = "running"
        if url is None:
            self._mark(gap_id, backfill="none", backfill_detail="the station's camera is not a GB28181 camera")
            return "none"
        device_id, _, channel_id = url[len("gb28181://"):].partition("/")
        start_s, end_s = start_ms // 1000, -(-end_ms // 1000)
        try:
            pieces = self.server.call(self.server.record_info(device_id, channel_id, start_s, end_s), timeout=30)
        except Exception as exc:  # noqa: BLE001 - the SIP server stopping, a timeout: not this gap's fault
            log.warning("gb28181 backfill %s: asking the card failed (%s); trying again later", station_id, exc)
            pieces = None
        if pieces is None:
            self._mark(gap_id, backfill=None)  # offline or no answer: the next scan tries again
            return "later"
        pieces = [(max(a, start_s), min(b, end_s)) for a, b in pieces if b > start_s and a < end_s]
        if not pieces:
            self._mark(gap_id, backfill="none", backfill_detail="the camera's card has nothing of this time")
            return "none"
        filled, problems = 0, []
        for a, b in _merge(pieces):
            try:
                filled += self._download(station_id, device_id, channel_id, a, b, start_ms, end_ms)
            except Exception as exc:  # noqa: BLE001 - one piece failing must not lose the others
                problems.append(f"{a}-{b}: {exc}")
                log.warning("gb28181 backfill %s %d-%d: %s", station_id, a, b, exc)
        length = end_ms - start_ms
        whole = filled >= min(FILLED_SHARE * length, length - SLACK_MS)
        state = "filled" if whole else ("partial" if filled else "failed")
        detail = f"{filled / 1000:.1f} s of {(end_ms - start_ms) / 1000:.1f} s from the camera's card"
        if problems:
            detail += "; " + "; ".join(problems)[:500]
        self._mark(gap_id, backfill=state, filled_by="camera_card" if filled else None, filled_ms=filled,
                   backfill_detail=detail)
        self.filled += 1
        log.info("gb28181 backfill %s: gap %d %s (%s)", station_id, gap_id, state, detail)
        return state

    def _download(self, station_id: str, device_id: str, channel_id: str, start_s: int, end_s: int,
                  gap_start_ms: int, gap_end_ms: int) -> int:
        transport: Transport = "udp" if self.cfg.media_transport == "udp" else "tcp-passive"
        read_fd, write_fd = make_media_pipe()
        receiver = MediaReceiver(transport, self.cfg.media_bind, self.cfg.media_ports, write_fd,
                                 no_media_seconds=self.cfg.no_media_seconds, name=f"backfill-{channel_id[-6:]}")
        owner = LocalOwner()
        call_id = None
        try:
            request_id = uuid.uuid4().hex
            self.server.call(self.server.request_stream(owner, {
                "op": "play", "id": request_id, "device": device_id, "channel": channel_id, "transport": transport,
                "port": receiver.port, "purpose": "Download", "start_s": start_s, "end_s": end_s}))
            answer = owner.messages.get(timeout=self.cfg.invite_timeout_seconds + 5)
            if not answer.get("ok"):
                raise RuntimeError(f"{answer.get('reason')}: {answer.get('detail')}")
            call_id = str(answer.get("call"))
            receiver.expected_ssrc = expected_ssrc(answer)
            receiver.start()
            # A device that trickles packets but never ends would hold the one backfill thread (and every
            # other camera's backfill) for good: the download gets the piece's real-time length plus a
            # minute at most, although it is asked for at the download speed.
            deadline = time.monotonic() + (end_s - start_s) + 60
            watcher = threading.Thread(target=_stop_on_end, args=(owner, receiver, deadline), daemon=True,
                                       name=f"gb-backfill-end-{channel_id[-6:]}")
            watcher.start()
            container = av.open(f"pipe:{read_fd}", format="mpeg", container_options=PROBE_OPTIONS)
            try:
                writer = BackfillWriter(station_id, self.volumes, self.settings.tz, self.db, self.settings.ingest.node,
                                        max(gap_start_ms, start_s * 1000), min(gap_end_ms, end_s * 1000),
                                        stream_start_ms=start_s * 1000,
                                        segment_seconds=self.settings.ingest.segment_seconds)
                result = writer.write(container)
            finally:
                container.close()
            return result.filled_ms
        finally:
            receiver.stop()
            owner.messages.put({"event": "done"})
            if call_id is not None:
                try:
                    self.server.call(self.server.hangup(call_id), timeout=5)
                except Exception:  # noqa: BLE001 - the device ends a download by itself anyway
                    pass
            try:
                os.close(read_fd)
            except OSError:
                pass


def _stop_on_end(owner: LocalOwner, receiver: MediaReceiver, deadline: float) -> None:
    """The device's MediaStatus 121 or BYE ends the download: once what it sent before has arrived (no
    packet for DRAIN_QUIET_S: it says 121 right after writing its last packets, which may still be in
    the socket), the receiver closes the pipe and the writer meets its end. At `deadline` (monotonic)
    the download ends whatever the device does."""
    while True:
        try:
            message = owner.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            log.warning("gb28181 backfill: the download did not end in time; ending it")
            receiver.stop()
            return
        if message.get("event") == "done":
            receiver.stop()
            return
        if message.get("event") == "ended":
            drain_until = min(deadline, time.monotonic() + DRAIN_MAX_S)
            while receiver.ended is None and time.monotonic() < drain_until:
                last = receiver.last_packet_mono
                if last is not None and time.monotonic() - last >= DRAIN_QUIET_S:
                    break
                time.sleep(0.1)
            receiver.stop()
            return


def _merge(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(pieces):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
