"""Planner records: the user's job and limits, a priced candidate, and ftplan's plan."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from catalog import Offer
from profiler import FitVerdict, Measurement, Method, TuningConfig
from profiler._types import MAX_EPOCHS, MAX_GRAD_ACCUM_STEPS, MAX_LEARNING_RATE


class Task(enum.StrEnum):
    """What the fine-tune teaches: instruction tuning, continued pre-training, or RL."""

    SFT = "sft"
    CPT = "cpt"
    RL = "rl"


class QualityPolicy(enum.StrEnum):
    """How much quality risk the user accepts in exchange for cost."""

    STRICT = "strict"
    BALANCED = "balanced"
    CHEAPEST = "cheapest"


class RiskLevel(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


RISK_ORDER = (RiskLevel.LOW, RiskLevel.MEDIUM, RiskLevel.HIGH)

#: Ranges of a budget: generous (a frontier-scale job), finite, and small enough that every
#: figure derived from them stays a plain float. ``ftplan recommend`` takes the same ranges, and
#: a plan edited past them is refused when it is read.
MAX_BUDGET_USD = 1e9
MAX_TOKENS = 10**15
MAX_HOURS = 1e6
MAX_EVALUATIONS = 100_000
"""Risk levels from the lowest to the highest."""

METHOD_NAMES = {m: m.traits.label[:1].upper() + m.traits.label[1:] for m in Method}
"""How plans and reports name each method, capitalised (``MethodTraits.label``)."""


class TokensSource(enum.StrEnum):
    """Where the dataset size came from: the user's flag, a counted file, or ftplan's default."""

    GIVEN = "given"
    COUNTED = "counted"
    ASSUMED = "assumed"


#: Eval passes over a run when an eval set is given and ``--evaluations`` is not: often enough to
#: see a trend and catch overfitting, few enough to cost little (a judgement, stated in the plan).
DEFAULT_EVALUATIONS = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """The job and its limits. ``dataset_tokens`` is per epoch; with ``--dataset`` the sample
    lengths' median, 95th percentile and longest (tokens) are kept too. ``eval_tokens`` is one
    pass over the eval set and ``evaluations`` how many passes the run makes (0: no eval)."""

    max_usd: float
    dataset_tokens: int
    epochs: float
    tokens_source: TokensSource
    max_hours: float | None = None
    task: Task = Task.SFT
    quality: QualityPolicy = QualityPolicy.BALANCED
    longest_sample_tokens: int | None = None
    p50_sample_tokens: int | None = None
    p95_sample_tokens: int | None = None
    eval_tokens: int = 0
    evaluations: int = 0

    def __post_init__(self) -> None:
        if self.eval_tokens < 0 or self.evaluations < 0:
            raise ValueError(
                f"eval_tokens and evaluations must be >= 0, got {self.eval_tokens} and "
                f"{self.evaluations}"
            )
        if (self.eval_tokens > 0) != (self.evaluations > 0):
            raise ValueError(
                "an eval set needs both its size and a number of evaluations, got "
                f"eval_tokens={self.eval_tokens} and evaluations={self.evaluations}"
            )
        if not 0 < self.max_usd <= MAX_BUDGET_USD:
            raise ValueError(
                f"budget must be > 0 and at most {MAX_BUDGET_USD:g} USD, got {self.max_usd:g}"
            )
        if not 0 < self.dataset_tokens <= MAX_TOKENS:
            raise ValueError(
                f"dataset_tokens must be between 1 and {MAX_TOKENS:g}, got {self.dataset_tokens:g}"
            )
        if not 0 < self.epochs <= MAX_EPOCHS:
            raise ValueError(f"epochs must be > 0 and at most {MAX_EPOCHS:g}, got {self.epochs:g}")
        if self.max_hours is not None and not 0 < self.max_hours <= MAX_HOURS:
            raise ValueError(
                f"max_hours must be > 0 and at most {MAX_HOURS:g}, got {self.max_hours:g}"
            )
        if self.eval_tokens > MAX_TOKENS or self.evaluations > MAX_EVALUATIONS:
            raise ValueError(
                f"eval_tokens and evaluations must be at most {MAX_TOKENS:g} and "
                f"{MAX_EVALUATIONS:,}, got {self.eval_tokens:g} and {self.evaluations:,}"
            )

    @property
    def total_tokens(self) -> float:
        return self.dataset_tokens * self.epochs

    @property
    def eval_total_tokens(self) -> int:
        """Tokens the run's eval passes read in all (forward only)."""
        return self.eval_tokens * self.evaluations


@dataclass(frozen=True, slots=True, kw_only=True)
class CostEstimate:
    """Wall-clock hours and USD of one candidate, with the terms that make them up.

    ``hours`` is the run's wall-clock time; ``billed_hours`` what the provider charges for it
    (whole billing increments, at least the minimum, e.g. 24 h for an EC2 Capacity Block), and
    ``idle_billed_hours`` = billed − run: paid for, not used. ``usd`` = billed hours × price.
    ``eval_hours`` is the time of the run's eval passes (part of ``hours``).
    """

    train_hours: float
    startup_hours: float
    spot_overhead_hours: float
    hours: float
    usd: float
    usd_per_hour: float
    checkpoint_interval_minutes: float | None = None
    billed_hours: float | None = None
    idle_billed_hours: float = 0.0
    eval_hours: float = 0.0

    @property
    def idle_usd(self) -> float:
        """USD paid for billed time the run does not use."""
        return self.idle_billed_hours * self.usd_per_hour


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityRisk:
    """One reason a candidate may learn less than full fine-tuning, with its source."""

    level: RiskLevel
    message: str
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A config on an offer, with its memory/speed figure, cost and quality risks.

    ``nodes`` × ``offer.gpu_count`` = ``config.gpu_count``. ``fit`` is the three-state memory
    verdict (:mod:`profiler.headroom`: the per-GPU peak reserved memory, with the error margin of
    its source, against torch's usable memory less the CUDA context); ``fits`` is True for
    ``fits`` and ``tight``. A candidate built with ``fits`` alone gets ``fits``/``no``.
    """

    config: TuningConfig
    offer: Offer
    nodes: int
    measurement: Measurement
    cost: CostEstimate
    fits: bool
    usable_memory_gib: float
    risks: tuple[QualityRisk, ...] = ()
    suggested_learning_rate: float | None = None
    within_budget: bool = True
    within_deadline: bool = True
    quality_accepted: bool = True
    grad_accum_steps: int = 1
    global_batch_tokens: int | None = None
    fit: FitVerdict | None = None

    def __post_init__(self) -> None:
        if not 0 < self.grad_accum_steps <= MAX_GRAD_ACCUM_STEPS:
            raise ValueError(
                f"grad_accum_steps must be between 1 and {MAX_GRAD_ACCUM_STEPS:,}, got "
                f"{self.grad_accum_steps:,}"
            )
        rate = self.suggested_learning_rate
        if rate is not None and not 0 < rate <= MAX_LEARNING_RATE:
            raise ValueError(
                f"suggested_learning_rate must be > 0 and at most {MAX_LEARNING_RATE:g}, got "
                f"{rate:g}"
            )
        if not 0 < self.nodes <= self.config.gpu_count:
            raise ValueError(
                f"nodes must be between 1 and the {self.config.gpu_count} GPUs, got {self.nodes:,}"
            )
        if self.fit is None:
            object.__setattr__(self, "fit", FitVerdict.FITS if self.fits else FitVerdict.NO)
        elif self.fit.fits != self.fits:
            raise ValueError(f"fit={self.fit.value} contradicts fits={self.fits}")

    @property
    def feasible(self) -> bool:
        return self.fits and self.within_budget and self.within_deadline and self.quality_accepted

    @property
    def risk_level(self) -> RiskLevel:
        return max((r.level for r in self.risks), key=RISK_ORDER.index, default=RiskLevel.LOW)


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodVerdict:
    """The best a method could reach and, in one sentence with numbers, why it wins or loses."""

    method: Method
    best: Candidate | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontierEntry:
    """What the budget buys with one method: the most training tokens (and epochs of the
    user's dataset) on its best offer, and that offer's training price per million tokens.
    ``offer`` is an :attr:`catalog.Offer.key`; None (and 0 tokens) when nothing fits."""

    method: Method
    max_tokens: int
    max_epochs: float
    offer: str | None
    usd_per_million_tokens: float | None
    config: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchInfo:
    """How the plan was found, for reproducibility."""

    sampler: str
    seed: int
    trials: int
    evaluated: int
    catalog_as_of: str
    catalog_source: str
    storage: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """ftplan's answer: the chosen candidate (None when nothing is feasible), the ranking, the
    per-method verdicts, the Pareto front (cost vs hours) and every assumption made."""

    model: str
    model_hf_id: str
    budget: Budget
    chosen: Candidate | None
    ranked: tuple[Candidate, ...]
    verdicts: tuple[MethodVerdict, ...]
    pareto: tuple[Candidate, ...]
    assumptions: tuple[str, ...]
    search: SearchInfo
    ftplan_version: str
    warnings: tuple[str, ...] = ()
    near_misses: tuple[Candidate, ...] = ()
    suggestions: tuple[str, ...] = ()
    budget_frontier: tuple[FrontierEntry, ...] = ()
    stronger_options: tuple[str, ...] = ()
    # A plan made from a config.json (not a catalog name) names the file by its resolved path
    # and SHA-256, so 'launch' from any folder finds that very file and refuses a changed one.
    model_config_path: str | None = None
    model_config_sha256: str | None = None
