"""One camera session: the only connection to a station's camera. Connects over RTSP, hands every
packet to the recorder and then to the observers, and reconnects when anything fails: fast after a
network failure, slowly after refused credentials (vms/ingest/backoff.py)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import av

from vms.catalog.urls import mask_url
from vms.core.clock import Clock
from vms.core.settings import IngestSettings
from vms.ingest.backoff import ReconnectPolicy, Retry
from vms.ingest.errors import classify
from vms.ingest.health import CameraState, HealthEvidence
from vms.ingest.observers import CopierWake, StreamObserver
from vms.ingest.sources import OpenedSource, SourceOpener, SourceUnavailable
from vms.recording.copier import make_copier, recorded_packets
from vms.recording.h26x import HEAD_BYTES, sequence_parameter_set
from vms.recording.index import IndexWriter
from vms.recording.recorder import SUPPORTED_VIDEO, StreamRecorder

if TYPE_CHECKING:  # (the module is built by bootstrap.sh; the session runs without it too)
    from vms.recording.native_copy import PacketCopier

log = logging.getLogger(__name__)

AUTH_FAULT = "auth_failed"  # the fault kind this session raises (the analysis' kinds are its own)
# A camera that keeps failing for the same reason is logged again this often, not at every attempt:
# a 3-hour outage of 139 cameras would otherwise write ~400,000 warnings.
REPEAT_LOG_SECONDS = 600.0


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class _StreamProblem(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def diagnose_silence(url: str, timeout_s: float) -> tuple[str, str]:
    """Send one RTSP OPTIONS request: no answer = unreachable, anything but RTSP = bad_stream."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 554), timeout=timeout_s) as sock:
            sock.sendall(f"OPTIONS {parts.scheme}://{parts.hostname}:{parts.port or 554}{parts.path} RTSP/1.0\r\n"
                         "CSeq: 1\r\n\r\n".encode())
            reply = sock.recv(64)
    except TimeoutError:
        return "unreachable", f"the camera accepts connections but does not answer within {timeout_s:g} s"
    except OSError as exc:
        return "unreachable", f"connection failed: {exc.strerror or exc}"
    if not reply:
        return "unreachable", "the camera closes connections without answering"
    if reply.startswith(b"RTSP/1."):
        return "bad_stream", "the camera answers RTSP but its stream description is invalid"
    return "bad_stream", "the camera answers with data that is not RTSP"


@dataclass
class CameraHealth:
    """What the camera thread says of itself. Published only through vms.ingest.health.judge_state,
    with evidence the thread cannot fake."""

    state: CameraState = CameraState.CONNECTING
    # Monotonic time by which `state` must have ended (connect deadline, backoff delay), or None.
    expected_until: float | None = None
    reason: str | None = None
    detail: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    last_packet_ms: int | None = None
    reconnects: int = 0
    frames: int = 0
    bytes: int = 0
    # Monotonic time frames and bytes last grew. The native copier credits a batch (up to a GOP) at once,
    # so rates are taken between these moments, not between status writes (a 1 s window then saw 0, 1
    # or 2 batches: 2 fps or 30 for a 15 fps camera).
    counted_mono: float = 0.0


class CameraSession(threading.Thread):
    def __init__(self, station_id: str, url: str, transport: str, recorder: StreamRecorder,
                 observers: list[StreamObserver], settings: IngestSettings, clock: Clock, index: IndexWriter,
                 opener: SourceOpener | None = None) -> None:
        super().__init__(name=f"camera-{station_id}", daemon=True)
        self.station_id = station_id
        self.url = url
        self.transport = transport
        self.recorder = recorder
        self.observers = list(observers)
        self.settings = settings
        self.clock = clock
        self.index = index
        self.health = CameraHealth()
        self.stop_event = threading.Event()
        # Not RTSP (e.g. gb28181://): the source that opens the stream (vms.ingest.sources); None: FFmpeg
        # opens the URL itself.
        self.opener = opener
        self._source: OpenedSource | None = None
        self._online_token: int | None = None
        self._policy = ReconnectPolicy.from_settings(settings)
        self._opened_mono: float | None = None  # when the current attempt's open succeeded
        # Whether this session knows of an open auth_failed fault row: None = not known (an earlier run
        # may have left one), closed at the first accepted connection.
        self._auth_fault: bool | None = None
        self._first_refusal_ms = 0
        self._failed_attempts = 0  # in a row
        self._logged: tuple[str, float] | None = None  # (reason, monotonic) of the last failure logged
        self._reading = False
        # The packet loop reads no clock for its own checks (it does stamp health.counted_mono for the
        # status rates: ~0.17 us a packet on the Python path, once a batch on the copier's): the
        # worker's watchdog calls tick() every second, which
        # notices new packets (for the stall check and last_packet_ms) and raises `_attention`
        # when the growing segment is due to be published; stop() raises it too.
        self._attention = False
        # Liveness of the loop itself: tick() notes when the loop last answered an attention it raised
        # (a loop that turns but records nothing, e.g. on a full disk, is not stuck).
        self._attention_pending = False
        self._loop_alive_mono = 0.0
        self._seen_footage = 0  # the recorder's footage_bytes() at the last progress tick() saw
        self._seen_frames = 0  # recorded video frames (health.frames) then
        self._seen_mono = 0.0
        self._next_progress = 0.0
        self._stall_marked_at: float | None = None
        # The native copier (vms.recording.copier) while it reads this connection.
        self._copier: PacketCopier | None = None
        self._keyframe_observers: list[StreamObserver] = []
        self._packet_observers: list[StreamObserver] = []
        self._gop_observers: list[StreamObserver] = []  # want the copied packets of the current GOP
        self._each_packet_askers: list[Callable[[], bool]] = []  # their wants_each_packet, asked before each pump
        self._sort_observers()
        self.native_frames = 0  # frames the native copier recorded (diagnostics, tests)
        self.native_pauses = 0  # pauses between its reads, of connections that ended (tests)

    def _raise_attention(self) -> None:
        self._attention = True
        copier = self._copier
        if copier is not None:
            copier.attention = True  # ends its pump, which runs without the GIL

    def stop(self) -> None:
        self.stop_event.set()
        self._raise_attention()

    def _set_state(self, state: CameraState, lasts_at_most_s: float | None = None) -> None:
        h = self.health
        h.expected_until = None if lasts_at_most_s is None else self.clock.monotonic() + lasts_at_most_s
        h.state = state

    @property
    def progress_mono(self) -> float:
        """Monotonic time a recorded frame was last seen by tick() (or the connection began reading)."""
        return self._seen_mono

    def evidence(self) -> HealthEvidence:
        """For judge_state, from any thread."""
        return HealthEvidence(self.health.state, self._seen_mono, self.health.expected_until, self._loop_alive_mono)

    def tick(self, mono: float, now_ms: int) -> None:
        """Called every second from the worker's watchdog thread (never from the packet loop)."""
        # Video recorded AND footage on disk, both moved since the last progress: not packets, nor frames
        # muxed into a buffer (a full disk), nor a file that grows with audio alone (a camera whose video
        # stopped while its audio goes on). A camera whose packets cannot be recorded (no timestamps,
        # never a keyframe: a reconnect most often brings one) is not streaming either. Both move at
        # least every fragment (at most 0.5 s of video).
        footage = self.recorder.footage_bytes()
        frames = self.health.frames
        if footage > self._seen_footage and frames > self._seen_frames:
            self._seen_footage = footage
            self._seen_frames = frames
            self._seen_mono = mono
            self.health.last_packet_ms = now_ms
        if self._attention_pending and not self._attention:
            self._attention_pending = False
            self._loop_alive_mono = mono
        if self._reading and mono >= self._next_progress:
            self._next_progress = mono + self.settings.status_interval_seconds
            self._raise_attention()
            self._attention_pending = True

    def is_stalled(self, now: float, stall_seconds: float) -> bool:
        """Reading, and no frame recorded (as seen by tick()) for stall_seconds; checked again every
        5 s until it ends."""
        if not self._reading or now - self._seen_mono < stall_seconds:
            return False
        return self._stall_marked_at is None or now - self._stall_marked_at >= 5.0

    def mark_stalled(self) -> None:
        self._stall_marked_at = self.clock.monotonic()
        self._raise_attention()  # a loop that still turns ends the connection itself (see the loop)

    def _sort_observers(self) -> None:
        # An observer that only wants keyframes (`keyframes_only = True`, e.g. the snapshot cache)
        # is not called for the other 29 packets of each GOP.
        self._keyframe_observers = [o for o in self.observers if o.keyframes_only]
        self._packet_observers = [o for o in self.observers if not o.keyframes_only]
        # Sorted once, not looked up before each pump of the native copier.
        self._gop_observers = [o for o in self._packet_observers if o.copied_packets]
        self._each_packet_askers = [o.wants_each_packet for o in self._packet_observers]
        copier = self._copier
        if copier is not None:
            copier.keep = bool(self._gop_observers)

    def _options(self) -> dict[str, str]:
        timeout_us = str(int(self.settings.rtsp_timeout_seconds * 1_000_000))
        return {
            "rtsp_transport": self.transport,
            # Socket I/O timeout: bounds the connect and turns a silent camera into an error.
            # (The interrupt-callback timeout of av.open costs the GIL per call: not used.)
            "timeout": timeout_us,
            "analyzeduration": "1000000",
            "probesize": "500000",
            # PyAV turns on GENPTS, which makes libavformat parse ahead to invent missing pts;
            # the recorder handles missing pts itself, so skip that work.
            "fflags": "-genpts",
        }

    def interrupt_source(self) -> bool:
        """End a non-RTSP source's stream (the stall watchdog: its connection is not a socket it can find);
        False for RTSP cameras."""
        source = self._source
        if source is None:
            return False
        try:
            source.interrupt()
        except Exception:  # noqa: BLE001
            log.exception("%s: interrupting the camera source failed", self.station_id)
        return True

    def _open_deadline_s(self) -> float:
        return self.settings.rtsp_timeout_seconds * 2 + 2

    def retire(self) -> None:
        """The worker stopped this session because the station's camera URL changed or the station is no
        longer recorded here: what the old camera answered (refused credentials) no longer holds."""
        self.index.close_fault(self.station_id, AUTH_FAULT, self.clock.now_ms())
        self._auth_fault = False

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                started = self.clock.monotonic()
                self._opened_mono = None
                reason, detail = self._connect_and_record()
                if self.stop_event.is_set():
                    break
                ended = self.clock.monotonic()
                if self._opened_mono is not None:
                    self._policy.connection_lasted(ended - self._opened_mono)
                    retry = self._policy.failed(reason)
                else:
                    # The time a failed open spent waiting for the camera counts towards the wait.
                    retry = self._policy.failed(reason, waited_s=ended - started)
                detail = self._after_failure(reason, detail, retry)
                self._set_state(CameraState.BACKOFF, retry.delay_s + 1.0)
                self.health.reason, self.health.detail = reason, detail
                self.stop_event.wait(retry.delay_s)
                self.health.reconnects += 1
        except Exception:  # noqa: BLE001 - a bug must not end the recording of other cameras
            log.exception("%s: camera session crashed", self.station_id)
            self._set_state(CameraState.FAILED)
            self.health.reason = "internal_error"
        finally:
            try:
                self.recorder.stop()
            except Exception:  # noqa: BLE001
                log.exception("%s: stopping the recorder failed", self.station_id)
            self._close_online()
            self._set_state(CameraState.STOPPED)

    def _after_failure(self, reason: str, detail: str, retry: Retry) -> str:
        """Log (once per reason, then every REPEAT_LOG_SECONDS), raise the auth_failed fault when the long
        wait begins; returns the detail the camera's status shows."""
        self._failed_attempts += 1
        now_ms, mono = self.clock.now_ms(), self.clock.monotonic()
        refusals = self._policy.auth_refusals
        if reason == AUTH_FAULT and refusals == 1:
            self._first_refusal_ms = now_ms
        if retry.auth_backoff:
            advice = "cameras lock the login after a few failures: correct the camera URL"
            if not self._auth_fault:
                # Dated from the first refusal: that is when recording stopped for this reason.
                cfg = self.settings
                self.index.open_fault(
                    self.station_id, AUTH_FAULT, "critical", self._first_refusal_ms,
                    f"{detail}; tried {refusals} times, now every {_duration(cfg.auth_backoff_seconds)} to "
                    f"{_duration(cfg.auth_backoff_max_seconds)} ({advice})")
                self._auth_fault = True
            detail = f"{detail}; refused {refusals} times in a row, next try in {_duration(retry.delay_s)} ({advice})"
            if refusals == self._policy.auth_quick_tries:
                log.error("%s: %s", self.station_id, detail)
                self._logged = (reason, mono)
                return detail
        if self._logged is None or self._logged[0] != reason or mono - self._logged[1] >= REPEAT_LOG_SECONDS:
            more = f", {self._failed_attempts} failed attempts in a row" if self._failed_attempts > 1 else ""
            log.warning("%s: %s (%s); trying again in %s%s", self.station_id, reason, detail,
                        _duration(retry.delay_s), more)
            self._logged = (reason, mono)
        else:
            log.debug("%s: %s (%s); trying again in %s", self.station_id, reason, detail, _duration(retry.delay_s))
        return detail

    def _camera_accepted(self) -> None:
        """The open succeeded: the camera answers and accepts the credentials."""
        self._opened_mono = self.clock.monotonic()
        self._policy.accepted()
        if self._auth_fault is not False:
            self.index.close_fault(self.station_id, AUTH_FAULT, self.clock.now_ms())
            self._auth_fault = False
        if self._failed_attempts:
            log.info("%s: connected after %d failed attempts", self.station_id, self._failed_attempts)
            self._failed_attempts = 0
        self._logged = None

    def _connect_and_record(self) -> tuple[str, str]:
        reason: str | None  # why the connection ended: None while it goes on (detail is set with it)
        # The open has its deadline; telling silence from garbage afterwards takes up to 2 s more. A source
        # (gb28181) says how long its open may take: an INVITE's answer, then the media.
        connect_s = self._open_deadline_s() + 2 + 5
        source_s = getattr(self.opener, "open_seconds", None)
        if source_s is not None:
            connect_s = max(connect_s, float(source_s) + 5)
        self._set_state(CameraState.CONNECTING, connect_s)
        source: OpenedSource | None = None
        try:
            if self.opener is not None:
                source = self._source = self.opener(self.url, self.transport, self.stop_event)
                container = source.container
            else:
                # The open gets a deadline (a camera that answers with endless garbage never times out
                # its socket). Reads get none: PyAV checks it in an interrupt callback that takes the GIL
                # on every network read, +50 % CPU at 139 cameras; the stall watchdog (stall.py) covers
                # a camera that keeps RTCP flowing but sends no media.
                container = av.open(self.url, options=self._options(), timeout=(self._open_deadline_s(), None))
        except SourceUnavailable as exc:
            self._source = None
            self.recorder.note_failure(exc.reason, exc.detail)
            return exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001 - every failure becomes a gap with a reason
            self._source = None
            reason, detail = classify(exc, streaming=False)
            if reason == "auth_failed" and not urlsplit(self.url).username:
                detail = f"{detail}; the camera URL has no credentials"
            elif reason == "bad_stream" and self.opener is None:
                # FFmpeg says "invalid data" both for a camera that says nothing and for one that
                # talks garbage: one plain RTSP request tells them apart.
                reason, detail = diagnose_silence(self.url, min(2.0, self.settings.rtsp_timeout_seconds))
            self.recorder.note_failure(reason, detail)
            return reason, detail
        self._camera_accepted()
        streaming = False
        reason, detail = None, ""
        self._stall_marked_at = None
        self._seen_mono = self._loop_alive_mono = self.clock.monotonic()
        self._next_progress = self._seen_mono + self.settings.status_interval_seconds
        self._reading = True
        # Until the first recorded frame: the stall watchdog ends a connection that records nothing.
        self._set_state(CameraState.CONNECTING, self.settings.stall_seconds + 5)
        try:
            video = container.streams.video[0] if container.streams.video else None
            if video is None:
                raise _StreamProblem("no_video", "the stream has no video track")
            codec = video.codec_context.name
            if codec not in SUPPORTED_VIDEO:
                raise _StreamProblem("unsupported_codec", f"video codec {codec} is not H.264 or H.265")
            audio = container.streams.audio[0] if container.streams.audio else None
            self.recorder.begin(video, audio)
            h = self.health
            h.codec, h.width, h.height = codec, video.codec_context.width or None, video.codec_context.height or None
            for obs in list(self.observers):
                self._notify(obs, obs.on_connect, video, self.clock.now_ms())
            sps: bytes | None = None
            # Audio that is not recorded is not read into Python either (50 G.711 packets a second
            # cost ~0.6 ms of CPU per camera-second, measured: scripts/bench_audio.py).
            streams = [video] + ([audio] if audio is not None and self.recorder.records_audio else [])
            # This loop runs for every packet of every camera, ~70 threads per worker sharing one
            # GIL: no clock read, no call that is not needed, names bound once (docs/benchmarks.md).
            video_index = video.index
            recorder, stop_event = self.recorder, self.stop_event
            video_packet, audio_packet = recorder.video_packet, recorder.audio_packet
            # Video packets handed to this loop, and their count at the last stall check (with when).
            video_in = video_at_check = 0
            checked_mono = self.clock.monotonic()
            for pkt in self._packets(container, streams, video_index):
                if self._attention:
                    self._attention = False  # before the check: a stop() after it is seen next packet
                    if stop_event.is_set():
                        reason, detail = "ingest_stopped", "ingest stopped"
                        break
                    if self._stall_marked_at is not None:
                        # Judged stalled while the loop still turns. No video for a second or more (the
                        # audio of a camera whose video stopped keeps its connection from looking idle,
                        # so the watchdog finds none to shut): end the connection. Video that comes but
                        # is not recorded is the volume's fault: record that, do not reconnect.
                        mono = self.clock.monotonic()
                        if video_in == video_at_check and mono - checked_mono >= 1.0:
                            reason, detail = "stalled", f"no video for {self.settings.stall_seconds:g} s"
                            break
                        if video_in != video_at_check:
                            recorder.check_volume()
                        video_at_check, checked_mono = video_in, mono
                    recorder.progress()
                if pkt is None:
                    continue
                size = pkt.size
                if not size:
                    continue
                if pkt.stream_index != video_index:
                    audio_packet(pkt)
                    continue
                video_in += 1
                key = pkt.is_keyframe
                if key:
                    # The parameter sets lead the access unit: copy its head, not the whole keyframe.
                    new_sps = sequence_parameter_set(bytes(memoryview(pkt)[:HEAD_BYTES]), codec)
                    if new_sps is not None:
                        if sps is not None and new_sps != sps:
                            # New resolution or profile: the recorder starts a new segment with the
                            # new parameters at this keyframe; no footage is lost.
                            h.width, h.height = recorder.change_parameters(pkt)
                            h.detail = f"stream parameters changed to {h.width}x{h.height}"
                            log.warning("%s: %s", self.station_id, h.detail)
                        sps = new_sps
                wall = video_packet(pkt)
                if wall is None:
                    continue
                h.frames += 1
                h.bytes += size
                h.counted_mono = self.clock.monotonic()
                if not streaming:
                    streaming = True
                    now = self.clock.now_ms()
                    self._set_state(CameraState.STREAMING)
                    h.reason, h.detail, h.last_packet_ms = None, None, now
                    self._online_token = self.index.open_online(self.station_id, now)
                if self._packet_observers:
                    for obs in self._packet_observers:
                        try:
                            obs.on_packet(pkt, wall)
                        except Exception:  # noqa: BLE001 - an observer never stops the recording
                            self._drop_observer(obs, "on_packet")
                if key and self._keyframe_observers:
                    for obs in self._keyframe_observers:
                        try:
                            obs.on_packet(pkt, wall)
                        except Exception:  # noqa: BLE001
                            self._drop_observer(obs, "on_packet")
            if reason is None and self._stall_marked_at is not None:
                reason, detail = "stalled", f"no packet for {self.settings.stall_seconds:g} s"
            elif reason is None:
                reason, detail = "stream_ended", "the camera ended the stream"
        except _StreamProblem as exc:
            reason, detail = exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001
            reason, detail = classify(exc, streaming=streaming)
            if self._stall_marked_at is not None:
                reason, detail = "stalled", f"no packet for {self.settings.stall_seconds:g} s"
        finally:
            self._reading = False
            # Say so, and finish the segment, before closing: the RTSP TEARDOWN of a stalled camera
            # can wait for its timeout, and a stop must not wait for it to save the footage.
            if reason is None:
                reason, detail = "stream_ended", "the connection ended"
            if source is not None and reason != "ingest_stopped":
                # The device said BYE, stopped its keepalives, sent no media: the source knows why
                # the demuxer met the end of its stream.
                better = source.end_reason()
                if better is not None:
                    reason, detail = better
            self._set_state(CameraState.BACKOFF, self.settings.rtsp_timeout_seconds * 2 + 5)
            self.health.reason, self.health.detail = reason, detail
            try:
                self.recorder.end(reason, detail)
            finally:
                try:
                    container.close()
                except Exception:  # noqa: BLE001
                    pass
                if source is not None:
                    self._source = None
                    try:
                        source.close()
                    except Exception:  # noqa: BLE001
                        log.exception("%s: closing the camera source failed", self.station_id)
        now = self.clock.now_ms()
        for obs in list(self.observers):
            self._notify(obs, obs.on_disconnect, now, reason)
        self._close_online()
        return reason, detail

    def _packets(self, container: av.container.InputContainer, streams: list, video_index: int):
        """The packets the loop must see; None asks it to look at `_attention`. With the native copier,
        the ordinary video packets of an open segment never reach Python (see vms.recording.copier)."""
        copier = None
        if self._copier_may_run():
            # A source of our own (GB28181) is read from a pipe, not from the camera's socket.
            transport = "pipe" if self._source is not None else self.transport
            copier = make_copier(container, streams, video_index, self.settings.receive_pause_seconds, transport)
        if copier is None:
            yield from container.demux(streams)
            return
        self._copier = copier
        # The copier keeps the packets of the current GOP for the observers that want them (the live
        # tap), in C; they get them when they must (see recorded_packets).
        copier.keep = bool(self._gop_observers)
        if self._attention:
            copier.attention = True
        wake = copier.wake
        self._tell_gop_observers(wake)
        try:
            yield from recorded_packets(copier, self.recorder, self._copied, self._copy_allowed, self._kept)
        finally:
            self._tell_gop_observers(None)
            self.native_pauses += copier.pauses
            self._copier = None

    def _copier_may_run(self) -> bool:
        # Only if every observer that gets every packet takes the copier's batches instead: any other
        # needs every packet itself.
        return self.settings.native_copy and all(obs.takes_copied for obs in self._packet_observers)

    def _tell_gop_observers(self, wake: CopierWake | None) -> None:
        # wake(), from any thread, ends the copier's read loop: a new viewer need not wait for the
        # end of its batch (up to recorder.BATCH_SECONDS) to get the rest of the GOP.
        for obs in self._gop_observers:
            self._notify(obs, obs.on_copier, wake)

    def _copy_allowed(self) -> bool:
        """Asked before each pump: an observer busy with a live viewer wants each packet as it comes,
        not a second later."""
        for wants_each_packet in self._each_packet_askers:
            if wants_each_packet():
                return False
        return True

    def _copied(self, count: int, nbytes: int, first_ms: int, last_ms: int) -> None:
        h = self.health
        h.frames += count
        h.bytes += nbytes
        h.counted_mono = self.clock.monotonic()
        self.native_frames += count
        for obs in self._packet_observers:
            try:
                obs.on_copied(count, nbytes, first_ms, last_ms)
            except Exception:  # noqa: BLE001 - an observer never stops the recording
                self._drop_observer(obs, "on_copied")

    def _kept(self, packets: list[tuple[av.Packet, int]]) -> None:
        for obs in self._gop_observers:
            try:
                obs.on_kept(packets)
            except Exception:  # noqa: BLE001 - an observer never stops the recording
                self._drop_observer(obs, "on_kept")

    def _close_online(self) -> None:
        if self._online_token is not None:
            self.index.close_online(self._online_token, self.clock.now_ms())
            self._online_token = None

    def _notify(self, obs: StreamObserver, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception:  # noqa: BLE001 - an observer never stops the recording
            self._drop_observer(obs, method.__name__)

    def _drop_observer(self, obs: StreamObserver, method: str) -> None:
        log.exception("%s: observer %s failed in %s; dropped", self.station_id, type(obs).__name__, method)
        # A new list, never a change to the one being iterated.
        self.observers = [o for o in self.observers if o is not obs]
        self._sort_observers()

    def describe(self) -> str:
        return f"{self.station_id} {mask_url(self.url)} ({self.transport})"
