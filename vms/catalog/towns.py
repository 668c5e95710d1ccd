"""The county's 16 towns and zones that have service stations, with the ASCII code used in ids."""

from __future__ import annotations

COUNTY = "惠东县"
# (official short name, ASCII code used in station ids, full name for station names)
TOWNS: list[tuple[str, str]] = [
    ("平山街道", "pingshan"),
    ("大岭街道", "daling"),
    ("白花镇", "baihua"),
    ("梁化镇", "lianghua"),
    ("稔山镇", "renshan"),
    ("铁涌镇", "tieyong"),
    ("平海镇", "pinghai"),
    ("吉隆镇", "jilong"),
    ("黄埠镇", "huangbu"),
    ("多祝镇", "duozhu"),
    ("安墩镇", "andun"),
    ("白盆珠镇", "baipenzhu"),
    ("宝口镇", "baokou"),
    ("高潭镇", "gaotan"),
    ("巽寮", "xunliao"),
    ("港口", "gangkou"),
]
TOWN_NAMES = [name for name, _ in TOWNS]
TOWN_CODES = {name: code for name, code in TOWNS}


def town_rank(town: str) -> int:
    """A town's place in the county's order above (the catalogue's order, the one the county's own lists
    use); a name not among them after all of them."""
    return _RANK.get(town, len(TOWNS))


_RANK = {name: i for i, name in enumerate(TOWN_NAMES)}
