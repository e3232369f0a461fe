"""Inline SVG line charts for the HTML report: no scripts, no fonts or files fetched.

The legend sits to the right of the plot area and marker labels above it, so neither can
cover a plotted line; every number shown goes through ``loadkit.numbers``.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

from loadkit.numbers import tick

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
Point = tuple[float, float]

WIDTH, HEIGHT = 880, 320
LEFT, PLOT_W, TOP, PLOT_H = 70, 540, 52, 220  # the plot area
LEGEND_X = LEFT + PLOT_W + 20
LEGEND_ROW = 16
CHAR_W = 6.2  # a generous width of one 11 px sans-serif character


@dataclass(frozen=True)
class Line:
    name: str
    points: list[Point]
    colour: str
    dashed: bool = False
    dots: bool = False
    series: str = ""  # the model x speed (or other key) it belongs to, for readers and tests


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    lines: list[Line]
    markers: list[tuple[float, str]] = field(default_factory=list)  # vertical: (x, label)
    thresholds: list[tuple[float, str]] = field(default_factory=list)  # horizontal: (y, label)
    x_from_zero: bool = False


def colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 12) for i in range(count + 2) if first + i * step <= high]


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _fit(text: str, room: float) -> str:
    """Text cut (with an ellipsis) to fit ``room`` pixels."""
    most = max(4, int(room / CHAR_W))
    return text if len(text) <= most else text[: most - 1] + "…"


def render(chart: Chart) -> str:
    """The chart as one ``<svg>``; lines without points are left out, no line at all says so."""
    lines = [line for line in chart.lines if line.points]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_esc(chart.title)}">',
        f'<text class="title" x="{LEFT}" y="20" font-weight="bold" font-size="14">'
        f"{_esc(chart.title)}</text>",
    ]
    if not lines:
        parts.append(
            f'<text x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H / 2}" text-anchor="middle">'
            "no data</text></svg>"
        )
        return "".join(parts)
    xs = [x for line in lines for x, _ in line.points] + [x for x, _ in chart.markers]
    ys = [y for line in lines for _, y in line.points] + [y for y, _ in chart.thresholds]
    x0, x1 = (0.0 if chart.x_from_zero else min(xs)), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.08 or 1.0
    if x1 <= x0:
        x1 = x0 + 1

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * PLOT_W

    def py(y: float) -> float:
        return TOP + PLOT_H - (y - y0) / (y1 - y0) * PLOT_H

    bottom = TOP + PLOT_H
    parts.append(
        f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" '
        'fill="none" stroke="#999"/>'
    )
    for value in ticks(y0, y1):
        y = py(value)
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{tick(value)}</text>"
        )
    for value in ticks(x0, x1):
        parts.append(
            f'<text x="{px(value):.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11">'
            f"{tick(value)}</text>"
        )
    middle = TOP + PLOT_H / 2
    parts.append(
        f'<text x="{LEFT + PLOT_W / 2}" y="{HEIGHT - 14}" text-anchor="middle" font-size="12">'
        f"{_esc(chart.x_label)}</text>"
        f'<text x="16" y="{middle}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 16 {middle})">{_esc(chart.y_label)}</text>'
    )
    for y, _ in chart.thresholds:
        parts.append(
            f'<line class="threshold" x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{py(y):.1f}" '
            f'y2="{py(y):.1f}" stroke="#555" stroke-dasharray="6 4"/>'
        )
    for x, label in chart.markers:
        # the label above the plot area, kept inside the chart's width
        room = len(label) * CHAR_W
        anchor_x = min(max(px(x), LEFT + room / 2), LEFT + PLOT_W - room / 2)
        parts.append(
            f'<line class="marker" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP - 6}" '
            f'y2="{bottom}" stroke="#000" stroke-dasharray="4 3"/>'
            f'<text class="marker-label" x="{anchor_x:.1f}" y="{TOP - 10}" '
            f'text-anchor="middle" font-size="11" font-weight="bold">{_esc(label)}</text>'
        )
    for line in lines:
        dash = ' stroke-dasharray="6 3"' if line.dashed else ""
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in line.points)
        parts.append(
            f'<polyline class="series" data-series="{_esc(line.series or line.name)}" '
            f'data-name="{_esc(line.name)}" fill="none" stroke="{line.colour}" '
            f'stroke-width="2"{dash} points="{path}"/>'
        )
        if line.dots:
            parts.extend(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{line.colour}"/>'
                for x, y in line.points
            )
    entries = [(line.name, line.colour, line.dashed) for line in lines]
    entries += [(label, "#555", True) for _, label in chart.thresholds]
    room = WIDTH - LEGEND_X - 30
    parts.append('<g class="legend">')
    for i, (name, stroke, dashed) in enumerate(entries):
        y = TOP + 8 + LEGEND_ROW * i
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(
            f"<g><title>{_esc(name)}</title>"
            f'<line x1="{LEGEND_X}" x2="{LEGEND_X + 20}" y1="{y}" y2="{y}" stroke="{stroke}" '
            f'stroke-width="2"{dash}/><text x="{LEGEND_X + 26}" y="{y + 4}" font-size="11">'
            f"{_esc(_fit(name, room))}</text></g>"
        )
    parts.append("</g></svg>")
    return "".join(parts)
