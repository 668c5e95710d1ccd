"""MANSCDP bodies (Application/MANSCDP+xml): the XML of keepalives, catalogs, device info and record info.

Devices declare GB2312 and send GBK or GB18030 (rare characters in station names, "萳"), some send UTF-8,
and Hikvision writes bare `&` in names. The standard library's parser refuses multi-byte declared
encodings, so a body is decoded here (UTF-8 when it says so and is, else GB18030, a superset of GB2312
and GBK), its declaration dropped, bare ampersands escaped, and parsed by defusedxml: no DTD, no entity
expansion, no external fetch. Bodies over MAX_BODY_BYTES are refused before parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from defusedxml import ElementTree as SafeET

MAX_BODY_BYTES = 256 * 1024
MAX_ITEMS_PER_MESSAGE = 1000

_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)
_BARE_AMPERSAND = re.compile(r"&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9A-Fa-f]+);)")


class ManscdpError(ValueError):
    pass


def decode_body(raw: bytes) -> str:
    """UTF-8 when the bytes are UTF-8 *of Chinese or ASCII text*, whatever the declaration says (devices
    switched to UTF-8 keep declaring GB2312), else GB18030. The test is not just "decodes as UTF-8": a
    short GBK name often does (牛, C5 A3, is valid UTF-8 for "ţ"), but then it yields characters of the
    two-byte UTF-8 range (U+0080-U+07FF: Latin, Greek, Cyrillic...), which Chinese names never hold,
    while GBK text that happens to form three-byte UTF-8 sequences is rare."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("gb18030", errors="replace")
    if any(0x80 <= ord(ch) < 0x800 for ch in text):
        return raw.decode("gb18030", errors="replace")
    return text


def parse_body(raw: bytes) -> Element:
    if len(raw) > MAX_BODY_BYTES:
        raise ManscdpError(f"body of {len(raw)} bytes is larger than {MAX_BODY_BYTES}")
    text = _DECLARATION.sub("", decode_body(raw).lstrip("\ufeff"), count=1)
    text = _BARE_AMPERSAND.sub("&amp;", text)
    try:
        root = SafeET.fromstring(text, forbid_dtd=True)  # GB bodies never carry one
    except Exception as exc:  # ParseError, and defusedxml's DTDForbidden / EntitiesForbidden
        raise ManscdpError(f"not well-formed MANSCDP XML: {type(exc).__name__}: {exc}") from exc
    return root


def child_text(element: Element, name: str) -> str | None:
    """The stripped text of the first child called `name` (case-insensitive: devices vary)."""
    lower = name.lower()
    for child in element:
        if child.tag.lower() == lower:
            return (child.text or "").strip()
    return None


def child(element: Element, name: str) -> Element | None:
    lower = name.lower()
    for c in element:
        if c.tag.lower() == lower:
            return c
    return None


def command(root: Element) -> tuple[str, str, str, int | None]:
    """(root kind: Query/Notify/Response/Control, CmdType, DeviceID, SN) of a body."""
    cmd = child_text(root, "CmdType") or ""
    device = child_text(root, "DeviceID") or ""
    sn_text = child_text(root, "SN") or ""
    sn = int(sn_text) if sn_text.isdigit() else None
    return root.tag, cmd, device, sn


@dataclass
class CatalogItem:
    channel_id: str
    name: str = ""
    manufacturer: str = ""
    model: str = ""
    status: str = ""
    parent_id: str = ""
    civil_code: str = ""
    address: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class CatalogPage:
    device_id: str
    sn: int | None
    sum_num: int
    items: list[CatalogItem]


def catalog_page(root: Element) -> CatalogPage:
    _, _, device, sn = command(root)
    sum_text = child_text(root, "SumNum") or "0"
    sum_num = int(sum_text) if sum_text.isdigit() else 0
    items: list[CatalogItem] = []
    device_list = child(root, "DeviceList")
    if device_list is not None:
        for element in list(device_list)[:MAX_ITEMS_PER_MESSAGE]:
            channel_id = child_text(element, "DeviceID") or ""
            if not channel_id:
                continue
            items.append(CatalogItem(
                channel_id=channel_id[:32], name=(child_text(element, "Name") or "")[:128],
                manufacturer=(child_text(element, "Manufacturer") or "")[:64],
                model=(child_text(element, "Model") or "")[:64],
                status=(child_text(element, "Status") or "").upper()[:16],
                parent_id=(child_text(element, "ParentID") or "")[:64],
                civil_code=(child_text(element, "CivilCode") or "")[:32],
                address=(child_text(element, "Address") or "")[:128]))
    return CatalogPage(device, sn, sum_num, items)


@dataclass
class RecordItem:
    start_s: int
    end_s: int
    name: str = ""
    type: str = ""


def xml_escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"))


def build(root: str, cmd: str, sn: int, device_id: str, fields: list[tuple[str, str]] | None = None,
          inner: str = "") -> bytes:
    """A body as devices and WVP write it: declared GB2312, encoded GB18030 (its superset)."""
    parts = [f'<?xml version="1.0" encoding="GB2312"?>\r\n<{root}>\r\n', f"<CmdType>{cmd}</CmdType>\r\n",
             f"<SN>{sn}</SN>\r\n", f"<DeviceID>{xml_escape(device_id)}</DeviceID>\r\n"]
    for name, value in fields or []:
        parts.append(f"<{name}>{xml_escape(value)}</{name}>\r\n")
    parts.append(inner)
    parts.append(f"</{root}>\r\n")
    return "".join(parts).encode("gb18030")
