"""PyAV objects of the kind the caller knows it has, checked: PyAV's types say only what is possible
(a stream set up for output may have no time base yet; CodecContext.create() of a codec named at run
time may be audio or video), and the code below them needs the one it knows it got."""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import av


def time_base(item: av.stream.Stream | av.Packet) -> Fraction:
    """A demuxed stream's or packet's time base, which FFmpeg always sets."""
    tb = item.time_base
    if tb is None:
        raise ValueError(f"{item!r} has no time base")
    return tb


def video_codec(codec: str, mode: Literal["r", "w"]) -> av.VideoCodecContext:
    """A decoder ("r") or encoder ("w") of this video codec."""
    ctx = av.CodecContext.create(codec, mode)
    if not isinstance(ctx, av.VideoCodecContext):
        raise ValueError(f"{codec} is not a video codec")
    return ctx


def audio_codec(codec: str, mode: Literal["r", "w"]) -> av.AudioCodecContext:
    """A decoder ("r") or encoder ("w") of this audio codec."""
    ctx = av.CodecContext.create(codec, mode)
    if not isinstance(ctx, av.AudioCodecContext):
        raise ValueError(f"{codec} is not an audio codec")
    return ctx
