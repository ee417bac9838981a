"""The search space: the values each dimension may take, the problem the search solves, and the
structural cells (method variant × hardware) it walks. Values only, no effects."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from catalog import GPU, InputError, ModelSpec, Offer
from planner._types import Budget
from planner.engine.cost import SpotAssumptions, StartupAssumptions
from profiler import TARGETS_ALL_LINEAR, TARGETS_ATTENTION, Method, OptimizerKind, Precision

# Default dataset when the user gives neither --tokens nor --dataset: 10M tokens per epoch, about
# Alpaca-sized (52k instruction samples of ~200 tokens), trained for 3 epochs as in the Stanford
# Alpaca recipe. Stated in every plan as an assumption.
DEFAULT_DATASET_TOKENS = 10_000_000
DEFAULT_EPOCHS = 3.0
DEFAULT_SEQ_LEN = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchSpace:
    """The values each dimension may take."""

    methods: tuple[Method, ...] = tuple(Method)
    lora_ranks: tuple[int, ...] = (8, 16, 32, 64, 128)
    lora_targets: tuple[str, ...] = (TARGETS_ALL_LINEAR, TARGETS_ATTENTION)
    full_precisions: tuple[Precision, ...] = (Precision.BF16_MIXED, Precision.BF16)
    optimizers: tuple[OptimizerKind, ...] = (OptimizerKind.ADAMW, OptimizerKind.ADAMW_8BIT)
    # Every micro-batch up to 64: the search doubles through them and bisects the last gap.
    micro_batches: tuple[int, ...] = tuple(range(1, 65))
    grad_checkpointing: tuple[bool, ...] = (False, True)
    chunked_loss: tuple[bool, ...] = (False, True)  # one GPU, no sharding (Evaluator)
    node_counts: tuple[int, ...] = (1, 2, 4, 8)
    offload: tuple[bool, ...] = (False, True)  # CPU offload strategies (Evaluator.shardings_for)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("the search space needs at least one method")
        if any(b <= 0 for b in self.micro_batches) or not self.micro_batches:
            raise ValueError(f"micro-batches must be > 0, got {self.micro_batches}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    """The method-level structural choice: method plus targets (LoRA) or precision (full).
    Strategies (DDP, FSDP, ZeRO-3, CPU offload) are searched inside each cell."""

    method: Method
    precision: Precision
    targets: str | None = None

    @property
    def key(self) -> str:
        return f"{self.method.value}/{self.targets or self.precision.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Hardware:
    """The hardware-level structural choice: GPU type × GPUs per node × nodes, and its offers."""

    gpu: GPU
    gpus_per_node: int
    nodes: int
    offers: tuple[Offer, ...]

    @property
    def key(self) -> str:
        return f"{self.gpu.name}|x{self.gpus_per_node}|n{self.nodes}"

    @property
    def gpu_count(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass(frozen=True, kw_only=True)
class RecommendRequest:
    """Everything a recommendation needs, as values: the model, the job and its limits, the
    offers, the search space, the assumptions and how to search (seed, trials, storage).

    Built from flags and the catalog by the CLI; the search and the plan read it as is. ``gpus``
    maps each offer's GPU name to its :class:`GPU`; ``catalog_as_of`` is the date range of the
    prices and ``catalog_source`` the offers file.
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
    price_references: tuple[Offer, ...] = ()
    """The catalog's offers (all providers, spot included) that prices are compared with;
    the request's own offers when empty."""
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

    def fingerprint(self) -> str:
        """Short hash of what the search depends on, used to name a stored optuna study."""
        text = repr(
            (
                self.spec.name,
                self.budget,
                self.seq_len,
                sorted(o.key for o in self.offers),
                self.space,
                self.spot,
                self.startup,
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]
