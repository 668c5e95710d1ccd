"""Writes one segment: video packets copied (never transcoded) into a fragmented MP4, with the
camera's audio (copied, or G.711 as the AAC its transcoder made: vms/recording/audio.py).

A fragment ends at every keyframe (`frag_keyframe`) and after at most FRAGMENT_SECONDS, and
`empty_moov` puts the header first, so the file is playable while it grows and, after a kill -9, up
to its last complete fragment.
FFmpeg writes the file itself (a Python file object would cost a GIL round trip per write); a
second descriptor on the same file lets us fsync it before its index row commits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import av

from vms.recording.audio import G711ToAac
from vms.recording.fmp4 import playable_length
from vms.recording.volumes import fsync_dir

write_header: Callable[[av.container.OutputContainer], None] | None
try:  # built by scripts/build_native.py; without it PyAV writes the header (and opens a decoder)
    from vms.recording.native_copy import write_header
except ImportError:  # pragma: no cover - depends on the build
    write_header = None

# The muxer holds a fragment in memory until it ends. Fragments of at most half a second, whatever
# the camera's GOP (2 s here, 10 s on some "smart" codecs): 0.5 MB less per 2 Mbps camera than one
# fragment per GOP, and a kill -9 loses about that much (half a second plus a frame). Costs +0.1 %
# file size and ~1 ms more to verify a 60 s segment; the CPU of muxing did not rise measurably
# (docs/benchmarks-history.md).
FRAGMENT_SECONDS = 0.5
# flush_packets: hand each fragment to the OS as soon as the muxer finishes it (else FFmpeg holds
# fragments in its buffer and a kill -9 loses them).
# A segment's audio rarely starts exactly with its first frame (an AAC frame is 21-128 ms). Without
# an edit list (none in a fragmented file) FFmpeg moves a track's first sample to 0, lengthening it:
# the first audio frame of every segment would play early. frag_discont makes each track's first
# fragment start at its own first timestamp (tfdt), and that only happens if timestamps are not
# shifted to zero (avoid_negative_ts) and no edit list is asked for. Video-only files are unchanged,
# byte for byte.
# max_interleave_delta: FFmpeg holds a packet until every stream has one queued, or 10 s have gathered:
# a camera's audio comes up to ~0.3 s after its video (transcoded: the encoder's lag) or stops, and the
# video waited in memory for it (10 s lost to a kill -9). A fragment keeps each track's samples apart
# (one run per track), so nothing needs the tracks interleaved: no packet waits.
FMP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof+frag_discont", "flush_packets": "1",
                "frag_duration": str(int(FRAGMENT_SECONDS * 1_000_000)), "use_editlist": "0",
                "avoid_negative_ts": "make_non_negative", "max_interleave_delta": "1"}
# The sample entry of H.265 in every MP4 written (segments, playback, exports, live): see add_copy_stream.
HEVC_SAMPLE_ENTRY = "hvc1"


def add_copy_stream(container: av.container.OutputContainer, template: av.stream.Stream) -> av.stream.Stream:
    """An output stream for packets copied from `template`, without an encoder.

    PyAV opens every output stream's codec before the first mux. By default it builds a video
    stream from the template's *encoder* (libx264 for H.264): each segment opened an x264 encoder
    at the camera's resolution, never used, with its threads (four on 2 cores) and ~3.9 MB per
    1080p camera. The template's decoder, single-threaded, opens in a third of the time with ~1 MB
    and no thread. SegmentFile does not open it at all when the native module is built
    (native_copy.write_header); a remux still does.
    """
    stream = container.add_stream_from_template(template, opaque=True)
    stream.codec_context.thread_count = 1
    if template.codec_context.name == "hevc":
        # FFmpeg's mp4 muxer writes H.265 as `hev1` (parameter sets may also come in-band), which
        # Apple's players and Safari refuse. `hvc1` says the hvcC box holds every parameter set (the
        # muxer then leaves them out of the samples): the stream's extradata must have them, which
        # the recorder sees to when the camera sends them in-band only.
        stream.codec_context.codec_tag = HEVC_SAMPLE_ENTRY
    return stream


class SegmentFile:
    """One open segment file. Timestamps given to write() are in the template stream's time base,
    relative to the segment start (the caller keeps them monotonic)."""

    def __init__(self, path: Path, video: av.video.stream.VideoStream,
                 audio: av.audio.stream.AudioStream | G711ToAac | None = None,
                 video_parameters: dict | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never overwrite footage. The descriptor is kept for fsync.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)  # footage: not for other users
        container: av.container.OutputContainer | None = None
        try:
            container = av.open(str(path), "w", format="mp4", options=dict(FMP4_OPTIONS))
            self._video = add_copy_stream(container, video)
            self._video.time_base = video.time_base
            for key, value in (video_parameters or {}).items():
                # Parameters that changed mid-connection (width, height, extradata).
                setattr(self._video.codec_context, key, value)
            self.video_stream = self._video
            self.container = container  # for the native copier, which muxes into it directly
            self._audio: av.stream.Stream | None = None
            if isinstance(audio, G711ToAac):
                self._audio = audio.add_output_stream(container)  # the transcoder's AAC
            elif audio is not None:
                self._audio = add_copy_stream(container, audio)
                self._audio.time_base = audio.time_base
            if write_header is not None:
                write_header(container)
            fsync_dir(path.parent)
        except Exception:
            os.close(self._fd)
            if container is not None:
                try:  # now, not at garbage collection: a header already written gets its trailer
                    container.close()
                except Exception:  # noqa: BLE001 - the file is removed anyway
                    pass
            path.unlink(missing_ok=True)
            raise
        self._container = container
        self._closed = False
        # The recorder's per-packet path muxes video itself (stream, dts, pts, then mux) rather than
        # calling write_video: one Python call fewer per packet.
        self.mux = self._container.mux

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
        return os.fstat(self._fd).st_size

    def close(self) -> int:
        """Finish the last fragment, fsync the file, return its size. Idempotent."""
        if self._closed:
            return self.path.stat().st_size
        self._closed = True
        try:
            self._container.close()
        finally:
            os.fsync(self._fd)
            os.close(self._fd)
        size = self.path.stat().st_size
        # FFmpeg can swallow a write error while finishing the file (a disk that just filled up):
        # only a file whose every fragment is whole counts as written.
        if playable_length(self.path) != size:
            raise OSError(f"{self.path.name}: incomplete after close (disk full?)")
        return size

    def abandon(self) -> bool:
        """Close without caring about errors (the camera failed mid-write); what is on disk stays.
        Returns whether it is durable: False when the fsync failed (the file system went read-only
        after an error, and what the page cache still shows may never reach the disk)."""
        if self._closed:
            return True
        self._closed = True
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - whatever the muxer says, the file keeps its fragments
            pass
        try:
            os.fsync(self._fd)
        except OSError:
            return False
        finally:
            os.close(self._fd)
        return True
