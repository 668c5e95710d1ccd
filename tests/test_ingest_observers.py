"""The observer interface (vms.ingest.observers.StreamObserver): the session calls every hook an observer
may have without probing for it (issue 17 item 11), so an observer that defines only the three it needs
gets the defaults, which keep every packet coming to it."""

import pytest

from vms.core.clock import SimulatedClock
from vms.ingest.observers import StreamObserver
from vms.ingest.session import CameraSession


class MinimalObserver(StreamObserver):
    """Only what it must define: no native copier hook at all."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_connect(self, stream, wall_ms: int) -> None:
        self.calls.append("connect")

    def on_packet(self, packet, wall_ms: int) -> None:
        self.calls.append("packet")

    def on_disconnect(self, wall_ms: int, reason: str) -> None:
        self.calls.append(f"disconnect {reason}")


class BatchObserver(MinimalObserver):
    takes_copied = True
    copied_packets = True

    def __init__(self) -> None:
        super().__init__()
        self.viewers = 0
        self.wakes: list[object] = []

    def wants_each_packet(self) -> bool:
        return self.viewers > 0

    def on_copier(self, wake) -> None:
        self.wakes.append(wake)


def _session(settings, observers: list[StreamObserver]) -> CameraSession:
    # Never started: only its observer bookkeeping is exercised (no recorder, no index needed).
    return CameraSession("pingshan-town", "rtsp://camera.invalid/", "tcp", None, observers,
                         settings.ingest, SimulatedClock(), None)


def test_an_observer_must_define_the_three_packet_hooks():
    class NoPackets(StreamObserver):
        def on_connect(self, stream, wall_ms: int) -> None: ...
        def on_disconnect(self, wall_ms: int, reason: str) -> None: ...

    with pytest.raises(TypeError, match="on_packet"):
        NoPackets()


def test_an_observer_without_copier_hooks_gets_every_packet_and_is_never_dropped(settings):
    minimal = MinimalObserver()
    session = _session(settings, [minimal])
    # It does not take the copier's batches, so no copier runs (it needs every packet)...
    assert not session._copier_may_run()
    # ...and every hook the session may call has a default that does not raise.
    assert session._copy_allowed()
    session._tell_gop_observers(lambda: None)
    session._copied(30, 1000, 0, 1000)
    session._kept([])
    assert session.observers == [minimal]
    assert minimal.calls == []


def test_the_copier_runs_only_when_every_packet_observer_takes_its_batches(settings):
    batch = BatchObserver()
    session = _session(settings, [batch])
    assert session._copier_may_run()
    session._tell_gop_observers(print)
    assert batch.wakes == [print]
    assert session._copy_allowed()
    batch.viewers = 1  # a live viewer: every packet as it comes
    assert not session._copy_allowed()

    assert not _session(settings, [batch, MinimalObserver()])._copier_may_run()
    keyframes_only = MinimalObserver()
    keyframes_only.keyframes_only = True  # not among the observers that get every packet
    assert _session(settings, [batch, keyframes_only])._copier_may_run()
