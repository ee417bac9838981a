"""The Plan: ftplan's answer built from one search, ranked, with its Pareto front and budget
frontier; the prose comes from :mod:`planner.explain`.

:func:`recommend` is pure apart from what it is given (offers, GPUs, the estimator and the
profile store); the dataset reader lives in :mod:`planner.engine.dataset` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import math

from catalog import mask_secrets
from planner import explain
from planner._types import (
    METHOD_NAMES,
    RISK_ORDER,
    Candidate,
    Plan,
    QualityPolicy,
    RiskLevel,
    SearchInfo,
    Task,
)
from planner.engine.evaluate import HOST_RAM_PREMIUM, Evaluator, sort_key
from planner.engine.frontier import budget_frontier, stronger_options
from planner.engine.measurer import Measurer, host_ram_unknown
from planner.engine.quality import (
    BALANCED_RISK_PREMIUM,
    accepted,
    assess_quality,
    capacity_ratio,
)
from planner.engine.search import SearchResult, search
from planner.engine.space import Hardware, RecommendRequest
from profiler import FitVerdict, default_lora_alpha
from profiler.memory import CHUNKED_LOSS_TOKENS

RANKED_SIZE = 8
PARETO_SIZE = 12
# A `tight` plan fits only without its estimate's error margin (an OOM is plausible). ftplan
# takes a plan with the margin instead when it costs at most this much more (a judgement call,
# stated in every plan that it affects).
TIGHT_PREMIUM = 0.20


def recommend(request: RecommendRequest, measurer: Measurer) -> Plan:
    """Search the space once and build the Plan (``chosen`` is None when nothing is feasible).

    Args:
        request: The job, limits, offers, assumptions and search settings.
        measurer: The estimator, stored profiles and memory-fit rule.

    Returns:
        The plan; when ``chosen`` is None, ``near_misses`` and ``suggestions`` say what would work.
    """
    result = search(request, measurer)
    notes: tuple[str, ...] = ()
    if request.budget.quality is QualityPolicy.BALANCED:
        result, notes = _prefer_low_risk(request, result)
    result, margin_notes = _prefer_margin(request, result, measurer)
    result, ram_notes = _prefer_known_host_ram(result)
    notes += margin_notes + ram_notes
    ranked = _distinct(result.feasible, RANKED_SIZE)
    chosen = ranked[0] if ranked else None
    if any(c.config.chunked_loss for c in ranked):
        notes += (
            "chunked cross-entropy (plans marked chunked-ce, one GPU): the LM head and the loss "
            f"run {CHUNKED_LOSS_TOKENS:,} tokens at a time and are recomputed in backward, so "
            "only one chunk's logits are alive; it costs one more head forward per step. Its "
            "memory and time terms are first principles, not fitted to a GPU run "
            "(docs/estimator.md); 'ftplan profile --chunked-loss' measures it",
        )
    near = () if chosen else _near_misses(result)
    frontier = budget_frontier(result.candidates, request.budget, request.space.methods)
    return Plan(
        model=request.spec.name,
        model_hf_id=request.spec.hf_id,
        model_config_path=request.model_config_path,
        model_config_sha256=request.model_config_sha256,
        budget=request.budget,
        chosen=chosen,
        ranked=ranked,
        verdicts=tuple(explain.verdict(m, result, chosen, request) for m in request.space.methods),
        pareto=pareto_front(result.feasible),
        assumptions=explain.assumptions(request) + notes,
        search=SearchInfo(
            sampler=result.sampler,
            seed=request.seed,
            trials=result.trials,
            evaluated=result.evaluated,
            catalog_as_of=request.catalog_as_of,
            catalog_source=request.catalog_source,
            storage=mask_secrets(request.storage) if request.storage else None,
        ),
        ftplan_version=request.ftplan_version,
        warnings=request.warnings + explain.plan_warnings(request, ranked),
        near_misses=near,
        suggestions=() if chosen else explain.suggestions(result, request),
        budget_frontier=frontier,
        stronger_options=stronger_options(
            chosen,
            result.candidates,
            request.budget,
            frontier,
            accepted_at=lambda c, epochs: _accepted_at(request, c, epochs),
        )
        + _higher_rank_option(request, chosen, measurer),
    )


def _accepted_at(request: RecommendRequest, candidate: Candidate, epochs: float) -> bool:
    """Whether the quality policy accepts ``candidate`` trained for ``epochs`` epochs (the risk
    of continued pre-training, and of pure bf16 weights, grows with the tokens trained)."""
    budget = dataclasses.replace(request.budget, epochs=epochs)
    risks = assess_quality(
        request.spec, candidate.config, budget, global_batch_tokens=candidate.global_batch_tokens
    )
    return accepted(risks, request.budget.quality)


def _higher_rank_option(
    request: RecommendRequest, chosen: Candidate | None, measurer: Measurer
) -> tuple[str, ...]:
    """When the chosen plan is LoRA/QLoRA below the space's largest rank: what the largest rank
    that still fits and stays within the limits costs, and how much adapter capacity it adds."""
    ranks = request.space.lora_ranks
    if chosen is None or chosen.config.lora_rank is None or chosen.config.lora_rank >= max(ranks):
        return ()
    evaluator, hw = _on_its_offer(request, chosen, measurer)
    for rank in sorted((r for r in ranks if r > chosen.config.lora_rank), reverse=True):
        config = dataclasses.replace(
            chosen.config, lora_rank=rank, lora_alpha=default_lora_alpha(rank)
        )
        priced = evaluator.price(config, hw)
        if not priced or not priced[0].feasible:
            continue  # every line of the plan meets the same limits as the plan itself
        better = priced[0]
        before = capacity_ratio(request.spec, chosen.config, request.budget)
        after = capacity_ratio(request.spec, config, request.budget)
        change = (
            f"the data asks for {after:.0%} of the adapters' capacity instead of {before:.0%}"
            if before > 0
            else f"{rank // chosen.config.lora_rank}× the adapter capacity"
        )
        return (
            f"a higher rank is affordable: r{rank} costs ${better.cost.usd:,.2f} "
            f"(+{better.cost.usd / max(chosen.cost.usd, 1e-9) - 1:.0%}) on the same offer; "
            f"{change} (LoRA holds ~2 bits per trainable parameter, Schulman et al. 2025), "
            "which matters only when the data is near capacity",
        )
    return ()


def _on_its_offer(
    request: RecommendRequest, candidate: Candidate, measurer: Measurer
) -> tuple[Evaluator, Hardware]:
    """An evaluator and the hardware that price variants of ``candidate`` on its own offer."""
    evaluator = Evaluator(dataclasses.replace(request, offers=(candidate.offer,)), measurer)
    hw = Hardware(
        gpu=request.gpus[candidate.offer.gpu],
        gpus_per_node=candidate.offer.gpu_count,
        nodes=candidate.nodes,
        offers=(candidate.offer,),
    )
    return evaluator, hw


def _prefer_low_risk(
    request: RecommendRequest, balanced: SearchResult
) -> tuple[SearchResult, tuple[str, ...]]:
    """``--quality balanced``: take medium quality risk only where it saves real money.

    The cheapest plan that accepts medium risk (e.g. attention-only LoRA) often saves a few
    cents over a low-risk one (all-linear LoRA, which matches full FT on instruction data per
    Schulman et al. 2025). Balanced keeps the low-risk plan unless the medium-risk one is more
    than ``BALANCED_RISK_PREMIUM`` cheaper. Continued pre-training takes the low-risk plan
    (bf16-mixed full fine-tuning, or LoRA with the capacity on a small corpus) whenever one fits
    the limits, else full fine-tuning over LoRA. On free (own) GPUs there is no money to save:
    plans are ranked by time, then by risk. The one search priced all of these (``search``).
    """
    best = balanced.best
    if best is None or best.risk_level is RiskLevel.LOW:
        return balanced, ()
    strict = _as_strict(balanced)
    low = strict.best
    risk = best.risks[0].message if best.risks else best.risk_level.value
    if request.budget.task is Task.CPT:
        if low is not None:
            return strict, (
                f"quality balanced, --task cpt: chose the low-risk plan (${low.cost.usd:,.2f}, "
                f"{low.config.label()}) over the cheapest one (${best.cost.usd:,.2f}, "
                f"{best.config.label()}, {best.risk_level.value} risk: {risk}): continued "
                "pre-training is where LoRA learns less (Biderman et al. 2024) and pure bf16 "
                "loses the most updates (Zamirai et al. 2020), and the low-risk plan fits the "
                "limits",
            )
        full = next((c for c in balanced.feasible if not c.config.method.traits.adapters), None)
        if full is not None and best.config.method.traits.adapters:
            return _put_first(balanced, full), (
                f"quality balanced, --task cpt: chose full fine-tuning (${full.cost.usd:,.2f}) "
                f"over {METHOD_NAMES[best.config.method]} (${best.cost.usd:,.2f}): on continued "
                "pre-training LoRA learns less, more so the more tokens it trains (Biderman "
                "et al. 2024), and full FT fits the budget",
            )
    if best.cost.usd <= 0:
        return balanced, (
            "quality balanced on free (own) GPUs: no plan costs money, so plans are ranked by "
            f"time, then by quality risk; the fastest is {best.risk_level.value} risk "
            f"({best.config.label()}, {best.cost.hours:,.1f} h)"
            + (
                f"; the fastest low-risk plan takes {low.cost.hours:,.1f} h "
                f"({low.config.label()}): use --quality strict for it"
                if low is not None
                else ""
            ),
        )
    premium = f"{BALANCED_RISK_PREMIUM:.0%}"
    if low is not None and low.cost.usd <= best.cost.usd * (1 + BALANCED_RISK_PREMIUM):
        return strict, (
            f"quality balanced: chose the low-risk plan (${low.cost.usd:,.2f}) over the "
            f"cheapest medium-risk one (${best.cost.usd:,.2f}, {best.config.label()}): it costs "
            f"less than {premium} more",
        )
    if low is None:
        return balanced, (
            "quality balanced: no low-risk plan fits the limits, so the plan accepts medium risk",
        )
    return balanced, (
        f"quality balanced: the medium-risk plan saves more than {premium} over the cheapest "
        f"low-risk one (${low.cost.usd:,.2f}, {low.config.label()}); use --quality strict for "
        "that one",
    )


def _within_premium(alt: Candidate, best: Candidate, premium: float) -> bool:
    """Whether ``alt`` costs at most ``premium`` more than ``best``; on free (own) GPUs, where
    both cost nothing, whether it takes at most ``premium`` more time."""
    if best.cost.usd > 0:
        return alt.cost.usd <= best.cost.usd * (1 + premium)
    return alt.cost.usd <= 0 and alt.cost.hours <= best.cost.hours * (1 + premium)


def _premium_text(alt: Candidate, best: Candidate) -> str:
    """``+12%`` in money, or in time on free (own) GPUs."""
    if best.cost.usd > 0:
        return f"+{alt.cost.usd / best.cost.usd - 1:.0%}"
    return f"+{alt.cost.hours / max(best.cost.hours, 1e-9) - 1:.0%} time"


def _prefer_known_host_ram(result: SearchResult) -> tuple[SearchResult, tuple[str, ...]]:
    """When the best plan needs host RAM beyond its processes on an offer whose memory the
    catalog does not list (:func:`planner.engine.measurer.host_ram_unknown`), take the cheapest
    plan whose host RAM is known to fit, with no more quality risk and no less memory margin,
    if it costs at most :data:`~planner.engine.evaluate.HOST_RAM_PREMIUM` more (on free own
    GPUs: takes at most that much more time); otherwise keep it (its warning says what to
    check)."""
    best = result.best
    if best is None or not host_ram_unknown(best):
        return result, ()
    risk = RISK_ORDER.index(best.risk_level)
    alt = next(
        (
            c
            for c in result.feasible
            if not host_ram_unknown(c)
            and RISK_ORDER.index(c.risk_level) <= risk
            and (c.fit is FitVerdict.FITS or best.fit is not FitVerdict.FITS)
        ),
        None,
    )
    needs = (
        f"the ${best.cost.usd:,.2f} plan ({best.config.label()} on "
        f"{best.offer.instance_type}) needs {best.measurement.host_ram_gib or 0:,.0f} GiB of "
        "host RAM per node, and the catalog does not list that instance's memory"
    )
    if alt is not None and _within_premium(alt, best, HOST_RAM_PREMIUM):
        return _put_first(result, alt), (
            f"host RAM: chose ${alt.cost.usd:,.2f} ({alt.config.label()} on "
            f"{alt.offer.instance_type}, {_premium_text(alt, best)}), whose host RAM is known "
            f"to fit, over {needs}",
        )
    return result, (f"host RAM: kept {needs}; check it before launching",)


def _put_first(result: SearchResult, chosen: Candidate) -> SearchResult:
    """``result`` with ``chosen`` ranked first, the rest in their order."""
    rest = tuple(c for c in result.candidates if c is not chosen)
    return dataclasses.replace(result, candidates=(chosen, *rest))


def _prefer_margin(
    request: RecommendRequest, result: SearchResult, measurer: Measurer
) -> tuple[SearchResult, tuple[str, ...]]:
    """When the best plan is ``tight``, take the cheapest plan of the same method and no more
    quality risk that fits with its error margin, if it costs at most :data:`TIGHT_PREMIUM`
    more (on free own GPUs: takes at most that much more time): one the search priced, or the
    best plan's config on the same offer with a smaller micro-batch (gradient accumulation
    keeps the global batch), the chunked loss or gradient checkpointing. Otherwise keep it and
    say what the margin would cost."""
    best = result.best
    if best is None or best.fit is not FitVerdict.TIGHT:
        return result, ()
    risk = RISK_ORDER.index(best.risk_level)
    roomy = [
        c
        for c in (*result.feasible, *_roomier(request, best, measurer))
        if _roomy(c)
        and c.config.method is best.config.method
        and RISK_ORDER.index(c.risk_level) <= risk
    ]
    alt = min(roomy, key=sort_key, default=None)
    premium = f"{TIGHT_PREMIUM:.0%}"
    more = "more" if best.cost.usd > 0 else "more time"
    tight = (
        f"the ${best.cost.usd:,.2f} plan ({best.config.label()} on "
        f"{best.offer.instance_type}, {best.cost.hours:,.1f} h), which is tight: its error band "
        "straddles the card's memory"
    )
    if alt is not None and _within_premium(alt, best, TIGHT_PREMIUM):
        return _put_first(result, alt), (
            f"memory: chose a plan that fits with its error margin (${alt.cost.usd:,.2f}, "
            f"{alt.cost.hours:,.1f} h, {alt.config.label()}) over {tight}: it costs less than "
            f"{premium} {more}",
        )
    if alt is None:
        return result, (f"memory: kept {tight}; no plan of its method with margin is feasible",)
    return result, (
        f"memory: kept {tight}; the cheapest plan of its method with margin costs "
        f"${alt.cost.usd:,.2f} ({_premium_text(alt, best)}, {alt.config.label()} on "
        f"{alt.offer.instance_type})",
    )


def _roomy(candidate: Candidate) -> bool:
    return candidate.feasible and candidate.fit is FitVerdict.FITS


def _roomier(request: RecommendRequest, best: Candidate, measurer: Measurer) -> list[Candidate]:
    """``best``'s config on its own offer with half the micro-batch (down to 1) and, if off and
    allowed, the chunked loss and gradient checkpointing: the usual ways to buy memory
    headroom."""
    evaluator, hw = _on_its_offer(request, best, measurer)
    configs = []
    batch = best.config.micro_batch_size
    while batch > 1:
        batch //= 2
        configs.append(dataclasses.replace(best.config, micro_batch_size=batch))
    savers = evaluator.memory_savers(hw, best.config.sharding)
    if not best.config.chunked_loss and any(chunked for _, chunked in savers):
        configs.append(dataclasses.replace(best.config, chunked_loss=True))
    if not best.config.grad_checkpointing and any(ckpt for ckpt, _ in savers):
        configs.append(dataclasses.replace(best.config, grad_checkpointing=True))
    return [c for config in configs for c in evaluator.price(config, hw)]


def _as_strict(result: SearchResult) -> SearchResult:
    """The same candidates judged by ``--quality strict`` (medium risk becomes rejected)."""
    judged = (
        dataclasses.replace(c, quality_accepted=accepted(c.risks, QualityPolicy.STRICT))
        for c in result.candidates
    )
    return dataclasses.replace(result, candidates=tuple(sorted(judged, key=sort_key)))


def _distinct(candidates: tuple[Candidate, ...], size: int) -> tuple[Candidate, ...]:
    """The best candidate per (method, GPU, GPUs per node, nodes, spot), best first."""
    seen: set[tuple[object, ...]] = set()
    out: list[Candidate] = []
    for c in candidates:
        key = (c.config.method, c.offer.gpu, c.offer.gpu_count, c.nodes, c.offer.spot)
        if key not in seen:
            seen.add(key)
            out.append(c)
        if len(out) == size:
            break
    return tuple(out)


def pareto_front(candidates: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
    """Candidates no other beats on both USD and hours, cheapest first (at most 12)."""
    front: list[Candidate] = []
    best_hours = math.inf
    for c in sorted(candidates, key=lambda c: (c.cost.usd, c.cost.hours, c.offer.key)):
        if c.cost.hours < best_hours - 1e-9:
            front.append(c)
            best_hours = c.cost.hours
    if len(front) > PARETO_SIZE:  # keep the ends and evenly spaced points between
        step = (len(front) - 1) / (PARETO_SIZE - 1)
        front = [front[round(i * step)] for i in range(PARETO_SIZE)]
    return tuple(front)


def _near_misses(result: SearchResult) -> tuple[Candidate, ...]:
    """Closest candidates when nothing is feasible: fitting ones by USD, then by memory."""
    fitting = [c for c in result.candidates if c.fits]
    rest = sorted(
        (c for c in result.candidates if not c.fits),
        key=lambda c: (explain.peak_gib(c), c.cost.usd),
    )
    return _distinct(tuple(fitting) + tuple(rest), 5)


__all__ = ["pareto_front", "recommend"]
