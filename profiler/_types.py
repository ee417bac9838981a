"""Profiler records: what a training config is, and what it needs (memory, time), with provenance.

These types are shared by the analytic estimator, the GPU measurement code, the planner and the
runners, so that what ftplan prices is what it launches.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from catalog import GPU


class Method(enum.StrEnum):
    """Fine-tuning method (DESIGN.md, "The recipes"). What each one is lives in one table,
    :data:`METHOD_TRAITS` (:attr:`traits`)."""

    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"

    @property
    def traits(self) -> MethodTraits:
        """This method's row of :data:`METHOD_TRAITS`."""
        # Keyed by the plain value: hashing an Enum member runs Python code, a str's does not.
        return _TRAITS_BY_VALUE[self._value_]


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodTraits:
    """What ftplan knows of a fine-tuning method to price, run and explain it: a new method
    (DoRA, ...) is a new row of :data:`METHOD_TRAITS` and its setup in
    ``profiler.recipes.methods.SETUP_FUNCTIONS``; a method without either fails at import. The
    rest of ftplan reads the traits; only the QLoRA suggestions (``profiler.whatif``,
    ``planner.explain``) name a method, because they suggest that one.

    Attributes:
        label: How plans and reports name it.
        adapters: Trains LoRA adapters on a frozen base (else every weight is trained).
        quantized_base: The base's linears are NF4 (bitsandbytes), prepared for k-bit training.
        learning_rate: Starting AdamW learning rate: 2e-5 for full fine-tuning (7B-class SFT,
            e.g. Llama 2's, Touvron et al. 2023), ~10x that for LoRA and QLoRA (Schulman et al.,
            "LoRA Without Regret", 2025).
        hidden_activation_bytes: Bytes one decoder layer saves per token per hidden feature
            (its RMSNorms' fp32 upcasts and outputs, the residual stream) under bf16-mixed;
            fp32 residual streams (full bf16-mixed, QLoRA after k-bit preparation) save more.
        hidden_activation_bytes_bf16: The same with pure bf16 weights (full FT), else None.
        mlp_activation_bytes: Bytes per token per MLP feature (gate, up, SiLU output and their
            product), more for QLoRA, whose Linear4bit returns the fp32 input dtype.
        mlp_activation_bytes_sharded: The same under FSDP/ZeRO-3 (one dtype per flat
            parameter: a bf16 stream throughout).
        band_regime: The regime name of its estimates' error bands.
    """

    label: str
    adapters: bool
    quantized_base: bool
    learning_rate: float
    hidden_activation_bytes: float
    hidden_activation_bytes_bf16: float | None
    mlp_activation_bytes: float
    mlp_activation_bytes_sharded: float
    band_regime: str


# The activation coefficients were counted per saved tensor for HF Llama-style layers and
# reconciled with the 24 H100 reference runs of the first set (docs/estimator.md, "Memory").
METHOD_TRAITS: dict[Method, MethodTraits] = {
    Method.FULL: MethodTraits(
        label="full fine-tuning",
        adapters=False,
        quantized_base=False,
        learning_rate=2e-5,
        hidden_activation_bytes=25.0,
        hidden_activation_bytes_bf16=14.5,
        mlp_activation_bytes=8.0,
        mlp_activation_bytes_sharded=8.0,
        band_regime="full",
    ),
    Method.LORA: MethodTraits(
        label="LoRA",
        adapters=True,
        quantized_base=False,
        learning_rate=2e-4,
        hidden_activation_bytes=18.0,
        hidden_activation_bytes_bf16=None,
        mlp_activation_bytes=8.0,
        mlp_activation_bytes_sharded=8.0,
        band_regime="lora",
    ),
    Method.QLORA: MethodTraits(
        label="QLoRA",
        adapters=True,
        quantized_base=True,
        learning_rate=2e-4,
        hidden_activation_bytes=18.0,
        hidden_activation_bytes_bf16=None,
        mlp_activation_bytes=13.5,
        mlp_activation_bytes_sharded=8.0,
        band_regime="qlora",
    ),
}
if set(METHOD_TRAITS) != set(Method):  # a new Method without its row fails at import
    raise RuntimeError(f"METHOD_TRAITS lacks {sorted(set(Method) - set(METHOD_TRAITS))}")
_TRAITS_BY_VALUE = {method.value: traits for method, traits in METHOD_TRAITS.items()}


class Precision(enum.StrEnum):
    """Numeric recipe.

    ``BF16_MIXED``: fp32 master weights, bf16 autocast (full FT); for LoRA/QLoRA the frozen base
    is bf16 and compute runs under bf16 autocast. ``BF16``: pure bf16 weights and AdamW states
    (full FT only). ``FP16_MIXED``: fp16 autocast with a gradient scaler, for GPUs without bf16
    (T4, V100).
    """

    BF16_MIXED = "bf16-mixed"
    BF16 = "bf16"
    FP16_MIXED = "fp16-mixed"


def default_precision(gpu: GPU) -> Precision:
    """The precision a run uses on ``gpu`` unless told otherwise: bf16-mixed, or fp16-mixed on
    a GPU without bf16 (T4, V100)."""
    return Precision.BF16_MIXED if gpu.bf16_supported else Precision.FP16_MIXED


def precision_problem(gpu: GPU, precision: Precision) -> str | None:
    """Why ``precision`` cannot run on ``gpu``, e.g. ``T4 has no bf16``; ``None`` when it can.

    The rule: a GPU without bf16 runs fp16-mixed only (:func:`default_precision`); callers say
    what to use instead in their own terms (a flag, a field).
    """
    if precision is Precision.FP16_MIXED or gpu.bf16_supported:
        return None
    return f"{gpu.name} has no bf16"


class OptimizerKind(enum.StrEnum):
    """Optimizer of the trainable parameters. 8-bit variants come from bitsandbytes."""

    ADAMW = "adamw"
    ADAMW_8BIT = "adamw-8bit"
    PAGED_ADAMW_8BIT = "paged-adamw-8bit"


class Sharding(enum.StrEnum):
    """How work is split over GPUs (and the host): replicate, shard, or shard and offload.

    ``DDP`` replicates the model and all-reduces gradients. ``FSDP`` (PyTorch FSDP full shard)
    and ``ZERO3`` (DeepSpeed ZeRO stage 3) shard parameters, gradients and optimizer states
    over the GPUs and gather one unit (decoder layer) at a time. The ``*_OFFLOAD`` variants keep
    the sharded parameters and optimizer states in CPU memory and run the optimizer there; they
    also make sense on one GPU (what does not fit the GPU lives in host RAM).
    """

    NONE = "none"
    DDP = "ddp"
    FSDP = "fsdp"
    FSDP_OFFLOAD = "fsdp-offload"
    ZERO3 = "zero3"
    ZERO3_OFFLOAD = "zero3-offload"

    @classmethod
    def _missing_(cls, value: object) -> Sharding | None:
        # Plan files and stored profiles before the offload strategies named FSDP this way.
        return cls.FSDP if value == "fsdp-full-shard" else None

    @property
    def shards_state(self) -> bool:
        """Parameters, gradients and optimizer states are split over the GPUs (ZeRO-3)."""
        return self in _SHARDED

    @property
    def offloads(self) -> bool:
        """Sharded parameters and optimizer states live in host RAM (CPU offload)."""
        return self in (Sharding.FSDP_OFFLOAD, Sharding.ZERO3_OFFLOAD)

    @property
    def deepspeed(self) -> bool:
        """Runs under DeepSpeed (the optional ``deepspeed`` extra) rather than torch FSDP."""
        return self in (Sharding.ZERO3, Sharding.ZERO3_OFFLOAD)


_SHARDED = frozenset({"fsdp", "fsdp-offload", "zero3", "zero3-offload"})


def default_sharding(method: Method, gpu_count: int) -> Sharding:
    """The sharding where a user names none: none on one GPU; on several, DDP for LoRA/QLoRA
    (small trainable state, replicated) and FSDP for full fine-tuning (states sharded)."""
    if gpu_count <= 1:
        return Sharding.NONE
    return Sharding.DDP if method.traits.adapters else Sharding.FSDP


# Model types whose output is the LM head's logits, at most soft-capped (Gemma 2's
# final_logit_softcapping), so the chunked loss reproduces the model's own loss. Others (logit
# scales such as Cohere's or Granite's, routers' auxiliary losses) keep the model's own loss.
CHUNKED_LOSS_MODEL_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "gemma", "gemma2"}
)


def chunked_loss_problem(
    *,
    model_type: str | None = None,
    gpu_count: int = 1,
    sharding: Sharding = Sharding.NONE,
) -> str | None:
    """Why ftplan's recipe cannot run chunked cross-entropy here; ``None`` when it can. One line.

    The recipe calls the decoder and the head directly, past any DDP/FSDP/DeepSpeed wrapper (one
    GPU without sharding), and reproduces the model's own loss for
    :data:`CHUNKED_LOSS_MODEL_TYPES` only. ``model_type=None`` leaves the type unchecked.
    """
    if gpu_count > 1 or sharding is not Sharding.NONE:
        return (
            "chunked cross-entropy runs on one GPU without sharding in ftplan's recipe (it calls "
            f"the head past the {sharding.value} wrapper); got {gpu_count} GPU(s) with sharding "
            f"{sharding.value}"
        )
    if model_type is not None and model_type not in CHUNKED_LOSS_MODEL_TYPES:
        return (
            "ftplan's chunked cross-entropy reproduces the loss of "
            f"{', '.join(sorted(CHUNKED_LOSS_MODEL_TYPES))} models only, and this model is "
            f"{model_type!r}"
        )
    return None


def sharding_problem(
    sharding: Sharding,
    *,
    method: Method,
    gpu_count: int,
    optimizer: OptimizerKind,
    num_experts: int = 1,
) -> str | None:
    """Why a sharding cannot run this method on ``gpu_count`` GPUs, with what to use instead;
    ``None`` when it can. One line, for errors (``ftplan estimate`` exits 2 on it)."""
    if gpu_count == 1 and sharding in (Sharding.DDP, Sharding.FSDP, Sharding.ZERO3):
        return (
            f"sharding {sharding.value} needs several GPUs (one GPU has nothing to replicate or "
            f"shard): use none, or fsdp-offload / zero3-offload to offload to CPU memory"
        )
    if gpu_count > 1 and sharding is Sharding.NONE:
        return (
            f"{gpu_count} GPUs need a sharding: use ddp (replicas), fsdp or zero3 (sharded), "
            f"or fsdp-offload / zero3-offload (sharded, offloaded to CPU memory)"
        )
    if sharding.offloads and optimizer is not OptimizerKind.ADAMW:
        return (
            f"sharding {sharding.value} runs the optimizer on the CPU, where bitsandbytes' "
            f"{optimizer.value} cannot run: use optimizer adamw"
        )
    if sharding is Sharding.ZERO3_OFFLOAD and method.traits.quantized_base:
        return (
            "zero3-offload cannot offload bitsandbytes 4-bit weights (DeepSpeed moves 16-bit "
            "parameters only): use fsdp-offload for QLoRA with CPU offload, or zero3"
        )
    if method.traits.quantized_base and num_experts > 1 and sharding.shards_state:
        return (
            f"QLoRA keeps MoE experts as uint8 4-bit parameters (bitsandbytes parametrization), "
            f"which {sharding.value} cannot shard next to bf16 ones: use none on one GPU or ddp"
        )
    return None


class Status(enum.StrEnum):
    """Outcome of one measured config. An OOM is data, not a crash."""

    OK = "ok"
    OOM = "oom"
    ERROR = "error"


class Source(enum.StrEnum):
    """Where a figure came from: a run at full depth, a 2/4-layer fit, or the analytic formula."""

    MEASURED = "measured"
    EXTRAPOLATED = "extrapolated"
    ESTIMATED = "estimated"


#: Upper bounds of a run's shape, far beyond any real run. The CLI takes the same ranges, and
#: a config or plan edited past them is refused where it is built (a seq_len of 10**29 is a
#: typo, not a config, and would overflow the float arithmetic it goes into).
MAX_SEQ_LEN = 1_048_576  # tokens: 1M, beyond every catalog model's context
MAX_MICRO_BATCH = 65_536
MAX_LORA_RANK = 65_536
MAX_LORA_ALPHA = 1_048_576
MAX_GPU_COUNT = 1_048_576  # all nodes together
MAX_GRAD_ACCUM_STEPS = 1_048_576
MAX_LEARNING_RATE = 1.0  # AdamW on these models diverges far below it
MAX_EPOCHS = 1000.0

# Named LoRA target presets; anything else is an explicit comma-separated module list.
TARGETS_ALL_LINEAR = "all-linear"
TARGETS_ATTENTION = "attention"
# LoRA defaults where a user names none (DESIGN.md: r=16, alpha=32, targets all-linear). Alpha's
# default follows the rank, 2 x rank: :func:`default_lora_alpha`.
DEFAULT_LORA_RANK = 16
DEFAULT_LORA_TARGETS = TARGETS_ALL_LINEAR

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR_MODULES = ATTENTION_MODULES + MLP_MODULES


def default_lora_alpha(rank: int) -> int:
    """LoRA alpha where none is given: 2 × rank (32 at the default rank 16)."""
    return 2 * rank


def adapted_modules(targets: str, *, num_experts: int = 1) -> tuple[str, ...]:
    """Decoder-layer linears that actually get LoRA adapters for a target spec.

    Mixture-of-experts models (transformers 5) hold their experts as fused 3-D parameters
    (``experts.gate_up_proj``, ``experts.down_proj``), adapted through PEFT's
    ``target_parameters``: gate and up share one parameter, so adapting either adapts both
    (:func:`expert_parameters`). The recipes, the estimator and the planner all count adapters
    through this one function.

    Raises:
        ValueError: As :func:`resolve_targets`.
    """
    names = resolve_targets(targets)
    if num_experts > 1 and ("gate_proj" in names or "up_proj" in names):
        names = tuple(n for n in ALL_LINEAR_MODULES if n in names or n in ("gate_proj", "up_proj"))
    return names


def expert_parameters(targets: str) -> tuple[str, ...]:
    """Fused MoE expert parameters (transformers 5 names) a LoRA target spec adapts.

    Raises:
        ValueError: As :func:`resolve_targets`.
    """
    names = resolve_targets(targets)
    out: tuple[str, ...] = ()
    if "gate_proj" in names or "up_proj" in names:
        out += ("gate_up_proj",)
    if "down_proj" in names:
        out += ("down_proj",)
    return out


def resolve_targets(targets: str) -> tuple[str, ...]:
    """Module names a LoRA target spec covers, in a stable order.

    Args:
        targets: ``all-linear``, ``attention`` or a comma-separated list such as ``q_proj,v_proj``.

    Raises:
        ValueError: If the list is empty or names a module that is not a decoder-layer linear.
    """
    spec = targets.strip().lower()
    if spec == TARGETS_ALL_LINEAR:
        return ALL_LINEAR_MODULES
    if spec == TARGETS_ATTENTION:
        return ATTENTION_MODULES
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_LINEAR_MODULES]
    if not names or unknown:
        raise ValueError(
            f"LoRA targets {targets!r} name unknown modules {unknown}: use 'all-linear', "
            f"'attention' or a comma-separated list of {', '.join(ALL_LINEAR_MODULES)}"
        )
    return tuple(n for n in ALL_LINEAR_MODULES if n in names)


@dataclass(frozen=True, slots=True, kw_only=True)
class TuningConfig:
    """One training configuration, per GPU: what the profiler measures and the runners launch.

    ``micro_batch_size`` and ``seq_len`` (tokens) are per GPU per step; ``gpu_count`` is the total
    number of GPUs (over all nodes). ``chunked_loss`` computes the LM head and cross-entropy a
    chunk of tokens at a time, recomputed in backward, so the full logits chain is never held.
    """

    method: Method
    precision: Precision = Precision.BF16_MIXED
    lora_rank: int | None = None
    lora_alpha: int | None = None
    lora_targets: str | None = None
    micro_batch_size: int = 1
    seq_len: int = 2048
    grad_checkpointing: bool = False
    optimizer: OptimizerKind = OptimizerKind.ADAMW
    gpu_count: int = 1
    sharding: Sharding = Sharding.NONE
    chunked_loss: bool = False

    def __post_init__(self) -> None:
        if not self.method.traits.adapters:
            if self.lora_rank is not None or self.lora_targets is not None:
                raise ValueError("lora_rank/lora_targets are meaningless for method=full")
        else:
            if self.lora_rank is None or self.lora_rank <= 0:
                raise ValueError(
                    f"method={self.method.value} needs lora_rank > 0, got {self.lora_rank}"
                )
            if self.lora_targets is None:
                raise ValueError(f"method={self.method.value} needs lora_targets")
            resolve_targets(self.lora_targets)
            if self.precision is Precision.BF16:
                raise ValueError(
                    "precision=bf16 (pure bf16 weights and states) applies to full FT only; "
                    "LoRA/QLoRA use bf16-mixed or fp16-mixed"
                )
        for name, most in (
            ("micro_batch_size", MAX_MICRO_BATCH),
            ("seq_len", MAX_SEQ_LEN),
            ("gpu_count", MAX_GPU_COUNT),
            ("lora_rank", MAX_LORA_RANK),
            ("lora_alpha", MAX_LORA_ALPHA),
        ):
            value = getattr(self, name)
            if value is not None and not 0 < value <= most:
                raise ValueError(f"{name} must be between 1 and {most:,}, got {value:,}")
        problem = sharding_problem(
            self.sharding, method=self.method, gpu_count=self.gpu_count, optimizer=self.optimizer
        )
        if problem is not None:
            raise ValueError(problem)

    @property
    def effective_lora_alpha(self) -> int | None:
        """LoRA alpha, defaulting to 2 × rank (:func:`default_lora_alpha`)."""
        if self.lora_rank is None:
            return None
        if self.lora_alpha is not None:
            return self.lora_alpha
        return default_lora_alpha(self.lora_rank)

    @property
    def tokens_per_step(self) -> int:
        """Tokens one GPU processes per optimizer micro-step."""
        return self.micro_batch_size * self.seq_len

    def label(self) -> str:
        """Short description, e.g. ``lora r16 all-linear bf16-mixed b4 s1024 ckpt``."""
        parts = [self.method.value]
        if self.method.traits.adapters:
            parts += [f"r{self.lora_rank}", str(self.lora_targets)]
        parts += [self.precision.value, f"b{self.micro_batch_size}", f"s{self.seq_len}"]
        if self.grad_checkpointing:
            parts.append("ckpt")
        if self.optimizer is not OptimizerKind.ADAMW:
            parts.append(self.optimizer.value)
        if self.gpu_count > 1 or self.sharding is not Sharding.NONE:
            parts.append(f"{self.gpu_count}gpu-{self.sharding.value}")
        if self.chunked_loss:
            parts.append("chunked-ce")
        return " ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Provenance:
    """Where and when a figure was produced.

    ``versions`` holds (package, version) pairs, e.g. ``(("torch", "2.11.0"), ...)``.
    """

    device: str
    date: str
    versions: tuple[tuple[str, str], ...] = ()
    method: str = ""
    notes: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryBreakdown:
    """Peak memory by component, GiB per GPU. Sums to the estimator's peak allocated memory."""

    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    logits_gib: float
    overhead_gib: float

    @property
    def total_gib(self) -> float:
        return (
            self.weights_gib
            + self.gradients_gib
            + self.optimizer_gib
            + self.activations_gib
            + self.logits_gib
            + self.overhead_gib
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalEstimate:
    """An eval pass of one config per GPU: the training runner's forward over the eval set under
    ``torch.no_grad`` at the training micro-batch, after an optimizer step (no gradients held).

    ``peak_allocated_gib`` is the eval phase's peak; ``step_time_s`` one micro-batch's forward;
    ``train_step_time_s`` the same estimator's training step of the config (before
    communication), so ``step_time_s / train_step_time_s`` scales any step time (measured or
    estimated) to its eval pass.
    """

    peak_allocated_gib: float
    step_time_s: float
    train_step_time_s: float

    @property
    def step_fraction(self) -> float:
        """Eval micro-batch time over training step time (0 < f < 1)."""
        return self.step_time_s / self.train_step_time_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """Memory and speed of one (model, config, GPU), measured, extrapolated or estimated.

    Memory is per GPU in GiB (``torch.cuda.max_memory_allocated``/``max_memory_reserved`` when
    measured); ``step_time_s`` is one optimizer step of ``config.micro_batch_size`` ×
    ``config.seq_len`` tokens per GPU; ``tokens_per_s`` is over all GPUs. ``phase_peaks_gib`` holds
    the peak of each phase (e.g. ``forward_backward``, ``optimizer_step``) where known. ``bands``
    holds ``(quantity, low, high)`` for estimates: the range the cross-validated residuals of the
    estimate's regime put the true value in (e.g. ``("step_time_s", 0.41, 0.52)``).
    ``host_ram_gib`` is the CPU memory one node needs for the run (offloaded parameters and
    optimizer states, the processes); ``None`` where not estimated.
    """

    model: str
    gpu: str
    config: TuningConfig
    status: Status
    source: Source
    provenance: Provenance
    peak_allocated_gib: float | None = None
    host_ram_gib: float | None = None
    peak_reserved_gib: float | None = None
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    breakdown: MemoryBreakdown | None = None
    phase_peaks_gib: tuple[tuple[str, float], ...] = ()
    bands: tuple[tuple[str, float, float], ...] = ()
    error: str = ""
    fit: tuple[tuple[str, float], ...] = field(default=())

    @property
    def peak_memory_gib(self) -> float | None:
        """The per-GPU peak compared with a GPU's memory, GiB: peak reserved (what the caching
        allocator held, which is what runs out) when known, else peak allocated; None when
        neither is (a CPU run). A reserved figure of 0 counts as unknown, as no run reserves
        nothing. Fit checks that need a number for every figure use
        :func:`profiler.headroom.peak_for_fit_gib`."""
        return self.peak_reserved_gib or self.peak_allocated_gib

    def band(self, quantity: str) -> tuple[float, float] | None:
        """``(low, high)`` of a quantity (e.g. ``step_time_s``), or None without a band."""
        for name, low, high in self.bands:
            if name == quantity:
                return low, high
        return None

    def __post_init__(self) -> None:
        if self.status is Status.OK:
            # Memory may be absent (a CPU run claims no GPU memory); time may not.
            missing = [n for n in ("step_time_s", "tokens_per_s") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"an ok {self.source.value} figure needs {missing}")
        for quantity, low, high in self.bands:
            if not low <= high:
                raise ValueError(f"band of {quantity} must have low <= high, got {low} > {high}")
        if self.step_time_s is not None and self.step_time_s <= 0:
            raise ValueError(f"step_time_s must be > 0, got {self.step_time_s}")
