"""Recording one connection with the native copier (native_copy.pyx), when it is built.

`recorded_packets` replaces `container.demux()` in the camera session's loop: the ordinary video
packets of an open segment are muxed in C and never reach Python; the loop sees only the packets
that need a decision, and a summary of each batch the copier recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import av

try:  # built by scripts/build_native.py (bootstrap.sh); without it every packet is copied in Python
    from vms.recording.native_copy import (
        STATUS_ATTENTION,
        STATUS_END,
        STATUS_PACKET,
        STATUS_WRITE_FAILED,
        PacketCopier,
    )
    NATIVE_BUILT = True
except ImportError:  # pragma: no cover - depends on the build
    NATIVE_BUILT = False  # (and none of those names: nothing below uses them without a copier)

if TYPE_CHECKING:
    from vms.recording.recorder import StreamRecorder

# on_copied(count, bytes, first wall ms, last wall ms): a batch the copier recorded
CopiedCallback = Callable[[int, int, int, int], None]
# on_kept([(packet, wall ms)]): the packets of the current GOP the copier recorded and kept (`keep`)
KeptCallback = Callable[[list], None]


def native_copy_built() -> bool:
    return NATIVE_BUILT


def make_copier(container: av.container.InputContainer, streams: list, video_index: int, pause_s: float = 0,
                transport: str = "tcp") -> PacketCopier | None:
    """A PacketCopier reading `container`, or None if the module is not built or cannot serve it: a
    read timeout (PyAV checks it in its interrupt callback, which the copier does not arm) or more
    streams than it tracks. While armed it pauses up to `pause_s` between reads (0: never), over TCP
    or from a pipe only: over UDP a pause would let the socket's buffer overflow and drop packets. A
    pipe ("pipe": a GB28181 camera, whatever its station's transport) is filled by a receiving thread
    that keeps draining the camera's socket, so a pause only lets the PS gather in the pipe."""
    if not NATIVE_BUILT or container.read_timeout is not None:
        return None
    try:
        copier = PacketCopier(container, streams, video_index)
    except ValueError:
        return None
    copier.pause_us = round(pause_s * 1_000_000) if transport in ("tcp", "pipe") else 0
    return copier


def recorded_packets(copier: PacketCopier, recorder: StreamRecorder, on_copied: CopiedCallback,
                     copy_allowed: Callable[[], bool] = lambda: True,
                     on_kept: KeptCallback | None = None) -> Iterator[av.Packet | None]:
    """The packets the caller must give the recorder (and its observers), in stream order; None when
    the copier's `attention` was raised. Read errors raise as from demux(); the end of the stream ends
    the iteration. While copy_allowed() is false (asked before each pump) every packet is handed over.

    With `copier.keep`, the packets the copier records since the last keyframe stay in C (references,
    no Python object) and reach on_kept only when they must, so that whoever wants the current GOP
    gets it whole and in order: before a video packet of the same GOP goes through Python (copy not
    allowed, e.g. a live viewer came; no segment to copy into; a packet without a timestamp). A
    keyframe starts a new GOP: the copier drops what it kept."""
    packet, attention, end, write_failed = STATUS_PACKET, STATUS_ATTENTION, STATUS_END, STATUS_WRITE_FAILED
    arm, absorb, pump = recorder.arm, recorder.absorb, copier.pump
    video_index = copier.video_index
    try:
        while True:
            # Armed afresh before each pump: between two pumps the recorder may have cut, closed or
            # lost its segment, and the copier must never write into a closed one.
            if copy_allowed():
                arm(copier)
            else:
                copier.disarm()
            status = pump()
            if copier.copied:
                first_ms, last_ms = absorb(copier)
                on_copied(copier.copied, copier.copied_bytes, first_ms, last_ms)
            if status == packet:
                pkt, copier.packet = copier.packet, None
                assert pkt is not None, "pump() leaves the packet it returns STATUS_PACKET for"
                if copier.kept_count and pkt.stream_index == video_index:
                    _hand_kept(copier, recorder, on_kept)  # (never a keyframe: it dropped them)
                yield pkt
            elif status == attention:
                yield None
            elif status == end:
                return
            elif status == write_failed:
                recorder.copy_failed(copier)
            # else a batch of `batch_ticks` (recorder.BATCH_SECONDS): reported above
    finally:
        copier.disarm()


def _hand_kept(copier, recorder: StreamRecorder, on_kept: KeptCallback | None) -> None:
    kept = recorder.kept(copier)
    if kept and on_kept is not None:
        on_kept(kept)
