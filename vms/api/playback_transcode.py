"""H.264 playback of an H.265 camera's footage, for browsers without an H.265 decoder (Chromium on Linux).

The range is first remuxed as for any playback (vms/api/remux.py: the keyframe at or before the start,
long gaps collapsed, `spans` mapping the video to wall time); that file is then decoded and encoded with
the live view's x264 settings (vms/live/transcode.py) into the file served. Every picture keeps its
timestamp and duration and every keyframe stays a keyframe, and the audio is copied, so the spans
describe the H.264 file exactly as they do the H.265 one and the console's wall-time mapping and seeking
work unchanged.

Transcoding costs CPU where a remux costs next to none (docs/benchmarks.md: a 1080p camera's minute is
tens of CPU seconds), so it is bounded twice: api.playback_max_transcodes at once in an API process
(more get 429), and api.playback_transcode_max_seconds of footage per request (the console asks for the
next piece when its video reaches the end of this one, as it does at the end of any window). Each
transcode uses one thread (decoder and encoder single-threaded): one core at most.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import av
from av.video.frame import PictureType

from vms.api.context import ApiContext
from vms.live.transcode import TranscodeSlots, configure_h264_encoder
from vms.recording.segment_file import add_copy_stream

TRANSCODE_FULL_CODE = "playback_transcode_full"


@dataclass
class TranscodeStats:
    frames: int
    width: int
    height: int
    cpu_s: float  # of the transcoding thread, which does all the work (nothing else is threaded)
    wall_s: float


def playback_transcode_slots(ctx: ApiContext) -> TranscodeSlots:
    return ctx.singleton("playback_transcode_slots", lambda: TranscodeSlots(ctx.settings.api.playback_max_transcodes))


def transcode_full_text(limit: int) -> str:
    if limit <= 0:
        return "服务器未启用 H.265 录像转码（api.playback_max_transcodes = 0），此浏览器无法播放 H.265 录像"
    return f"H.265 录像转码已满（同时最多 {limit} 路），请稍后再试"


def transcode_to_h264(src: Path, out: Path, max_height: int) -> TranscodeStats:
    """Write src's H.265 video as H.264 (at most max_height high) with its audio copied to out (MP4, moov
    first). Frame times, durations and keyframes are kept."""
    cpu0, wall0 = time.thread_time(), time.monotonic()
    tmp = out.with_name(out.name + ".part")
    frames = 0
    try:
        with av.open(str(src), "r") as inp:
            vin = inp.streams.video[0]
            vin.codec_context.thread_count = 1  # one core at most per transcode
            assert vin.time_base is not None, "an MP4 track has a time base"
            ain = inp.streams.audio[0] if inp.streams.audio else None
            with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as output:
                vout = output.add_stream("libx264")
                configure_h264_encoder(vout.codec_context, vin.codec_context.width, vin.codec_context.height,
                                       max_height, vin.time_base)
                vout.time_base = vin.time_base
                aout = add_copy_stream(output, ain) if ain is not None else None
                width, height = vout.codec_context.width, vout.codec_context.height
                durations: dict[int, int] = {}  # pts -> duration of the source's pictures

                def encode(frame: av.VideoFrame | None) -> None:
                    nonlocal frames
                    picture = None
                    if frame is not None:
                        frames += 1
                        picture = frame.reformat(width=width, height=height, format="yuv420p")
                        picture.pts, picture.time_base = frame.pts, vin.time_base
                        # The camera's keyframes stay the seek points (the encoder makes no others).
                        picture.pict_type = PictureType.I if frame.key_frame else PictureType.NONE
                    for packet in vout.encode(picture):
                        if packet.pts is not None and packet.pts in durations:
                            packet.duration = durations.pop(packet.pts)
                        output.mux(packet)

                streams = [vin] + ([ain] if ain is not None else [])
                for packet in inp.demux(streams):
                    if packet.stream.index != vin.index:
                        if packet.dts is not None and aout is not None:
                            packet.stream = aout
                            output.mux(packet)
                        continue
                    if packet.pts is not None and packet.duration:
                        durations[packet.pts] = packet.duration
                    for frame in vin.codec_context.decode(packet):  # the flush packet at the end: the last
                        encode(frame)
                encode(None)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return TranscodeStats(frames, width, height, time.thread_time() - cpu0, time.monotonic() - wall0)
