"""ftplan recommend against an independent brute-force grid, under the user's own policy.

For each scenario (the flags of one ``ftplan recommend`` call) this script

1. builds the request exactly as the CLI does and lets ftplan plan it;
2. independently prices a grid wider than the search space: every method, precision, optimizer,
   LoRA rank and targets, every sharding the recipes can run on the GPU count (none, DDP, FSDP,
   ZeRO-3 and both offloads), every memory saver (gradient checkpointing, chunked loss), every
   micro-batch from 1 to 64 up to the largest that fits (1-16, then every 4th, and the largest),
   every offer of every GPU shape and every node count the offer allows;
3. judges every grid point by the limits the user gave, computed here from the raw figures, not
   from the planner's verdicts:
   * GPU memory: the estimate's band (``peak_reserved_gib`` low/high, else the point with its
     source's margin) against torch's usable memory less the CUDA context: ``no`` when the low
     end is over it, ``tight`` when the band straddles it;
   * loading: ``profiler.memory.load_peak_gib`` within the same capacity;
   * host RAM: the figure's ``host_ram_gib`` within the offer's memory where known (unknown:
     allowed, and counted as unverified);
   * budget and ``--max-hours``; the quality policy the user asked for (``--quality``, whatever
     ``--method`` says), by ftplan's published risk rules plus the precision rule of
     :func:`bf16_update_risk` (pure bf16 weights lose updates below half a bf16 step);
4. chooses the grid's plan by the policy documented in docs/planner.md: cheapest (then fastest,
   then least risk; on $0 offers fastest, then least risk); ``balanced`` keeps a low-risk plan
   unless the medium-risk one saves over 20%, and for ``--task cpt`` takes a low-risk plan (else
   full fine-tuning) whenever one fits the limits; a ``tight`` plan gives way to one of its method
   with margin that costs at most 20% more, and one whose host RAM nothing could check (the
   catalog does not list the offer's memory) to one whose RAM is known, on the same terms;
5. reports the regret of ftplan's chosen plan, every line of the plan (chosen, ranking, Pareto
   front, verdicts, budget frontier, stronger options, suggestions) that breaks a limit, and
   false "no feasible plan" answers.

Run: ``.venv/bin/python benchmarks/policy_grid.py [--only NAME] [--json out.json]`` (CPU, about
ten minutes for the 34 scenarios). Exits 1 on any regret over 1% (or a plan over 1% cheaper than
the grid's: one the policy would not take), any violating line or any false "no feasible plan".
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import math
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from policy_scenarios import SCENARIOS

from catalog import GIB, GPU, Offer
from planner._types import RISK_ORDER, Budget, Plan, QualityPolicy, QualityRisk, RiskLevel, Task
from planner.cli.recommend import recommend_command
from planner.engine.cost import estimate_cost
from planner.engine.measurer import Measurer
from planner.engine.plan import recommend
from planner.engine.quality import ACCEPTED_LEVELS, assess_quality
from planner.engine.request import RecommendOptions, build_request
from planner.engine.space import RecommendRequest
from profiler import (
    CUDA_CONTEXT_GIB,
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    Sharding,
    Source,
    Status,
    TuningConfig,
    chunked_loss_problem,
    sharding_problem,
)
from profiler.calibration import calibration_for
from profiler.estimator import estimate, eval_pass
from profiler.memory import checkpoint_bytes, download_bytes, load_peak_gib
from profiler.recipes import DEFAULT_LEARNING_RATE
from profiler.store import default_store

MAX_REGRET = 0.01
PREMIUM = 0.20  # balanced's risk premium and the tight plan's margin premium (docs/planner.md)
GLOBAL_BATCH_TARGET_TOKENS = 131_072  # gradient accumulation target (docs/planner.md)
MIN_OPTIMIZER_STEPS_PER_EPOCH = 50
MICRO_BATCHES = tuple(range(1, 17)) + tuple(range(20, 65, 4))
# Margins by source when a figure carries no band (profiler/headroom.py documents the same
# figures: the estimator's worst cross-validated under-prediction, extrapolation's worst miss).
MARGIN = {Source.MEASURED: 0.0, Source.EXTRAPOLATED: 0.03 / 0.97, Source.ESTIMATED: 0.141 / 0.859}
# Pure bf16 weights: a bf16 number has 8 significant bits, so near |w| the spacing is
# 2^(floor(log2 |w|) - 7); an AdamW update of about the learning rate below half of it rounds
# to nothing. |w| = 0.02 is the usual initialiser scale of these models' linears.
TYPICAL_WEIGHT = 0.02
LONG_RUN_TOKENS = 100_000_000


@dataclass(frozen=True, slots=True)
class Judged:
    """One grid point with the limits it meets, computed here."""

    config: TuningConfig
    offer: Offer
    nodes: int
    usd: float
    hours: float
    risk: RiskLevel
    gpu_fit: str  # fits / tight / no
    loads: bool
    host_ram: bool | None  # None: the offer's RAM is unknown
    host_ram_needed: bool  # needs more than the training processes (offload, rank-0 loading)
    within_budget: bool
    within_deadline: bool
    quality_ok: bool

    @property
    def feasible(self) -> bool:
        return (
            self.gpu_fit != "no"
            and self.loads
            and self.host_ram is not False
            and self.within_budget
            and self.within_deadline
            and self.quality_ok
        )

    def broken(self, *, skip: Iterable[str] = ()) -> list[str]:
        """Names of the limits this point breaks, leaving out ``skip``."""
        out = []
        if self.gpu_fit == "no":
            out.append("gpu-memory")
        if not self.loads:
            out.append("loading")
        if self.host_ram is False:
            out.append("host-ram")
        if not self.within_budget:
            out.append("budget")
        if not self.within_deadline:
            out.append("deadline")
        if not self.quality_ok:
            out.append("quality")
        return [b for b in out if b not in set(skip)]

    def key(self) -> tuple[float, float, int]:
        return (round(self.usd, 6), round(self.hours, 6), RISK_ORDER.index(self.risk))

    def label(self) -> str:
        return f"{self.config.label()} on {self.offer.key} x{self.nodes}"


@dataclass
class Grid:
    """Prices and judges configs for one scenario; every estimate is cached."""

    request: RecommendRequest
    policy: QualityPolicy
    measurements: dict[tuple[Any, ...], Measurement] = field(default_factory=dict)
    estimates: int = 0

    def __post_init__(self) -> None:
        self.store = default_store()
        self.budget = dataclasses.replace(self.request.budget, quality=self.policy)

    # -- raw figures --------------------------------------------------------------------
    def measure(self, config: TuningConfig, gpu: GPU, nodes: int, gbps: float) -> Measurement:
        key = (config, gpu.name, nodes, gbps if nodes > 1 else 0.0)
        found = self.measurements.get(key)
        if found is None:
            found = None
            if nodes == 1:
                found = self.store.lookup(
                    model=self.request.spec.name, config=config, gpu=gpu.name
                )
            if found is None:
                self.estimates += 1
                found = estimate(
                    self.request.spec,
                    config,
                    gpu,
                    nodes=nodes,
                    inter_node_gbps=key[3],
                    calibration=calibration_for(gpu),
                )
            self.measurements[key] = found
        return found

    @staticmethod
    def gpu_fit(m: Measurement, gpu: GPU) -> str:
        """fits / tight / no from the figure's band (or point and source margin)."""
        capacity = gpu.usable_memory_gib - CUDA_CONTEXT_GIB
        point = m.peak_reserved_gib or m.peak_allocated_gib
        if m.status is not Status.OK or point is None:
            return "no"
        band = m.band("peak_reserved_gib")
        low, high = (point, point * (1 + MARGIN[m.source])) if band is None else band
        if low > capacity:
            return "no"
        return "tight" if high > capacity else "fits"

    def risks(self, config: TuningConfig, budget: Budget) -> tuple[QualityRisk, ...]:
        per_step = config.micro_batch_size * config.seq_len * config.gpu_count
        target = min(
            GLOBAL_BATCH_TARGET_TOKENS, budget.dataset_tokens // MIN_OPTIMIZER_STEPS_PER_EPOCH
        )
        accum = max(1, round(target / per_step))
        return assess_quality(
            self.request.spec, config, budget, global_batch_tokens=accum * per_step
        )

    def judge(
        self, config: TuningConfig, offer: Offer, nodes: int, *, budget: Budget | None = None
    ) -> Judged | None:
        budget = budget or self.budget
        gpu = self.request.gpus[offer.gpu]
        m = self.measure(config, gpu, nodes, offer.inter_node_gbps)
        if m.status is not Status.OK or not m.tokens_per_s:
            return None
        spec = self.request.spec
        cost = estimate_cost(
            m,
            offer,
            budget,
            nodes=nodes,
            spot_policy=self.request.spot,
            startup=self.request.startup,
            weights_gib=download_bytes(spec) / GIB,
            checkpoint_size_gib=checkpoint_bytes(spec, config) / GIB,
            eval_step_fraction=(
                eval_pass(spec, config, gpu, calibration=calibration_for(gpu)).step_fraction
                if budget.evaluations
                else None
            ),
        )
        capacity = gpu.usable_memory_gib - CUDA_CONTEXT_GIB
        needed = m.host_ram_gib
        processes = 3.0 * config.gpu_count / nodes  # HOST_RAM_PER_PROCESS_GIB per GPU
        host_ram: bool | None = True
        if needed is not None:
            host_ram = None if offer.memory_gib is None else needed <= offer.memory_gib
        risks = self.risks(config, budget) + bf16_update_risk(config, budget)
        level = max((r.level for r in risks), key=RISK_ORDER.index, default=RiskLevel.LOW)
        return Judged(
            config=config,
            offer=offer,
            nodes=nodes,
            usd=cost.usd,
            hours=cost.hours,
            risk=level,
            gpu_fit=self.gpu_fit(m, gpu),
            loads=load_peak_gib(spec, config) <= capacity,
            host_ram=host_ram,
            host_ram_needed=needed is not None and needed > processes + 1e-6,
            within_budget=cost.usd <= budget.max_usd,
            within_deadline=budget.max_hours is None or cost.hours <= budget.max_hours,
            quality_ok=level in ACCEPTED_LEVELS[self.policy],
        )

    # -- the grid -------------------------------------------------------------------------
    def configs(self, gpu: GPU, gpu_count: int) -> Iterable[list[TuningConfig]]:
        """For each point of the space but the micro-batch: its configs by micro-batch."""
        spec, space = self.request.spec, self.request.space
        for method in space.methods:
            variants: list[tuple[Precision, int | None, str | None, OptimizerKind]]
            if method is Method.FULL:
                precisions = (
                    (Precision.BF16_MIXED, Precision.BF16)
                    if gpu.bf16_supported
                    else (Precision.FP16_MIXED,)
                )
                variants = [
                    (p, None, None, o)
                    for p in precisions
                    for o in (OptimizerKind.ADAMW, OptimizerKind.ADAMW_8BIT)
                ]
            else:
                precision = Precision.BF16_MIXED if gpu.bf16_supported else Precision.FP16_MIXED
                variants = [
                    (precision, r, t, OptimizerKind.ADAMW)
                    for r in space.lora_ranks
                    for t in space.lora_targets
                ]
            for precision, rank, targets, optimizer in variants:
                for sharding in Sharding:
                    if sharding_problem(
                        sharding,
                        method=method,
                        gpu_count=gpu_count,
                        optimizer=optimizer,
                        num_experts=spec.num_experts,
                    ):
                        continue
                    chunk: tuple[bool, ...] = (False,)
                    if (
                        any(space.chunked_loss)
                        and chunked_loss_problem(
                            model_type=spec.model_type, gpu_count=gpu_count, sharding=sharding
                        )
                        is None
                    ):
                        chunk = (False, True)
                    for ckpt in (False, True):
                        for chunked in chunk:
                            yield [
                                TuningConfig(
                                    method=method,
                                    precision=precision,
                                    lora_rank=rank,
                                    lora_alpha=None if rank is None else 2 * rank,
                                    lora_targets=targets,
                                    micro_batch_size=b,
                                    seq_len=self.request.seq_len,
                                    grad_checkpointing=ckpt,
                                    optimizer=optimizer,
                                    gpu_count=gpu_count,
                                    sharding=sharding,
                                    chunked_loss=chunked,
                                )
                                for b in range(1, 65)
                            ]

    def points(self) -> list[Judged]:
        groups: dict[tuple[str, int], list[Offer]] = {}
        for offer in self.request.offers:
            groups.setdefault((offer.gpu, offer.gpu_count), []).append(offer)
        out: list[Judged] = []
        for (gpu_name, count), offers in sorted(groups.items()):
            gpu = self.request.gpus[gpu_name]
            for nodes in (1, 2, 4, 8):
                usable = [o for o in offers if o.max_nodes >= nodes]
                if not usable:
                    continue
                for by_batch in self.configs(gpu, count * nodes):
                    largest = self._largest_fitting(by_batch, gpu, nodes, usable[0])
                    if largest == 0:
                        continue
                    batches = sorted({b for b in MICRO_BATCHES if b <= largest} | {largest})
                    for b in batches:
                        for offer in usable:
                            judged = self.judge(by_batch[b - 1], offer, nodes)
                            if judged is not None:
                                out.append(judged)
        return out

    def _largest_fitting(
        self, by_batch: list[TuningConfig], gpu: GPU, nodes: int, offer: Offer
    ) -> int:
        """Largest micro-batch whose band is not wholly over the card (memory grows with it)."""

        def ok(b: int) -> bool:
            m = self.measure(by_batch[b - 1], gpu, nodes, offer.inter_node_gbps)
            return self.gpu_fit(m, gpu) != "no"

        if not ok(1):
            return 0
        return bisect.bisect_left(range(1, 65), True, key=lambda b: not ok(b))


def bf16_update_risk(config: TuningConfig, budget: Budget) -> tuple[QualityRisk, ...]:
    """The grid's precision rule: pure bf16 full fine-tuning at a learning rate below half a bf16
    step at |w| = 0.02 loses most updates: medium risk, high for runs of 100M tokens or more."""
    if config.method is not Method.FULL or config.precision is not Precision.BF16:
        return ()
    step = 2.0 ** (math.floor(math.log2(TYPICAL_WEIGHT)) - 7)
    lost = DEFAULT_LEARNING_RATE[Method.FULL] < step / 2
    level = RiskLevel.HIGH if lost and budget.total_tokens >= LONG_RUN_TOKENS else RiskLevel.MEDIUM
    return (QualityRisk(level=level, message="pure bf16 updates", source="grid"),)


def choose(points: list[Judged], budget: Budget, policy: QualityPolicy) -> Judged | None:
    """The plan the documented policy takes from the grid."""
    feasible = sorted((p for p in points if p.feasible), key=Judged.key)
    if not feasible:
        return None
    best = feasible[0]
    if policy is QualityPolicy.BALANCED and best.risk is not RiskLevel.LOW:
        low = next((p for p in feasible if p.risk is RiskLevel.LOW), None)
        if budget.task is Task.CPT:
            full = next((p for p in feasible if p.config.method is Method.FULL), None)
            if low is not None:
                best = low
            elif full is not None and best.config.method is not Method.FULL:
                best = full
        elif low is not None and best.usd > 0 and low.usd <= best.usd * (1 + PREMIUM):
            best = low
    if best.gpu_fit == "tight":
        roomy = next(
            (
                p
                for p in feasible
                if p.gpu_fit == "fits"
                and p.config.method is best.config.method
                and RISK_ORDER.index(p.risk) <= RISK_ORDER.index(best.risk)
            ),
            None,
        )
        if roomy is not None and _within_premium(roomy, best):
            best = roomy
    if best.host_ram is None and best.host_ram_needed:
        known = next(
            (
                p
                for p in feasible
                if not (p.host_ram is None and p.host_ram_needed)
                and RISK_ORDER.index(p.risk) <= RISK_ORDER.index(best.risk)
                and (p.gpu_fit == "fits" or best.gpu_fit != "fits")
            ),
            None,
        )
        if known is not None and _within_premium(known, best):
            best = known
    return best


def _within_premium(alt: Judged, best: Judged) -> bool:
    if best.usd > 0:
        return alt.usd <= best.usd * (1 + PREMIUM)
    return alt.usd <= 0 and alt.hours <= best.hours * (1 + PREMIUM)


# -- reading a plan's lines back ------------------------------------------------------------

_LABEL = re.compile(
    r"(?P<method>full|lora|qlora)(?: r(?P<rank>\d+) (?P<targets>\S+))? (?P<precision>\S+) "
    r"b(?P<b>\d+) s(?P<s>\d+)(?P<rest>.*)"
)


def parse_label(text: str) -> TuningConfig | None:
    """The TuningConfig a ``TuningConfig.label()`` describes."""
    m = _LABEL.fullmatch(text.strip())
    if m is None:
        return None
    rest = m["rest"].split()
    gpus, sharding = 1, Sharding.NONE
    optimizer = OptimizerKind.ADAMW
    for token in rest:
        g = re.fullmatch(r"(\d+)gpu-(\S+)", token)
        if g:
            gpus, sharding = int(g[1]), Sharding(g[2])
        elif token not in ("ckpt", "chunked-ce"):
            optimizer = OptimizerKind(token)
    rank = None if m["rank"] is None else int(m["rank"])
    return TuningConfig(
        method=Method(m["method"]),
        precision=Precision(m["precision"]),
        lora_rank=rank,
        lora_alpha=None if rank is None else 2 * rank,
        lora_targets=m["targets"],
        micro_batch_size=int(m["b"]),
        seq_len=int(m["s"]),
        grad_checkpointing="ckpt" in rest,
        optimizer=optimizer,
        gpu_count=gpus,
        sharding=sharding,
        chunked_loss="chunked-ce" in rest,
    )


_DESCRIBE = re.compile(
    r"^(?P<label>.+?) on .+? \((?P<provider>\S+) (?P<instance>\S+), (?P<kind>spot|on-demand)\)"
)


Line = tuple[str, TuningConfig, Offer, int, tuple[str, ...], Budget | None]
"""(what, config, offer, nodes, limits the line may break, budget to judge it by)."""


def lines(plan: Plan, request: RecommendRequest) -> list[Line]:
    """Every line of the plan that offers a plan: the chosen, ranked and Pareto candidates and
    the verdicts' best, the budget frontier, the stronger options and the suggestions."""
    by_instance: dict[str, list[Offer]] = {}
    for o in request.offers:
        by_instance.setdefault(o.instance_type, []).append(o)
    return [
        *_candidate_lines(plan),
        *_frontier_lines(plan, {o.key: o for o in request.offers}),
        *_stronger_lines(plan, by_instance),
        *_suggestion_lines(plan, by_instance),
    ]


def _candidate_lines(plan: Plan) -> list[Line]:
    out: list[Line] = []

    def add(what: str, c: Any, skip: tuple[str, ...] = ()) -> None:
        out.append((what, c.config, c.offer, c.nodes, skip, None))

    if plan.chosen is not None:
        add("chosen", plan.chosen)
    for c in plan.ranked:
        add("ranked", c)
    for c in plan.pareto:
        add("pareto", c)
    for v in plan.verdicts:
        if v.best is None:
            continue
        if " wins: " in v.reason or " also works " in v.reason:
            add(f"verdict {v.method.value}", v.best)
        elif "at its cheapest needs" in v.reason:
            add(f"verdict {v.method.value} (over a limit)", v.best, ("budget", "deadline"))
        elif "is rejected by --quality" in v.reason:
            add(f"verdict {v.method.value} (rejected)", v.best, ("quality",))
    return out


def _frontier_lines(plan: Plan, by_key: dict[str, Offer]) -> list[Line]:
    """What the budget buys: within the budget and --max-hours for the tokens it states."""
    out: list[Line] = []
    for e in plan.budget_frontier:
        if e.offer is None or e.config is None:
            continue
        config = parse_label(e.config)
        offer = by_key.get(e.offer)
        if config is None or offer is None:
            continue
        nodes = config.gpu_count // offer.gpu_count
        out.append((f"frontier {e.method.value}", config, offer, nodes, ("budget",), None))
    return out


def _stronger_lines(plan: Plan, by_instance: dict[str, list[Offer]]) -> list[Line]:
    out: list[Line] = []
    for text in plan.stronger_options:
        m = re.search(r"on (\S+) \((full [^)]*)\)", text)
        if text.startswith("full fine-tuning is affordable") and m:
            config = parse_label(m[2])
            for offer in by_instance.get(m[1], [])[:1]:
                if config is not None:
                    nodes = config.gpu_count // offer.gpu_count
                    out.append(("stronger: full", config, offer, nodes, (), None))
        m = re.match(r"a higher rank is affordable: r(\d+)", text)
        if m and plan.chosen is not None:
            rank = int(m[1])
            config = dataclasses.replace(plan.chosen.config, lora_rank=rank, lora_alpha=2 * rank)
            out.append(("stronger: rank", config, plan.chosen.offer, plan.chosen.nodes, (), None))
        m = re.match(r"the budget buys (?:over )?([\d,.]+) epochs", text)
        if m and plan.chosen is not None:
            budget = dataclasses.replace(plan.budget, epochs=float(m[1].replace(",", "")))
            chosen = plan.chosen
            out.append(
                (
                    "stronger: epochs",
                    chosen.config,
                    chosen.offer,
                    chosen.nodes,
                    ("budget",),
                    budget,
                )
            )
    return out


def _suggestion_lines(plan: Plan, by_instance: dict[str, list[Offer]]) -> list[Line]:
    out: list[Line] = []
    for text in plan.suggestions:
        skip: tuple[str, ...]
        if text.startswith("raise --budget"):
            skip = ("budget",)
        elif text.startswith("raise --max-hours"):
            skip = ("deadline",)
        elif text.startswith("accept more quality risk"):
            skip = ("quality",)
        else:
            continue
        inner = re.search(r"\((.*)\)$", text) if not text.startswith("accept") else None
        described = inner[1] if inner else text.split(": ", 1)[-1]
        described = re.sub(r"^fastest: ", "", described)
        m = _DESCRIBE.match(described)
        if m is None:
            continue
        config = parse_label(m["label"])
        offers = [o for o in by_instance.get(m["instance"], []) if o.spot == (m["kind"] == "spot")]
        if config is not None and offers:
            nodes = config.gpu_count // offers[0].gpu_count
            what = f"suggestion {text.split(' (')[0][:30]}"
            out.append((what, config, offers[0], nodes, skip, None))
    return out


def run(name: str, args: tuple[str, ...]) -> dict[str, Any]:
    ctx = recommend_command.make_context("recommend", [*args, "--out", "/tmp/ftplan-policy-grid"])
    options = {k: v for k, v in ctx.params.items() if k not in ("out", "fmt", "quiet")}
    request = build_request(RecommendOptions(**options))
    policy = QualityPolicy(options["quality"])
    t0 = time.perf_counter()
    plan = recommend(request, Measurer.calibrated())
    plan_s = time.perf_counter() - t0
    grid = Grid(request=request, policy=policy)
    points = grid.points()
    grid_best = choose(points, grid.budget, policy)
    chosen = plan.chosen
    regret: float | None = None
    if chosen is not None and grid_best is not None:
        mine = grid.judge(chosen.config, chosen.offer, chosen.nodes)
        if grid_best.usd > 0:
            regret = (chosen.cost.usd - grid_best.usd) / grid_best.usd
        elif mine is not None:
            regret = (
                math.inf
                if chosen.cost.usd > 0
                else (chosen.cost.hours - grid_best.hours) / max(grid_best.hours, 1e-9)
            )
    violations: list[str] = []
    unverified: list[str] = []
    for what, config, offer, nodes, skip, budget in lines(plan, request):
        judged = grid.judge(config, offer, nodes, budget=budget)
        if judged is None:
            violations.append(f"{what}: {config.label()} on {offer.key} does not run")
            continue
        broken = judged.broken(skip=skip)
        if broken:
            violations.append(f"{what}: {judged.label()} breaks {', '.join(broken)}")
        if what == "chosen" and judged.host_ram is None and judged.host_ram_needed:
            unverified.append(f"{what}: host RAM of {offer.key} unknown")
    false_infeasible = chosen is None and grid_best is not None
    return {
        "scenario": name,
        "args": " ".join(args),
        "ftplan": None
        if chosen is None
        else f"{chosen.config.label()} on {chosen.offer.key} x{chosen.nodes}",
        "ftplan_usd": None if chosen is None else chosen.cost.usd,
        "ftplan_hours": None if chosen is None else chosen.cost.hours,
        "grid": None if grid_best is None else grid_best.label(),
        "grid_usd": None if grid_best is None else grid_best.usd,
        "grid_hours": None if grid_best is None else grid_best.hours,
        "regret": regret,
        "violations": violations,
        "unverified_host_ram": unverified,
        "false_infeasible": false_infeasible,
        "grid_points": len(points),
        "grid_estimates": grid.estimates,
        "plan_s": round(plan_s, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", help="run only scenarios whose name has this")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    scenarios = [
        (n, a)
        for n, a in SCENARIOS
        if not args.only or any(s.lower() in n.lower() for s in args.only)
    ]
    rows = []
    failed = 0
    for name, flags in scenarios:
        row = run(name, flags)
        rows.append(row)
        regret = row["regret"]
        # A cheaper plan than the grid's is one the policy would not take (the grid holds
        # every point the search can price): a policy deviation, as bad as regret.
        bad = (
            bool(row["violations"])
            or row["false_infeasible"]
            or (regret is not None and abs(regret) > MAX_REGRET)
        )
        failed += bool(bad)
        shown = "n/a" if regret is None else f"{regret:+.2%}"
        print(
            f"{'FAIL' if bad else 'ok  '} {name:<36} regret {shown:>8}  violations "
            f"{len(row['violations'])}  {'FALSE NO-PLAN  ' if row['false_infeasible'] else ''}"
            f"grid {row['grid_points']:,} points, {row['grid_estimates']:,} estimates"
        )
        usd = row["ftplan_usd"]
        print(
            f"     ftplan: {row['ftplan']} (${usd or 0:,.2f}, {row['ftplan_hours'] or 0:,.1f} h)"
        )
        grid_usd, grid_hours = row["grid_usd"] or 0, row["grid_hours"] or 0
        print(f"     grid:   {row['grid']} (${grid_usd:,.2f}, {grid_hours:,.1f} h)")
        for v in row["violations"][:6]:
            print(f"       ! {v}")
        if len(row["violations"]) > 6:
            print(f"       ! ... {len(row['violations']) - 6} more")
        for u in row["unverified_host_ram"]:
            print(f"       ? {u}")
    regrets = [r["regret"] for r in rows if r["regret"] is not None]
    print(
        f"\n{len(rows)} scenarios: {failed} failed; regret max "
        f"{max(regrets, default=0):+.2%}, over 1% in {sum(r > MAX_REGRET for r in regrets)}, "
        f"policy deviations (cheaper than the policy allows) "
        f"{sum(r < -MAX_REGRET for r in regrets)}; "
        f"violating lines {sum(len(r['violations']) for r in rows)} in "
        f"{sum(bool(r['violations']) for r in rows)} scenarios; false no-plan "
        f"{sum(r['false_infeasible'] for r in rows)}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2, sort_keys=True, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
