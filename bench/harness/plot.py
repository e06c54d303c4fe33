"""Line charts as SVG, with no dependency (no matplotlib): what the benchmarks draw.

Owns the one kind of figure the benchmarks write: `Chart`, a titled panel of
lines (`Series`: a label and its (x, y) points, drawn in the order given) on
linear or log axes, and `svg`/`write`, which lay charts out side by side in one
SVG document under a title, with one legend for all panels (a label has the
same colour in every panel). Points that cannot be drawn (NaN, or <= 0 on a log
axis) are left out, and a line breaks there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")
FONT = 'font-family="sans-serif" font-size="12"'
INSET = 8  # px between the frame and the outermost ticks
MARGIN = (64, 20, 34, 48)  # left, right, top, bottom of a panel's plot area, px


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: Sequence[Series]
    x_log: bool = False
    y_log: bool = False
    x_ticks: Sequence[float] | None = None  # None: chosen from the data
    y_ticks: Sequence[float] | None = None
    y_from_zero: bool = True  # a linear y axis starts at 0 (if no value is negative)


class _Axis:
    """Values to pixels, from `lo` at pixel `p0` to `hi` at pixel `p1`."""

    def __init__(self, values: Sequence[float], log: bool, ticks: Sequence[float] | None,
                 from_zero: bool, p0: float, p1: float) -> None:
        self.log, self.p0, self.p1 = log, p0, p1
        shown = [v for v in (*values, *(ticks or ())) if _drawable(v, log)] or [1.0]
        lo, hi = min(shown), max(shown)
        if not log and from_zero and lo > 0:
            lo = 0.0
        if lo == hi:
            lo, hi = (lo / 2, hi * 2) if log else (lo - 1, hi + 1)
        self.ticks = list(ticks) if ticks is not None else _nice_ticks(lo, hi, log)
        if ticks is None:  # widen to the ticks around the data
            lo, hi = min(lo, self.ticks[0]), max(hi, self.ticks[-1])
        self.lo, self.hi = self._t(lo), self._t(hi)

    def _t(self, v: float) -> float:
        return math.log10(v) if self.log else v

    def __call__(self, v: float) -> float:
        return self.p0 + (self._t(v) - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def _drawable(v: float, log: bool) -> bool:
    return math.isfinite(v) and (v > 0 or not log)


def _nice_ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Ticks covering [lo, hi]: 1-2-5 steps (linear), or 1-2-5 x powers of 10 (log;
    powers of 10 only if that gives too many)."""
    if log:
        low, high = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
        for mantissas in ((1.0, 2.0, 5.0), (1.0,)):
            steps = sorted(m * 10.0**e for e in range(low, high + 1) for m in mantissas)
            first = max(t for t in steps if t <= lo * 1.0001)
            last = min(t for t in steps if t >= hi / 1.0001)
            ticks = [t for t in steps if first <= t <= last]
            if len(ticks) <= 8:
                break
        return ticks
    raw = (hi - lo) / 5
    step = next(s for m in (1, 2, 5, 10) if (s := m * 10.0 ** math.floor(math.log10(raw))) >= raw)
    first = math.floor(lo / step) * step
    count = math.ceil((hi - first) / step - 1e-9) + 1
    return [round(first + k * step, 12) for k in range(count)]


def _label(v: float) -> str:
    if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
        return f"{v:.0e}"
    return f"{v:,.0f}" if abs(v) >= 100 or v == int(v) else f"{v:g}"


def _panel(chart: Chart, left: float, width: float, height: float,
           colours: dict[str, str]) -> list[str]:
    ml, mr, mt, mb = MARGIN
    x0, x1, y0, y1 = left + ml, left + width - mr, height - mb, mt
    xs = _Axis([x for s in chart.series for x, _ in s.points], chart.x_log, chart.x_ticks,
               False, x0 + INSET, x1 - INSET)
    ys = _Axis([y for s in chart.series for _, y in s.points], chart.y_log, chart.y_ticks,
               chart.y_from_zero, y0 - INSET, y1 + INSET)
    out = [f'<text x="{(x0 + x1) / 2:.1f}" y="{mt - 14}" text-anchor="middle" {FONT}'
           f' font-weight="bold">{escape(chart.title)}</text>',
           f'<rect x="{x0:.1f}" y="{y1:.1f}" width="{x1 - x0:.1f}" height="{y0 - y1:.1f}"'
           ' fill="none" stroke="#444"/>']
    for t in xs.ticks:
        x = xs(t)
        out.append(f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y0}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle" {FONT}>'
                   f'{_label(t)}</text>')
    for t in ys.ticks:
        y = ys(t)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" {FONT}>'
                   f'{_label(t)}</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 10}" text-anchor="middle" {FONT}>'
               f'{escape(chart.x_label + (" (log)" if chart.x_log else ""))}</text>')
    cy = (y0 + y1) / 2
    out.append(f'<text x="{left + 14}" y="{cy:.1f}" text-anchor="middle" {FONT}'
               f' transform="rotate(-90 {left + 14} {cy:.1f})">'
               f'{escape(chart.y_label + (" (log)" if chart.y_log else ""))}</text>')
    for s in chart.series:
        colour = colours[s.label]
        runs: list[list[str]] = [[]]
        for x, y in s.points:
            if _drawable(x, chart.x_log) and _drawable(y, chart.y_log):
                runs[-1].append(f"{xs(x):.1f},{ys(y):.1f}")
            elif runs[-1]:
                runs.append([])
        for run in runs:
            if len(run) > 1:
                out.append(f'<polyline points="{" ".join(run)}" fill="none"'
                           f' stroke="{colour}" stroke-width="2"/>')
            out.extend(f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="3"'
                       f' fill="{colour}"><title>{escape(s.label)}: {p}</title></circle>'
                       for p in run)
    return out


def svg(charts: Sequence[Chart], *, title: str = "", panel_width: int = 460,
        panel_height: int = 320) -> str:
    """One SVG document: `charts` side by side under `title`, one legend below."""
    labels = list(dict.fromkeys(s.label for c in charts for s in c.series))
    colours = {label: COLOURS[k % len(COLOURS)] for k, label in enumerate(labels)}
    top = 28 if title else 0
    width, height = panel_width * max(1, len(charts)), top + panel_height + 28
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
           f' viewBox="0 0 {width} {height}">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{width / 2}" y="19" text-anchor="middle"'
                   f' font-family="sans-serif" font-size="15" font-weight="bold">'
                   f"{escape(title)}</text>")
    for k, chart in enumerate(charts):
        out.append(f'<g transform="translate(0 {top})">')
        out += _panel(chart, k * panel_width, panel_width, panel_height, colours)
        out.append("</g>")
    x, y = MARGIN[0], top + panel_height + 14
    for label in labels:
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{colours[label]}"'
                   f' stroke-width="2"/><circle cx="{x + 11}" cy="{y}" r="3"'
                   f' fill="{colours[label]}"/><text x="{x + 28}" y="{y + 4}" {FONT}>'
                   f"{escape(label)}</text>")
        x += 40 + 7 * len(label)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write(path: Path, charts: Sequence[Chart], *, title: str = "") -> None:
    """`svg(charts, title=title)` written to `path`."""
    path.write_text(svg(charts, title=title))
