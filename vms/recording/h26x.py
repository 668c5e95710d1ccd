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


def _rbsp_head(nal: bytes, limit: int = 64) -> bytes:
    """The first bytes of a NAL unit's payload (after its one-byte H.264 header), emulation
    prevention bytes (00 00 03) taken out."""
    out = bytearray()
    zeros = 0
    for b in nal[1:limit]:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


class _ExpGolomb:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def bit(self) -> int:
        if self.pos >= 8 * len(self.data):
            raise ValueError("the header ends early")
        b = (self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return b

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("not an Exp-Golomb code")
        value = 0
        for _ in range(zeros):
            value = (value << 1) | self.bit()
        return (1 << zeros) - 1 + value


def h264_ids_resolved(parameter_sets: bytes, keyframe: bytes) -> bool:
    """Whether the first slice of an H.264 keyframe refers to a PPS, and that PPS to an SPS, defined
    in `parameter_sets` or in the keyframe's own head: then a decoder given both decodes it with
    these, whatever another stream left in it under other ids."""
    sps_ids: set[int] = set()
    pps_sps: dict[int, int] = {}
    try:
        for data in (parameter_sets, keyframe):
            for kind, nal in _nal_units(data, "h264"):
                if kind == 7:  # SPS: profile_idc, constraint flags, level_idc, then its id
                    sps_ids.add(_ExpGolomb(_rbsp_head(nal)[3:]).ue())
                elif kind == 8:  # PPS: its id, then its SPS's
                    bits = _ExpGolomb(_rbsp_head(nal))
                    pps_id = bits.ue()
                    pps_sps[pps_id] = bits.ue()
                elif kind in (1, 5) and data is keyframe:  # the first slice: first_mb, slice_type, pps id
                    bits = _ExpGolomb(_rbsp_head(nal))
                    bits.ue()
                    bits.ue()
                    pps_id = bits.ue()
                    return pps_id in pps_sps and pps_sps[pps_id] in sps_ids
    except ValueError:
        return False
    return False  # no slice in the head
