"""Prose for the Plan: why each method wins or loses, what would make an infeasible job work,
the assumptions a plan rests on and its warnings. Pure functions of the search result."""

from __future__ import annotations

import math

from catalog import GIB, GPU, ModelSpec, Provider
from planner._types import (
    METHOD_NAMES,
    Candidate,
    MethodVerdict,
    Task,
    TokensSource,
)
from planner.engine.dataset import CHARS_PER_TOKEN
from planner.engine.evaluate import GLOBAL_BATCH_TARGET_TOKENS, HOST_RAM_PREMIUM, with_nodes_label
from planner.engine.measurer import host_ram_fits, host_ram_unknown
from planner.engine.quality import (
    ACCEPTED_LEVELS,
    BITS_PER_TOKEN,
    GEMMA_FP16_MODEL_TYPES,
    GEMMA_FP16_SOURCE,
    LORA_BITS_PER_PARAM,
)
from planner.engine.search import SearchResult
from planner.engine.space import RecommendRequest
from profiler import Method, Precision, Sharding, Source, TuningConfig
from profiler.headroom import (
    CUDA_CONTEXT_GIB,
    ESTIMATE_UNDER_PREDICTION,
    FitVerdict,
    capacity_gib,
    measurement_fit,
)
from profiler.memory import load_peak_gib, weight_bytes


def describe(c: Candidate) -> str:
    """One-line description of a candidate, e.g. for ``--quiet``."""
    kind = "spot" if c.offer.spot else "on-demand"
    peak = c.measurement.peak_memory_gib or 0.0
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


def peak_gib(c: Candidate) -> float:
    """The candidate's per-GPU peak (:attr:`profiler.Measurement.peak_memory_gib`), inf when
    unknown: sorts and compares last."""
    return c.measurement.peak_memory_gib or math.inf


def verdict(
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
                f"({peak_gib(best):.1f} GiB per GPU at b{best.config.micro_batch_size} "
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
        method=method, best=None, reason=memory_reason(name, method, mine, request)
    )


def memory_reason(
    name: str, method: Method, mine: list[Candidate], request: RecommendRequest
) -> str:
    """Why no candidate of ``method`` fits: its training peak, its loading peak, or the host
    RAM its offers have, whichever stopped the one closest to fitting."""
    largest = max((g.usable_memory_gib for g in request.gpus.values()), default=0.0)
    on_gpu = [c for c in mine if measurement_fit(c.measurement, request.gpus[c.offer.gpu]).fits]
    cannot_load = [
        c for c in on_gpu if load_problem(request.spec, c.config, request.gpus[c.offer.gpu])
    ]
    short_ram = [c for c in on_gpu if not host_ram_fits(c.measurement, c.offer)]
    if short_ram:
        c = min(short_ram, key=lambda x: x.measurement.host_ram_gib or math.inf)
        what = (
            f"with CPU offload ({c.config.sharding.value})"
            if c.config.sharding.offloads
            else f"with {c.config.sharding.value}, whose rank 0 loads the whole model in CPU "
            "memory,"
        )
        return (
            f"{name} fits the GPUs only {what} which needs "
            f"{c.measurement.host_ram_gib or 0:.0f} GiB of host RAM per node; "
            f"{c.offer.instance_type} has {c.offer.memory_gib or 0:.0f} GiB."
        )
    if cannot_load:
        c = cannot_load[0]
        problem = load_problem(request.spec, c.config, request.gpus[c.offer.gpu]) or ""
        return f"{name} ({c.config.label()} on {with_nodes_label(c)}): {problem}."
    if mine:
        smallest = min(mine, key=peak_gib)
        return (
            f"{name} fits no offered GPU: at least {peak_gib(smallest):.1f} GiB per GPU "
            f"(b{smallest.config.micro_batch_size} s{smallest.config.seq_len}"
            f"{' ckpt' if smallest.config.grad_checkpointing else ''} on "
            f"{with_nodes_label(smallest)}) vs {smallest.usable_memory_gib:.1f} GiB usable."
        )
    # The smallest weights the method can have: pure bf16 for full FT, the smallest rank.
    probe = TuningConfig(
        method=method,
        precision=Precision.BF16_MIXED if method.traits.adapters else Precision.BF16,
        lora_rank=min(request.space.lora_ranks) if method.traits.adapters else None,
        lora_targets=request.space.lora_targets[0] if method.traits.adapters else None,
    )
    weights = weight_bytes(request.spec, probe) / GIB
    where = "per GPU" if method.traits.adapters else "over all GPUs of the largest offer (FSDP)"
    offload = ""
    if any(request.space.offload):
        known = [o.memory_gib for o in request.offers if o.memory_gib is not None]
        if known and len(known) == len(request.offers):
            offload = (
                f"; CPU offload would need as much host RAM, and the offers have at most "
                f"{max(known):,.0f} GiB"
            )
    return (
        f"{name} fits no offered GPU: the weights alone need ≥ {weights:,.1f} GiB {where} "
        f"(largest card here: {largest:.1f} GiB usable){offload}."
    )


def suggestions(result: SearchResult, request: RecommendRequest) -> tuple[str, ...]:
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
    rejected = [
        c
        for c in result.candidates
        if c.fits and not c.quality_accepted and c.within_budget and c.within_deadline
    ]
    if rejected and (not ok or rejected[0].cost.usd < ok[0].cost.usd):
        out.append(f"accept more quality risk (--quality cheapest): {describe(rejected[0])}")
    if not in_time and len(request.space.methods) == 1:
        out.append(
            f"let ftplan search every method: drop --method {request.space.methods[0].value}"
        )
    if ok and not request.spot_allowed:
        out.append("allow spot offers with --spot (cheaper, with interruption overhead)")
    if not ok:
        qlora = "" if Method.QLORA in request.space.methods else ", use QLoRA"
        chunk = (
            ", allow the chunked loss (drop --no-chunked-loss)"
            if not any(request.space.chunked_loss)
            else ""
        )
        out.append(
            "fit in memory: allow larger or more GPUs (drop --gpu/--gpu-count, e.g. "
            f"--gpu h100 --gpu h200){qlora}{chunk}, or a shorter --seq-len"
        )
    return tuple(out)


def assumptions(request: RecommendRequest) -> tuple[str, ...]:
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
        *(
            [
                f"evaluation: {budget.evaluations} passes over {budget.eval_tokens:,} eval "
                "tokens, spread evenly over the run (the last after the final step); each is a "
                "forward pass under no_grad at the training micro-batch, timed by the "
                "estimator's forward share of a training step"
            ]
            if budget.evaluations
            else []
        ),
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
        f"memory: the per-GPU peak reserved memory, read as a band (estimates: the band of the "
        f"estimator's cross-validated residuals, else the figure up to its worst "
        f"under-prediction, {ESTIMATE_UNDER_PREDICTION:.1%}; extrapolated profiles up to 3%; "
        f"measured exactly), against torch's usable memory less the CUDA context "
        f"({CUDA_CONTEXT_GIB:g} GiB): 'fits' when the whole band is within it, 'tight' when the "
        "band straddles it, 'no' when even its low end is over; the loading peak "
        "(profiler.memory.load_peak_gib) must fit too",
        "speed and memory: stored profiles (measured/extrapolated) where they match, else the "
        "analytic estimator",
        f"quality: --task {budget.task.value}, --quality {budget.quality.value} accepts "
        f"{'/'.join(r.value for r in ACCEPTED_LEVELS[budget.quality])} risk; LoRA capacity "
        f"~{LORA_BITS_PER_PARAM:g} bits per trainable parameter vs "
        f"{BITS_PER_TOKEN[budget.task]:g} bit per training token",
        "strategies: every one the recipes can run is searched (one GPU: none, fsdp-offload, "
        "zero3-offload; several: DDP, FSDP, ZeRO-3 and both offloads), the slower only where "
        "the faster stop fitting; several nodes only on offers that support them",
        "host RAM: each offer's own memory (the catalog's, or your machine's with --provider "
        "local) must hold what the plan keeps there (offloaded state, the whole model while "
        "rank 0 loads it, the training processes); where the catalog does not list it, the plan "
        "says so and prefers one whose host RAM is known if it costs at most "
        f"{HOST_RAM_PREMIUM:.0%} more",
    ]
    for offer in request.offers:
        if offer.provider is Provider.LOCAL:
            out.append(f"your machine ({offer.instance_type}): {offer.source}")
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
    needs_bnb = c.config.method.traits.quantized_base or c.config.optimizer.value != "adamw"
    if gpu.host_cpu_arch != "aarch64" or not needs_bnb:
        return ()
    what = "QLoRA (NF4)" if c.config.method.traits.quantized_base else "8-bit AdamW"
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


def load_problem(spec: ModelSpec, config: TuningConfig, gpu: GPU) -> str | None:
    """Why ftplan's runner cannot load this config on ``gpu`` although its training peak fits
    (:func:`profiler.memory.load_peak_gib`), or None."""
    load, limit = load_peak_gib(spec, config), capacity_gib(gpu)
    if load <= limit:
        return None
    return (
        f"ftplan's runner needs {load:,.1f} GiB per GPU while it loads this plan "
        f"({config.method.value}, {config.sharding.value}; {gpu.name} has {limit:,.1f} GiB), "
        "so it runs out of memory before its first step although its training peak fits. "
        "FSDP loads every method on rank 0 and ZeRO-3 partitions full fine-tuning and LoRA as "
        "it loads; ZeRO-3 QLoRA still builds the whole 4-bit model on every GPU "
        "(docs/launching.md)"
    )


def _load_warning(request: RecommendRequest, chosen: Candidate) -> list[str]:
    problem = load_problem(request.spec, chosen.config, request.gpus[chosen.offer.gpu])
    return [] if problem is None else [problem]


# DeepSpeed builds its CPU Adam (DeepSpeedCPUAdam, ZeRO-3 offload's optimizer) just in time and
# vectorizes it only on x86-64: op_builder/builder.py's simd_width returns -D__AVX512__ or
# -D__AVX256__ for X86_64 and -D__SCALAR__ for every other architecture (deepspeedai/DeepSpeed,
# checked 2026-12).
DEEPSPEED_CPU_ADAM_SOURCE = (
    "deepspeedai/DeepSpeed op_builder/builder.py (simd_width: AVX-512/AVX2 on x86_64 only, "
    "-D__SCALAR__ elsewhere)"
)
# A spot price under this fraction of the median spot price per GPU-hour of the same GPU at the
# catalog's other providers is more likely an old or mis-scraped row than a bargain.
SPOT_OUTLIER_FRACTION = 0.5
PACKING_SOURCES = (
    'Krell et al., "Efficient Sequence Packing without Cross-contamination", 2021 '
    '(arXiv:2107.02027); Zhao et al., "Analysing the Impact of Sequence Composition on '
    'Language Model Pre-Training", 2024 (arXiv:2402.13991); Shi et al., "Instruction Tuning '
    'With Loss Over Instructions", 2024 (arXiv:2405.14394)'
)


def _gemma_fp16(request: RecommendRequest, c: Candidate) -> tuple[str, ...]:
    """Gemma 2/3 planned in fp16 (T4, V100: no bf16) overflow; bf16 GPUs avoid it."""
    if request.spec.model_type not in GEMMA_FP16_MODEL_TYPES:
        return ()
    if c.config.precision is not Precision.FP16_MIXED:
        return ()
    return (
        f"{request.spec.name} ({request.spec.model_type}) in fp16 on {c.offer.gpu}: Gemma 2 "
        "and 3 were trained in bf16 and their activations exceed fp16's 65504 after the "
        "extra norms, so the loss can turn inf/NaN whatever the loss scaler does "
        f"({GEMMA_FP16_SOURCE}); pick a GPU with bf16 (--gpu l4, a10g, a100, ...)",
    )


def _cpu_adam_on_arm(c: Candidate, gpu: GPU) -> tuple[str, ...]:
    """ZeRO-3 offload on an Arm host runs DeepSpeed's CPU Adam unvectorized."""
    if c.config.sharding is not Sharding.ZERO3_OFFLOAD or gpu.host_cpu_arch != "aarch64":
        return ()
    return (
        f"{gpu.name} hosts are Arm (aarch64) and this plan runs DeepSpeed's CPU Adam "
        "(zero3-offload): DeepSpeed compiles it on first use, vectorized only on x86_64, so "
        "here it builds scalar code (the node needs a C++ toolchain) and the optimizer step "
        f"can take several times the estimate ({DEEPSPEED_CPU_ADAM_SOURCE}); prefer "
        "fsdp-offload (torch's AdamW) or an x86_64 offer",
    )


def _packing(request: RecommendRequest) -> tuple[str, ...]:
    """What ftplan's runner does to instruction data (runners/data.py)."""
    if request.budget.task is not Task.SFT:
        return ()
    return (
        f"data: ftplan's runner packs samples into {request.seq_len}-token blocks separated "
        "only by EOS, without cross-document attention masking, and computes the loss on "
        "every token, prompts included (runners/data.py): a sample attends to the ones before "
        "it in its block, and the model also learns to write prompts, which helps with long "
        "prompts and short answers and can hurt otherwise; instruction recipes usually mask "
        f"both ({PACKING_SOURCES})",
    )


def _spot_outliers(request: RecommendRequest, ranked: tuple[Candidate, ...]) -> list[str]:
    """Spot prices far below the same GPU's spot price at the catalog's other providers."""
    references = request.price_references or request.offers
    out: list[str] = []
    for offer in sorted({c.offer for c in ranked if c.offer.spot}, key=lambda o: o.key):
        others = sorted(
            o.usd_per_hour / o.gpu_count
            for o in references
            if o.spot and o.gpu == offer.gpu and o.provider is not offer.provider
        )
        if not others:
            continue
        median = (
            others[len(others) // 2]
            if len(others) % 2
            else sum(others[len(others) // 2 - 1 : len(others) // 2 + 1]) / 2
        )
        per_gpu = offer.usd_per_hour / offer.gpu_count
        if per_gpu < SPOT_OUTLIER_FRACTION * median:
            out.append(
                f"{offer.provider.value} {offer.instance_type} spot at "
                f"${offer.usd_per_hour:,.2f}/h (${per_gpu:,.2f} per GPU-hour) is under "
                f"{SPOT_OUTLIER_FRACTION:.0%} of the median {offer.gpu} spot price at the "
                f"catalog's other providers (${median:,.2f} per GPU-hour, {len(others)} "
                f"offers); its row (as of {offer.as_of}, {offer.source}) may be out of date: "
                "check the current price before launching"
            )
    return out


def _host_ram_unknown(c: Candidate) -> tuple[str, ...]:
    if not host_ram_unknown(c):
        return ()
    return (
        f"host RAM: this plan needs {c.measurement.host_ram_gib or 0:,.0f} GiB of host RAM "
        f"per node ({c.config.sharding.value}) and the catalog does not list the memory of "
        f"{c.offer.provider.value} {c.offer.instance_type}: check it before launching",
    )


def plan_warnings(request: RecommendRequest, ranked: tuple[Candidate, ...]) -> tuple[str, ...]:
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
    if chosen is not None:
        out += _load_warning(request, chosen)
    if chosen is not None and chosen.cost.idle_billed_hours > 0.05 * chosen.cost.hours:
        out.append(_idle_note(chosen))
    if chosen is not None:
        gpu = request.gpus[chosen.offer.gpu]
        out += _arm_host_risk(chosen, gpu)
        out += _cpu_adam_on_arm(chosen, gpu)
        out += _gemma_fp16(request, chosen)
        out += _host_ram_unknown(chosen)
        out += _packing(request)
    out += _spot_outliers(request, ranked)
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
