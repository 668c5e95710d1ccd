"""`vms simulate`: serve looping simulated RTSP cameras on 127.0.0.1 (or GB/T 28181 devices that register to a
platform), and inject faults into them."""

from __future__ import annotations

import socket
import sys
from enum import StrEnum
from pathlib import Path

import typer

from vms.catalog.urls import mask_url
from vms.cli.context import fail, settings
from vms.core.signals import StopSignals
from vms.simulate import AUDIO_KINDS, EXTRA_MOUNTS, Simulator, SimulatorError
from vms.simulate.content import pattern_clip
from vms.simulate.gb28181_device import (
    FAULT_ACTIONS,
    GbDeviceSpec,
    GbSimulator,
    GbSimulatorError,
    default_channel_name,
    gb_ids,
)

app = typer.Typer(
    help="Simulated RTSP cameras (looping H.264 on 127.0.0.1) with fault injection; see docs/simulator.md.",
)


class Content(StrEnum):
    pattern = "pattern"
    station_day = "station-day"


class Audio(StrEnum):
    none = "none"
    aac = "aac"
    pcma = "pcma"
    pcmu = "pcmu"


# Spelled out for the type checker; the simulator's own list is the one that counts.
assert set(Audio) == set(AUDIO_KINDS), "vms.simulate.AUDIO_KINDS changed: update Audio"


class SipTransport(StrEnum):
    udp = "udp"
    tcp = "tcp"


class Codec(StrEnum):
    h264 = "h264"
    h265 = "h265"


GbFaultAction = StrEnum("GbFaultAction", {name: name for name in FAULT_ACTIONS})  # type: ignore[misc]


class FaultAction(StrEnum):
    stop = "stop"
    start = "start"
    restart = "restart"
    stall = "stall"
    stall_video = "stall-video"
    resume = "resume"
    drop = "drop"
    jump = "jump"


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    cameras: int = typer.Option(1, "--cameras", "-n", min=0, help="number of cameras (cam01..camNN)"),
    port: int | None = typer.Option(None, help="RTSP port; default simulate.port from the settings, 0 = any"),
    control_port: int | None = typer.Option(
        None, help="fault control port on 127.0.0.1; default the RTSP port + 1 (any free port if RTSP is 0)"),
    content: Content | None = typer.Option(None, help="what the cameras show; default simulate.content"),
    source: Path | None = typer.Option(None, help="serve this video file instead (raw .h264 needs --fps)"),
    day_seconds: float | None = typer.Option(
        None, min=10, help="length of the compressed station day loop; default simulate.day_seconds"),
    width: int | None = typer.Option(None, help="default simulate.width"),
    height: int | None = typer.Option(None, help="default simulate.height"),
    fps: int | None = typer.Option(None, help="default simulate.fps"),
    bitrate: int | None = typer.Option(None, help="kbit/s; default simulate.bitrate_kbps"),
    gop: int = typer.Option(30, min=1, help="frames from one keyframe to the next"),
    names: str | None = typer.Option(None, help="comma-separated camera names instead of cam01..camNN"),
    extra: list[str] = typer.Option(
        [], "--extra", help=f"extra test mount, repeatable: {', '.join(EXTRA_MOUNTS)}"),
    cache_dir: Path | None = typer.Option(None, help="default <data_dir>/cache/simulate"),
    audio: Audio = typer.Option(Audio.none, help="audio every camera sends: pcma, pcmu (G.711), aac or none"),
    gb28181: int | None = typer.Option(
        None, "--gb28181", min=1, max=9999, help="simulate N GB/T 28181 devices registering to --server instead "
        "of RTSP cameras (one channel each)"),
    server: str = typer.Option("127.0.0.1:5060", help="GB28181: the platform's SIP address HOST:PORT"),
    server_id: str | None = typer.Option(None, help="GB28181: the platform's 20-digit ID; default <domain>2000000001"),
    domain: str = typer.Option("3402000000", help="GB28181: the 10-digit SIP domain (device IDs are built from it)"),
    password: str = typer.Option("12345678", help="GB28181: the devices' registration password"),
    transport: SipTransport = typer.Option(SipTransport.udp, help="GB28181: SIP over udp or tcp"),
    codec: Codec = typer.Option(Codec.h264, help="GB28181: the devices' video (h265 shows the pattern)"),
    keepalive: float = typer.Option(5.0, min=0.1, max=3600, help="GB28181: seconds between keepalives"),
    host: str = typer.Option("127.0.0.1", help="GB28181: the devices' own address (SIP, SDP and media)"),
) -> None:
    """Serve until SIGINT/SIGTERM; print each stream's URL on its own line as it becomes ready."""
    if ctx.invoked_subcommand is not None:
        return
    s = settings()
    sim_settings = s.simulate
    if gb28181 is not None:
        _serve_gb28181(
            gb28181, server=server, server_id=server_id, domain=domain, password=password, transport=transport.value,
            codec=codec.value, keepalive=keepalive, host=host, audio=audio.value, control_port=control_port,
            clip_options=dict(
                width=width or sim_settings.width, height=height or sim_settings.height,
                fps=fps or sim_settings.fps, bitrate_kbps=bitrate or sim_settings.bitrate_kbps, gop=gop,
                content=content.value if content else sim_settings.content, source=source,
                cache_dir=cache_dir or s.data_dir / "cache" / "simulate",
                day_seconds=day_seconds or sim_settings.day_seconds),
            explicit_content=content is not None or source is not None, timezone=s.timezone)
        return
    rtsp_port = sim_settings.port if port is None else port
    if control_port is None:
        control_port = rtsp_port + 1 if rtsp_port else 0
    name_list = [n.strip() for n in names.split(",")] if names else None
    if name_list is not None and cameras == 1 and len(name_list) != 1:
        cameras = len(name_list)
    stop = StopSignals()  # not an Event set by the handler: see vms.core.signals
    try:
        sim = Simulator(
            cameras=cameras, width=width or sim_settings.width, height=height or sim_settings.height,
            fps=fps or sim_settings.fps, bitrate_kbps=bitrate or sim_settings.bitrate_kbps, gop=gop,
            content=content.value if content else sim_settings.content, source=source, port=rtsp_port,
            names=name_list, extra_mounts=extra, cache_dir=cache_dir or s.data_dir / "cache" / "simulate",
            day_seconds=day_seconds or sim_settings.day_seconds, control_port=control_port, audio=audio.value,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        # Credentials (the auth mount's) are never printed: see docs/simulator.md for them.
        sim.start(on_ready=lambda _name, url: print(mask_url(url), flush=True))
    except (SimulatorError, ValueError) as exc:
        raise fail(str(exc)) from None
    try:
        typer.echo(f"serving {len(sim.urls)} stream(s); fault control on 127.0.0.1:{sim.control_port}", err=True)
        while not stop.wait(0.5):
            if not sim.running:
                raise fail("the RTSP server exited unexpectedly", 1)
    finally:
        sim.close()


def _serve_gb28181(devices: int, *, server: str, server_id: str | None, domain: str, password: str,
                   transport: str, codec: str, keepalive: float, host: str, audio: str, control_port: int | None,
                   clip_options: dict, explicit_content: bool, timezone: str) -> None:
    """N simulated GB/T 28181 devices of one channel each, on the RTSP simulator's clip."""
    if audio == "aac":
        raise fail("GB28181 devices send G.711: --audio pcma, pcmu or none")
    server_host, sep, port_text = server.rpartition(":")
    if not sep or not server_host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise fail(f"--server must be HOST:PORT, got {server!r}")
    if codec == "h265" and explicit_content:
        raise fail("--codec h265 devices show the pattern: --content and --source are for H.264")
    stop = StopSignals()  # not an Event set by the handler: see vms.core.signals
    try:
        ids = [gb_ids(domain, n) for n in range(1, devices + 1)]
        # The RTSP simulator's clip: the same cache, the same content choice.
        clip_sim = Simulator(cameras=1, **clip_options)
        if codec == "h265":
            clip = pattern_clip(clip_sim.cache_dir, clip_sim.format, clip_sim.pattern_seconds, codec="libx265")
        else:
            clip_sim.prepare()
            assert clip_sim.clip_path is not None
            clip = clip_sim.clip_path
        specs = [GbDeviceSpec(device_id, [(channel_id, default_channel_name(n))], password, clip,
                              "hevc" if codec == "h265" else "h264", clip_sim.format.fps,
                              None if audio == "none" else audio)
                 for n, (device_id, channel_id) in enumerate(ids, start=1)]
        sim = GbSimulator(specs, (server_host, int(port_text)), server_id or f"{domain}2000000001", domain,
                          sip_transport=transport, keepalive_seconds=keepalive, host=host, timezone=timezone,
                          control_port=control_port or 0)
        sim.start()
    except (ValueError, SimulatorError, GbSimulatorError) as exc:
        raise fail(str(exc)) from None
    try:
        for url in sim.urls():
            print(url, flush=True)
        typer.echo(f"serving {devices} GB28181 device(s) registering to {server} over {transport}; "
                   f"fault control on 127.0.0.1:{sim.control_port}", err=True)
        while not stop.wait(0.5):
            if not sim.running:
                raise fail("the GB28181 simulator stopped unexpectedly", 1)
    finally:
        sim.close()


@app.command()
def fault(
    action: FaultAction = typer.Argument(
        ..., help="stop | start | restart | stall | stall-video | resume | drop | jump"),
    camera: str = typer.Argument(..., help="camera (mount) name, e.g. cam02"),
    control_port: int = typer.Option(..., help="the simulator's control port (printed when it starts)"),
    seconds: float | None = typer.Option(
        None, help="jump only: how far the camera's timestamps jump (negative: back; -1e9 resets them to 0)"),
) -> None:
    """Inject a fault into a running simulator."""
    if (action == FaultAction.jump) != (seconds is not None):
        raise fail("--seconds goes with jump, and only with jump")
    typer.echo(_send(control_port, f"{action.value} {camera}" + (f" {seconds:g}" if seconds is not None else "")))


@app.command("gb-fault")
def gb_fault(
    action: GbFaultAction = typer.Argument(..., help=" | ".join(FAULT_ACTIONS)),
    device: str = typer.Argument(..., help="the device's 20-digit ID"),
    control_port: int = typer.Option(..., help="the simulator's control port (printed when it starts)"),
    value: str | None = typer.Option(None, help="wrong-ssrc: 'hidden' (the answer still says the offer's y=); "
                                                "password: the new password"),
) -> None:
    """Inject a fault into a simulated GB28181 device (vms simulate --gb28181 N)."""
    if value is not None and (not value or any(c.isspace() for c in value)):
        raise fail("--value must be one word")
    typer.echo(_send(control_port, f"{action.value} {device}" + (f" {value}" if value else "")))


@app.command()
def status(control_port: int = typer.Option(..., help="the simulator's control port")) -> None:
    """Show each mount (up or stopped, stalled, connected clients) or GB28181 device (registered, sessions)."""
    for item in _send(control_port, "status").split():
        typer.echo(item)


def _send(control_port: int, line: str) -> str:
    try:
        with socket.create_connection(("127.0.0.1", control_port), timeout=15) as conn, \
                conn.makefile("rwb", buffering=0) as f:
            f.write((line + "\n").encode())
            reply = f.readline().decode("utf-8", "replace").strip()
    except OSError as exc:
        raise fail(f"no simulator control service on 127.0.0.1:{control_port} ({exc})") from None
    word, _, rest = reply.partition(" ")
    if word != "ok":
        raise fail(rest or reply or "no answer")
    return rest


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
