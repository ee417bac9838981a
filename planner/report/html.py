"""The plan as one self-contained HTML file: tables, two inline SVG charts and inline CSS.

The file opens offline (nothing is fetched from a URL) and stays small (tens of kB): the charts
are drawn in Python (:mod:`planner.report.svg`) from the figure dictionaries built here, and a
few lines of inline script show each mark's values on hover. The template is rendered by jinja2
with autoescaping on, so every user- or catalog-supplied string is escaped; the SVG escapes its
own text. jinja2 is imported only here, lazily.
"""

from __future__ import annotations

import contextlib
import functools
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog import cache_dir
from planner._types import METHOD_NAMES, Budget, Candidate, Plan
from planner.report.rows import (
    MEMORY_COMPONENTS,
    all_candidates,
    candidate_rows,
    candidate_status,
    fmt_gib,
    fmt_hours,
    fmt_hours_band,
    fmt_tokens,
    fmt_usd,
    fmt_usd_band,
    fmt_usd_per_hour,
    gpu_label,
    memory_candidates,
    memory_rows,
    memory_used_gib,
    offer_label,
    offers_in,
    params_text,
    risk_rows,
    source_counts,
    source_rows,
)
from planner.report.svg import render_svg
from profiler import Method

if TYPE_CHECKING:
    import jinja2

TEMPLATE_NAME = "report.html.j2"
TEMPLATES_DIR = Path(__file__).parent / "templates"
# Okabe & Ito (2008) colour-blind-safe palette, one colour per method.
# Okabe-Ito colours, one per method in declaration order (a new method takes the next one).
_METHOD_COLOURS = dict(
    zip(Method, ("#D55E00", "#0072B2", "#009E73", "#CC79A7", "#56B4E9"), strict=False)
)


def _bytecode_cache_dir() -> Path:
    """Compiled templates live in the ftplan user cache (:func:`catalog.cache_dir`), so later
    runs skip jinja2's ~60 ms compile."""
    return cache_dir() / "templates"


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2
    import jinja2.bccache

    class _BestEffortBytecodeCache(jinja2.bccache.FileSystemBytecodeCache):
        """A cache that never fails a report: an unwritable cache folder just means no cache."""

        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            with contextlib.suppress(OSError):
                super().dump_bytecode(bucket)

    cache: jinja2.BytecodeCache | None = None
    try:
        folder = _bytecode_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        cache = _BestEffortBytecodeCache(str(folder))
    except OSError:
        cache = None
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every {{ value }} is HTML-escaped unless marked safe here
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        bytecode_cache=cache,
    )


def _chart_text(text: str) -> str:
    """Chart labels are HTML-escaped text whose only markup is ``<br>`` (plotly's convention)."""
    return html.escape(text, quote=False)


def _hover(cand: Candidate) -> str:
    return "<br>".join(
        _chart_text(line)
        for line in (
            cand.config.label(),
            f"{gpu_label(cand)}: {offer_label(cand.offer)}",
            f"{fmt_hours_band(cand)}, {fmt_usd_band(cand)}",
            candidate_status(cand),
        )
    )


def cost_time_figure(plan: Plan) -> dict[str, Any]:
    """Scatter of every candidate's hours (x, log) vs USD (y, log unless some cost is $0, as on
    the user's own GPUs), the Pareto front, the chosen candidate, the budget line and, when
    set, the deadline line."""
    candidates = all_candidates(plan)
    log_usd = all(c.cost.usd > 0 for c in candidates)
    traces = _candidate_traces(plan, candidates)
    shapes, annotations = _limit_lines(plan.budget, log_usd)
    layout = {
        "xaxis": {
            "title": {"text": "wall-clock hours (log scale)"},
            "type": "log",
            "zeroline": False,
        },
        "yaxis": (
            {"title": {"text": "total cost, USD (log scale)"}, "type": "log"}
            if log_usd
            else {"title": {"text": "total cost, USD"}, "rangemode": "tozero"}
        )
        | {"tickprefix": "$"},
        "shapes": shapes,
        "annotations": annotations,
        "margin": {"l": 70, "r": 20, "t": 30, "b": 40},
        "height": 440,
    }
    return {"data": traces, "layout": layout}


def _candidate_traces(plan: Plan, candidates: list[Candidate]) -> list[dict[str, Any]]:
    """One marker trace per method and feasibility, then the Pareto front and the chosen star."""
    traces: list[dict[str, Any]] = []
    for method in Method:
        for feasible in (True, False):
            group = [c for c in candidates if c.config.method is method and c.feasible is feasible]
            if not group:
                continue
            traces.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": f"{METHOD_NAMES[method]}{'' if feasible else ' (infeasible)'}",
                    "x": [c.cost.hours for c in group],
                    "y": [c.cost.usd for c in group],
                    "text": [_hover(c) for c in group],
                    "marker": {
                        "color": _METHOD_COLOURS[method],
                        "size": 11 if feasible else 10,
                        "symbol": "circle" if feasible else "x-open",
                        "line": {"width": 1, "color": "#ffffff"} if feasible else {},
                    },
                }
            )
    if plan.pareto:
        front = sorted(plan.pareto, key=lambda c: (c.cost.hours, c.cost.usd))
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "Pareto front",
                "x": [c.cost.hours for c in front],
                "y": [c.cost.usd for c in front],
                "text": [_hover(c) for c in front],
                "line": {"color": "#222222", "width": 2, "dash": "dot"},
                "marker": {
                    "size": 16,
                    "symbol": "circle-open",
                    "color": "#222222",
                    "line": {"width": 2},
                },
            }
        )
    if plan.chosen is not None:
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "recommended",
                "x": [plan.chosen.cost.hours],
                "y": [plan.chosen.cost.usd],
                "text": [_hover(plan.chosen)],
                "marker": {
                    "size": 22,
                    "symbol": "star",
                    "color": "#F0E442",
                    "line": {"width": 1.5, "color": "#222222"},
                },
            }
        )
    return traces


def _limit_lines(
    budget: Budget, log_usd: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The budget line (and the deadline line when set) as plotly shapes and their labels."""
    # Both axes are logarithmic: costs and times span decades, and a budget far above every
    # candidate would otherwise squash them onto the x axis. On a log axis annotations take
    # log10 units and shapes data units (plotly's convention, which planner.report.svg follows).
    shapes: list[dict[str, Any]] = [
        {
            "type": "line",
            "xref": "paper",
            "x0": 0,
            "x1": 1,
            "yref": "y",
            "y0": budget.max_usd,
            "y1": budget.max_usd,
            "line": {"color": "#B00020", "width": 2, "dash": "dash"},
        }
    ]
    annotations: list[dict[str, Any]] = [
        {
            "xref": "paper",
            "x": 0,
            "xanchor": "left",
            "yref": "y",
            "y": math.log10(budget.max_usd) if log_usd else budget.max_usd,
            "yanchor": "bottom",
            "showarrow": False,
            "font": {"color": "#B00020"},
            "text": f"budget {fmt_usd(budget.max_usd)}",
        }
    ]
    if budget.max_hours is not None:
        deadline_x = math.log10(budget.max_hours)
        shapes.append(
            {
                "type": "line",
                "yref": "paper",
                "y0": 0,
                "y1": 1,
                "xref": "x",
                "x0": budget.max_hours,
                "x1": budget.max_hours,
                "line": {"color": "#6A3D9A", "width": 2, "dash": "dash"},
            }
        )
        annotations.append(
            {
                "yref": "paper",
                "y": 1,
                "yanchor": "bottom",
                "xref": "x",
                "x": deadline_x,
                "xanchor": "right",
                "showarrow": False,
                "font": {"color": "#6A3D9A"},
                "text": f"deadline {fmt_hours(budget.max_hours)}",
            }
        )
    return shapes, annotations


def memory_figure(plan: Plan) -> dict[str, Any]:
    """Stacked bars of each method's best candidate's per-GPU memory by component, with the
    GPU's usable memory marked on each bar."""
    cands = memory_candidates(plan)
    labels = [
        f"{_chart_text(c.config.method.value)} {_chart_text(c.config.precision.value)}"
        f"<br>{_chart_text(gpu_label(c))}{'' if c.fits else '<br>(does not fit)'}"
        for c in cands
    ]
    traces: list[dict[str, Any]] = []
    for field, name, colour in MEMORY_COMPONENTS:
        values = [
            getattr(c.measurement.breakdown, field) if c.measurement.breakdown else None
            for c in cands
        ]
        if all(v is None for v in values):
            continue
        traces.append(
            {
                "type": "bar",
                "name": name,
                "x": labels,
                "y": values,
                "marker": {"color": colour},
            }
        )
    unsplit = [
        c.measurement.peak_allocated_gib if c.measurement.breakdown is None else None
        for c in cands
    ]
    if any(v is not None for v in unsplit):
        traces.append(
            {
                "type": "bar",
                "name": "peak (no breakdown)",
                "x": labels,
                "y": unsplit,
                "marker": {"color": "#56B4E9"},
            }
        )
    traces.append(
        {
            "type": "scatter",
            "mode": "markers",
            "name": "usable GPU memory",
            "x": labels,
            "y": [c.usable_memory_gib for c in cands],
            "marker": {
                "symbol": "line-ew-open",
                "size": 70,
                "color": "#B00020",
                "line": {"width": 3, "color": "#B00020"},
            },
        }
    )
    layout = {
        "barmode": "stack",
        "yaxis": {"title": {"text": "GiB per GPU"}, "rangemode": "tozero"},
        "height": 440,
        "margin": {"l": 70, "r": 20, "t": 30, "b": 40},
    }
    return {"data": traces, "layout": layout}


def _verdicts(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "method": METHOD_NAMES[v.method],
            "best": None
            if v.best is None
            else (f"{v.best.config.label()} on {gpu_label(v.best)} ({offer_label(v.best.offer)})"),
            "usd": None if v.best is None else fmt_usd(v.best.cost.usd),
            "hours": None if v.best is None else fmt_hours(v.best.cost.hours),
            "reason": v.reason,
            "chosen": plan.chosen is not None
            and v.best is not None
            and v.best.config.method is plan.chosen.config.method,
        }
        for v in plan.verdicts
    ]


def render_html(plan: Plan) -> str:
    """The whole report as one HTML document that needs no network to display."""
    chosen = plan.chosen
    context = {
        "plan": plan,
        "budget": plan.budget,
        "chosen": chosen,
        "chosen_gpus": None if chosen is None else gpu_label(chosen),
        "chosen_offer": None if chosen is None else offer_label(chosen.offer),
        "chosen_memory": None if chosen is None else fmt_gib(memory_used_gib(chosen.measurement)),
        "fmt_usd": fmt_usd,
        "fmt_hours": fmt_hours,
        "fmt_gib": fmt_gib,
        "fmt_tokens": fmt_tokens,
        "fmt_usd_per_hour": fmt_usd_per_hour,
        "rows": candidate_rows(plan),
        "near_rows": candidate_rows(plan, near_misses=True),
        "verdicts": _verdicts(plan),
        "memory_rows": memory_rows(plan),
        "chosen_params": None if chosen is None else params_text(chosen.measurement),
        "components": [name for _, name, _ in MEMORY_COMPONENTS],
        "risks": risk_rows(plan),
        "sources": source_rows(plan),
        "source_counts": source_counts(plan),
        "offers": [(offer_label(o), o) for o in offers_in(plan)],
        "cost_time_svg": render_svg(cost_time_figure(plan), element_id="chart-cost-time"),
        "memory_svg": render_svg(memory_figure(plan), element_id="chart-memory"),
    }
    return _environment().get_template(TEMPLATE_NAME).render(**context)
