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
        self._last_progress = 0.0
        self._reading = False
        self._last_packet_mono = 0.0
        self._stall_marked_at: float | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def is_stalled(self, now: float, stall_seconds: float) -> bool:
        """Reading, and no packet for stall_seconds (checked again every 5 s until it ends)."""
        if not self._reading or now - self._last_packet_mono < stall_seconds:
            return False
        return self._stall_marked_at is None or now - self._stall_marked_at >= 5.0

    def mark_stalled(self) -> None:
        self._stall_marked_at = self.clock.monotonic()

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
        self._last_packet_mono = self.clock.monotonic()
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
            streams = [video] + ([audio] if audio is not None else [])
            # The loop below runs for every packet of every camera: names are bound locally once.
            video_index = video.index
            recorder, clock, stop_event = self.recorder, self.clock, self.stop_event
            progress_s = self.settings.status_interval_seconds
            for pkt in container.demux(streams):
                if stop_event.is_set():
                    reason, detail = "ingest_stopped", "ingest stopped"
                    break
                size = pkt.size
                if size == 0:
                    continue
                if pkt.stream_index != video_index:
                    recorder.audio_packet(pkt)
                    continue
                if pkt.is_keyframe:
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
                wall = recorder.video_packet(pkt)
                if wall is None:
                    continue
                now = clock.now_ms()
                if not streaming:
                    streaming = True
                    h.state, h.reason, h.detail = "streaming", None, None
                    self._online_token = self.index.open_online(self.station_id, now)
                h.last_packet_ms = now
                h.frames += 1
                h.bytes += size
                for obs in self.observers:
                    try:
                        obs.on_packet(pkt, wall)
                    except Exception:  # noqa: BLE001 - an observer never stops the recording
                        self._drop_observer(obs, "on_packet")
                mono = clock.monotonic()
                self._last_packet_mono = mono
                if mono - self._last_progress >= progress_s:
                    self._last_progress = mono
                    recorder.progress()
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

    def describe(self) -> str:
        return f"{self.station_id} {mask_url(self.url)} ({self.transport})"
