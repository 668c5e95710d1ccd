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
    # on_copied.
    # def on_copied(self, count, nbytes, first_ms, last_ms) -> None: a batch recorded (about a second)
    # def wants_each_packet(self) -> bool: while true, the copier hands every packet over
    # `copied_packets = True` asks for the packets of the current GOP the copier recorded: it keeps
    # them in C (references, no copy, no Python object) and hands them over only when they must be:
    # def on_kept(self, packets: list[(packet, wall_ms)]) -> None: before a video packet of the same
    #     GOP goes through Python (on_packet), and before the copier stops copying (e.g. because
    #     wants_each_packet() turned true); packets in stream order, each once
    # def on_copier(self, wake: Callable[[], None] | None) -> None: the copier started reading this
    #     connection (wake(), from any thread, ends its current read loop so that a change of
    #     wants_each_packet() is seen at once), or stopped (None)


class ObserverFactory(Protocol):
    def __call__(self, station_id: str) -> StreamObserver | None: ...
