"""The venv side of the camera simulator: prepares cached content, runs rtsp_server.py under
Debian's python3 and injects faults through its control port."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from socket import SocketIO
from typing import IO

from vms.core.errors import VmsError
from vms.simulate.content import (
    CONTENT_KINDS,
    VideoFormat,
    frozen_clip,
    pattern_clip,
    resolution_change_clip,
    source_clip,
    station_day_clip,
)

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"
# The pattern clip loops, so a keyframe comes back bit-identical one loop later. The analysis samples a
# keyframe every 20 s or 60 s; a loop that divides either (the old 4 s did) makes every sample identical to
# the one before, and each healthy simulated camera was flagged frozen after a minute (seen in CI). 14 s
# (7 GOPs of 2 s) divides neither and costs 0.5 s to encode at 320x240.
PATTERN_LOOP_SECONDS = 14.0
EXTRA_MOUNTS = ("auth", "h265", "audio", "audio-only", "mjpeg", "res-change", "frozen")
# Audio the cameras send besides their video: none, AAC, or G.711 (PCMA = A-law, PCMU = mu-law), the
# default of most Hikvision and Dahua cameras.
AUDIO_KINDS = ("none", "aac", "pcma", "pcmu")
AUTH_USER, AUTH_PASSWORD = "admin", "secret"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SimulatorError(VmsError):
    """The simulator could not start, or a fault command failed."""


def default_names(cameras: int) -> list[str]:
    """cam01..camNN (three digits from 100 cameras on, so names sort)."""
    width = max(2, len(str(cameras)))
    return [f"cam{i:0{width}d}" for i in range(1, cameras + 1)]


def default_cache_dir() -> Path:
    from vms.core.settings import load_settings

    return load_settings().data_dir / "cache" / "simulate"


class Simulator:
    """N looping RTSP cameras on 127.0.0.1, plus optional odd mounts for bad-input tests.

    Use as a context manager: entering blocks until every stream is ready; leaving stops the server.
    """

    def __init__(self, cameras: int = 1, width: int = 640, height: int = 360, fps: int = 15,
                 bitrate_kbps: int = 512, gop: int = 30, content: str = "pattern",
                 source: str | os.PathLike | None = None, port: int | None = None,
                 names: Iterable[str] | None = None, extra_mounts: Iterable[str] = (),
                 cache_dir: str | os.PathLike | None = None, *, day_seconds: float = 600.0,
                 pattern_seconds: float = PATTERN_LOOP_SECONDS, control_port: int | None = None,
                 ready_timeout: float = 60.0, python: str = SYSTEM_PYTHON, audio: str = "none") -> None:
        self.format = VideoFormat(int(width), int(height), int(fps), int(bitrate_kbps), int(gop))
        self.format.check()
        if content not in CONTENT_KINDS:
            raise ValueError(f"content must be one of {', '.join(CONTENT_KINDS)}, got {content!r}")
        if audio not in AUDIO_KINDS:
            raise ValueError(f"audio must be one of {', '.join(AUDIO_KINDS)}, got {audio!r}")
        self.audio = audio
        if not isinstance(cameras, int) or cameras < 0:
            raise ValueError(f"cameras must be a whole number >= 0, got {cameras!r}")
        self.names = list(names) if names is not None else default_names(cameras)
        if len(self.names) != cameras:
            raise ValueError(f"{len(self.names)} names given for {cameras} cameras")
        self.extra_mounts = tuple(extra_mounts)
        unknown = [m for m in self.extra_mounts if m not in EXTRA_MOUNTS]
        if unknown:
            raise ValueError(f"unknown extra mount(s) {unknown} (known: {', '.join(EXTRA_MOUNTS)})")
        all_names = self.names + list(self.extra_mounts)
        bad = [n for n in all_names if not _NAME.match(str(n))]
        if bad:
            raise ValueError(f"camera names must be 1-64 letters, digits, '_' or '-': {bad}")
        dupes = sorted({n for n in all_names if all_names.count(n) > 1})
        if dupes:
            raise ValueError(f"mount names repeat: {dupes}")
        if not all_names:
            raise ValueError("nothing to serve: no cameras and no extra mounts")
        for label, p in (("port", port), ("control_port", control_port)):
            if p is not None and not 0 <= p <= 65535:
                raise ValueError(f"{label} must be from 0 to 65535, got {p}")
        self.content = content
        self.source = Path(source) if source is not None else None
        self.requested_port = port or 0
        self.requested_control_port = control_port or 0
        self.day_seconds = day_seconds
        self.pattern_seconds = pattern_seconds
        self.ready_timeout = ready_timeout
        self.python = python
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.urls: dict[str, str] = {}
        self.port: int | None = None
        self.control_port: int | None = None
        self.ground_truth: dict | None = None
        self.clip_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: IO[bytes] | None = None
        self._spec_path: Path | None = None
        self._control: socket.socket | None = None
        self._control_file: SocketIO | None = None  # _control's, set and cleared with it
        self._control_lock = threading.Lock()

    # -- content ---------------------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is None:
            self._cache_dir = default_cache_dir()
        return self._cache_dir

    def prepare(self) -> list[dict]:
        """Encode (or find cached) every clip; return the mount list for the server."""
        cache, fmt = self.cache_dir, self.format
        cache.mkdir(parents=True, exist_ok=True)
        if self.source is not None:
            clip = source_clip(cache, self.source, fmt)
        elif self.content == "station-day":
            clip, self.ground_truth = station_day_clip(cache, fmt, self.day_seconds)
        else:
            clip = pattern_clip(cache, fmt, self.pattern_seconds)
        self.clip_path = clip
        mounts = [{"name": n, "kind": "h264", "path": str(clip), "fps": fmt.fps} for n in self.names]
        if self.audio != "none":
            for m in mounts:
                m["audio"] = self.audio
        pattern = None
        for extra in self.extra_mounts:
            if extra in ("auth", "audio"):
                pattern = pattern or (clip if self.names else pattern_clip(cache, fmt, self.pattern_seconds))
            if extra == "auth":
                mounts.append({"name": extra, "kind": "h264", "path": str(pattern), "fps": fmt.fps,
                               "auth": True})
            elif extra == "audio":
                mounts.append({"name": extra, "kind": "h264", "audio": "aac", "path": str(pattern), "fps": fmt.fps})
            elif extra == "h265":
                h265 = pattern_clip(cache, fmt, self.pattern_seconds, codec="libx265")
                mounts.append({"name": extra, "kind": "h265", "path": str(h265), "fps": fmt.fps})
            elif extra == "audio-only":
                mounts.append({"name": extra, "kind": "aac"})
            elif extra == "mjpeg":
                mounts.append({"name": extra, "kind": "mjpeg"})
            elif extra == "frozen":
                mounts.append({"name": extra, "kind": "h264", "path": str(frozen_clip(cache, fmt)), "fps": fmt.fps})
            elif extra == "res-change":
                mounts.append({"name": extra, "kind": "h264", "path": str(resolution_change_clip(cache, fmt)),
                               "fps": fmt.fps})
        return mounts

    # -- life cycle ------------------------------------------------------------------------------
    def start(self, on_ready: Callable[[str, str], None] | None = None) -> Simulator:
        """Start serving; call on_ready(name, url) as each stream becomes ready; return when all are."""
        if self._proc is not None:
            raise SimulatorError("the simulator is already running")
        mounts = self.prepare()
        if not Path(self.python).exists():
            raise SimulatorError(f"{self.python} not found: the RTSP server needs Debian's python3 with "
                                 "python3-gi and gir1.2-gst-rtsp-server-1.0 (scripts/bootstrap.sh)")
        spec = {"port": self.requested_port, "control_port": self.requested_control_port, "mounts": mounts}
        fd, spec_name = tempfile.mkstemp(prefix="vms-simulate-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
        self._spec_path = Path(spec_name)
        stderr = self._stderr = tempfile.TemporaryFile()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        proc = self._proc = subprocess.Popen(
            [self.python, str(SERVER_SCRIPT), spec_name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr, env=env, close_fds=True,
            # Its own session: a Ctrl-C meant for the parent does not kill the server behind its back.
            start_new_session=True,
        )
        assert proc.stdout is not None  # (stdout=PIPE)
        threading.Thread(target=self._read_stdout, args=(proc.stdout,), daemon=True).start()
        try:
            self._await_ready(proc, mounts, on_ready)
        except BaseException:
            self.close()
            raise
        return self

    def _read_stdout(self, stdout: IO[bytes]) -> None:
        for raw in stdout:
            self._lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._lines.put(None)

    def _await_ready(self, proc: subprocess.Popen, mounts: list[dict],
                     on_ready: Callable[[str, str], None] | None) -> None:
        deadline = time.monotonic() + self.ready_timeout
        auth = {m["name"] for m in mounts if m.get("auth")}
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SimulatorError(
                    f"RTSP server not ready after {self.ready_timeout:g} s{self._stderr_tail()}") from None
            if line is None:
                code = proc.wait()
                raise SimulatorError(
                    f"RTSP server exited with code {code} before it was ready{self._stderr_tail()}")
            word, _, rest = line.partition(" ")
            if word == "error":
                raise SimulatorError(f"RTSP server: {rest}")
            if word == "rtsp-port":
                self.port = int(rest)
            elif word == "control-port":
                self.control_port = int(rest)
            elif word == "ready":
                name, url = rest.split(" ", 1)
                if name in auth:
                    url = url.replace("rtsp://", f"rtsp://{AUTH_USER}:{AUTH_PASSWORD}@", 1)
                self.urls[name] = url
                if on_ready is not None:
                    on_ready(name, url)
            elif word == "serving":
                return

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip()
        return f":\n{text[-2000:]}" if text else ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the server process to end (None if still running after timeout)."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and release everything."""
        if self._control is not None:
            try:
                self._control.close()
            except OSError:
                pass
            self._control = self._control_file = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is None:
                    continue
                try:
                    stream.close()
                except OSError:
                    pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._spec_path is not None:
            self._spec_path.unlink(missing_ok=True)
            self._spec_path = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- faults ----------------------------------------------------------------------------------
    def command(self, line: str) -> str:
        """Send one control line; return the text after "ok", raise SimulatorError on "error"."""
        if not self.running or self.control_port is None:
            raise SimulatorError("the simulator is not running")
        with self._control_lock:
            for attempt in (1, 2):
                try:
                    control_file = self._control_file
                    if self._control is None or control_file is None:
                        self._control = socket.create_connection(("127.0.0.1", self.control_port), timeout=15)
                        control_file = self._control_file = self._control.makefile("rwb", buffering=0)
                    control_file.write((line.strip() + "\n").encode())
                    reply = control_file.readline().decode("utf-8", "replace").strip()
                    if not reply:
                        raise OSError("control connection closed")
                    break
                except OSError as exc:
                    if self._control is not None:
                        self._control.close()
                    self._control = self._control_file = None
                    if attempt == 2:
                        raise SimulatorError(f"control port {self.control_port}: {exc}") from None
        word, _, rest = reply.partition(" ")
        if word != "ok":
            raise SimulatorError(rest or reply)
        return rest

    def stop_camera(self, name: str) -> None:
        """Camera gone: clients disconnected, new connections get 404 until start_camera."""
        self.command(f"stop {name}")

    def start_camera(self, name: str) -> None:
        self.command(f"start {name}")

    def restart_camera(self, name: str) -> None:
        self.command(f"restart {name}")

    def stall(self, name: str) -> None:
        """Connections stay open but no media packets flow until resume()."""
        self.command(f"stall {name}")

    def stall_video(self, name: str) -> None:
        """The video stops, the audio goes on (a camera whose video encoder hung), until resume()."""
        self.command(f"stall-video {name}")

    def resume(self, name: str) -> None:
        self.command(f"resume {name}")

    def jump(self, name: str, seconds: float) -> None:
        """The camera's timestamps jump by `seconds` from its next non-key frame (negative: back, at most
        to the stream's start, i.e. a reset to 0), as when a camera's clock is set; the pace stays."""
        self.command(f"jump {name} {seconds:g}")

    def drop(self, name: str) -> None:
        """Close the camera's current client connections; it stays available for reconnects."""
        self.command(f"drop {name}")

    def counts(self, name: str) -> dict[str, int]:
        """What the camera saw, counted at the server: `attempts` (connections that asked for it),
        `unauthorized` (requests answered 401) and `refused_logins` (those that carried credentials)."""
        return {k: int(v) for k, v in (item.split("=") for item in self.command(f"counts {name}").split())}

    def set_password(self, name: str, password: str) -> None:
        """Change the password the `auth` mount accepts for user admin (e.g. reset to what a URL says)."""
        if not password or any(c.isspace() for c in password):
            raise ValueError("the password must be non-empty and have no spaces")
        self.command(f"password {name} {password}")

    def status(self) -> dict[str, dict]:
        """name -> {"up": bool, "stalled": bool, "video_stalled": bool, "clients": int}."""
        out: dict[str, dict] = {}
        for item in self.command("status").split():
            name, _, state = item.partition("=")
            flags = state.split(",")
            clients = next((int(f.split(":")[1]) for f in flags if f.startswith("clients:")), 0)
            out[name] = {"up": flags[0] == "up", "stalled": "stalled" in flags,
                         "video_stalled": "video-stalled" in flags, "clients": clients}
        return out
