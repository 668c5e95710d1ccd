"""The SDP of a GB/T 28181 INVITE (offer) and of the device's answer.

Written and read here rather than by a general SDP library: GB adds `y=` (the SSRC, ten decimal digits)
and `f=` lines that general parsers drop, and devices answer with their own port, address, SSRC and
TCP role, which the media receiver must follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Transport = Literal["udp", "tcp-passive", "tcp-active"]
Purpose = Literal["Play", "Playback", "Download"]


def offer(*, device_id: str, media_host: str, media_port: int, transport: Transport, ssrc: str,
          purpose: Purpose = "Play", channel_id: str = "", start_s: int = 0, end_s: int = 0,
          download_speed: int = 4, stream_number: int = 0) -> bytes:
    """Our offer: `recvonly`, PS on 96 (H.264 98, H.265 99 also listed, as WVP does). For tcp-passive we
    listen and the device connects (`a=setup:passive` is *our* role); tcp-active: we connect."""
    proto = "RTP/AVP" if transport == "udp" else "TCP/RTP/AVP"
    lines = ["v=0", f"o={device_id} 0 0 IN IP4 {media_host}", f"s={purpose}"]
    if purpose != "Play":
        lines.append(f"u={channel_id}:0")
    lines += [f"c=IN IP4 {media_host}", f"t={start_s} {end_s}" if purpose != "Play" else "t=0 0",
              f"m=video {media_port} {proto} 96 98 99", "a=recvonly", "a=rtpmap:96 PS/90000",
              "a=rtpmap:98 H264/90000", "a=rtpmap:99 H265/90000"]
    if transport == "tcp-passive":
        lines += ["a=setup:passive", "a=connection:new"]
    elif transport == "tcp-active":
        lines += ["a=setup:active", "a=connection:new"]
    if purpose == "Download":
        lines.append(f"a=downloadspeed:{download_speed}")
    if stream_number:  # the sub-stream, in the three spellings devices know
        lines += [f"a=stream:{stream_number}", f"a=streamnumber:{stream_number}",
                  f"a=streamprofile:{stream_number}"]
    lines.append(f"y={ssrc}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


@dataclass
class SessionDescription:
    purpose: str = ""
    host: str = ""  # c= (or o=) address
    port: int = 0  # m=video port
    proto: str = ""  # RTP/AVP or TCP/RTP/AVP
    payload_types: tuple[int, ...] = ()
    rtpmap: dict[int, str] | None = None
    setup: str | None = None  # a=setup: role of the side that wrote it
    ssrc: str | None = None  # y=
    format_line: str | None = None  # f=
    start_s: int = 0
    end_s: int = 0
    channel: str = ""  # u= of a playback

    @property
    def tcp(self) -> bool:
        return self.proto.upper().startswith("TCP")


class SdpError(ValueError):
    pass


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²", which int() refuses."""
    return text.isascii() and text.isdigit()


def parse(body: bytes) -> SessionDescription:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("gb18030", errors="replace")
    sd = SessionDescription(rtpmap={})
    origin_host = ""
    in_video = False
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:].strip()
        if kind == "s":
            sd.purpose = value
        elif kind == "o":
            parts = value.split()
            if len(parts) >= 6:
                origin_host = parts[5]
        elif kind == "c":
            parts = value.split()
            if len(parts) >= 3:
                sd.host = parts[2].split("/")[0]
        elif kind == "t":
            parts = value.split()
            if len(parts) == 2 and all(_is_number(p) for p in parts):
                sd.start_s, sd.end_s = int(parts[0]), int(parts[1])
        elif kind == "u":
            sd.channel = value.split(":")[0]
        elif kind == "m":
            parts = value.split()
            in_video = bool(parts) and parts[0] == "video"
            if in_video and len(parts) >= 3:
                if not _is_number(parts[1].split("/")[0]):
                    raise SdpError(f"bad media port in m={value[:60]}")
                sd.port = int(parts[1].split("/")[0])
                sd.proto = parts[2]
                sd.payload_types = tuple(int(p) for p in parts[3:] if _is_number(p))
        elif kind == "a" and in_video:
            name, _, attr = value.partition(":")
            if name == "rtpmap" and sd.rtpmap is not None:
                pt, _, codec = attr.partition(" ")
                if _is_number(pt):
                    sd.rtpmap[int(pt)] = codec.strip()
            elif name == "setup":
                sd.setup = attr.strip().lower()
        elif kind == "y":
            sd.ssrc = value
        elif kind == "f":
            sd.format_line = value
    if not sd.host:
        sd.host = origin_host
    if not sd.port:
        raise SdpError("the SDP has no video media line with a port")
    if not 0 < sd.port < 65536:
        raise SdpError(f"media port {sd.port} out of range")
    return sd


def ssrc_for(domain: str, serial: int, history: bool = False) -> str:
    """`y=`: 0 (live) or 1 (history), the 4th-8th digits of the domain, a 4-digit serial (as WVP)."""
    return f"{1 if history else 0}{domain[3:8]}{serial % 10000:04d}"
