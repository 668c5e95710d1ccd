"""Inline SVG charts for the printable report (no JavaScript, so headless Chromium prints them as is)."""

from __future__ import annotations

from html import escape

PASS_COLOR = "#2e7d32"
FAIL_COLOR = "#c62828"
EXEMPT_COLOR = "#9e9e9e"


def town_bars(towns: list[dict], width: int = 680) -> str:
    """Horizontal bars: per town, the share of assessed stations that passed (green) and failed (red)."""
    label_w, row_h, top = 96, 22, 24
    bar_w = width - label_w - 110
    h = top + row_h * len(towns) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
           f'font-size="12" role="img" aria-label="各乡镇达标率">']
    for pct in (0, 50, 100):
        x = label_w + bar_w * pct / 100
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{h - 8}" stroke="#ccc"/>'
                   f'<text x="{x:.1f}" y="{top - 10}" text-anchor="middle" fill="#555">{pct}%</text>')
    for i, t in enumerate(towns):
        y = top + i * row_h
        n = t["assessed"] or 0
        ok_w = bar_w * (t["passed"] / n) if n else 0
        out.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{escape(t["town"])}</text>')
        if n:
            out.append(f'<rect x="{label_w}" y="{y + 3}" width="{ok_w:.1f}" height="{row_h - 8}" fill="{PASS_COLOR}"/>')
            out.append(f'<rect x="{label_w + ok_w:.1f}" y="{y + 3}" width="{bar_w - ok_w:.1f}" height="{row_h - 8}" '
                       f'fill="{FAIL_COLOR}"/>')
            label = f'{t["passed"]}/{n} 达标（{t["pass_percent"]:.0f}%）'
        else:
            out.append(f'<rect x="{label_w}" y="{y + 3}" width="{bar_w}" height="{row_h - 8}" fill="{EXEMPT_COLOR}"/>')
            label = "无考核站点"
        out.append(f'<text x="{label_w + bar_w + 6}" y="{y + 14}">{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def short_name(st: dict) -> str:
    """'惠东县平山街道待定01村电子商务服务点' -> '待定01村'; a town's own station -> '镇级服务站'."""
    name = st["name"].removeprefix("惠东县").removeprefix(st["town"])
    for suffix in ("电子商务服务站", "电子商务服务点"):
        name = name.removesuffix(suffix)
    return name[:14] or "镇级服务站"


def _heat_color(hours: float | None, need: float) -> str:
    if hours is None:
        return "#eeeeee"  # not in service
    if hours <= 0:
        return "#ffcdd2"
    if hours < need:
        return "#ffe082"
    # deeper green for longer days
    level = min(1.0, (hours - need) / 6)
    g = int(160 - 70 * level)
    return f"rgb(46,{g + 40},{int(60 - 20 * level)})"


def open_hours_heatmap(stations: list[dict], days: list[str], need_hours: float, width: int = 680) -> str:
    """Station-by-day grid of open hours inside business hours (grey: not in service; red: not open;
    amber: open less than needed; green: a day that counts)."""
    label_w, top = 90, 18
    cell_w = (width - label_w) / max(len(days), 1)
    cell_h = 13
    h = top + cell_h * len(stations) + 4
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
           f'font-size="9" role="img" aria-label="每日营业时间内开门时长">']
    for j, d in enumerate(days):
        x = label_w + j * cell_w
        out.append(f'<text x="{x + cell_w / 2:.1f}" y="{top - 5}" text-anchor="middle" fill="#555">{int(d[8:])}</text>')
    for i, st in enumerate(stations):
        y = top + i * cell_h
        out.append(f'<text x="{label_w - 4}" y="{y + 10}" text-anchor="end">{escape(short_name(st))}</text>')
        series = st.get("open_in_hours_by_day") or [None] * len(days)
        for j, v in enumerate(series[: len(days)]):
            x = label_w + j * cell_w
            title = f'{st["name"]} {days[j]}: ' + ("未在役" if v is None else f"{v:.1f} 小时")
            out.append(f'<rect x="{x + 0.5:.1f}" y="{y + 0.5}" width="{cell_w - 1:.1f}" height="{cell_h - 1}" '
                       f'fill="{_heat_color(v, need_hours)}"><title>{escape(title)}</title></rect>')
    out.append("</svg>")
    return "".join(out)
