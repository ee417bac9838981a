"""The pure row builders the markdown and HTML reports share, so both always say the same thing."""

from __future__ import annotations

from dataclasses import dataclass

from catalog import Offer
from planner._types import RISK_ORDER, Candidate, Plan
from profiler import Measurement, Method

# --- shared, pure row builders ------------------------------------------------------------------


def fmt_usd(usd: float) -> str:
    """``$1,234.56``."""
    return f"${usd:,.2f}"


def fmt_usd_per_hour(usd_per_hour: float) -> str:
    """A price per hour with its catalog precision: ``$0.3879``, ``$98.32``."""
    if usd_per_hour >= 100:
        return f"${usd_per_hour:,.2f}"
    return f"${usd_per_hour:.4g}"


def fmt_hours(hours: float) -> str:
    """Hours with one decimal (two below 1 h), e.g. ``4.1 h``."""
    return f"{hours:.2f} h" if hours < 1 else f"{hours:,.1f} h"


# A step-time band whose high end exceeds its low end by more than this shows hours and cost as
# ranges; a narrower one adds nothing a reader can act on.
WIDE_BAND = 0.10


def cost_ranges(candidate: Candidate) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """``((hours_low, hours_high), (usd_low, usd_high))`` from the step-time band of the
    candidate's estimate when it is wide (:data:`WIDE_BAND`), else None.

    Training and eval hours and the spot overhead scale with the step time; start-up does not;
    USD follows the hours at the offer's rate.
    """
    m, cost = candidate.measurement, candidate.cost
    band = m.band("step_time_s")
    if band is None or not m.step_time_s or band[1] <= band[0] * (1 + WIDE_BAND):
        return None
    scaled = cost.train_hours + cost.eval_hours + cost.spot_overhead_hours
    hours = tuple(cost.startup_hours + scaled * b / m.step_time_s for b in band)
    usd = tuple(cost.usd * h / cost.hours if cost.hours > 0 else cost.usd for h in hours)
    return (hours[0], hours[1]), (usd[0], usd[1])


def fmt_hours_band(candidate: Candidate) -> str:
    """``4.1 h``, or ``4.1 h (3.6–4.9 h)`` when the estimate's band is wide."""
    ranges = cost_ranges(candidate)
    text = fmt_hours(candidate.cost.hours)
    if ranges is None:
        return text
    return f"{text} ({fmt_hours(ranges[0][0]).removesuffix(' h')}–{fmt_hours(ranges[0][1])})"


def fmt_usd_band(candidate: Candidate) -> str:
    """``$41.20``, or ``$41.20 ($36.10–$48.90)`` when the estimate's band is wide."""
    ranges = cost_ranges(candidate)
    text = fmt_usd(candidate.cost.usd)
    if ranges is None:
        return text
    return f"{text} ({fmt_usd(ranges[1][0])}–{fmt_usd(ranges[1][1])})"


def fmt_gib(gib: float | None) -> str:
    """``16.96 GiB`` or ``n/a``."""
    return "n/a" if gib is None else f"{gib:,.2f} GiB"


def fmt_tokens(tokens: float) -> str:
    """``50,000,000``."""
    return f"{tokens:,.0f}"


def gpu_label(candidate: Candidate) -> str:
    """GPU type × count over all nodes, e.g. ``8× H100 SXM 80GB``."""
    return f"{candidate.config.gpu_count}× {candidate.offer.gpu}"


def offer_label(offer: Offer) -> str:
    """``aws ec2 g6.xlarge, us-east-1, spot``."""
    kind = "spot" if offer.spot else "on-demand"
    return f"{offer.provider.value} {offer.service} {offer.instance_type}, {offer.region}, {kind}"


def memory_used_gib(measurement: Measurement) -> float | None:
    """The per-GPU figure compared with usable memory: reserved if known, else allocated
    (:attr:`profiler.Measurement.peak_memory_gib`)."""
    return measurement.peak_memory_gib


def all_candidates(plan: Plan) -> list[Candidate]:
    """Every priced candidate the plan holds: ranked ones, the Pareto front, near misses (when
    nothing is feasible) and each method's best, without duplicates, in that order."""
    picked: dict[tuple[str, str, int], Candidate] = {}
    for cand in (*plan.ranked, *plan.pareto, *plan.near_misses, *(v.best for v in plan.verdicts)):
        if cand is not None:
            picked.setdefault(_candidate_key(cand), cand)
    return list(picked.values())


def candidate_status(candidate: Candidate) -> str:
    """``feasible`` or the constraints the candidate breaks, e.g. ``does not fit``."""
    problems = []
    if not candidate.fits:
        problems.append("does not fit")
    if not candidate.within_budget:
        problems.append("over budget")
    if not candidate.within_deadline:
        problems.append("over deadline")
    if not candidate.quality_accepted:
        problems.append("quality risk not accepted")
    return ", ".join(problems) if problems else "feasible"


@dataclass(frozen=True, slots=True, kw_only=True)
class CandidateRow:
    """One line of the candidates table, already formatted (units in the strings)."""

    rank: int
    method: str
    config: str
    gpus: str
    offer: str
    usd_per_hour: str
    hours: str
    usd: str
    peak_memory: str
    usable_memory: str
    status: str
    risk: str
    source: str
    chosen: bool
    pareto: bool


def candidate_rows(plan: Plan, *, near_misses: bool = False) -> list[CandidateRow]:
    """The plan's ranked candidates (or, with ``near_misses``, the closest infeasible ones), in
    the plan's order, as formatted rows."""
    pareto_keys = {_candidate_key(c) for c in plan.pareto}
    chosen_key = _candidate_key(plan.chosen) if plan.chosen is not None else None
    rows = []
    listed = plan.near_misses if near_misses else plan.ranked
    for rank, cand in enumerate(listed, start=1):
        key = _candidate_key(cand)
        rows.append(
            CandidateRow(
                rank=rank,
                method=cand.config.method.value,
                config=cand.config.label(),
                gpus=gpu_label(cand),
                offer=offer_label(cand.offer),
                usd_per_hour=fmt_usd_per_hour(cand.cost.usd_per_hour),
                hours=fmt_hours_band(cand),
                usd=fmt_usd_band(cand),
                peak_memory=fmt_gib(memory_used_gib(cand.measurement)),
                usable_memory=fmt_gib(cand.usable_memory_gib),
                status=candidate_status(cand),
                risk=cand.risk_level.value,
                source=cand.measurement.source.value,
                chosen=key == chosen_key,
                pareto=key in pareto_keys,
            )
        )
    return rows


def _candidate_key(candidate: Candidate) -> tuple[str, str, int]:
    return (candidate.config.label(), candidate.offer.key, candidate.nodes)


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskRow:
    """A quality risk of a method's best candidate, with its source."""

    method: str
    level: str
    message: str
    source: str


def risk_rows(plan: Plan) -> list[RiskRow]:
    """Risks of the chosen candidate and of each method's best, deduplicated and sorted by
    method, then severity (high first), then text."""
    seen: set[tuple[str, str, str]] = set()
    items = []
    bests = [plan.chosen] + [v.best for v in plan.verdicts]
    for cand in bests:
        if cand is None:
            continue
        for risk in cand.risks:
            key = (cand.config.method.value, risk.message, risk.source)
            if key in seen:
                continue
            seen.add(key)
            items.append(
                (
                    list(Method).index(cand.config.method),
                    -RISK_ORDER.index(risk.level),
                    RiskRow(
                        method=cand.config.method.value,
                        level=risk.level.value,
                        message=risk.message,
                        source=risk.source,
                    ),
                )
            )
    items.sort(key=lambda t: (t[0], t[1], t[2].message))
    return [row for _, _, row in items]


_SOURCE_ORDER = {"measured": 0, "extrapolated": 1, "estimated": 2}
_FIGURES_LISTED = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRow:
    """One provenance (source, device, versions, date, method, notes) and the figures from it.

    ``figures`` lists up to four ``config on GPU`` descriptions, sorted, then ``+N more``.
    """

    source: str
    device: str
    versions: str
    date: str
    method: str
    notes: str
    count: int
    figures: str


def source_rows(plan: Plan) -> list[SourceRow]:
    """The provenances behind the plan's candidates, measured first, then extrapolated, then
    estimated; each with how many distinct figures it gave and which."""
    groups: dict[tuple[str, str, str, str, str, str], set[str]] = {}
    for cand in all_candidates(plan):
        m = cand.measurement
        prov = m.provenance
        versions = ", ".join(f"{name} {version}" for name, version in sorted(prov.versions))
        key = (m.source.value, prov.device, versions, prov.date, prov.method, prov.notes)
        groups.setdefault(key, set()).add(f"{m.config.label()} on {m.gpu}")
    rows = []
    for key in sorted(groups, key=lambda k: (_SOURCE_ORDER.get(k[0], 9), k)):
        figures = sorted(groups[key])
        listed = "; ".join(figures[:_FIGURES_LISTED])
        if len(figures) > _FIGURES_LISTED:
            listed += f"; +{len(figures) - _FIGURES_LISTED} more"
        source, device, versions, date, method, notes = key
        rows.append(
            SourceRow(
                source=source,
                device=device,
                versions=versions,
                date=date,
                method=method,
                notes=notes,
                count=len(figures),
                figures=listed,
            )
        )
    return rows


def offers_in(plan: Plan) -> list[Offer]:
    """Distinct offers priced in the plan, sorted by their key."""
    offers = {c.offer.key: c.offer for c in all_candidates(plan)}
    return [offers[k] for k in sorted(offers)]


def memory_candidates(plan: Plan) -> list[Candidate]:
    """The chosen candidate, each method's best and each method's cheapest candidate that does
    not fit in memory (it shows why the method needs bigger GPUs), deduplicated, ordered
    full/lora/qlora then by cost."""
    picked: dict[tuple[str, str, int], Candidate] = {}
    for cand in [plan.chosen] + [v.best for v in plan.verdicts]:
        if cand is not None:
            picked.setdefault(_candidate_key(cand), cand)
    for method in Method:
        too_big = [c for c in all_candidates(plan) if c.config.method is method and not c.fits]
        if too_big:
            cheapest = min(too_big, key=lambda c: c.cost.usd)
            picked.setdefault(_candidate_key(cheapest), cheapest)
    return sorted(picked.values(), key=lambda c: (list(Method).index(c.config.method), c.cost.usd))


def source_counts(plan: Plan) -> dict[str, int]:
    """How many of the plan's candidates rest on measured, extrapolated and estimated figures."""
    counts = {"measured": 0, "extrapolated": 0, "estimated": 0}
    for cand in all_candidates(plan):
        counts[cand.measurement.source.value] = counts.get(cand.measurement.source.value, 0) + 1
    return counts


# The memory components reports show: breakdown field, name, chart colour (Okabe & Ito 2008).
MEMORY_COMPONENTS = (
    ("weights_gib", "weights", "#0072B2"),
    ("gradients_gib", "gradients", "#E69F00"),
    ("optimizer_gib", "optimizer states", "#CC79A7"),
    ("activations_gib", "activations", "#009E73"),
    ("logits_gib", "logits", "#D55E00"),
    ("overhead_gib", "overhead", "#999999"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryRow:
    """Per-GPU memory of one candidate: components (GiB, formatted), peaks and phase peaks."""

    method: str
    label: str
    parts: tuple[str, ...]
    allocated: str
    reserved: str
    usable: str
    phases: str


def _gib_number(gib: float | None) -> str:
    return "n/a" if gib is None else f"{gib:,.2f}"


def phase_peaks_text(measurement: Measurement) -> str:
    """``forward_backward 15.20, optimizer_step 14.10`` (GiB), or ``n/a``."""
    if not measurement.phase_peaks_gib:
        return "n/a"
    return ", ".join(f"{name} {gib:,.2f}" for name, gib in measurement.phase_peaks_gib)


def params_text(measurement: Measurement) -> str:
    """``39,976,960 of 6,778,392,576 (0.59%)`` trainable parameters, or ``n/a``."""
    trainable, total = measurement.trainable_params, measurement.total_params
    if trainable is None:
        return "n/a"
    if not total:
        return f"{trainable:,}"
    return f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"


def memory_rows(plan: Plan) -> list[MemoryRow]:
    """The :func:`memory_candidates` as formatted rows."""
    rows = []
    for c in memory_candidates(plan):
        m = c.measurement
        bd = m.breakdown
        parts = tuple(
            "n/a" if bd is None else f"{getattr(bd, name):,.2f}"
            for name, _, _ in MEMORY_COMPONENTS
        )
        rows.append(
            MemoryRow(
                method=c.config.method.value,
                label=f"{c.config.label()} on {gpu_label(c)}",
                parts=parts,
                allocated=_gib_number(m.peak_allocated_gib),
                reserved=_gib_number(m.peak_reserved_gib),
                usable=_gib_number(c.usable_memory_gib),
                phases=phase_peaks_text(m),
            )
        )
    return rows
