"""recommend: builds ftplan's answer (the Plan) from a request, the search and the verdicts.

:func:`recommend` is pure apart from what it is given (offers, GPUs, the estimator and the
profile store); the dataset reader lives in :mod:`planner.engine.dataset` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from catalog import GIB, GPU, InputError, ModelSpec, Offer, mask_secrets
from planner._types import (
    METHOD_NAMES,
    Budget,
    Candidate,
    MethodVerdict,
    Plan,
    QualityPolicy,
    RiskLevel,
    SearchInfo,
    Task,
    TokensSource,
)
from planner.engine.cost import SpotAssumptions, StartupAssumptions
from planner.engine.dataset import CHARS_PER_TOKEN, DatasetStats, count_dataset
from planner.engine.evaluate import (
    GLOBAL_BATCH_TARGET_TOKENS,
    EstimateFn,
    Evaluator,
    FitsFn,
    LookupFn,
    default_fits,
    host_ram_fits,
    with_nodes_label,
)
from planner.engine.frontier import budget_frontier, stronger_options
from planner.engine.quality import (
    ACCEPTED_LEVELS,
    BITS_PER_TOKEN,
    LORA_BITS_PER_PARAM,
    capacity_ratio,
)
from planner.engine.search import SearchResult, search
from planner.engine.space import Hardware, SearchProblem, SearchSpace
from profiler import Method, Precision, Source, TuningConfig
from profiler.estimator import weight_bytes
from profiler.headroom import (
    CUDA_CONTEXT_GIB,
    ESTIMATE_UNDER_PREDICTION,
    FitVerdict,
    measurement_fit,
)

# Default dataset when the user gives neither --tokens nor --dataset: 10M tokens per epoch, about
# Alpaca-sized (52k instruction samples of ~200 tokens), trained for 3 epochs as in the Stanford
# Alpaca recipe. Stated in every plan as an assumption.
DEFAULT_DATASET_TOKENS = 10_000_000
DEFAULT_EPOCHS = 3.0
DEFAULT_SEQ_LEN = 2048
RANKED_SIZE = 8
PARETO_SIZE = 12
# --quality balanced accepts medium quality risk only when it is more than this much cheaper than
# the best low-risk plan (a judgement call, stated in every plan that it affects).
BALANCED_RISK_PREMIUM = 0.20


@dataclass(frozen=True, kw_only=True)
class RecommendRequest:
    """Everything :func:`recommend` needs, resolved from flags and the catalog.

    ``gpus`` maps each offer's GPU name to its :class:`GPU`; ``catalog_as_of`` is the date range of
    the prices and ``catalog_source`` the offers file.
    """

    spec: ModelSpec
    budget: Budget
    offers: tuple[Offer, ...]
    gpus: Mapping[str, GPU]
    seq_len: int = DEFAULT_SEQ_LEN
    seq_len_given: bool = False
    space: SearchSpace = field(default_factory=SearchSpace)
    spot: SpotAssumptions = field(default_factory=SpotAssumptions)
    startup: StartupAssumptions = field(default_factory=StartupAssumptions)
    spot_allowed: bool = False
    seed: int = 0
    trials: int | None = None
    storage: str | None = None
    catalog_as_of: str = ""
    catalog_source: str = ""
    warnings: tuple[str, ...] = ()
    ftplan_version: str = "0"
    model_config_path: str | None = None
    model_config_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.seq_len <= 0:
            raise InputError(f"--seq-len must be > 0, got {self.seq_len}")
        if not self.offers:
            raise InputError(
                "no GPU offers match the filters: widen --gpu/--provider/--gpu-count, or use "
                "--provider local --gpu NAME --gpu-count N for your own machine"
            )


def plan_slug(model: str, budget_usd: float, fingerprint: str) -> str:
    """File-name-safe slug: model, budget and a short hash of the inputs (no '/', '<', ...)."""
    safe = re.sub(r"[^a-z0-9.]+", "-", model.lower())
    safe = re.sub(r"\.{2,}", ".", safe).strip("-.")[:48] or "model"
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:8]
    return f"{safe}-{budget_usd:g}usd-{digest}".replace("+", "")


def recommend(
    request: RecommendRequest,
    *,
    estimate: EstimateFn,
    lookup: LookupFn | None = None,
    fits: FitsFn = default_fits,
) -> Plan:
    """Search the space and build the Plan (``chosen`` is None when nothing is feasible).

    Args:
        request: The job, limits, offers and assumptions.
        estimate: ``profiler.estimate`` (or a stand-in with its signature).
        lookup: Stored-profile lookup ``(model, config, gpu) -> Measurement | None``.
        fits: Memory-fit rule ``(peak_reserved_gib, gpu) -> bool``.

    Returns:
        The plan; when ``chosen`` is None, ``near_misses`` and ``suggestions`` say what would work.
    """
    result = _search(request, request.budget, estimate=estimate, lookup=lookup, fits=fits)
    notes: tuple[str, ...] = ()
    if request.budget.quality is QualityPolicy.BALANCED:
        result, notes = _prefer_low_risk(
            request, result, estimate=estimate, lookup=lookup, fits=fits
        )
    ranked = _distinct(result.feasible, RANKED_SIZE)
    chosen = ranked[0] if ranked else None
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
        verdicts=tuple(_verdict(m, result, chosen, request) for m in request.space.methods),
        pareto=pareto_front(result.feasible),
        assumptions=_assumptions(request) + notes,
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
        warnings=request.warnings + _plan_warnings(request, ranked),
        near_misses=near,
        suggestions=() if chosen else _suggestions(result, request),
        budget_frontier=frontier,
        stronger_options=stronger_options(chosen, result.candidates, request.budget, frontier)
        + _higher_rank_option(request, chosen, estimate=estimate, lookup=lookup, fits=fits),
    )


def _higher_rank_option(
    request: RecommendRequest,
    chosen: Candidate | None,
    *,
    estimate: EstimateFn,
    lookup: LookupFn | None,
    fits: FitsFn,
) -> tuple[str, ...]:
    """When the chosen plan is LoRA/QLoRA below the space's largest rank: what the largest rank
    that still fits and stays within the limits costs, and how much adapter capacity it adds."""
    ranks = request.space.lora_ranks
    if chosen is None or chosen.config.lora_rank is None or chosen.config.lora_rank >= max(ranks):
        return ()
    problem = SearchProblem(
        spec=request.spec,
        budget=request.budget,
        seq_len=request.seq_len,
        offers=(chosen.offer,),
        gpus=request.gpus,
        space=request.space,
        spot=request.spot,
        startup=request.startup,
    )
    evaluator = Evaluator(problem, estimate=estimate, lookup=lookup, fits=fits)
    hw = Hardware(
        gpu=request.gpus[chosen.offer.gpu],
        gpus_per_node=chosen.offer.gpu_count,
        nodes=chosen.nodes,
        offers=(chosen.offer,),
    )
    for rank in sorted((r for r in ranks if r > chosen.config.lora_rank), reverse=True):
        config = dataclasses.replace(chosen.config, lora_rank=rank, lora_alpha=2 * rank)
        priced = evaluator.price(config, hw)
        if not priced or not priced[0].fits or not priced[0].within_budget:
            continue
        better = priced[0]
        if not better.within_deadline:
            continue
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


def _search(
    request: RecommendRequest,
    budget: Budget,
    *,
    estimate: EstimateFn,
    lookup: LookupFn | None,
    fits: FitsFn,
) -> SearchResult:
    problem = SearchProblem(
        spec=request.spec,
        budget=budget,
        seq_len=request.seq_len,
        offers=request.offers,
        gpus=request.gpus,
        space=request.space,
        spot=request.spot,
        startup=request.startup,
    )
    return search(
        problem,
        estimate=estimate,
        lookup=lookup,
        fits=fits,
        seed=request.seed,
        trials=request.trials,
        storage=request.storage,
    )


def _prefer_low_risk(
    request: RecommendRequest,
    balanced: SearchResult,
    *,
    estimate: EstimateFn,
    lookup: LookupFn | None,
    fits: FitsFn,
) -> tuple[SearchResult, tuple[str, ...]]:
    """``--quality balanced``: take medium quality risk only where it saves real money.

    The cheapest plan that accepts medium risk (e.g. attention-only LoRA) often saves a few
    cents over a low-risk one (all-linear LoRA, which matches full FT on instruction data per
    Schulman et al. 2025). Balanced keeps the low-risk plan unless the medium-risk one is more
    than ``BALANCED_RISK_PREMIUM`` cheaper.
    """
    best = balanced.feasible[0] if balanced.feasible else None
    if best is None or best.risk_level is RiskLevel.LOW:
        return balanced, ()
    if request.budget.task is Task.CPT and best.config.method is not Method.FULL:
        full = next((c for c in balanced.feasible if c.config.method is Method.FULL), None)
        if full is not None:
            rest = tuple(c for c in balanced.candidates if c is not full)
            return dataclasses.replace(balanced, candidates=(full, *rest)), (
                f"quality balanced, --task cpt: chose full fine-tuning (${full.cost.usd:,.2f}) "
                f"over {METHOD_NAMES[best.config.method]} (${best.cost.usd:,.2f}): on continued "
                "pre-training LoRA learns less, more so the more tokens it trains (Biderman "
                "et al. 2024), and full FT fits the budget",
            )
    strict_budget = dataclasses.replace(request.budget, quality=QualityPolicy.STRICT)
    strict = _search(request, strict_budget, estimate=estimate, lookup=lookup, fits=fits)
    low = strict.feasible[0] if strict.feasible else None
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


def describe(c: Candidate) -> str:
    """One-line description of a candidate, e.g. for ``--quiet``."""
    kind = "spot" if c.offer.spot else "on-demand"
    peak = c.measurement.peak_reserved_gib or c.measurement.peak_allocated_gib or 0.0
    return (
        f"{c.config.label()} on {with_nodes_label(c)} ({c.offer.provider.value} "
        f"{c.offer.instance_type}, {kind}): ${c.cost.usd:,.2f}, {c.cost.hours:,.1f} h, "
        f"{peak:.1f}/{c.usable_memory_gib:.1f} GiB per GPU ({c.measurement.source.value}"
        f"{', TIGHT' if c.fit is FitVerdict.TIGHT else ''}){host_ram_text(c)}"
    )


def host_ram_text(c: Candidate) -> str:
    """``, host RAM 45/64 GiB per node`` for plans that offload to CPU memory, else ``""``."""
    needed = c.measurement.host_ram_gib
    if not c.config.sharding.offloads or needed is None:
        return ""
    have = c.offer.memory_gib
    available = "unknown (give --host-ram-gib)" if have is None else f"{have:.0f}"
    return f", host RAM {needed:.0f}/{available} GiB per node"


def _peak(c: Candidate) -> float:
    return c.measurement.peak_reserved_gib or c.measurement.peak_allocated_gib or math.inf


def _verdict(
    method: Method, result: SearchResult, chosen: Candidate | None, request: RecommendRequest
) -> MethodVerdict:
    name = METHOD_NAMES[method]
    mine = [c for c in result.candidates if c.config.method is method]
    feasible = [c for c in mine if c.feasible]
    budget = request.budget
    if feasible:
        best = feasible[0]
        if chosen is not None and best is chosen:
            return MethodVerdict(
                method=method, best=best, reason=f"{name} wins: {describe(best)}."
            )
        if chosen is not None and chosen.cost.usd <= 0 < chosen.cost.hours:
            # Free (own) GPUs: the plans differ in time, not money.
            loses = f"takes {best.cost.hours / chosen.cost.hours:.2f}× the chosen plan's time"
        else:
            ratio = best.cost.usd / chosen.cost.usd if chosen and chosen.cost.usd > 0 else math.inf
            extra = f", {ratio:.1f}× the chosen plan" if math.isfinite(ratio) else ""
            loses = f"costs ${best.cost.usd:,.2f}{extra}"
        return MethodVerdict(
            method=method, best=best, reason=f"{name} also works but {loses}: {describe(best)}."
        )
    fitting = [c for c in mine if c.fits and c.quality_accepted]
    if fitting:
        best = fitting[0]
        misses = []
        if not best.within_budget:
            misses.append(
                f"{best.cost.usd / budget.max_usd:.1f}× the ${budget.max_usd:,.2f} budget"
            )
        if not best.within_deadline and budget.max_hours is not None:
            misses.append(
                f"{best.cost.hours / budget.max_hours:.1f}× the {budget.max_hours:g} h limit"
            )
        return MethodVerdict(
            method=method,
            best=best,
            reason=(
                f"{name} at its cheapest needs {with_nodes_label(best)} "
                f"({_peak(best):.1f} GiB per GPU at b{best.config.micro_batch_size} "
                f"s{best.config.seq_len}): ${best.cost.usd:,.2f} and {best.cost.hours:,.1f} h "
                f"on {best.offer.instance_type}, "
                f"{' and '.join(misses) or 'over a limit'}."
            ),
        )
    rejected = [c for c in mine if c.fits]
    if rejected:
        best = rejected[0]
        risk = best.risks[0]  # assess_quality sorts the highest level first
        return MethodVerdict(
            method=method,
            best=best,
            reason=(
                f"{name} is rejected by --quality {budget.quality.value} "
                f"({risk.level.value} risk: {risk.message}); it would cost "
                f"${best.cost.usd:,.2f} on {with_nodes_label(best)}."
            ),
        )
    return MethodVerdict(
        method=method, best=None, reason=_memory_reason(name, method, mine, request)
    )


def _memory_reason(
    name: str, method: Method, mine: list[Candidate], request: RecommendRequest
) -> str:
    largest = max((g.usable_memory_gib for g in request.gpus.values()), default=0.0)
    short_ram = [
        c
        for c in mine
        if not host_ram_fits(c.measurement, c.offer) and _peak(c) <= c.usable_memory_gib
    ]
    if short_ram:
        c = min(short_ram, key=lambda x: x.measurement.host_ram_gib or math.inf)
        return (
            f"{name} fits the GPUs only with CPU offload ({c.config.sharding.value}), which "
            f"needs {c.measurement.host_ram_gib or 0:.0f} GiB of host RAM per node; "
            f"{c.offer.instance_type} has {c.offer.memory_gib or 0:.0f} GiB."
        )
    if mine:
        smallest = min(mine, key=_peak)
        return (
            f"{name} fits no offered GPU: at least {_peak(smallest):.1f} GiB per GPU "
            f"(b{smallest.config.micro_batch_size} s{smallest.config.seq_len}"
            f"{' ckpt' if smallest.config.grad_checkpointing else ''} on "
            f"{with_nodes_label(smallest)}) vs {smallest.usable_memory_gib:.1f} GiB usable."
        )
    # The smallest weights the method can have: pure bf16 for full FT, the smallest rank.
    probe = TuningConfig(
        method=method,
        precision=Precision.BF16 if method is Method.FULL else Precision.BF16_MIXED,
        lora_rank=None if method is Method.FULL else min(request.space.lora_ranks),
        lora_targets=None if method is Method.FULL else request.space.lora_targets[0],
    )
    weights = weight_bytes(request.spec, probe) / GIB
    where = "over all GPUs of the largest offer (FSDP)" if method is Method.FULL else "per GPU"
    return (
        f"{name} fits no offered GPU: the weights alone need ≥ {weights:,.1f} GiB {where} "
        f"(largest card here: {largest:.1f} GiB usable)."
    )


def _near_misses(result: SearchResult) -> tuple[Candidate, ...]:
    """Closest candidates when nothing is feasible: fitting ones by USD, then by memory."""
    fitting = [c for c in result.candidates if c.fits]
    rest = sorted(
        (c for c in result.candidates if not c.fits), key=lambda c: (_peak(c), c.cost.usd)
    )
    return _distinct(tuple(fitting) + tuple(rest), 5)


def _suggestions(result: SearchResult, request: RecommendRequest) -> tuple[str, ...]:
    budget = request.budget
    out: list[str] = []
    ok = [c for c in result.candidates if c.fits and c.quality_accepted]
    in_time = [c for c in ok if c.within_deadline]
    if in_time:
        c = in_time[0]
        out.append(f"raise --budget to ${math.ceil(c.cost.usd):,} ({describe(c)})")
    if budget.max_hours is not None and ok:
        fastest = min(ok, key=lambda c: (c.cost.hours, c.cost.usd))
        if not fastest.within_deadline or not in_time:
            out.append(
                f"raise --max-hours to {math.ceil(fastest.cost.hours * 10) / 10:g} "
                f"(fastest: {describe(fastest)})"
            )
    rejected = [c for c in result.candidates if c.fits and not c.quality_accepted]
    if rejected and (not ok or rejected[0].cost.usd < ok[0].cost.usd):
        out.append(f"accept more quality risk (--quality cheapest): {describe(rejected[0])}")
    if ok and not request.spot_allowed:
        out.append("allow spot offers with --spot (cheaper, with interruption overhead)")
    if not ok:
        out.append(
            "fit in memory: allow larger or more GPUs (drop --gpu/--gpu-count, e.g. "
            "--gpu h100 --gpu h200), use QLoRA, or a shorter --seq-len"
        )
    return tuple(out)


def _assumptions(request: RecommendRequest) -> tuple[str, ...]:
    budget = request.budget
    tokens = {
        TokensSource.GIVEN: "given with --tokens",
        TokensSource.COUNTED: (
            f"counted from --dataset at {CHARS_PER_TOKEN:g} characters per token"
        ),
        TokensSource.ASSUMED: "ASSUMED (no --tokens/--dataset): an Alpaca-sized instruction set",
    }[budget.tokens_source]
    spot, start = request.spot, request.startup
    out = [
        f"dataset: {budget.dataset_tokens:,} tokens per epoch ({tokens}) × {budget.epochs:g} "
        f"epoch(s) = {budget.total_tokens:,.0f} training tokens",
        f"sequence length {request.seq_len} tokens"
        + ("" if request.seq_len_given else " (default; set --seq-len)")
        + ": samples are packed into blocks of this length (as ftplan's runner does), so "
        "memory is sized for the block, not for the longest sample",
        f"gradient accumulation keeps ~{GLOBAL_BATCH_TARGET_TOKENS:,} tokens per optimizer step",
        (
            f"start-up: {start.provision_minutes:g} min provisioning"
            if start.provision_minutes is not None
            else "start-up: each provider's provisioning and image pull time from the catalog "
            "(catalog/data/services.csv, with sources)"
        )
        + f" (0 for local) + weights download at {start.download_gib_per_s:g} GiB/s, billed",
        "billing: each offer's billing unit and minimum (per second, per minute, or whole days "
        "paid upfront for EC2 Capacity Blocks); cost = billed hours × price, and billed time "
        "the run does not use is stated as idle",
        f"memory: the per-GPU peak reserved memory must fit torch's usable memory less the CUDA "
        f"context ({CUDA_CONTEXT_GIB:g} GiB); 'tight' when it fits only without the figure's "
        f"error margin (estimates: the high end of their band from the estimator's "
        f"cross-validated residuals, else its worst under-prediction, "
        f"{ESTIMATE_UNDER_PREDICTION:.1%}; extrapolated profiles 3%; measured none)",
        "speed and memory: stored profiles (measured/extrapolated) where they match, else the "
        "analytic estimator",
        f"quality: --task {budget.task.value}, --quality {budget.quality.value} accepts "
        f"{'/'.join(r.value for r in ACCEPTED_LEVELS[budget.quality])} risk; LoRA capacity "
        f"~{LORA_BITS_PER_PARAM:g} bits per trainable parameter vs "
        f"{BITS_PER_TOKEN[budget.task]:g} bit per training token",
        "multi-GPU and offload: the fastest strategy that fits (one GPU: none, then CPU "
        "offload; several: DDP for LoRA/QLoRA, then FSDP full-shard, then CPU offload: "
        "fsdp-offload for LoRA/QLoRA, zero3-offload for full FT); offload plans need the "
        "offer's host RAM; several nodes only on offers that support them",
    ]
    if request.spot_allowed:
        out.append(
            f"spot: {spot.interruptions_per_hour:g} interruptions per instance-hour, "
            f"{spot.restart_minutes:g} min to restart, checkpoints written at "
            f"{spot.checkpoint_write_gib_per_s:g} GiB/s every Young-optimal interval; spot "
            "plans require checkpointing"
        )
    else:
        out.append("on-demand prices only (--spot to consider spot offers)")
    return tuple(out)


# Checked 2026-11-30 with `pip download --no-deps --only-binary=:all: --platform
# manylinux_2_24_aarch64 --python-version 3.11 bitsandbytes==0.50.2`: PyPI has
# bitsandbytes-0.50.2-py3-none-manylinux_2_24_aarch64.whl (CUDA 11.8-13.2 kernels inside, sha256
# d5772560...). The issue's `--platform manylinux2014_aarch64` finds nothing because pip does not
# widen an explicit --platform tag; the wheel needs glibc >= 2.24. Not yet run on a GH200.
BNB_AARCH64_CHECK = (
    "bitsandbytes 0.50.2 has an aarch64 wheel (manylinux_2_24, CUDA kernels included; "
    "checked on PyPI 2026-11-30), but ftplan has not run QLoRA or 8-bit AdamW on a GH200"
)


def _arm_host_risk(c: Candidate, gpu: GPU) -> tuple[str, ...]:
    """A plan on an Arm (aarch64) host that needs bitsandbytes (QLoRA, 8-bit AdamW) says so."""
    needs_bnb = c.config.method is Method.QLORA or c.config.optimizer.value != "adamw"
    if gpu.host_cpu_arch != "aarch64" or not needs_bnb:
        return ()
    what = "QLoRA (NF4)" if c.config.method is Method.QLORA else "8-bit AdamW"
    return (
        f"{gpu.name} hosts are Arm (aarch64) and this plan needs bitsandbytes for {what}: "
        f"{BNB_AARCH64_CHECK}. Install it there first (pip install bitsandbytes==0.50.2) "
        "or pick an x86_64 offer with --gpu",
    )


def _idle_note(c: Candidate) -> str:
    """What the chosen plan pays for billed time it does not use (billing units, minimums)."""
    cost = c.cost
    return (
        f"billing: {c.offer.instance_type} bills {c.offer.billing_label}; the run takes "
        f"{cost.hours:,.2f} h but {cost.billed_hours or cost.hours:,.2f} h are billed, so "
        f"${cost.idle_usd:,.2f} pays for {cost.idle_billed_hours:,.2f} idle hours"
    )


def _plan_warnings(request: RecommendRequest, ranked: tuple[Candidate, ...]) -> tuple[str, ...]:
    out: list[str] = []
    budget = request.budget
    longest = budget.longest_sample_tokens
    if longest is not None and longest > request.seq_len:
        p95 = budget.p95_sample_tokens
        share = "" if p95 is None or p95 > request.seq_len else " (under 5% of samples)"
        out.append(
            f"the longest sample has ~{longest:,} tokens but the plan packs samples into "
            f"{request.seq_len}-token blocks: longer samples{share} are split across blocks, "
            "so their later tokens do not see their beginning; raise --seq-len to keep them "
            "whole (memory grows with it)"
        )
    chosen = ranked[0] if ranked else None
    if chosen is not None and chosen.fit is FitVerdict.TIGHT:
        check = measurement_fit(chosen.measurement, request.gpus[chosen.offer.gpu])
        out.append(
            f"memory is tight: {check.describe()}. Profile it ('ftplan profile') or use "
            "gradient checkpointing / a smaller micro-batch before a long run"
        )
    if chosen is not None and chosen.cost.idle_billed_hours > 0.05 * chosen.cost.hours:
        out.append(_idle_note(chosen))
    if chosen is not None:
        out += _arm_host_risk(chosen, request.gpus[chosen.offer.gpu])
    stale = sorted({c.offer.instance_type for c in ranked if c.offer.stale})
    if stale:
        out.append(
            f"stale prices used ({', '.join(stale)}): run 'ftplan catalog refresh --provider aws'"
        )
    if ranked and ranked[0].measurement.source is Source.ESTIMATED:
        out.append(
            "the chosen plan's memory and speed are analytic estimates, not "
            "measurements: profile it with 'ftplan profile' before a long run"
        )
    return tuple(out)


__all__ = ["CHARS_PER_TOKEN", "DatasetStats", "RecommendRequest", "count_dataset", "recommend"]
