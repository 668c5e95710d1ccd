"""The interface through which the one camera session shares its packets with other concerns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

import av

# wake(), from any thread, ends the native copier's current read loop (see on_copier)
CopierWake = Callable[[], None]


class StreamObserver(ABC):
    """Called from the camera session's thread, in order. Implementations must be cheap per packet
    (well under a millisecond on average) and must not raise: an exception is logged and the
    observer is dropped for the rest of the connection, so it can never stop the recording.

    Observers subclass this class: the session calls every method and reads every flag below
    without probing for it, and an observer that does not care about one inherits its default.
    """

    # True: on_packet is called for keyframes only, after the observers that get every packet.
    keyframes_only: bool = False

    @abstractmethod
    def on_connect(self, stream: av.video.stream.VideoStream, wall_ms: int) -> None:
        """A new connection delivers this video stream (codec parameters, extradata, time_base)."""

    @abstractmethod
    def on_packet(self, packet: av.Packet, wall_ms: int) -> None:
        """One video packet with a usable pts (the session drops or fixes packets without one);
        wall_ms is the session's wall-clock estimate of the packet's capture time."""

    @abstractmethod
    def on_disconnect(self, wall_ms: int, reason: str) -> None:
        """The connection ended (reason: a gap reason such as "stalled" or "stream_ended")."""

    # --- the native copier (vms.recording.copier) --------------------------------------------------
    # It records ordinary video packets without handing them to Python, so it runs only if every
    # observer that gets every packet says on_copied stands in for them (`takes_copied`); False, the
    # default, for an observer that needs every packet itself.
    takes_copied: bool = False
    # True asks for the packets of the current GOP the copier recorded: it keeps them in C
    # (references, no copy, no Python object) and hands them over (on_kept) only when they must be.
    copied_packets: bool = False

    def on_copied(self, count: int, nbytes: int, first_ms: int, last_ms: int) -> None:  # noqa: B027 - optional
        """A batch the copier recorded (up to a keyframe or recorder.BATCH_SECONDS): `count` packets,
        `nbytes`, their wall times."""

    def wants_each_packet(self) -> bool:
        """While true, the copier hands every packet over (asked before each of its read loops)."""
        return False

    def on_kept(self, packets: list[tuple[av.Packet, int]]) -> None:  # noqa: B027 - optional
        """With `copied_packets`: (packet, wall_ms) of the current GOP the copier recorded, in stream
        order, each once: before a video packet of the same GOP goes through Python (on_packet), and
        before the copier stops copying (e.g. because wants_each_packet() turned true)."""

    def on_copier(self, wake: CopierWake | None) -> None:  # noqa: B027 - optional
        """With `copied_packets`: the copier started reading this connection (wake(), from any
        thread, ends its current read loop so that a change of wants_each_packet() is seen at once),
        or stopped (None)."""


class ObserverFactory(Protocol):
    def __call__(self, station_id: str) -> StreamObserver | None: ...
