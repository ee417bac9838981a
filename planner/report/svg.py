"""Charts as inline SVG, drawn here in Python: the report stays one small, offline file.

:func:`render_svg` draws the figure dictionaries of :mod:`planner.report.html` (plotly's
vocabulary, the subset the report uses: scatter markers and lines, stacked bars, log or linear
axes, reference lines with their labels, a legend). Every mark carries its values in a
``data-tip`` attribute that the report's few lines of script show on hover; the text is also
readable without script (the legend, axis labels and the tables next to the charts).

Figure strings follow plotly's convention: HTML-escaped text whose only markup is ``<br>``.
They are unescaped to plain text here and escaped again on output, so nothing in a plan can
become markup.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

WIDTH = 560
LEGEND_ROW_PX = 20
_FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def _lines(text: Any) -> list[str]:
    """Plain text lines of a plotly-style label (``<br>`` separated, HTML-escaped)."""
    return [html.unescape(part) for part in str(text).split("<br>")]


def _esc(text: str) -> str:
    return html.escape(text, quote=True).replace("\n", "&#10;")


def _num(value: float) -> str:
    return f"{value:.1f}"


class _Axis:
    """Maps data values to pixels on a linear or logarithmic axis."""

    def __init__(self, values: Iterable[float], *, log: bool, lo_px: float, hi_px: float):
        data = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
        self.log = log
        if log:
            lo, hi = (min(data), max(data)) if data else (1.0, 10.0)
            self.lo, self.hi = math.log10(lo) - 0.08, math.log10(hi) + 0.08
        else:
            lo, hi = (min(min(data), 0.0), max(data)) if data else (0.0, 1.0)
            self.lo, self.hi = lo, (hi * 1.06 if hi > 0 else 1.0)
        if self.hi - self.lo < 1e-9:
            self.hi = self.lo + 1.0
        self.lo_px, self.hi_px = lo_px, hi_px

    def unit(self, value: float) -> float:
        """Axis units: log10 of the value on a log axis (plotly's annotation convention)."""
        return math.log10(value) if self.log else value

    def px(self, value: float, *, in_units: bool = False) -> float:
        u = value if in_units else self.unit(value)
        return self.lo_px + (u - self.lo) / (self.hi - self.lo) * (self.hi_px - self.lo_px)

    def ticks(self) -> list[float]:
        if self.log:
            first, last = math.floor(self.lo), math.ceil(self.hi)
            steps = (1, 2, 5) if self.hi - self.lo < 2.5 else (1,)
            out = [m * 10.0**e for e in range(first, last + 1) for m in steps]
            return [t for t in out if self.lo <= math.log10(t) <= self.hi]
        raw = (self.hi - self.lo) / 5
        magnitude = 10 ** math.floor(math.log10(raw))
        step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
        start = math.ceil(self.lo / step) * step
        return [start + i * step for i in range(int((self.hi - start) / step) + 1)]


def _tick_label(value: float, prefix: str) -> str:
    text = f"{value:,.0f}" if value >= 1 else f"{value:g}"
    return f"{prefix}{text}"


def _marker(symbol: str, x: float, y: float, size: float, colour: str, tip: str) -> str:
    r = size / 2
    common = f'class="point" data-tip="{_esc(tip)}"'
    if symbol == "x-open":
        a, b, c, e = _num(x - r), _num(y - r), _num(x + r), _num(y + r)
        d = f"M{a},{b}L{c},{e}M{a},{e}L{c},{b}"
        return f'<path {common} d="{d}" stroke="{colour}" stroke-width="2" fill="none"/>'
    if symbol == "circle-open":
        return (
            f'<circle {common} cx="{_num(x)}" cy="{_num(y)}" r="{_num(r)}" fill="none" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
    if symbol == "star":
        points = " ".join(
            f"{_num(x + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5))},"
            f"{_num(y - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5))}"
            for i in range(10)
        )
        return f'<polygon {common} points="{points}" fill="{colour}" stroke="#222222"/>'
    return (
        f'<circle {common} cx="{_num(x)}" cy="{_num(y)}" r="{_num(r)}" fill="{colour}" '
        f'stroke="#ffffff"/>'
    )


def _legend(items: Sequence[tuple[str, str, str]], top: float) -> tuple[list[str], float]:
    """Legend rows under the plot: (name, colour, kind) with kind 'marker', 'line' or 'bar'."""
    out, x, y = [], 10.0, top
    for name, colour, kind in items:
        width = 26 + 7 * len(name)
        if x + width > WIDTH - 10:
            x, y = 10.0, y + LEGEND_ROW_PX
        if kind == "line":
            swatch = (
                f'<line x1="{x}" y1="{y}" x2="{x + 16}" y2="{y}" stroke="{colour}" '
                'stroke-width="2" stroke-dasharray="3,3"/>'
            )
        elif kind == "bar":
            swatch = f'<rect x="{x}" y="{y - 6}" width="16" height="12" fill="{colour}"/>'
        else:
            swatch = f'<circle cx="{x + 8}" cy="{y}" r="5" fill="{colour}"/>'
        out.append(
            f'<g class="legend-item">{swatch}'
            f'<text x="{x + 22}" y="{y + 4}">{_esc(name)}</text></g>'
        )
        x += width
    return out, y + LEGEND_ROW_PX


def _frame(body: list[str], legend: list[str], height: float, element_id: str, label: str) -> str:
    return (
        f'<svg class="chart-svg" id="{_esc(element_id)}-svg" viewBox="0 0 {WIDTH} {_num(height)}" '
        f'role="img" aria-label="{_esc(label)}" xmlns="http://www.w3.org/2000/svg" {_FONT}>'
        f'<rect width="{WIDTH}" height="{_num(height)}" fill="#ffffff"/>'
        + "".join(body)
        + '<g class="legend">'
        + "".join(legend)
        + "</g></svg>"
    )


def _axes(
    xa: _Axis | None,
    ya: _Axis,
    box: tuple[float, float, float, float],
    x_prefix: str,
    y_prefix: str,
) -> list[str]:
    left, top, right, bottom = box
    out = [
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="#fafafa" stroke="#dfe3ea"/>'
    ]
    for t in ya.ticks():
        y = ya.px(t)
        out.append(
            f'<line x1="{left}" y1="{_num(y)}" x2="{right}" y2="{_num(y)}" stroke="#e6e9ef"/>'
            f'<text x="{left - 6}" y="{_num(y + 4)}" text-anchor="end" fill="#5b6475">'
            f"{_esc(_tick_label(t, y_prefix))}</text>"
        )
    if xa is not None:
        for t in xa.ticks():
            x = xa.px(t)
            out.append(
                f'<line x1="{_num(x)}" y1="{top}" x2="{_num(x)}" y2="{bottom}" stroke="#e6e9ef"/>'
                f'<text x="{_num(x)}" y="{bottom + 16}" text-anchor="middle" fill="#5b6475">'
                f"{_esc(_tick_label(t, x_prefix))}</text>"
            )
    return out


def _title(text: str, x: float, y: float, *, vertical: bool = False) -> str:
    rotate = f' transform="rotate(-90 {_num(x)} {_num(y)})"' if vertical else ""
    return (
        f'<text class="axis-title" x="{_num(x)}" y="{_num(y)}" text-anchor="middle" '
        f'fill="#1d2330"{rotate}>{_esc(text)}</text>'
    )


def _scatter_svg(figure: dict[str, Any], element_id: str) -> str:
    layout = figure["layout"]
    traces = figure["data"]
    margin = layout.get("margin", {})
    left, right = float(margin.get("l", 70)), WIDTH - float(margin.get("r", 20))
    top, bottom = float(margin.get("t", 30)), float(layout.get("height", 440)) - 70.0
    xs = [x for t in traces for x in t["x"]]
    ys = [y for t in traces for y in t["y"]]
    for shape in layout.get("shapes", []):
        (ys if shape.get("yref") == "y" else xs).append(
            shape["y0"] if shape.get("yref") == "y" else shape["x0"]
        )
    y_log = layout["yaxis"].get("type") == "log"
    xa = _Axis(xs, log=layout["xaxis"].get("type") == "log", lo_px=left, hi_px=right)
    ya = _Axis(ys, log=y_log, lo_px=bottom, hi_px=top)
    y_prefix = layout["yaxis"].get("tickprefix", "")
    body = _axes(xa, ya, (left, top, right, bottom), "", y_prefix)
    body.append(_title(layout["xaxis"]["title"]["text"], (left + right) / 2, bottom + 34))
    body.append(_title(layout["yaxis"]["title"]["text"], 16, (top + bottom) / 2, vertical=True))
    for shape in layout.get("shapes", []):
        colour = shape["line"]["color"]
        if shape.get("yref") == "y":
            y = ya.px(shape["y0"])
            coords = f'x1="{left}" y1="{_num(y)}" x2="{right}" y2="{_num(y)}"'
        else:
            x = xa.px(shape["x0"])
            coords = f'x1="{_num(x)}" y1="{top}" x2="{_num(x)}" y2="{bottom}"'
        body.append(
            f'<line class="reference" {coords} stroke="{colour}" stroke-width="2" '
            'stroke-dasharray="6,4"/>'
        )
    for note in layout.get("annotations", []):
        x = left if note.get("xref") == "paper" else xa.px(note["x"], in_units=True)
        y = top - 4 if note.get("yref") == "paper" else ya.px(note["y"], in_units=True) - 4
        anchor = {"left": "start", "right": "end"}.get(note.get("xanchor", ""), "middle")
        body.append(
            f'<text class="annotation" x="{_num(x + (4 if anchor == "start" else -4))}" '
            f'y="{_num(y)}" text-anchor="{anchor}" fill="{note["font"]["color"]}">'
            f"{_esc(' '.join(_lines(note['text'])))}</text>"
        )
    legend_items = []
    for trace in traces:
        marker = trace.get("marker", {})
        series = [f'<g class="trace" data-name="{_esc(str(trace["name"]))}">']
        points = [
            (xa.px(x), ya.px(y), text)
            for x, y, text in zip(trace["x"], trace["y"], trace.get("text", []), strict=False)
            if x is not None and y is not None and (x > 0 or not xa.log) and (y > 0 or not y_log)
        ]
        if "lines" in trace.get("mode", ""):
            line = trace.get("line", {})
            path = " ".join(f"{_num(px)},{_num(py)}" for px, py, _ in points)
            series.append(
                f'<polyline points="{path}" fill="none" stroke="{line.get("color", "#222")}" '
                'stroke-width="2" stroke-dasharray="2,4"/>'
            )
        colour = marker.get("color", "#222222")
        for px, py, text in points:
            tip = "\n".join(_lines(text))
            series.append(
                _marker(
                    marker.get("symbol", "circle"), px, py, marker.get("size", 10), colour, tip
                )
            )
        series.append("</g>")
        body.extend(series)
        kind = "line" if "lines" in trace.get("mode", "") else "marker"
        legend_items.append((str(trace["name"]), colour, kind))
    legend, height = _legend(legend_items, bottom + 56)
    return _frame(body, legend, height, element_id, "cost against time of every candidate")


def _bar_svg(figure: dict[str, Any], element_id: str) -> str:
    layout = figure["layout"]
    traces = figure["data"]
    bars = [t for t in traces if t["type"] == "bar"]
    marks = [t for t in traces if t["type"] != "bar"]
    labels = list((bars or marks or [{"x": []}])[0]["x"])
    margin = layout.get("margin", {})
    left, right = float(margin.get("l", 70)), WIDTH - float(margin.get("r", 20))
    top = float(margin.get("t", 30))
    label_rows = max((len(_lines(label)) for label in labels), default=1)
    bottom = float(layout.get("height", 440)) - 40.0 - 14 * label_rows
    totals = [sum(t["y"][i] or 0.0 for t in bars if i < len(t["y"])) for i in range(len(labels))]
    ys = totals + [y for t in marks for y in t["y"]]
    ya = _Axis(ys or [1.0], log=False, lo_px=bottom, hi_px=top)
    body = _axes(None, ya, (left, top, right, bottom), "", "")
    body.append(_title(layout["yaxis"]["title"]["text"], 16, (top + bottom) / 2, vertical=True))
    slot = (right - left) / max(1, len(labels))
    width = slot * 0.6
    for i, label in enumerate(labels):
        cx = left + slot * (i + 0.5)
        for row, line in enumerate(_lines(label)):
            body.append(
                f'<text x="{_num(cx)}" y="{_num(bottom + 16 + 14 * row)}" text-anchor="middle" '
                f'font-size="10" fill="#1d2330">{_esc(line)}</text>'
            )
        base = 0.0
        name = " ".join(_lines(label))
        for trace in bars:
            value = trace["y"][i] if i < len(trace["y"]) else None
            if value is None:
                continue
            y0, y1 = ya.px(base), ya.px(base + value)
            tip = f"{name}\n{trace['name']}: {value:.2f} GiB"
            body.append(
                f'<rect class="bar" data-tip="{_esc(tip)}" '
                f'x="{_num(cx - width / 2)}" y="{_num(y1)}" width="{_num(width)}" '
                f'height="{_num(max(0.0, y0 - y1))}" fill="{trace["marker"]["color"]}"/>'
            )
            base += value
        for trace in marks:
            value = trace["y"][i]
            y = ya.px(value)
            colour = trace["marker"]["color"]
            tip = f"{name}\nusable: {value:.2f} GiB"
            body.append(
                f'<line class="point" data-tip="{_esc(tip)}" '
                f'x1="{_num(cx - width / 2 - 6)}" y1="{_num(y)}" x2="{_num(cx + width / 2 + 6)}" '
                f'y2="{_num(y)}" stroke="{colour}" stroke-width="3"/>'
            )
    items = [(str(t["name"]), t["marker"]["color"], "bar") for t in bars]
    items += [(str(t["name"]), t["marker"]["color"], "bar") for t in marks]
    legend, height = _legend(items, bottom + 22 + 14 * label_rows)
    return _frame(body, legend, height, element_id, "peak memory per GPU by component")


def render_svg(figure: dict[str, Any], *, element_id: str) -> str:
    """One chart as an ``<svg>`` element: stacked bars (``barmode``), else a scatter."""
    if figure["layout"].get("barmode") == "stack":
        return _bar_svg(figure, element_id)
    return _scatter_svg(figure, element_id)
