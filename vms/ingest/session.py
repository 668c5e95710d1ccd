"""One camera session: the only connection to a station's camera. Connects over RTSP, hands every
packet to the recorder and then to the observers, and reconnects with backoff when anything fails."""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import av

from vms.catalog.urls import mask_url
from vms.core.clock import Clock
from vms.core.settings import IngestSettings
from vms.ingest.backoff import Backoff
from vms.ingest.errors import classify
from vms.ingest.observers import StreamObserver
from vms.recording.copier import make_copier, recorded_packets
from vms.recording.h26x import HEAD_BYTES, sequence_parameter_set
from vms.recording.index import IndexWriter
from vms.recording.recorder import SUPPORTED_VIDEO, StreamRecorder

log = logging.getLogger(__name__)

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
    state: str = "connecting"  # connecting | streaming | backoff | failed | stopped
    reason: str | None = None
    detail: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    last_packet_ms: int | None = None
    reconnects: int = 0
    frames: int = 0
    bytes: int = 0


class CameraSession(threading.Thread):
    def __init__(self, station_id: str, url: str, transport: str, recorder: StreamRecorder,
                 observers: list[StreamObserver], settings: IngestSettings, clock: Clock, index: IndexWriter) -> None:
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
        self._online_token: int | None = None
        self._backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds,
                                settings.stable_seconds)
        self._reading = False
        # The packet loop reads no clock: the worker's watchdog calls tick() every second, which
        # notices new packets (for the stall check and last_packet_ms) and raises `_attention`
        # when the growing segment is due to be published; stop() raises it too.
        self._attention = False
        self._seen_packets = 0  # recorded frames (health.frames) at the last tick that saw them change
        self._seen_mono = 0.0
        self._next_progress = 0.0
        self._stall_marked_at: float | None = None
        self._keyframe_observers: list[StreamObserver] = []
        self._packet_observers: list[StreamObserver] = []
        self._sort_observers()
        self._copier = None  # the native copier (vms.recording.copier) while it reads this connection
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

    def tick(self, mono: float, now_ms: int) -> None:
        """Called every second from the worker's watchdog thread (never from the packet loop)."""
        # Recorded frames, not packets: a camera whose packets cannot be recorded (no timestamps, never
        # a keyframe) counts as stalled, and a reconnect is what most often brings a keyframe.
        frames = self.health.frames
        if frames != self._seen_packets:
            self._seen_packets = frames
            self._seen_mono = mono
            self.health.last_packet_ms = now_ms
        if self._reading and mono >= self._next_progress:
            self._next_progress = mono + self.settings.status_interval_seconds
            self._raise_attention()

    def is_stalled(self, now: float, stall_seconds: float) -> bool:
        """Reading, and no frame recorded (as seen by tick()) for stall_seconds; checked again every
        5 s until it ends."""
        if not self._reading or now - self._seen_mono < stall_seconds:
            return False
        return self._stall_marked_at is None or now - self._stall_marked_at >= 5.0

    def mark_stalled(self) -> None:
        self._stall_marked_at = self.clock.monotonic()

    def _sort_observers(self) -> None:
        # An observer that only wants keyframes (`keyframes_only = True`, e.g. the snapshot cache)
        # is not called for the other 29 packets of each GOP.
        self._keyframe_observers = [o for o in self.observers if getattr(o, "keyframes_only", False)]
        self._packet_observers = [o for o in self.observers if not getattr(o, "keyframes_only", False)]

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

    def _open_deadline_s(self) -> float:
        return self.settings.rtsp_timeout_seconds * 2 + 2

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                started = self.clock.monotonic()
                reason, detail = self._connect_and_record()
                if self.stop_event.is_set():
                    break
                self._backoff.connection_lasted(self.clock.monotonic() - started)
                delay = self._backoff.next_delay()
                self.health.state, self.health.reason, self.health.detail = "backoff", reason, detail
                log.warning("%s: %s (%s); reconnecting in %.1f s", self.station_id, reason, detail, delay)
                self.stop_event.wait(delay)
                self.health.reconnects += 1
        except Exception:  # noqa: BLE001 - a bug must not end the recording of other cameras
            log.exception("%s: camera session crashed", self.station_id)
            self.health.state, self.health.reason = "failed", "internal_error"
        finally:
            try:
                self.recorder.stop()
            except Exception:  # noqa: BLE001
                log.exception("%s: stopping the recorder failed", self.station_id)
            self._close_online()
            self.health.state = "stopped"

    def _connect_and_record(self) -> tuple[str, str]:
        self.health.state = "connecting"
        try:
            # The open gets a deadline (a camera that answers with endless garbage never times out
            # its socket). Reads get none: PyAV checks it in an interrupt callback that takes the GIL
            # on every network read, +50 % CPU at 139 cameras; the stall watchdog (stall.py) covers
            # a camera that keeps RTCP flowing but sends no media.
            container = av.open(self.url, options=self._options(), timeout=(self._open_deadline_s(), None))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a gap with a reason
            reason, detail = classify(exc, streaming=False)
            if reason == "bad_stream":
                # FFmpeg says "invalid data" both for a camera that says nothing and for one that
                # talks garbage: one plain RTSP request tells them apart.
                reason, detail = diagnose_silence(self.url, min(2.0, self.settings.rtsp_timeout_seconds))
            self.recorder.note_failure(reason, detail)
            return reason, detail
        streaming = False
        reason = detail = None
        self._stall_marked_at = None
        self._seen_mono = self.clock.monotonic()
        self._next_progress = self._seen_mono + self.settings.status_interval_seconds
        self._reading = True
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
                self._notify(obs, "on_connect", video, self.clock.now_ms())
            sps: bytes | None = None
            # Audio that is not recorded is not read into Python either (50 G.711 packets a second
            # cost ~0.6 ms of CPU per camera-second, measured: scripts/bench_audio.py).
            streams = [video] + ([audio] if audio is not None and self.recorder.records_audio else [])
            # This loop runs for every packet of every camera, ~70 threads per worker sharing one
            # GIL: no clock read, no call that is not needed, names bound once (docs/benchmarks.md).
            video_index = video.index
            recorder, stop_event = self.recorder, self.stop_event
            video_packet, audio_packet = recorder.video_packet, recorder.audio_packet
            for pkt in self._packets(container, streams, video_index):
                if self._attention:
                    self._attention = False  # before the check: a stop() after it is seen next packet
                    if stop_event.is_set():
                        reason, detail = "ingest_stopped", "ingest stopped"
                        break
                    recorder.progress()
                if pkt is None:
                    continue
                size = pkt.size
                if not size:
                    continue
                if pkt.stream_index != video_index:
                    audio_packet(pkt)
                    continue
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
                if not streaming:
                    streaming = True
                    now = self.clock.now_ms()
                    h.state, h.reason, h.detail, h.last_packet_ms = "streaming", None, None, now
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
            # Say so before closing: the RTSP TEARDOWN of a stalled camera can wait for its timeout.
            if reason is not None:
                self.health.state, self.health.reason, self.health.detail = "backoff", reason, detail
            try:
                container.close()
            except Exception:  # noqa: BLE001
                pass
        self.recorder.end(reason, detail)
        now = self.clock.now_ms()
        for obs in list(self.observers):
            self._notify(obs, "on_disconnect", now, reason)
        self._close_online()
        return reason, detail

    def _packets(self, container: av.container.InputContainer, streams: list, video_index: int):
        """The packets the loop must see; None asks it to look at `_attention`. With the native copier,
        the ordinary video packets of an open segment never reach Python (see vms.recording.copier)."""
        copier = None
        if self.settings.native_copy and all(hasattr(obs, "on_copied") for obs in self._packet_observers):
            # (An observer without on_copied needs every packet itself.)
            # Over UDP a pause would let the socket's buffer overflow and drop packets: TCP only.
            pause = self.settings.receive_pause_seconds if self.transport == "tcp" else 0
            copier = make_copier(container, streams, video_index, pause)
        if copier is None:
            yield from container.demux(streams)
            return
        self._copier = copier
        if self._attention:
            copier.attention = True
        try:
            yield from recorded_packets(copier, self.recorder, self._copied, self._copy_allowed)
        finally:
            self.native_pauses += copier.pauses
            self._copier = None

    def _copy_allowed(self) -> bool:
        """Asked before each pump. Also decides whether the copier keeps the packets it copies, for
        observers that want them (`copied_packets`, the live tap's GOP)."""
        copier = self._copier
        copier.keep = any(getattr(obs, "copied_packets", False) for obs in self._packet_observers)
        # An observer busy with a live viewer wants each packet as it comes, not a second later.
        return not any(obs.wants_each_packet() for obs in self._packet_observers
                       if hasattr(obs, "wants_each_packet"))

    def _copied(self, count: int, nbytes: int, first_ms: int, last_ms: int, kept: list | None) -> None:
        h = self.health
        h.frames += count
        h.bytes += nbytes
        self.native_frames += count
        for obs in self._packet_observers:
            try:
                obs.on_copied(count, nbytes, first_ms, last_ms, kept)
            except Exception:  # noqa: BLE001 - an observer never stops the recording
                self._drop_observer(obs, "on_copied")

    def _close_online(self) -> None:
        if self._online_token is not None:
            self.index.close_online(self._online_token, self.clock.now_ms())
            self._online_token = None

    def _notify(self, obs: StreamObserver, method: str, *args) -> None:
        try:
            getattr(obs, method)(*args)
        except Exception:  # noqa: BLE001 - an observer never stops the recording
            self._drop_observer(obs, method)

    def _drop_observer(self, obs: StreamObserver, method: str) -> None:
        log.exception("%s: observer %s failed in %s; dropped", self.station_id, type(obs).__name__, method)
        # A new list, never a change to the one being iterated.
        self.observers = [o for o in self.observers if o is not obs]
        self._sort_observers()

    def describe(self) -> str:
        return f"{self.station_id} {mask_url(self.url)} ({self.transport})"
