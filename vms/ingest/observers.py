"""The interface through which the one camera session shares its packets with other concerns."""

from __future__ import annotations

from typing import Protocol

import av


class StreamObserver(Protocol):
    """Called from the camera session's thread, in order. Implementations must be cheap per packet
    (well under a millisecond on average) and must not raise: an exception is logged and the
    observer is dropped for the rest of the connection, so it can never stop the recording.
    An observer with a true `keyframes_only` attribute gets on_packet for keyframes only, after the
    observers that get every packet."""

    def on_connect(self, stream: av.video.stream.VideoStream, wall_ms: int) -> None:
        """A new connection delivers this video stream (codec parameters, extradata, time_base)."""

    def on_packet(self, packet: av.Packet, wall_ms: int) -> None:
        """One video packet with a usable pts (the session drops or fixes packets without one);
        wall_ms is the session's wall-clock estimate of the packet's capture time."""

    def on_disconnect(self, wall_ms: int, reason: str) -> None:
        """The connection ended (reason: a gap reason such as "stalled" or "stream_ended")."""

    # Optional, for the native copier (vms.recording.copier), which records ordinary video packets
    # without handing them to Python. It runs only if every observer that gets every packet has
    # on_copied; `copied_packets = True` asks for the packets themselves (references, no copy).
    # def on_copied(self, count, nbytes, first_ms, last_ms, kept: list[(packet, wall_ms)] | None) -> None
    # def wants_each_packet(self) -> bool: while true, the copier hands every packet over


class ObserverFactory(Protocol):
    def __call__(self, station_id: str) -> StreamObserver | None: ...
