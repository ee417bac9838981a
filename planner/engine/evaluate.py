"""Evaluate: config → measurement → priced candidate, and the Evaluator that walks a cell.

An :class:`Evaluator` turns (config, hardware) into priced :class:`Candidate` records with one
cached estimator call per (config, GPU, nodes, interconnect), and walks one structural cell
either fast (:meth:`Evaluator.solve_cell`) or point by point
(:meth:`Evaluator.walk_cell_exhaustively`). Pure: the estimator and profile lookup are given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from catalog import GIB, GPU, ModelSpec, Offer, Provider
from planner._types import Budget, Candidate, QualityPolicy
from planner.engine.cost import estimate_cost, provision_s
from planner.engine.quality import accepted, assess_quality, suggested_learning_rate
from planner.engine.space import Hardware, RecommendRequest, Variant
from profiler import (
    EvalEstimate,
    FitVerdict,
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    Sharding,
    Status,
    TuningConfig,
    chunked_loss_problem,
    measurement_fit,
    sharding_problem,
)
from profiler.memory import checkpoint_bytes, download_bytes, weight_bytes
from profiler.sharding import loads_on_rank0
from profiler.timing import min_flops_per_token

EstimateFn = Callable[..., Measurement]
"""``estimate(spec, config, gpu, *, nodes, inter_node_gbps) -> Measurement`` (profiler)."""
LookupFn = Callable[[str, TuningConfig, str], "Measurement | None"]
"""``lookup(model_name, config, gpu_name)``: a stored measured/extrapolated profile or None."""
EvalFn = Callable[[ModelSpec, TuningConfig, GPU], EvalEstimate]
"""``eval_pass(spec, config, gpu) -> EvalEstimate`` (profiler, with a calibration bound)."""
FitsFn = Callable[[Measurement, GPU], FitVerdict]
"""``fits(measurement, gpu)``: the fit verdict of a measurement's per-GPU peak on the card, with
its own error band or its source's margin (:func:`profiler.measurement_fit`)."""

# Tokens per optimizer step that gradient accumulation aims for: 128 Ki tokens (64 sequences of
# 2048), in the 64 Ki–1 Mi range common for SFT recipes. A step that already exceeds it runs with
# one accumulation step; above 1 Mi tokens quality.py flags LoRA's large-batch risk.
GLOBAL_BATCH_TARGET_TOKENS = 131_072
# Small datasets lower that target so an epoch still has this many optimizer steps (room for
# warm-up and a learning-rate schedule); a judgement, stated in the plan via grad_accum_steps.
MIN_OPTIMIZER_STEPS_PER_EPOCH = 50


def sort_key(candidate: Candidate) -> tuple[Any, ...]:
    """Explicit, total ranking key: feasible first, then USD, hours and names."""
    return (
        not candidate.feasible,
        round(candidate.cost.usd, 6),
        round(candidate.cost.hours, 6),
        candidate.offer.instance_type,
        candidate.offer.key,
        candidate.nodes,
        candidate.config.label(),
    )


def default_fits(measurement: Measurement, gpu: GPU) -> FitVerdict:
    """The profiler's verdict: torch's usable memory less the CUDA context, with the figure's
    own error band (estimates) or its source's margin (measured, extrapolated)."""
    return measurement_fit(measurement, gpu).verdict


def host_ram_fits(measurement: Measurement, offer: Offer) -> bool:
    """Whether the offer's host memory (``memory_gib`` per instance) holds what an offload plan
    puts there, or what rank-0 loading holds while it loads the whole model
    (``host_ram_gib`` per node). Other plans pass. A cloud offer whose memory the catalog does
    not know cannot be checked: refused for offload plans, allowed for rank-0 loading; your own
    machine's (``--host-ram-gib``) is trusted when not given, and the plan says so."""
    config = measurement.config
    offloads = config.sharding.offloads
    if not offloads and not loads_on_rank0(sharding=config.sharding, method=config.method):
        return True
    if offer.memory_gib is None:
        return offer.provider is Provider.LOCAL or not offloads
    needed = measurement.host_ram_gib
    return needed is None or needed <= offer.memory_gib


@dataclass(frozen=True, slots=True)
class Measurer:
    """Where the search gets memory and speed: the estimator, stored profiles and the memory-fit
    rule, passed together (the CLI builds one; tests pass stand-ins)."""

    estimate: EstimateFn
    """``profiler.estimate`` with a calibration bound, or a stand-in with its signature."""
    lookup: LookupFn | None = None
    """Stored measured/extrapolated profiles, or None for the estimator alone."""
    fits: FitsFn = default_fits
    """The fit verdict of a figure on a card (the profiler's rule by default)."""
    eval_pass: EvalFn | None = None
    """The eval pass of a config (needed when the budget has evaluations)."""


class Evaluator:
    """Prices configs on hardware, caching every estimator call and quality assessment."""

    def __init__(self, request: RecommendRequest, measurer: Measurer) -> None:
        self.request = request
        self._estimate = measurer.estimate
        self._lookup = measurer.lookup
        self._fits = measurer.fits
        self._eval_pass = measurer.eval_pass
        if request.budget.evaluations and self._eval_pass is None:
            raise ValueError("the budget has eval passes but the measurer cannot time them")
        self._eval_fractions: dict[tuple[TuningConfig, str], float] = {}
        self._measurements: dict[tuple[Any, ...], Measurement] = {}
        self._risks: dict[tuple[Any, ...], Any] = {}
        self._fitting_cells: set[tuple[str, str]] = set()
        self.estimator_calls = 0

    def variants(self) -> tuple[Variant, ...]:
        """Method variants of the space, respecting bf16 support later per GPU."""
        space = self.request.space
        out: list[Variant] = []
        for method in space.methods:
            if method is Method.FULL:
                out += [
                    Variant(method=method, precision=p, offload=o)
                    for p in space.full_precisions
                    for o in space.offload
                ]
            else:
                out += [
                    Variant(method=method, precision=Precision.BF16_MIXED, targets=t, offload=o)
                    for t in space.lora_targets
                    for o in space.offload
                ]
        return tuple(out)

    def hardware(self) -> tuple[Hardware, ...]:
        """Hardware cells: (GPU, GPUs per node, nodes) with their offers, in a stable order."""
        groups: dict[tuple[str, int], list[Offer]] = {}
        for offer in self.request.offers:
            groups.setdefault((offer.gpu, offer.gpu_count), []).append(offer)
        cells: list[Hardware] = []
        for (gpu_name, count), offers in sorted(groups.items()):
            gpu = self.request.gpus[gpu_name]
            for nodes in self.request.space.node_counts:
                usable = tuple(o for o in offers if o.max_nodes >= nodes)
                if usable:
                    cells.append(
                        Hardware(
                            gpu=gpu,
                            gpus_per_node=count,
                            nodes=nodes,
                            offers=tuple(sorted(usable, key=lambda o: o.key)),
                        )
                    )
        return tuple(cells)

    def shardings_for(
        self, variant: Variant, hw: Hardware, optimizer: OptimizerKind
    ) -> tuple[Sharding, ...]:
        """Strategies to try in a cell, fastest first; the search moves to the next only when
        nothing fits with the previous one (sharding only ever costs speed).

        One GPU: none. Several: DDP (LoRA/QLoRA), then FSDP full-shard. Offload variants (their
        own cells, searched only where the cell without offload fits nothing): ZeRO-3's for full
        FT (DeepSpeedCPUAdam), FSDP's for LoRA/QLoRA (DeepSpeed cannot offload 4-bit weights).
        Combinations the recipes cannot run (:func:`profiler.sharding_problem`) are left out.
        """
        full = variant.method is Method.FULL
        order: tuple[Sharding, ...]
        if variant.offload:
            order = (Sharding.ZERO3_OFFLOAD if full else Sharding.FSDP_OFFLOAD,)
        elif hw.gpu_count == 1:
            order = (Sharding.NONE,)
        elif full:
            order = (Sharding.FSDP,)
        else:
            order = (Sharding.DDP, Sharding.FSDP)
        return tuple(
            s
            for s in order
            if sharding_problem(
                s,
                method=variant.method,
                gpu_count=hw.gpu_count,
                optimizer=optimizer,
                num_experts=self.request.spec.num_experts,
            )
            is None
        )

    @property
    def fitting_cell_count(self) -> int:
        """How many solved cells found a fitting plan (grows as the search goes)."""
        return len(self._fitting_cells)

    @property
    def fitting_cells(self) -> set[tuple[str, str]]:
        """(variant key, hardware key) of the solved cells that found a fitting plan."""
        return self._fitting_cells

    def redundant(self, variant: Variant, hw: Hardware) -> bool:
        """An offload cell whose twin without offload already found a fitting plan: offload
        would only add PCIe and CPU time to it."""
        if not variant.offload:
            return False
        return (variant.key.removesuffix("~offload"), hw.key) in self._fitting_cells

    def can_hold_weights(self, variant: Variant, hw: Hardware) -> bool:
        """False when the per-GPU memory is below the weights alone (an obvious OOM) under the
        most memory-saving strategy the cell allows; offload moves them to host memory."""
        shardings = self.shardings_for(variant, hw, OptimizerKind.ADAMW)
        if not shardings:
            return False
        if variant.offload:
            # The weights move to host memory; offers whose RAM is unknown cannot be checked.
            # (Short RAM is priced and refused per offer, so the verdict can say why.)
            return any(o.memory_gib is not None or o.provider is Provider.LOCAL for o in hw.offers)
        lora = variant.method is not Method.FULL
        weights = min(
            weight_bytes(
                self.request.spec,
                TuningConfig(
                    method=variant.method,
                    precision=variant.precision,
                    lora_rank=min(self.request.space.lora_ranks) if lora else None,
                    lora_targets=variant.targets,
                    gpu_count=hw.gpu_count,
                    sharding=sharding,
                ),
            )
            / (hw.gpu_count if sharding.shards_state else 1)
            for sharding in shardings
        )
        return weights / GIB < hw.gpu.usable_memory_gib

    def worth_searching(self, variant: Variant, hw: Hardware) -> bool:
        """Prune cells that cannot win: the weights do not fit, or several nodes of DDP
        (LoRA/QLoRA) without a deadline. DDP replicates the model, so more nodes never lower the
        per-GPU memory or raise per-GPU speed: they only buy time, at a higher price."""
        if not self.can_hold_weights(variant, hw):
            return False
        return (
            hw.nodes == 1
            or variant.method is Method.FULL
            or self.request.budget.max_hours is not None
        )

    def lower_bound_usd(self, variant: Variant, hw: Hardware) -> float:
        """USD the cell costs at least: every GPU at its dense 16-bit peak FLOP/s.

        FLOPs per token ≥ 6 × (decoder-layer parameters) for full FT and ≥ 4 × for LoRA/QLoRA
        (forward plus input gradients; adapters, attention scores, the LM head and
        recomputation only add). Start-up is included, spot overhead is not (it is ≥ 0).
        """
        spec, budget = self.request.spec, self.request.budget
        flops_per_token = min_flops_per_token(spec, variant.method)
        # The datasheet peak, or the measured rate where a card runs above it (boost clocks).
        peak_tflops = max(hw.gpu.matmul_tflops, hw.gpu.sustained_matmul_tflops)
        peak_flops = peak_tflops * 1e12 * hw.gpu_count
        train_s = budget.total_tokens * flops_per_token / peak_flops
        startup = self.request.startup
        download_s = download_bytes(spec) / GIB / startup.download_gib_per_s
        best = math.inf
        for offer in hw.offers:
            run_hours = (train_s + provision_s(offer, startup) + download_s) / 3600
            best = min(best, offer.billed_hours(run_hours) * offer.usd_per_hour)
        return best * hw.nodes

    def config(
        self,
        variant: Variant,
        hw: Hardware,
        *,
        rank: int | None,
        optimizer: OptimizerKind,
        micro_batch: int,
        ckpt: bool,
        sharding: Sharding | None = None,
        chunked: bool = False,
    ) -> TuningConfig:
        """The TuningConfig of one point; fp16-mixed replaces bf16 on GPUs without bf16.
        ``sharding`` defaults to the cell's first strategy (:meth:`shardings_for`); ``chunked``
        is the chunked cross-entropy (:meth:`memory_savers`)."""
        precision = variant.precision
        if not hw.gpu.bf16_supported:
            precision = Precision.FP16_MIXED
        if sharding is None:
            sharding = self.shardings_for(variant, hw, optimizer)[0]
        return TuningConfig(
            method=variant.method,
            precision=precision,
            lora_rank=rank,
            lora_alpha=None if rank is None else 2 * rank,
            lora_targets=variant.targets,
            micro_batch_size=micro_batch,
            seq_len=self.request.seq_len,
            grad_checkpointing=ckpt,
            optimizer=optimizer,
            gpu_count=hw.gpu_count,
            sharding=sharding,
            chunked_loss=chunked,
        )

    def memory_savers(self, hw: Hardware, sharding: Sharding) -> tuple[tuple[bool, bool], ...]:
        """(gradient checkpointing, chunked cross-entropy) settings to try, in the order they add
        time: neither; the chunked loss (one more LM-head forward per step, and its loss chain
        again); checkpointing (one more forward of every decoder layer); both.

        The chunked loss is offered where the recipe can run it
        (:func:`profiler.chunked_loss_problem`: one GPU without sharding, a model type whose
        loss it reproduces).
        """
        space = self.request.space
        chunked: tuple[bool, ...] = (False,)
        problem = chunked_loss_problem(
            model_type=self.request.spec.model_type, gpu_count=hw.gpu_count, sharding=sharding
        )
        if problem is None:
            chunked = tuple(sorted(space.chunked_loss))
        return tuple(
            (ckpt, chunk) for ckpt in sorted(space.grad_checkpointing) for chunk in chunked
        )

    def measure(self, config: TuningConfig, hw: Hardware, inter_node_gbps: float) -> Measurement:
        """A stored profile when one matches (single node), else the estimator; cached."""
        key = (config, hw.gpu.name, hw.nodes, inter_node_gbps if hw.nodes > 1 else 0.0)
        found = self._measurements.get(key)
        if found is not None:
            return found
        measurement = None
        if self._lookup is not None and hw.nodes == 1:
            measurement = self._lookup(self.request.spec.name, config, hw.gpu.name)
        if measurement is None:
            self.estimator_calls += 1
            measurement = self._estimate(
                self.request.spec, config, hw.gpu, nodes=hw.nodes, inter_node_gbps=key[3]
            )
        self._measurements[key] = measurement
        return measurement

    def eval_step_fraction(self, config: TuningConfig, gpu: GPU) -> float | None:
        """An eval micro-batch's time over a training step's on ``gpu`` (the estimator's ratio,
        applied to measured steps too); None when the budget has no evaluations. Cached."""
        if self._eval_pass is None or not self.request.budget.evaluations:
            return None
        key = (config, gpu.name)
        found = self._eval_fractions.get(key)
        if found is None:
            found = self._eval_fractions[key] = self._eval_pass(
                self.request.spec, config, gpu
            ).step_fraction
        return found

    def peak_gib(self, measurement: Measurement) -> float:
        """Per-GPU peak reserved memory (allocated when reserved is unknown); inf on OOM."""
        if measurement.status is Status.OOM:
            return math.inf
        peak = measurement.peak_reserved_gib or measurement.peak_allocated_gib
        return math.inf if peak is None else peak

    def fit(self, measurement: Measurement, gpu: GPU) -> FitVerdict:
        """Fit verdict of a measurement on ``gpu`` (``no`` unless it ran or estimated OK)."""
        if measurement.status is not Status.OK:
            return FitVerdict.NO
        return self._fits(measurement, gpu)

    def fits(self, measurement: Measurement, gpu: GPU) -> bool:
        return self.fit(measurement, gpu).fits

    def price(self, config: TuningConfig, hw: Hardware) -> list[Candidate]:
        """Candidates of one config on every offer of ``hw`` (one measurement per interconnect)."""
        request = self.request
        per_step = config.micro_batch_size * config.seq_len * hw.gpu_count
        target = min(
            GLOBAL_BATCH_TARGET_TOKENS,
            request.budget.dataset_tokens // MIN_OPTIMIZER_STEPS_PER_EPOCH,
        )
        accum = max(1, round(target / per_step))
        global_tokens = accum * per_step
        risks = self._risks_for(config, global_tokens)
        ok_quality = accepted(risks, request.budget.quality)
        ckpt_size = checkpoint_bytes(request.spec, config) / GIB
        weights = download_bytes(request.spec) / GIB
        out: list[Candidate] = []
        for offer in hw.offers:
            measurement = self.measure(config, hw, offer.inter_node_gbps)
            fit = self.fit(measurement, hw.gpu)
            if not host_ram_fits(measurement, offer):
                fit = FitVerdict.NO
            if measurement.status is not Status.OK or not measurement.tokens_per_s:
                continue
            cost = estimate_cost(
                measurement,
                offer,
                request.budget,
                nodes=hw.nodes,
                spot_policy=request.spot,
                startup=request.startup,
                weights_gib=weights,
                checkpoint_size_gib=ckpt_size,
                eval_step_fraction=self.eval_step_fraction(config, hw.gpu),
            )
            out.append(
                Candidate(
                    config=config,
                    offer=offer,
                    nodes=hw.nodes,
                    measurement=measurement,
                    cost=cost,
                    fits=fit.fits,
                    fit=fit,
                    usable_memory_gib=hw.gpu.usable_memory_gib,
                    risks=risks,
                    suggested_learning_rate=suggested_learning_rate(config),
                    within_budget=cost.usd <= request.budget.max_usd,
                    within_deadline=(
                        request.budget.max_hours is None or cost.hours <= request.budget.max_hours
                    ),
                    quality_accepted=ok_quality,
                    grad_accum_steps=accum,
                    global_batch_tokens=global_tokens,
                )
            )
        return out

    def _risks_for(self, config: TuningConfig, global_tokens: int) -> Any:
        key = (
            config.method,
            config.lora_rank,
            config.lora_targets,
            config.precision,
            global_tokens,
        )
        risks = self._risks.get(key)
        if risks is None:
            risks = assess_quality(
                self.request.spec, config, self.request.budget, global_batch_tokens=global_tokens
            )
            self._risks[key] = risks
        return risks

    def rank_accepted(
        self, variant: Variant, rank: int, policy: QualityPolicy | None = None
    ) -> bool:
        """Whether the quality policy (the request's unless given) accepts this rank before
        batch-size effects."""
        probe = TuningConfig(
            method=variant.method,
            lora_rank=rank,
            lora_targets=variant.targets,
            seq_len=self.request.seq_len,
        )
        risks = self._risks_for(probe, 0)
        return accepted(risks, policy or self.request.budget.quality)

    def ranks(self, variant: Variant) -> tuple[int, ...]:
        """LoRA ranks a fast cell solve prices: the smallest the quality policy accepts (larger
        ranks only add memory and time), else the largest. ``--quality balanced`` also prices
        the smallest low-risk rank, so one search answers both of its questions."""
        ordered = sorted(self.request.space.lora_ranks)
        policy = self.request.budget.quality
        policies = [policy] + [QualityPolicy.STRICT] * (policy is QualityPolicy.BALANCED)
        picks = {
            next(r for r in ordered if self.rank_accepted(variant, r, p))
            for p in policies
            if any(self.rank_accepted(variant, r, p) for r in ordered)
        }
        return tuple(sorted(picks)) or (ordered[-1],)

    # -- the two ways of walking a cell -------------------------------------------------------

    def solve_cell(self, variant: Variant, hw: Hardware) -> list[Candidate]:
        """Fast exact-by-construction inner solve of one structural cell.

        Ranks: :meth:`ranks`.
        For each optimizer: micro-batches upward without a memory saver until one does not fit,
        then with the next saver (:meth:`memory_savers`: chunked loss, checkpointing, both) from
        the first size that did not fit (a saver only pays when it lets a larger micro-batch
        fit; at a size that fits without it, it only adds recomputation). Every fitting point is
        priced on every offer of the cell.
        """
        if not self.can_hold_weights(variant, hw):
            return []
        if self.redundant(variant, hw):
            return []  # the faster strategy fits: offload only costs time
        space = self.request.space
        ranks: tuple[int | None, ...] = (None,)
        if variant.method is not Method.FULL:
            ranks = self.ranks(variant)
        out: list[Candidate] = []
        batches = sorted(space.micro_batches)
        for rank in ranks:
            for optimizer in self.optimizers_for(variant):
                for sharding in self.shardings_for(variant, hw, optimizer):
                    found = len(out)
                    start = 0
                    for ckpt, chunked in self.memory_savers(hw, sharding):
                        start = self._walk_batches(
                            variant,
                            hw,
                            rank,
                            optimizer,
                            ckpt,
                            batches[start:],
                            out,
                            start,
                            sharding=sharding,
                            chunked=chunked,
                        )
                    if any(c.fits for c in out[found:]):
                        break
        if any(c.fits for c in out):
            self._fitting_cells.add((variant.key, hw.key))
        return out

    def optimizers_for(self, variant: Variant) -> tuple[OptimizerKind, ...]:
        """Optimizers worth trying for a variant.

        LoRA/QLoRA train <1% of the parameters, so 8-bit AdamW states would save well under
        0.1 GiB while adding bitsandbytes' optimizer to the run: they keep torch AdamW, as in
        DESIGN.md's recipes. Full fine-tuning tries every optimizer in the space.
        """
        space = self.request.space
        if variant.method is not Method.FULL and OptimizerKind.ADAMW in space.optimizers:
            return (OptimizerKind.ADAMW,)
        return space.optimizers

    def _walk_batches(
        self,
        variant: Variant,
        hw: Hardware,
        rank: int | None,
        optimizer: OptimizerKind,
        ckpt: bool,
        batches: list[int],
        out: list[Candidate],
        offset: int,
        *,
        sharding: Sharding | None = None,
        chunked: bool = False,
    ) -> int:
        """Price micro-batches upward until one does not fit; return the index to resume at."""
        for i, batch in enumerate(batches):
            config = self.config(
                variant,
                hw,
                rank=rank,
                optimizer=optimizer,
                micro_batch=batch,
                ckpt=ckpt,
                sharding=sharding,
                chunked=chunked,
            )
            priced = self.price(config, hw)
            if not priced or not priced[0].fits:
                out.extend(priced[:1])  # keep one near miss for the verdicts
                return offset + i
            out.extend(priced)
        return offset + len(batches)

    def walk_cell_exhaustively(self, variant: Variant, hw: Hardware) -> list[Candidate]:
        """Every point of the cell: all ranks, optimizers, memory savers and micro-batches."""
        space = self.request.space
        ranks: tuple[int | None, ...] = (None,)
        if variant.method is not Method.FULL:
            ranks = tuple(sorted(space.lora_ranks))
        out: list[Candidate] = []
        for rank in ranks:
            for optimizer in self.optimizers_for(variant):
                for sharding in self.shardings_for(variant, hw, optimizer):
                    for ckpt, chunked in self.memory_savers(hw, sharding):
                        for batch in space.micro_batches:
                            config = self.config(
                                variant,
                                hw,
                                rank=rank,
                                optimizer=optimizer,
                                micro_batch=batch,
                                ckpt=ckpt,
                                sharding=sharding,
                                chunked=chunked,
                            )
                            out.extend(self.price(config, hw))
        return out


CONSTRAINT_NAMES = ("memory_gib_over", "usd_over", "hours_over", "quality_rejected")


def constraints(candidate: Candidate, budget: Budget) -> tuple[float, float, float, float]:
    """optuna-style constraint values (≤ 0 satisfied): memory GiB over, USD over, hours over,
    and 1 when the quality policy rejects the candidate."""
    memory_over = (
        0.0
        if candidate.fits
        else max(
            1e-6,
            (candidate.measurement.peak_reserved_gib or math.inf) - candidate.usable_memory_gib,
        )
    )
    hours_over = 0.0 if budget.max_hours is None else candidate.cost.hours - budget.max_hours
    return (
        memory_over,
        candidate.cost.usd - budget.max_usd,
        hours_over,
        0.0 if candidate.quality_accepted else 1.0,
    )


def with_nodes_label(candidate: Candidate) -> str:
    """``H100 SXM 80GB × 8 × 2 nodes`` style hardware label."""
    text = f"{candidate.offer.gpu} × {candidate.offer.gpu_count}"
    return text + (f" × {candidate.nodes} nodes" if candidate.nodes > 1 else "")


__all__ = [
    "CONSTRAINT_NAMES",
    "GLOBAL_BATCH_TARGET_TOKENS",
    "EstimateFn",
    "Evaluator",
    "Measurer",
    "FitsFn",
    "LookupFn",
    "constraints",
    "default_fits",
    "host_ram_fits",
    "sort_key",
    "with_nodes_label",
]
