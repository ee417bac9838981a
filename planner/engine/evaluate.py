"""Evaluate: config → measurement → priced candidate, and the Evaluator that walks a cell.

An :class:`Evaluator` turns (config, hardware) into priced :class:`Candidate` records with one
cached estimator call per (config, GPU, nodes, interconnect), and walks one structural cell
either fast (:meth:`Evaluator.solve_cell`) or point by point
(:meth:`Evaluator.walk_cell_exhaustively`). Pure: the estimator and profile lookup are given.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from catalog import GIB, GPU, Offer
from planner._types import RISK_ORDER, Budget, Candidate, QualityPolicy
from planner.engine.cost import estimate_cost, provision_s
from planner.engine.measurer import Measurer, host_ram_fits, host_ram_unknown, loads
from planner.engine.quality import accepted, assess_quality, suggested_learning_rate
from planner.engine.space import Hardware, RecommendRequest, Variant
from profiler import (
    FitVerdict,
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    Sharding,
    Status,
    TuningConfig,
    chunked_loss_problem,
    default_lora_alpha,
    sharding_problem,
)
from profiler.memory import checkpoint_bytes, download_bytes, weight_bytes
from profiler.sharding import shard_count
from profiler.timing import min_flops_per_token

# Tokens per optimizer step that gradient accumulation aims for: 128 Ki tokens (64 sequences of
# 2048), in the 64 Ki–1 Mi range common for SFT recipes. A step that already exceeds it runs with
# one accumulation step; above 1 Mi tokens quality.py flags LoRA's large-batch risk.
GLOBAL_BATCH_TARGET_TOKENS = 131_072
# Small datasets lower that target so an epoch still has this many optimizer steps (room for
# warm-up and a learning-rate schedule); a judgement, stated in the plan via grad_accum_steps.
MIN_OPTIMIZER_STEPS_PER_EPOCH = 50


# A plan whose host RAM nothing could check (the catalog does not list the offer's memory)
# gives way to one whose RAM is known to fit when that costs at most this much more (a judgement
# call, stated in every plan it affects; the same as the tight-memory premium).
HOST_RAM_PREMIUM = 0.20
# Memory savers (gradient checkpointing, chunked loss) in the order they add time.
SAVER_ORDER = ((False, False), (False, True), (True, False), (True, True))


def sort_key(candidate: Candidate) -> tuple[Any, ...]:
    """Explicit, total ranking key: feasible first, then USD, hours (what decides between plans
    on free own GPUs), quality risk and names."""
    return (
        not candidate.feasible,
        round(candidate.cost.usd, 6),
        round(candidate.cost.hours, 6),
        RISK_ORDER.index(candidate.risk_level),
        candidate.offer.instance_type,
        candidate.offer.key,
        candidate.nodes,
        candidate.config.label(),
    )


def _usd_hours(candidate: Candidate) -> tuple[float, float]:
    return (round(candidate.cost.usd, 6), round(candidate.cost.hours, 6))


class Evaluator:
    """Prices configs on hardware, caching every estimator call and quality assessment."""

    def __init__(self, request: RecommendRequest, measurer: Measurer) -> None:
        self.request = request
        self._estimate = measurer.estimator.estimate
        self._lookup = measurer.lookup
        self._fits = measurer.fits
        self._eval_pass = measurer.estimator.eval_pass
        self._eval_fractions: dict[tuple[TuningConfig, str], float] = {}
        self._measurements: dict[tuple[Any, ...], Measurement] = {}
        self._risks: dict[tuple[Any, ...], Any] = {}
        self._loadable: dict[tuple[TuningConfig, str], bool] = {}
        # Pareto front of (USD, hours) per (method, risk level) of the plans no preference sets
        # aside (feasible, with margin, host RAM known): what bounds a walk (_beaten).
        self._settled: dict[tuple[Method, int], list[tuple[float, float]]] = {}
        self.estimator_calls = 0

    def variants(self) -> tuple[Variant, ...]:
        """Method variants of the space (targets for LoRA/QLoRA, precision for full FT); bf16
        support is applied per GPU in :meth:`config`."""
        space = self.request.space
        out: list[Variant] = []
        for method in space.methods:
            if not method.traits.adapters:
                out += [Variant(method=method, precision=p) for p in space.full_precisions]
            else:
                out += [
                    Variant(method=method, precision=Precision.BF16_MIXED, targets=t)
                    for t in space.lora_targets
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
        """Every strategy the recipes can run on the cell's GPUs: one GPU: none, then CPU
        offload (FSDP's and ZeRO-3's); several: DDP, FSDP and ZeRO-3, then both offloads. Each
        is a search option of its own, walked in full (:meth:`solve_cell`): no strategy is
        always the faster one (sharded QLoRA keeps its head and norms in bf16, so FSDP offload
        can outrun plain QLoRA on one GPU). Combinations the recipes cannot run
        (:func:`profiler.sharding_problem`, e.g. 4-bit weights under ZeRO-3 offload) are left
        out."""
        space = self.request.space
        if hw.gpu_count == 1:
            order: tuple[Sharding, ...] = (Sharding.NONE,)
        else:
            order = (Sharding.DDP, Sharding.FSDP, Sharding.ZERO3)
        if any(space.offload):
            order += (Sharding.FSDP_OFFLOAD, Sharding.ZERO3_OFFLOAD)
        if not any(not o for o in space.offload):
            order = tuple(s for s in order if s.offloads)
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

    def can_hold_weights(self, variant: Variant, hw: Hardware, *, offload: bool = True) -> bool:
        """False when no strategy of the cell can hold the weights: below the per-GPU memory
        (sharded n ways where the strategy shards) or, offloading (unless ``offload`` is
        False), within the largest host memory among the cell's offers (unknown counts as
        enough)."""
        lora = variant.method.traits.adapters
        host_gib = max(
            (math.inf if o.memory_gib is None else o.memory_gib for o in hw.offers),
            default=0.0,
        )
        for sharding in self.shardings_for(variant, hw, OptimizerKind.ADAMW):
            if sharding.offloads and not offload:
                continue
            weights_gib = (
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
                / GIB
            )
            if sharding.offloads:
                if weights_gib / hw.nodes < host_gib:
                    return True
            elif weights_gib / shard_count(sharding, hw.gpu_count) < hw.gpu.usable_memory_gib:
                return True
        return False

    def worth_searching(self, variant: Variant, hw: Hardware) -> bool:
        """Prune cells that cannot win: the weights do not fit, or several nodes of LoRA/QLoRA
        without a deadline where one node could hold the weights sharded. Adapters train on
        every GPU alike, so more nodes never lower the per-GPU activations or raise per-GPU
        speed: they only buy time, at a higher price, or room for weights one node lacks."""
        if not self.can_hold_weights(variant, hw):
            return False
        if hw.nodes == 1 or not variant.method.traits.adapters:
            return True
        if self.request.budget.max_hours is not None:
            return True
        one_node = Hardware(gpu=hw.gpu, gpus_per_node=hw.gpus_per_node, nodes=1, offers=hw.offers)
        return not self.can_hold_weights(variant, one_node, offload=False)

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
            lora_alpha=None if rank is None else default_lora_alpha(rank),
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
        if not self.request.budget.evaluations:
            return None
        key = (config, gpu.name)
        found = self._eval_fractions.get(key)
        if found is None:
            found = self._eval_fractions[key] = self._eval_pass(
                self.request.spec, config, gpu
            ).step_fraction
        return found

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
        loadable = self._loads(config, hw.gpu)
        out: list[Candidate] = []
        for offer in hw.offers:
            measurement = self.measure(config, hw, offer.inter_node_gbps)
            fit = self.fit(measurement, hw.gpu)
            # A plan that cannot load, or whose host RAM the offer lacks, never starts: it is
            # dropped like one whose training peak does not fit.
            if not loadable or not host_ram_fits(measurement, offer):
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

    def _loads(self, config: TuningConfig, gpu: GPU) -> bool:
        key = (config, gpu.name)
        found = self._loadable.get(key)
        if found is None:
            found = self._loadable[key] = loads(self.request.spec, config, gpu)
        return found

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

        Ranks: :meth:`ranks`. For each optimizer, every strategy (:meth:`shardings_for`) and
        memory saver (:meth:`memory_savers`) is walked over the micro-batches
        (:meth:`_walk_batches`): the largest that fits, and the largest that fits with its
        error margin, need not be powers of two. Two facts keep it short and exact:

        * a point that fits with its margin on every offer with fewer memory savers
          (:data:`SAVER_ORDER`) is never cheaper, nor roomier, with more, so each saver's walk
          starts above the largest micro-batch the leaner ones settled;
        * a config's USD and hours only fall as its micro-batch grows (more tokens per step
          for the same fixed costs) and rise with each saver, so a batch's price bounds every
          smaller batch's, and the largest micro-batch without a saver bounds the whole
          strategy: a range whose bound is no better, in USD and in hours, than a plan of the
          same method found already (with margin, host RAM known, no more risk) is skipped.

        Every fitting point is priced on every offer of the cell, each with its own host RAM.
        """
        if not self.can_hold_weights(variant, hw):
            return []
        ranks: tuple[int | None, ...] = (None,)
        if variant.method.traits.adapters:
            ranks = self.ranks(variant)
        out: list[Candidate] = []
        for rank in ranks:
            for optimizer in self.optimizers_for(variant):
                for sharding in self.shardings_for(variant, hw, optimizer):
                    fastest = self.config(
                        variant,
                        hw,
                        rank=rank,
                        optimizer=optimizer,
                        micro_batch=max(self.request.space.micro_batches),
                        ckpt=False,
                        sharding=sharding,
                    )
                    if self._beaten(self.price(fastest, hw)):
                        continue  # even its largest micro-batch without a saver is no better
                    # saver order -> largest micro-batch fitting with margin everywhere
                    settled: dict[int, int] = {}
                    for ckpt, chunked in self.memory_savers(hw, sharding):
                        order = SAVER_ORDER.index((ckpt, chunked))
                        start = max(
                            (b for other, b in settled.items() if other < order), default=0
                        )
                        base = self.config(
                            variant,
                            hw,
                            rank=rank,
                            optimizer=optimizer,
                            micro_batch=1,
                            ckpt=ckpt,
                            sharding=sharding,
                            chunked=chunked,
                        )
                        settled[order] = self._walk_batches(base, hw, start, out)
        return out

    def optimizers_for(self, variant: Variant) -> tuple[OptimizerKind, ...]:
        """Optimizers worth trying for a variant.

        LoRA/QLoRA train <1% of the parameters, so 8-bit AdamW states would save well under
        0.1 GiB while adding bitsandbytes' optimizer to the run: they keep torch AdamW, as in
        DESIGN.md's recipes. Full fine-tuning tries every optimizer in the space.
        """
        space = self.request.space
        if variant.method.traits.adapters and OptimizerKind.ADAMW in space.optimizers:
            return (OptimizerKind.ADAMW,)
        return space.optimizers

    def _walk_batches(
        self, base: TuningConfig, hw: Hardware, start: int, out: list[Candidate]
    ) -> int:
        """Price ``base`` at the micro-batches of the space above ``start``.

        The largest first: when it fits it is the cheapest. Otherwise its price bounds every
        smaller one's (:meth:`solve_cell`), and when the cell already has a plan as good, none
        of them is priced. Else doubling upward until one fits on no offer, then bisection for
        the largest that fits below it and, when that one is ``tight``, for the largest that
        fits with its margin. Appends what it priced to ``out`` (with one near miss for the
        verdicts) and returns the largest micro-batch that fits with its margin on every offer,
        every smaller one too (``start`` if none does)."""
        batches = [b for b in sorted(self.request.space.micro_batches) if b > start]
        if not batches:
            return start
        settled, everywhere = start, True
        memo: dict[int, list[Candidate]] = {}

        def priced_at(batch: int) -> list[Candidate]:
            found = memo.get(batch)
            if found is None:
                found = memo[batch] = self.price(
                    dataclasses.replace(base, micro_batch_size=batch), hw
                )
            return found

        def fits(batch: int) -> bool:
            return any(c.fits for c in priced_at(batch))

        def roomy(batch: int) -> bool:
            return any(c.fit is FitVerdict.FITS for c in priced_at(batch))

        def keep(batch: int) -> None:
            nonlocal settled, everywhere
            priced = priced_at(batch)
            out.extend(priced)
            self._settle(priced)
            # Settled only with margin: where this setting is tight, a slower one that fits
            # with margin may still be the plan the tight-memory preference takes.
            everywhere = everywhere and all(c.fit is FitVerdict.FITS for c in priced)
            if everywhere:
                settled = batch

        def largest(values: list[int], test: Callable[[int], bool]) -> int | None:
            """The largest of ``values`` passing ``test`` (true up to a point, then false)."""
            lo, hi = 0, len(values)
            while lo < hi:
                mid = (lo + hi) // 2
                if test(values[mid]):
                    lo = mid + 1
                else:
                    hi = mid
            return values[lo - 1] if lo else None

        top = batches[-1]
        if fits(top):
            if self._beaten(priced_at(top)):
                # The cheapest and fastest of this config is no better than a plan found.
                return top if all(c.fit is FitVerdict.FITS for c in priced_at(top)) else start
            keep(top)
            if not roomy(top):
                found = largest(batches[:-1], roomy)
                if found is not None:
                    out.extend(priced_at(found))
                    self._settle(priced_at(found))
            return settled
        if self._beaten(priced_at(top)):
            return start  # even the largest micro-batch's price is no better
        steps: list[int] = []
        for b in batches:
            if not steps or b >= 2 * steps[-1]:
                steps.append(b)
        last_fit = start
        for b in steps:
            if fits(b):
                keep(b)
                last_fit = b
                continue
            out.extend(priced_at(b)[:1])  # one near miss for the verdicts
            if self._beaten(priced_at(b)):
                break
            found = largest([x for x in batches if last_fit < x < b], fits)
            if found is not None:
                keep(found)
                last_fit = found
            break
        if last_fit > start and not roomy(last_fit) and not self._beaten(priced_at(last_fit)):
            found = largest([x for x in batches if x < last_fit], roomy)
            if found is not None:
                out.extend(priced_at(found))
                self._settle(priced_at(found))
        return settled

    def _beaten(self, bound: list[Candidate]) -> bool:
        """Whether a plan of the same method that no preference would set aside (feasible,
        fits with its margin, host RAM known) at no more quality risk costs no more and takes
        no longer than the cheapest of ``bound`` (one config on the cell's offers): then no
        smaller micro-batch of that config can be chosen, ranked first for its hardware or
        reach the Pareto front."""
        if not bound:
            return False
        usd, hours = min(_usd_hours(c) for c in bound)
        risk = min(RISK_ORDER.index(c.risk_level) for c in bound)
        method = bound[0].config.method
        return any(
            best_usd <= usd and best_hours <= hours
            for (m, level), front in self._settled.items()
            if m is method and level <= risk
            for best_usd, best_hours in front
        )

    def _settle(self, candidates: list[Candidate]) -> None:
        """Record the plans no preference would set aside, per method and risk level, as a
        Pareto front of (USD, hours). Called on what a walk keeps, never on a bound it probes,
        so a bound is not beaten by itself."""
        for c in candidates:
            if c.feasible and c.fit is FitVerdict.FITS and not host_ram_unknown(c):
                front = self._settled.setdefault(
                    (c.config.method, RISK_ORDER.index(c.risk_level)), []
                )
                usd, hours = _usd_hours(c)
                if any(u <= usd and h <= hours for u, h in front):
                    continue
                front[:] = [(u, h) for u, h in front if not (usd <= u and hours <= h)]
                front.append((usd, hours))

    def walk_cell_exhaustively(self, variant: Variant, hw: Hardware) -> list[Candidate]:
        """Every point of the cell: all ranks, optimizers, strategies, memory savers and
        micro-batches."""
        space = self.request.space
        ranks: tuple[int | None, ...] = (None,)
        if variant.method.traits.adapters:
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
    "Evaluator",
    "constraints",
    "sort_key",
    "with_nodes_label",
]
