"""Parameter sets (SPS/PPS/VPS) in Annex B H.264/H.265 access units, found without decoding."""

from __future__ import annotations

_NAL_TYPE = {"h264": lambda b: b & 0x1F, "hevc": lambda b: (b >> 1) & 0x3F}
_SPS = {"h264": 7, "hevc": 33}
_PARAMETER_SETS = {"h264": (7, 8), "hevc": (32, 33, 34)}
HEAD_BYTES = 4096  # parameter sets lead an IDR access unit; no need to scan the slice data


def _nal_units(data: bytes, codec: str):
    nal_type = _NAL_TYPE.get(codec)
    if nal_type is None:
        return
    head = data[:HEAD_BYTES]
    i = head.find(b"\x00\x00\x01")
    while 0 <= i < len(head) - 3:
        j = head.find(b"\x00\x00\x01", i + 3)
        end = j if j > 0 else len(head)
        yield nal_type(head[i + 3]), head[i + 3:end].rstrip(b"\x00")
        i = j


def sequence_parameter_set(data: bytes, codec: str) -> bytes | None:
    """The SPS at the head of a keyframe, if it carries one."""
    for kind, nal in _nal_units(data, codec):
        if kind == _SPS.get(codec):
            return nal
    return None


def parameter_sets_annexb(data: bytes, codec: str) -> bytes:
    """All parameter sets at the head of a keyframe, as Annex B extradata."""
    wanted = _PARAMETER_SETS.get(codec, ())
    return b"".join(b"\x00\x00\x00\x01" + nal for kind, nal in _nal_units(data, codec) if kind in wanted)


def complete_parameter_sets(data: bytes, codec: str) -> bool:
    """Whether Annex B data (e.g. a connection's extradata) holds every kind of parameter set the
    codec needs to decode a picture (H.264: SPS and PPS; H.265: VPS, SPS and PPS)."""
    wanted = _PARAMETER_SETS.get(codec)
    if not wanted:
        return False
    found = {kind for kind, _nal in _nal_units(data, codec)}
    return all(kind in found for kind in wanted)
