#!/usr/bin/python3
"""Standalone RTSP server for simulated cameras (GStreamer gst-rtsp-server, run with Debian's python3).

It imports nothing from `vms`: the project's virtualenv has no `gi`, so the venv side writes a JSON
spec and launches this script with /usr/bin/python3. Protocol on stdout, one line each, flushed:
    rtsp-port N | control-port N | ready NAME URL | serving | error MESSAGE
Control: a line-based TCP service on 127.0.0.1 (see docs/simulator.md), one command per line:
    stop|start|restart|stall|stall-video|resume|drop|counts NAME, password NAME PASSWORD, jump NAME SECONDS,
    status, ping  ->  "ok ..." or "error MESSAGE".
It stops on SIGINT/SIGTERM or when stdin reaches end of file (its parent went away), exit code 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

AUTH_USER = "admin"
AUTH_PASSWORD = "secret"
ROLE_ADMIN = "admin"
# An account that exists but may not watch (as a camera's locked or view-less account): 403 Forbidden.
FORBIDDEN_USER, FORBIDDEN_PASSWORD = "guest", "guest"
CLOSE_WAIT_S = 2.0  # how long stop, restart and drop wait for the clients they disconnect to be gone


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def gst_quote(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Audio a camera may send, each with its payloader (name and payload type filled in by launch_line).
# G.711 (PCMA/PCMU) is what most Hikvision and Dahua cameras send: 8 kHz mono in 20 ms packets
# (160 samples, RFC 3551's default packet time), with the static payload types 8 and 0.
AUDIO_BODIES = {
    "aac": ("audiotestsrc wave=sine freq=440 volume=0.1 samplesperbuffer=1024 "
            "! audio/x-raw,rate=48000,channels=1 ! audioconvert ! voaacenc bitrate=64000 "
            "! valve name=avalve drop=false ! rtpmp4gpay name=pay{n} pt=97"),
    "pcma": ("audiotestsrc wave=pink-noise volume=0.02 samplesperbuffer=160 "
             "! audio/x-raw,rate=8000,channels=1 ! alawenc ! valve name=avalve drop=false "
             "! rtppcmapay name=pay{n} pt=8 min-ptime=20000000 max-ptime=20000000"),
    "pcmu": ("audiotestsrc wave=pink-noise volume=0.02 samplesperbuffer=160 "
             "! audio/x-raw,rate=8000,channels=1 ! mulawenc ! valve name=avalve drop=false "
             "! rtppcmupay name=pay{n} pt=0 min-ptime=20000000 max-ptime=20000000"),
}


def launch_line(mount: dict) -> str:
    """The gst-launch description of one mount's media (payloaders named pay0, pay1...).

    `kind` is the video (h264, h265, mjpeg; or aac: audio only); `audio` (aac, pcma, pcmu) adds an
    audio track to a video mount. The kind "h264+aac" is h264 with audio aac."""
    kind = mount["kind"]
    audio = mount.get("audio")
    if kind == "h264+aac":
        kind, audio = "h264", "aac"
    fps = int(mount.get("fps", 15))
    loc = gst_quote(mount.get("path", ""))
    h264 = (f"multifilesrc location={loc} loop=true "
            f"caps=\"video/x-h264,stream-format=byte-stream,framerate={fps}/1\" "
            f"! h264parse name=parse ! clocksync ! valve name=valve drop=false "
            f"! rtph264pay name=pay0 pt=96 config-interval=-1")
    h265 = (f"multifilesrc location={loc} loop=true "
            f"caps=\"video/x-h265,stream-format=byte-stream,framerate={fps}/1\" "
            f"! h265parse name=parse ! clocksync ! valve name=valve drop=false "
            f"! rtph265pay name=pay0 pt=96 config-interval=-1")
    if audio is not None and audio not in AUDIO_BODIES:
        raise ValueError(f"unknown audio {audio!r}")
    if kind == "h264":
        body = h264
    elif kind == "h265":
        body = h265
    elif kind == "aac":
        return "( " + AUDIO_BODIES["aac"].format(n=0) + " )"
    elif kind == "mjpeg":
        body = ("videotestsrc pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=10/1 "
                "! jpegenc quality=70 ! rtpjpegpay name=pay0 pt=26")
    else:
        raise ValueError(f"unknown mount kind {kind!r}")
    if audio is not None:
        body += " " + AUDIO_BODIES[audio].format(n=1)
    return f"( {body} )"


FORBIDDEN_BASIC = GstRtspServer.RTSPAuth.make_basic(FORBIDDEN_USER, FORBIDDEN_PASSWORD)


class MountAuth(GstRtspServer.RTSPAuth):
    """Basic auth on some mounts only; the others stay open to anonymous clients.

    A server-wide default token would answer anonymous requests for a protected mount with 404
    (no challenge, so clients never send credentials); here they get 401 with a Basic challenge.
    It counts, per protected mount, the requests it refused (401) and those of them that carried
    credentials (failed logins: what a real camera counts towards locking the account).
    """

    def __init__(self, protected: dict) -> None:
        super().__init__()
        self.protected = protected  # factory -> Mount

    def do_check(self, ctx, check: str) -> bool:
        cam = self.protected.get(ctx.factory) if check.startswith("auth.check.media.factory.") else None
        if cam is None:
            return True
        res, credentials = ctx.request.get_header(GstRtsp.RTSPHeaderField.AUTHORIZATION, 0)
        if res == GstRtsp.RTSPResult.OK and credentials.strip() == "Basic " + FORBIDDEN_BASIC:
            # (gst-rtsp-server itself answers a login without permission with 404, to hide the mount.)
            cam.refused_logins += 1
            code = GstRtsp.RTSPStatusCode.FORBIDDEN
            _res, response = GstRtsp.rtsp_message_new_response(code, GstRtsp.rtsp_status_as_text(code), ctx.request)
            ctx.client.send_message(ctx.session, response)
            return False
        allowed = GstRtspServer.RTSPAuth.do_check(self, ctx, check)
        if not allowed:
            cam.unauthorized += 1
            if res == GstRtsp.RTSPResult.OK:
                cam.refused_logins += 1
        return allowed


class TimestampShift:
    """The `jump` fault of one media: from the next non-key frame on, every buffer's timestamps move by
    an offset, as a camera's do when its clock is set or reset. Applied after clocksync, so the pace
    of the stream does not change; the payloader turns it into the same jump of the RTP timestamps."""

    def __init__(self) -> None:
        self.offset = 0  # ns
        self.pending: int | None = None  # ns, set by jump(); applied at the next non-key frame

    def probe(self, _pad, info):
        buf = info.get_buffer()
        pending = self.pending
        if pending is not None and buf.has_flags(Gst.BufferFlags.DELTA_UNIT) and buf.pts != Gst.CLOCK_TIME_NONE:
            self.pending = None
            self.offset = max(self.offset + pending, -buf.pts)  # never before 0: a reset to 0
        if self.offset:
            if buf.pts != Gst.CLOCK_TIME_NONE:
                buf.pts += self.offset
            if buf.dts != Gst.CLOCK_TIME_NONE:
                buf.dts += self.offset
        return Gst.PadProbeReturn.OK


class Mount:
    """One camera path: its factory, the medias it built, and its fault state."""

    def __init__(self, spec: dict, server: CameraServer) -> None:
        self.name: str = spec["name"]
        self.spec = spec
        self.path = "/" + self.name
        self.server = server
        self.stalled = False
        self.audio_stalled = False
        self.mounted = False
        self.medias: list = []
        self.attempts = 0  # connections that asked for this camera (their first request naming it)
        self.unauthorized = 0  # requests answered 401 (protected mounts)
        self.refused_logins = 0  # of those, the ones that carried credentials
        self.shifts: dict = {}  # media -> its TimestampShift
        self.factory = GstRtspServer.RTSPMediaFactory()
        self.factory.set_launch(launch_line(spec))
        self.factory.set_shared(True)
        self.factory.connect("media-configure", self._on_media_configure)

    def _on_media_configure(self, _factory, media) -> None:
        self.medias.append(media)
        media.connect("unprepared", self._on_unprepared)
        bin_ = media.get_element()
        parse = bin_.get_by_name("parse")
        if parse is not None:
            parse.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self._on_parsed)
        valve = bin_.get_by_name("valve")
        if valve is not None:
            if self.stalled:
                valve.set_property("drop", True)
            shift = TimestampShift()
            self.shifts[media] = shift
            valve.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, shift.probe)
        avalve = bin_.get_by_name("avalve")
        if avalve is not None and self.audio_stalled:
            avalve.set_property("drop", True)

    def _on_unprepared(self, media) -> None:
        if media in self.medias:
            self.medias.remove(media)
        self.shifts.pop(media, None)

    @staticmethod
    def _on_parsed(_pad, info):
        # h264parse/h265parse leave pts unset on a raw stream; with no B-frames pts equals dts.
        buf = info.get_buffer()
        if buf.pts == Gst.CLOCK_TIME_NONE:
            buf.pts = buf.dts
        return Gst.PadProbeReturn.OK

    @staticmethod
    def _until_keyframe(_pad, info):
        # A decoder cannot start on a P-frame: after a stall, the stream resumes on a keyframe.
        if info.get_buffer().has_flags(Gst.BufferFlags.DELTA_UNIT):
            return Gst.PadProbeReturn.DROP
        return Gst.PadProbeReturn.REMOVE

    def _valves(self) -> list:
        """The valves of every media: video first, then audio (a stalled camera sends neither)."""
        found = []
        for media in self.medias:
            bin_ = media.get_element()
            found += [v for v in (bin_.get_by_name("valve"), bin_.get_by_name("avalve")) if v is not None]
        return found

    def set_stalled(self, stalled: bool, video_only: bool = False) -> None:
        """Stall: clocksync keeps the pipeline on time while the valve drops every frame, and the audio
        valve the audio, unless video_only (a camera whose video encoder hung while its audio goes on)."""
        was, self.stalled = self.stalled, stalled
        self.audio_stalled = stalled and not video_only
        for valve in self._valves():
            video = valve.get_name() == "valve"
            if was and not stalled and video:
                valve.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self._until_keyframe)
            valve.set_property("drop", stalled if video else self.audio_stalled)

    def jump(self, seconds: float) -> None:
        """The stream's timestamps jump by `seconds` (negative: back, at most to the stream's start)."""
        for media, shift in self.shifts.items():
            # The server's sinks would wait for a jump forward on the clock (rate control): the pace is
            # clocksync's, upstream of the jump, anyway.
            media.set_rate_control(False)
            shift.pending = round(seconds * Gst.SECOND)

    def mount(self) -> None:
        if not self.mounted:
            self.server.mounts.add_factory(self.path, self.factory)
            self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            self.server.mounts.remove_factory(self.path)
            self.mounted = False

    def client_count(self) -> int:
        return len(self.server.clients_of(self))


class CameraServer:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.loop = GLib.MainLoop()
        self.rtsp = GstRtspServer.RTSPServer()
        self.rtsp.set_address("127.0.0.1")
        self.rtsp.set_service(str(int(spec.get("port", 0))))
        self.mounts = self.rtsp.get_mount_points()
        self.cameras: dict[str, Mount] = {}
        for m in spec["mounts"]:
            self.cameras[m["name"]] = Mount(m, self)
        if any(m.get("auth") for m in spec["mounts"]):
            self._configure_auth()
        self.port = 0
        self.control: socket.socket | None = None
        self._sockets: dict = {}  # client -> its Gio.Socket, to disconnect it (see close_clients)
        self._asked: dict = {}  # client -> names of the cameras it has asked for (counts attempts)
        self.rtsp.connect("client-connected", self._on_client_connected)

    def _on_client_connected(self, _server, client) -> None:
        self._sockets[client] = client.get_connection().get_read_socket()
        self._asked[client] = set()
        client.connect("closed", self._on_client_closed)
        # Every client starts with OPTIONS (FFmpeg, GStreamer, VLC), before any authentication.
        client.connect("options-request", self._on_request)
        client.connect("describe-request", self._on_request)

    def _on_client_closed(self, client) -> None:
        self._sockets.pop(client, None)
        self._asked.pop(client, None)

    def _on_request(self, client, ctx) -> None:
        uri = ctx.uri
        name = uri.abspath.strip("/").split("/")[0] if uri is not None and uri.abspath else ""
        cam = self.cameras.get(name)
        asked = self._asked.setdefault(client, set())
        if cam is not None and name not in asked:
            asked.add(name)
            cam.attempts += 1

    def _configure_auth(self) -> None:
        protected = {cam.factory: cam for cam in self.cameras.values() if cam.spec.get("auth")}
        auth = MountAuth(protected)
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", ROLE_ADMIN)
        self._auth, self._auth_token = auth, token
        self._basic = GstRtspServer.RTSPAuth.make_basic(AUTH_USER, AUTH_PASSWORD)
        auth.add_basic(self._basic, token)
        self.rtsp.set_auth(auth)
        perms = GstRtspServer.RTSPPermissions()
        perms.add_permission_for_role(ROLE_ADMIN, "media.factory.access", True)
        perms.add_permission_for_role(ROLE_ADMIN, "media.factory.construct", True)
        for factory in protected:
            factory.set_permissions(perms)

    # -- clients -------------------------------------------------------------------------------
    def clients_of(self, cam: Mount) -> list:
        """RTSP clients holding a session on one of this camera's medias."""
        found: list = []

        def session_media_filter(_sess, sm, _data=None):
            if sm.get_media() in cam.medias:
                found_here[0] = True
            return GstRtspServer.RTSPFilterResult.KEEP

        def session_filter(_client, sess, _data=None):
            sess.filter(session_media_filter, None)
            return GstRtspServer.RTSPFilterResult.KEEP

        def client_filter(_server, client, _data=None):
            found_here[0] = False
            client.session_filter(session_filter, None)
            if found_here[0]:
                found.append(client)
            return GstRtspServer.RTSPFilterResult.KEEP

        found_here = [False]
        self.rtsp.client_filter(client_filter, None)
        return found

    def close_clients(self, cam: Mount | None) -> int:
        """Disconnect the camera's clients (all clients when cam is None) as a camera does: their TCP
        connections are shut down, and each client's own thread sees the end and cleans up.

        Not gst_rtsp_client_close() from this (the main) thread: that raced with the client's thread
        when the client was itself tearing down, and once (in CI) left the server's client thread
        serving nobody: every later connection, to any mount, hung."""
        if cam is None:
            targets = list(self._sockets)
        else:
            targets = [c for c in self.clients_of(cam) if c in self._sockets]
        closed = []
        for client in targets:
            sock = self._sockets.get(client)
            try:
                if sock is not None:
                    sock.shutdown(True, True)
                    closed.append(client)
            except GLib.Error:
                pass  # the client closed on its own meanwhile
        # Answer once they are gone, as the old synchronous close did: a client reconnecting at once
        # then meets a fresh media, not the one being torn down. Bounded: their threads need neither
        # this loop nor this thread (it only sleeps, so the GIL is free for their "closed" handlers).
        deadline = time.monotonic() + CLOSE_WAIT_S
        while any(c in self._sockets for c in closed) and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(closed)

    # -- commands (run on the GLib main loop) ---------------------------------------------------
    def command(self, line: str) -> str:
        words = line.split()
        if not words:
            return "error empty command"
        verb, args = words[0].lower(), words[1:]
        if verb == "ping":
            return "ok pong"
        if verb == "status":
            parts = [f"{c.name}={'up' if c.mounted else 'stopped'}"
                     f"{(',stalled' if c.audio_stalled else ',video-stalled') if c.stalled else ''}"
                     f",clients:{c.client_count()}"
                     for c in self.cameras.values()]
            return "ok " + " ".join(parts)
        known = ("stop", "start", "restart", "stall", "stall-video", "resume", "drop", "counts", "password", "jump")
        if verb not in known:
            return f"error unknown command {verb!r} (known: {' '.join(known)} status ping)"
        if verb == "password":
            if len(args) != 2:
                return "error password needs a camera name and the new password"
        elif verb == "jump":
            if len(args) != 2:
                return "error jump needs a camera name and seconds (e.g. jump cam01 -20)"
            try:
                seconds = float(args[1])
            except ValueError:
                return f"error jump: {args[1]!r} is not a number of seconds"
            args = args[:1]
        elif len(args) != 1:
            return f"error {verb} needs exactly one camera name"
        cam = self.cameras.get(args[0])
        if cam is None:
            return f"error unknown camera {args[0]!r}"
        if verb == "counts":
            return f"ok attempts={cam.attempts} unauthorized={cam.unauthorized} refused_logins={cam.refused_logins}"
        if verb == "password":
            if not cam.spec.get("auth"):
                return f"error {cam.name} asks for no credentials"
            # The protected mounts share one account (user admin), as the cameras of one NVR would.
            self._auth.remove_basic(self._basic)
            self._basic = GstRtspServer.RTSPAuth.make_basic(AUTH_USER, args[1])
            self._auth.add_basic(self._basic, self._auth_token)
            return f"ok password of {AUTH_USER} changed"
        if verb == "jump":
            cam.jump(seconds)
            return f"ok {cam.name} timestamps jump by {seconds:g} s"
        if verb == "stop":
            cam.unmount()
            n = self.close_clients(cam)
            return f"ok stopped {cam.name}, closed {n} client(s)"
        if verb == "start":
            cam.set_stalled(False)
            cam.mount()
            return f"ok started {cam.name}"
        if verb == "restart":
            cam.unmount()
            n = self.close_clients(cam)
            cam.set_stalled(False)
            cam.mount()
            return f"ok restarted {cam.name}, closed {n} client(s)"
        if verb == "stall":
            cam.set_stalled(True)
            return f"ok stalled {cam.name}"
        if verb == "stall-video":
            cam.set_stalled(True, video_only=True)
            return f"ok stalled the video of {cam.name}"
        if verb == "resume":
            cam.set_stalled(False)
            return f"ok resumed {cam.name}"
        n = self.close_clients(cam)
        return f"ok dropped {n} client(s) of {cam.name}"

    def run_on_loop(self, line: str) -> str:
        """Run a command on the main loop from a control thread and wait for its answer."""
        done = threading.Event()
        answer = ["error the server is shutting down"]

        def call() -> bool:
            try:
                answer[0] = self.command(line)
            except Exception as exc:  # noqa: BLE001 - any failure becomes an error reply
                answer[0] = f"error {type(exc).__name__}: {exc}"
            done.set()
            return False

        GLib.idle_add(call)
        done.wait(10)
        return answer[0]

    # -- control service -----------------------------------------------------------------------
    def start_control(self) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(self.spec.get("control_port", 0))))
        sock.listen(16)
        self.control = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return sock.getsockname()[1]

    def _accept(self, control: socket.socket) -> None:
        while True:
            try:
                conn, _ = control.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb", buffering=0) as f:
            for raw in f:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                if line.lower() in ("quit", "exit"):
                    return
                f.write((self.run_on_loop(line) + "\n").encode())

    # -- life cycle ----------------------------------------------------------------------------
    def serve(self) -> int:
        if self.rtsp.attach(None) == 0:
            emit(f"error cannot listen for RTSP on 127.0.0.1:{self.spec.get('port', 0)} (port in use?)")
            return 1
        self.port = self.rtsp.get_bound_port()
        emit(f"rtsp-port {self.port}")
        try:
            control_port = self.start_control()
        except OSError as exc:
            emit(f"error cannot listen for control on 127.0.0.1:{self.spec.get('control_port', 0)}: {exc}")
            return 1
        emit(f"control-port {control_port}")
        for cam in self.cameras.values():
            cam.mount()
            emit(f"ready {cam.name} rtsp://127.0.0.1:{self.port}{cam.path}")
        emit("serving")
        for sig in (signal.SIGINT, signal.SIGTERM):
            GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, self._quit)
        threading.Thread(target=self._watch_stdin, daemon=True).start()
        self.loop.run()
        self.close_clients(None)
        if self.control is not None:
            self.control.close()
        return 0

    def _quit(self, *_args) -> bool:
        self.loop.quit()
        return False

    def _watch_stdin(self) -> None:
        try:
            # os.read, not sys.stdin: a thread blocked inside a buffered reader delays interpreter exit.
            while os.read(0, 4096):
                pass
        except (OSError, ValueError):
            pass
        GLib.idle_add(self._quit)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: rtsp_server.py SPEC.json\n")
        return 2
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    Gst.init(None)
    return CameraServer(spec).serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
