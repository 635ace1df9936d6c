#!/usr/bin/env python3
"""Grouped bar charts as a hand-written SVG (Python 3 standard library only).

    python3 perf/chart.py perf/results/compare-rnacos.json perf/results/compare-rnacos.svg

The input is a JSON file with a "chart" object (other keys are ignored):

    {"chart": {
       "title": "nacelle vs r-nacos",
       "subtitle": "medians of 3 alternating rounds",          (optional)
       "series": ["nacelle", "r-nacos"],                      one bar per series in each group
       "panels": [
         {"title": "Throughput", "unit": "operations/s",        y axis label
          "xlabel": "operation",                               x axis label (optional)
          "groups": [{"label": "registrations/s", "values": [9915, 4384]}, ...]},
         ...]}}

Panels are laid out two per row (three when there are more than four). Each panel gets its own
linear y axis starting at 0 (so bars of one panel compare honestly), groups side by side along x,
one coloured bar per series with its value on top; one legend for the whole figure.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
PANEL_W, PANEL_H = 430, 330
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 78, 16, 40, 62
HEADER = 74


def nice_ceiling(v):
    """The smallest 1/2/2.5/5 x 10^k at or above v (v > 0)."""
    if v <= 0:
        return 1.0
    exp = math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        c = m * 10**exp
        if c >= v * 0.999999:
            return c
    return 10 ** (exp + 1)


def fmt(v):
    """Compact label of a value: 48,211 / 1.62 / 0.084."""
    if v is None:
        return "n/a"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def text(x, y, s, size=12, anchor="middle", weight="normal", rotate=None, fill="#222"):
    tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'font-weight="{weight}" fill="{fill}"{tr}>{escape(str(s))}</text>'
    )


def panel(p, series, ox, oy):
    """SVG elements of one panel whose top-left corner is (ox, oy)."""
    out = []
    x0, y0 = ox + MARGIN_L, oy + MARGIN_T  # plot area top-left
    w = PANEL_W - MARGIN_L - MARGIN_R
    h = PANEL_H - MARGIN_T - MARGIN_B
    out.append(text(ox + PANEL_W / 2, oy + 22, p["title"], size=14, weight="bold"))
    values = [v for g in p["groups"] for v in g["values"] if v is not None]
    top = nice_ceiling(max(values) * 1.12 if values else 1.0)
    ticks = 5
    for i in range(ticks + 1):
        v = top * i / ticks
        y = y0 + h - h * i / ticks
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#ddd"/>')
        tick = f"{v:,.0f}" if v == int(v) else f"{v:g}"
        out.append(text(x0 - 6, y + 4, tick, size=11, anchor="end"))
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + h}" stroke="#444"/>')
    out.append(f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#444"/>')
    out.append(text(ox + 16, y0 + h / 2, p.get("unit", ""), size=12, rotate=-90))
    groups = p["groups"]
    slot = w / max(len(groups), 1)
    bar_w = min(46.0, slot * 0.8 / max(len(series), 1))
    for gi, g in enumerate(groups):
        cx = x0 + slot * (gi + 0.5)
        left = cx - bar_w * len(series) / 2
        for si, v in enumerate(g["values"]):
            bx = left + si * bar_w
            if v is None:
                out.append(text(bx + bar_w / 2, y0 + h - 4, "n/a", size=10))
                continue
            bh = h * v / top
            out.append(
                f'<rect x="{bx + 1:.1f}" y="{y0 + h - bh:.1f}" width="{bar_w - 2:.1f}" '
                f'height="{bh:.1f}" fill="{COLOURS[si % len(COLOURS)]}">'
                f"<title>{escape(series[si])} {escape(g['label'])}: {escape(fmt(v))}</title></rect>"
            )
            out.append(text(bx + bar_w / 2, y0 + h - bh - 4, fmt(v), size=10))
        for li, line in enumerate(str(g["label"]).split("\n")):
            out.append(text(cx, y0 + h + 18 + 14 * li, line, size=12))
    if p.get("xlabel"):
        out.append(text(x0 + w / 2, oy + PANEL_H - 10, p["xlabel"], size=11, fill="#555"))
    return out


def render(chart):
    series = chart["series"]
    panels = chart["panels"]
    cols = 2 if len(panels) <= 4 else 3
    rows = math.ceil(len(panels) / cols)
    width = PANEL_W * min(cols, len(panels))
    height = HEADER + PANEL_H * rows
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        text(width / 2, 24, chart.get("title", ""), size=17, weight="bold"),
    ]
    if chart.get("subtitle"):
        out.append(text(width / 2, 44, chart["subtitle"], size=12, fill="#555"))
    # legend, centred under the title
    item_w = 120
    lx = width / 2 - item_w * len(series) / 2
    for si, name in enumerate(series):
        x = lx + si * item_w
        out.append(f'<rect x="{x:.1f}" y="54" width="14" height="14" fill="{COLOURS[si % len(COLOURS)]}"/>')
        out.append(text(x + 20, 66, name, size=13, anchor="start"))
    for i, p in enumerate(panels):
        out.extend(panel(p, series, PANEL_W * (i % cols), HEADER + PANEL_H * (i // cols)))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        data = json.load(f)
    svg = render(data["chart"])
    with open(argv[2], "w") as f:
        f.write(svg)
    print(f"chart written to {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
