"""Small H.264/H.265 bitstream facts live view needs: parameter sets in a keyframe, the MSE codec string."""

from __future__ import annotations

import re

_START = re.compile(b"\x00\x00\x01")


def nal_units(data: bytes) -> list[bytes]:
    """NAL units of an Annex B buffer (start codes removed)."""
    starts = [m.end() for m in _START.finditer(data)]
    units = []
    for i, s in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        unit = data[s:end]
        units.append(unit.rstrip(b"\x00") if i + 1 < len(starts) else unit)
    return [u for u in units if u]


def has_parameter_sets(data: bytes, codec: str) -> bool:
    """True if the access unit carries its SPS (H.264 type 7; H.265 type 33)."""
    for unit in nal_units(data[:4096] if len(data) > 4096 else data):
        kind = (unit[0] & 0x1F) if codec == "h264" else (unit[0] >> 1) & 0x3F
        if kind == (7 if codec == "h264" else 33):
            return True
    return False


def mse_codec(codec: str, extradata: bytes, keyframe: bytes = b"") -> str:
    """The RFC 6381 codec string for MediaSource.isTypeSupported, e.g. avc1.64001f."""
    if codec == "h264":
        for unit in nal_units(extradata) + nal_units(keyframe[:4096]):
            if unit and unit[0] & 0x1F == 7 and len(unit) >= 4:
                return f"avc1.{unit[1]:02x}{unit[2]:02x}{unit[3]:02x}"
        return "avc1.42e01f"
    return "hvc1.1.6.L120.90"  # Main profile, level 4; HEVC in MSE needs a platform decoder
