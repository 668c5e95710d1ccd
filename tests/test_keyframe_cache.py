"""The snapshot keyframe file: rewritten every 30 s when nobody asks, at every keyframe (at most every
2 s) for a minute after someone asked."""

from __future__ import annotations

import os
import time

import av
import pytest
from ingest_support import make_clip

from vms.ingest.keyframes import KeyframeCacheObserver, latest_keyframe, request_keyframe

SID = "pingshan-town"
T0 = 1_800_000_000_000


@pytest.fixture(scope="module")
def keyframes(tmp_path_factory):
    """The stream and its first keyframe packet from a real H.264 clip."""
    path = tmp_path_factory.mktemp("clip") / "clip.ts"
    make_clip(path, seconds=2)
    container = av.open(str(path))
    video = container.streams.video[0]
    packet = next(p for p in container.demux(video) if p.is_keyframe)
    yield video, packet
    container.close()


def written_at(data_dir) -> int | None:
    kf = latest_keyframe(data_dir, SID)
    return kf.wall_ms if kf else None


def test_idle_every_30_s_and_every_keyframe_after_a_request(tmp_path, keyframes):
    video, packet = keyframes
    obs = KeyframeCacheObserver(tmp_path, SID)
    obs.on_connect(video, T0)
    obs.on_packet(packet, T0)
    assert written_at(tmp_path) == T0  # the first keyframe of a connection is always kept
    obs.on_packet(packet, T0 + 2_000)
    obs.on_packet(packet, T0 + 29_000)
    assert written_at(tmp_path) == T0  # nobody asked: no rewrite within 30 s
    obs.on_packet(packet, T0 + 30_000)
    assert written_at(tmp_path) == T0 + 30_000

    request_keyframe(tmp_path, SID)
    obs.on_packet(packet, T0 + 31_000)
    assert written_at(tmp_path) == T0 + 30_000  # at most every 2 s even when asked
    obs.on_packet(packet, T0 + 32_000)
    assert written_at(tmp_path) == T0 + 32_000
    obs.on_packet(packet, T0 + 34_000)
    assert written_at(tmp_path) == T0 + 34_000
    kf = latest_keyframe(tmp_path, SID)
    assert kf.decode().width == video.codec_context.width  # parameter sets included: decodes alone

    # A request older than a minute no longer counts.
    marker = tmp_path / "run" / "keyframes" / f"{SID}.want"
    old = time.time() - 61
    os.utime(marker, (old, old))
    obs.on_packet(packet, T0 + 36_000)
    assert written_at(tmp_path) == T0 + 34_000


def test_non_keyframes_are_never_written(tmp_path, keyframes):
    video, _packet = keyframes
    obs = KeyframeCacheObserver(tmp_path, SID)
    obs.on_connect(video, T0)
    request_keyframe(tmp_path, SID)
    obs.on_packet(av.Packet(b"\x00\x00\x00\x01\x41\x9a"), T0)
    assert written_at(tmp_path) is None


def test_a_failed_write_never_raises_and_writing_resumes(tmp_path, keyframes):
    """Issue 16: an OSError (full or read-only disk) raised into the camera thread, whose session then
    dropped the observer for good: snapshots stayed stale until the worker restarted. Now the write is
    tried again at the next due keyframe."""
    video, packet = keyframes
    obs = KeyframeCacheObserver(tmp_path, SID)
    obs.on_connect(video, T0)
    obs.on_packet(packet, T0)
    blocker = tmp_path / "run" / "keyframes" / f"{SID}.tmp"
    blocker.mkdir()  # opening the temporary file now fails (IsADirectoryError, an OSError)
    obs.on_packet(packet, T0 + 30_000)  # must not raise
    assert written_at(tmp_path) == T0
    blocker.rmdir()
    obs.on_packet(packet, T0 + 31_000)
    assert written_at(tmp_path) == T0  # the failed attempt counts: no retry at every keyframe
    obs.on_packet(packet, T0 + 60_000)
    assert written_at(tmp_path) == T0 + 60_000
