"""Writes one segment: packets copied (never transcoded) into a fragmented MP4.

A fragment ends at every keyframe (`frag_keyframe`), and `empty_moov` puts the header first, so
the file is playable while it grows and, after a kill -9, up to its last complete fragment.
Writes go through a Python file object so that the segment can be fsynced before its row commits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import av

from vms.recording.volumes import fsync_dir

FMP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}


class SegmentFile:
    """One open segment file. Timestamps given to write() are in the template stream's time base,
    relative to the segment start (the caller keeps them monotonic)."""

    def __init__(self, path: Path, video: av.video.stream.VideoStream,
                 audio: av.audio.stream.AudioStream | None = None, video_parameters: dict | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = open(path, "xb")  # never overwrite footage
        try:
            self._container = av.open(self._file, "w", format="mp4", options=dict(FMP4_OPTIONS))
            self._video = self._container.add_stream_from_template(video)
            self._video.time_base = video.time_base
            for key, value in (video_parameters or {}).items():
                # Parameters that changed mid-connection (width, height, extradata).
                setattr(self._video.codec_context, key, value)
            self._audio = None
            if audio is not None:
                self._audio = self._container.add_stream_from_template(audio)
                self._audio.time_base = audio.time_base
        except Exception:
            self._file.close()
            path.unlink(missing_ok=True)
            raise
        self.bytes_hint = 0
        self._closed = False
        fsync_dir(path.parent)

    def write_video(self, packet: av.Packet, dts: int, pts: int) -> None:
        packet.stream = self._video
        packet.dts = dts
        packet.pts = pts
        self._container.mux(packet)

    def write_audio(self, packet: av.Packet, dts: int, pts: int) -> None:
        if self._audio is None:
            return
        packet.stream = self._audio
        packet.dts = dts
        packet.pts = pts
        self._container.mux(packet)

    def size(self) -> int:
        return self._file.tell()

    def sync(self) -> None:
        """Push what the muxer has written to disk."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> int:
        """Finish the last fragment, fsync the file, return its size. Idempotent."""
        if self._closed:
            return self.path.stat().st_size
        self._closed = True
        try:
            self._container.close()
        finally:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        return self.path.stat().st_size

    def abandon(self) -> None:
        """Close without caring about errors (the camera failed mid-write); what is on disk stays."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - whatever the muxer says, the file keeps its fragments
            pass
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
