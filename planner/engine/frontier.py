"""What the budget buys: per method, the most training tokens the budget pays for on its best
offer, and the stronger options (full fine-tuning, more epochs) that are affordable. Pure.

Tokens for a budget on one candidate: the billed hours the budget pays for (``max_usd`` ÷ the
instance price, whole billing units, at least the minimum), less the start-up, less the spot
overhead in the same proportion as in the candidate's plan, capped by ``--max-hours``, times the
candidate's tokens/s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from planner._types import Budget, Candidate, FrontierEntry, QualityPolicy, RiskLevel
from planner.engine.quality import BALANCED_RISK_PREMIUM
from profiler import Method
from profiler._types import MAX_EPOCHS


def affordable_tokens(candidate: Candidate, budget: Budget) -> int:
    """Training tokens ``budget.max_usd`` buys on this candidate (0 when not even the start-up
    or the offer's minimum billing fits the budget). Free (own) GPUs are limited by
    ``--max-hours`` only; without it money sets no limit and this returns 0."""
    cost, offer = candidate.cost, candidate.offer
    tokens_per_s = candidate.measurement.tokens_per_s or 0.0
    if cost.usd_per_hour <= 0:
        billed = math.inf  # free (own) GPUs: only the deadline limits the run
    else:
        billed = budget.max_usd / cost.usd_per_hour
        if billed < offer.min_billing_hours:
            return 0
        if offer.billing_increment_s > 1:  # whole units only
            unit_h = offer.billing_increment_s / 3600
            billed = math.floor(billed / unit_h + 1e-9) * unit_h
    run_hours = billed if budget.max_hours is None else min(billed, budget.max_hours)
    if math.isinf(run_hours) or tokens_per_s <= 0:
        return 0
    overhead = cost.spot_overhead_hours / cost.train_hours if cost.train_hours > 0 else 0.0
    # Start-up and the eval passes take the same time however long the run trains.
    train_hours = (run_hours - cost.startup_hours - cost.eval_hours) / (1 + overhead)
    return max(0, int(train_hours * 3600 * tokens_per_s))


def usd_per_million_tokens(candidate: Candidate) -> float:
    """Marginal training price of a candidate, USD per million tokens (start-up excluded)."""
    tokens_per_h = (candidate.measurement.tokens_per_s or 0.0) * 3600
    return math.inf if tokens_per_h <= 0 else candidate.cost.usd_per_hour / tokens_per_h * 1e6


def budget_frontier(
    candidates: Iterable[Candidate], budget: Budget, methods: Iterable[Method]
) -> tuple[FrontierEntry, ...]:
    """Per method, the candidate that buys the most tokens for the budget among those that
    meet the plan's own checks: it fits in memory (training, loading and host RAM) and the
    quality policy accepts it; ``--max-hours`` caps the tokens (:func:`affordable_tokens`).
    A method with no such candidate gets an entry with ``max_tokens`` 0 and no offer.
    """
    pool = [c for c in candidates if c.fits and c.quality_accepted]
    out: list[FrontierEntry] = []

    def most(of: Iterable[Candidate]) -> Candidate | None:
        return max(
            of,
            key=lambda c: (affordable_tokens(c, budget), -c.cost.usd, c.offer.key),
            default=None,
        )

    for method in methods:
        mine = [c for c in pool if c.config.method is method]
        best = most(mine)
        if budget.quality is QualityPolicy.BALANCED and best is not None:
            # balanced: a low-risk config unless the riskier one buys over 20% more tokens.
            low = most(c for c in mine if c.risk_level is RiskLevel.LOW)
            low_tokens = 0 if low is None else affordable_tokens(low, budget)
            if low is not None and low_tokens * (1 + BALANCED_RISK_PREMIUM) >= affordable_tokens(
                best, budget
            ):
                best = low
        tokens = 0 if best is None else affordable_tokens(best, budget)
        out.append(
            FrontierEntry(
                method=method,
                max_tokens=tokens,
                max_epochs=tokens / budget.dataset_tokens,
                offer=None if best is None else best.offer.key,
                usd_per_million_tokens=None if best is None else usd_per_million_tokens(best),
                config=None if best is None else best.config.label(),
            )
        )
    return tuple(out)


def stronger_options(
    chosen: Candidate | None,
    candidates: Iterable[Candidate],
    budget: Budget,
    frontier: Iterable[FrontierEntry],
    *,
    accepted_at: Callable[[Candidate, float], bool] = lambda _c, _epochs: True,
) -> tuple[str, ...]:
    """Sentences on what a stronger option costs and changes, when the budget affords it:
    full fine-tuning instead of an adapter, and more epochs on the chosen offer. Each meets
    the plan's own checks: feasible (memory, loading, host RAM, budget, deadline, quality
    policy), and more epochs only as many as the budget and deadline pay for and the quality
    policy still accepts (``accepted_at(candidate, epochs)``)."""
    if chosen is None:
        return ()
    out: list[str] = []
    if chosen.config.method.traits.adapters:
        full = sorted(
            (c for c in candidates if not c.config.method.traits.adapters and c.feasible),
            key=lambda c: (c.cost.usd, c.offer.key),
        )
        low = [c for c in full if c.risk_level is RiskLevel.LOW]
        if (
            budget.quality is QualityPolicy.BALANCED
            and full
            and low
            and low[0].cost.usd <= full[0].cost.usd * (1 + BALANCED_RISK_PREMIUM)
        ):
            full = low  # balanced: the low-risk option unless the riskier saves over 20%
        if full:
            best = full[0]
            risks = "; ".join(r.message for r in chosen.risks) or (
                f"{chosen.config.method.traits.label} on all linear layers matches full "
                "fine-tuning on small/medium instruction data (Schulman et al. 2025), so expect "
                "little gain; it matters for continued pre-training and large corpora "
                "(Biderman et al. 2024)"
            )
            own = f"; its own risk: {best.risks[0].message}" if best.risks else ""
            out.append(
                f"full fine-tuning is affordable: ${best.cost.usd:,.2f} "
                f"({best.cost.usd / max(chosen.cost.usd, 1e-9):.1f}× the chosen plan) on "
                f"{best.offer.instance_type} ({best.config.label()}); what it would change: "
                f"{risks}{own}"
            )
    entry = next((e for e in frontier if e.method is chosen.config.method), None)
    # Rounded down to the tenth shown, so the figure stated is affordable as written.
    tenths = math.floor(affordable_tokens(chosen, budget) / budget.dataset_tokens * 10)
    # --epochs takes at most MAX_EPOCHS: past it the sentence says "over" and the quality
    # policy is asked about what the flag can request.
    epochs_affordable = min(tenths / 10, MAX_EPOCHS)
    over = "over " if tenths / 10 > MAX_EPOCHS else ""
    if (
        entry is not None
        and epochs_affordable >= budget.epochs + 1
        and accepted_at(chosen, epochs_affordable)
    ):
        out.append(
            f"the budget buys {over}{epochs_affordable:,.1f} epochs of this dataset on the chosen "
            f"offer (you asked for {budget.epochs:g}); more epochs help when the loss is still "
            "falling on held-out data and over-fit small datasets: raise --epochs "
            "deliberately, with an eval set"
        )
    return tuple(out)
