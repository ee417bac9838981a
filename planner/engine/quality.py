"""Quality risk: why a candidate may learn less than full fine-tuning, each with its source. Pure.

The rules follow published results, not measurements of ftplan's own:

* Schulman et al., "LoRA Without Regret", Thinking Machines Lab (2025): LoRA on all layers
  (incl. MLP) matches full FT on small/medium instruction data; attention-only LoRA
  underperforms; LoRA underperforms once the data exceeds adapter capacity (~2 bits per
  trainable parameter); LoRA is less tolerant of large batches; its best learning rate is ~10×
  full FT's; RL needs little capacity (even rank 1 matches full FT).
* Biderman et al., "LoRA Learns Less and Forgets Less" (2024, arXiv:2405.09673): LoRA trails
  full FT on continued pre-training of large code/math corpora.
* Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs" (2023, arXiv:2305.14314):
  NF4 QLoRA reaches 16-bit LoRA quality.
* Zamirai et al., "Revisiting BFloat16 Training" (2020, arXiv:2010.06192): pure bf16 weight
  updates with nearest rounding lose small updates (an update under half the spacing of bf16
  numbers near the weight rounds away); Kahan summation or stochastic rounding recover them.
* Micikevicius et al., "Mixed Precision Training" (2018, arXiv:1710.03740): fp16 training needs
  loss scaling so small gradients do not underflow; fp16's range (max 65504) still bounds the
  forward pass.
"""

from __future__ import annotations

import math

from catalog import ModelSpec
from planner._types import RISK_ORDER, Budget, QualityPolicy, QualityRisk, RiskLevel, Task
from profiler import DEFAULT_LORA_TARGETS, Precision, TuningConfig, adapted_modules
from profiler.memory import trainable_params
from profiler.recipes import DEFAULT_LEARNING_RATE

SCHULMAN_2025 = 'Schulman et al., "LoRA Without Regret", Thinking Machines Lab, 2025'
BIDERMAN_2024 = 'Biderman et al., "LoRA Learns Less and Forgets Less", 2024 (arXiv:2405.09673)'
DETTMERS_2023 = (
    'Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", 2023 (arXiv:2305.14314)'
)
ZAMIRAI_2020 = 'Zamirai et al., "Revisiting BFloat16 Training", 2020 (arXiv:2010.06192)'
MICIKEVICIUS_2018 = (
    'Micikevicius et al., "Mixed Precision Training", 2018 (arXiv:1710.03740); PyTorch '
    "torch.amp.GradScaler documentation"
)

# Schulman et al. (2025): LoRA stores ~2 bits of information per trainable parameter.
LORA_BITS_PER_PARAM = 2.0
# ftplan's proxy for the information a dataset asks the adapter to absorb, bits per unique
# training token. An upper-bound style assumption: SFT losses fall by well under 1 bit per token
# and continued pre-training text carries more novelty, so CPT counts 1 bit and SFT 0.5 bit.
BITS_PER_TOKEN = {Task.SFT: 0.5, Task.CPT: 1.0, Task.RL: 0.0}
# Data over this fraction of capacity is a medium risk, over 1× a high risk.
CAPACITY_MEDIUM_FRACTION = 0.5
# Continued pre-training: Biderman et al. (2024) trained 0.25B-20B tokens of code/math and saw
# LoRA's gap to full FT widen as the token count grew (their figures 1-2), largest from ~1B tokens
# on. Below CPT_MEDIUM_RISK_TOKENS ftplan calls the gap small (low), up to CPT_HIGH_RISK_TOKENS
# medium, beyond that high. Tokens seen count (dataset × epochs), as in their plots.
CPT_MEDIUM_RISK_TOKENS = 100_000_000
CPT_HIGH_RISK_TOKENS = 1_000_000_000
# Pure bf16 weights (Zamirai et al. 2020): bf16 keeps 8 significant bits, so numbers in
# [2^e, 2^(e+1)) are 2^(e-7) apart and a weight update under half that spacing rounds to nothing.
# AdamW moves each weight by about the learning rate per step. The weight scale is ftplan's
# assumption: 0.02, the initializer_range of the Llama, Mistral and Qwen configs.
BF16_FRACTION_BITS = 7
TYPICAL_WEIGHT_MAGNITUDE = 0.02
# Updates lost at every step add up with the steps taken: from this many training tokens on (a
# continued pre-training run rather than an instruction set), losing most of them is a high risk.
BF16_LONG_RUN_TOKENS = 100_000_000
# Schulman et al. (2025) see LoRA fall behind full FT as the batch grows; ftplan flags global
# batches above this many tokens (≈ 512 sequences of 2048 tokens).
LORA_LARGE_BATCH_TOKENS = 1_048_576

# Gemma 2 and 3 put RMSNorms after attention and the MLP too, scale by (1 + weight) and were
# trained in bf16: in fp16 their activations overflow 65504 to inf and the loss turns NaN, which
# loss scaling (it scales gradients, not activations) does not prevent.
GEMMA_FP16_MODEL_TYPES = ("gemma2", "gemma3", "gemma3_text")
GEMMA_FP16_SOURCE = (
    'huggingface/transformers#36822 ("Gemma 3 is broken with fp16") and #39972 (where its '
    'activations overflow); Gemma Team, "Gemma 2", 2024 (arXiv:2408.00118) for the same '
    "sandwich norms"
)

# --quality balanced accepts medium quality risk only when it is more than this much better
# (cheaper, or buying more tokens) than the best low-risk option (a judgement call, stated in
# every plan that it affects).
BALANCED_RISK_PREMIUM = 0.20

ACCEPTED_LEVELS: dict[QualityPolicy, tuple[RiskLevel, ...]] = {
    QualityPolicy.STRICT: (RiskLevel.LOW,),
    QualityPolicy.BALANCED: (RiskLevel.LOW, RiskLevel.MEDIUM),
    QualityPolicy.CHEAPEST: (RiskLevel.LOW, RiskLevel.MEDIUM, RiskLevel.HIGH),
}


def max_level(risks: tuple[QualityRisk, ...]) -> RiskLevel:
    """The highest risk level among ``risks`` (LOW when there are none)."""
    return max((r.level for r in risks), key=RISK_ORDER.index, default=RiskLevel.LOW)


def accepted(risks: tuple[QualityRisk, ...], policy: QualityPolicy) -> bool:
    """Whether ``--quality policy`` accepts a candidate with these risks."""
    return max_level(risks) in ACCEPTED_LEVELS[policy]


def suggested_learning_rate(config: TuningConfig) -> float:
    """A starting AdamW learning rate (``profiler.recipes.DEFAULT_LEARNING_RATE``)."""
    return DEFAULT_LEARNING_RATE[config.method]


def capacity_ratio(spec: ModelSpec, config: TuningConfig, budget: Budget) -> float:
    """Bits the data asks for ÷ bits the adapters hold (0 for full FT and RL)."""
    if not config.method.traits.adapters:
        return 0.0
    capacity_bits = LORA_BITS_PER_PARAM * trainable_params(spec, config)
    return budget.dataset_tokens * BITS_PER_TOKEN[budget.task] / capacity_bits


def assess_quality(
    spec: ModelSpec,
    config: TuningConfig,
    budget: Budget,
    *,
    global_batch_tokens: int | None = None,
) -> tuple[QualityRisk, ...]:
    """Quality risks of one candidate, highest level first, each with its source.

    Args:
        spec: The model (for the adapter's parameter count).
        config: The candidate's config.
        budget: Dataset tokens per epoch and the task (sft, cpt, rl).
        global_batch_tokens: Tokens per optimizer step over all GPUs and accumulation steps.

    Returns:
        The risks; an empty tuple means nothing is known to cost quality.
    """
    risks: list[QualityRisk] = []
    if config.precision is Precision.FP16_MIXED:
        risks.append(_fp16_risk())
        if spec.model_type in GEMMA_FP16_MODEL_TYPES:
            risks.append(
                QualityRisk(
                    level=RiskLevel.MEDIUM,
                    message=f"{spec.model_type} in fp16: trained in bf16, its activations "
                    "exceed fp16's 65504 after the extra norms, so the loss can turn inf/NaN; "
                    "a GPU with bf16 avoids it",
                    source=GEMMA_FP16_SOURCE,
                )
            )
    if not config.method.traits.adapters:
        if config.precision is Precision.BF16:
            risks.append(pure_bf16_risk(config, budget))
        return tuple(sorted(risks, key=lambda r: -RISK_ORDER.index(r.level)))
    risks.extend(_lora_risks(spec, config, budget, global_batch_tokens))
    if config.method.traits.quantized_base:
        risks.append(
            QualityRisk(
                level=RiskLevel.LOW,
                message="NF4 QLoRA reaches 16-bit LoRA quality",
                source=DETTMERS_2023,
            )
        )
    return tuple(sorted(risks, key=lambda r: -RISK_ORDER.index(r.level)))


def bf16_spacing(magnitude: float) -> float:
    """Distance between neighbouring bf16 numbers near ``magnitude`` (> 0)."""
    return 2.0 ** (math.floor(math.log2(magnitude)) - BF16_FRACTION_BITS)


def pure_bf16_risk(config: TuningConfig, budget: Budget) -> QualityRisk:
    """Full fine-tuning with pure bf16 weights: updates below half a bf16 step round away.

    Medium in any case (nearest rounding loses the low bits of every update); high when the
    suggested learning rate is under half the bf16 spacing at |w| ≈ 0.02 (most updates vanish)
    and the run trains :data:`BF16_LONG_RUN_TOKENS` or more. ftplan's recipes offer neither
    Kahan summation nor stochastic rounding, so the alternative named is bf16-mixed.
    """
    lr = suggested_learning_rate(config)
    spacing = bf16_spacing(TYPICAL_WEIGHT_MAGNITUDE)
    lost = lr < spacing / 2
    tokens = budget.total_tokens
    level = RiskLevel.HIGH if lost and tokens >= BF16_LONG_RUN_TOKENS else RiskLevel.MEDIUM
    what = (
        "is under half of that and rounds to nothing" if lost else "loses its low bits to rounding"
    )
    return QualityRisk(
        level=level,
        message=f"pure bf16 weights: near |w| ≈ {TYPICAL_WEIGHT_MAGNITUDE:g} bf16 numbers are "
        f"{spacing:.2g} apart, so an AdamW update of about the learning rate ({lr:.0e}) {what}; "
        f"over {tokens / 1e6:,.0f}M tokens the lost updates add up. Kahan summation or "
        "stochastic rounding would keep them, but ftplan's recipes offer neither: use "
        "bf16-mixed (fp32 master weights)",
        source=ZAMIRAI_2020,
    )


def _lora_risks(
    spec: ModelSpec, config: TuningConfig, budget: Budget, global_batch_tokens: int | None
) -> list[QualityRisk]:
    risks: list[QualityRisk] = []
    modules = adapted_modules(
        config.lora_targets or DEFAULT_LORA_TARGETS, num_experts=spec.num_experts
    )
    if budget.task is Task.RL:
        risks.append(
            QualityRisk(
                level=RiskLevel.LOW,
                message=f"RL needs little capacity: LoRA r{config.lora_rank} matches full FT "
                "(even rank 1 did)",
                source=SCHULMAN_2025,
            )
        )
    else:
        ratio = capacity_ratio(spec, config, budget)
        params_m = trainable_params(spec, config) / 1e6
        text = (
            f"{budget.dataset_tokens / 1e6:,.0f}M tokens × "
            f"{BITS_PER_TOKEN[budget.task]:g} bit ask for {ratio:.0%} of what r"
            f"{config.lora_rank} adapters hold ({params_m:,.1f}M parameters × ~2 bits)"
        )
        if ratio > 1.0:
            risks.append(
                QualityRisk(
                    level=RiskLevel.HIGH,
                    source=SCHULMAN_2025,
                    message=text + "; LoRA will learn less than full FT: "
                    "raise the rank or use full FT",
                )
            )
        elif ratio > CAPACITY_MEDIUM_FRACTION:
            risks.append(
                QualityRisk(
                    level=RiskLevel.MEDIUM,
                    source=SCHULMAN_2025,
                    message=text + "; close to capacity: a higher rank is safer",
                )
            )
    if not any(m in modules for m in ("gate_proj", "up_proj", "down_proj")):
        mlp = "the MoE experts (the MLP layers)" if spec.num_experts > 1 else "the MLP layers"
        risks.append(
            QualityRisk(
                level=RiskLevel.MEDIUM,
                message=f"adapters without {mlp} underperform even at matched parameter "
                "count (attention-only LoRA): target all-linear",
                source=SCHULMAN_2025,
            )
        )
    if budget.task is Task.CPT:
        risks.append(_cpt_risk(budget))
    if global_batch_tokens is not None and global_batch_tokens > LORA_LARGE_BATCH_TOKENS:
        risks.append(
            QualityRisk(
                level=RiskLevel.MEDIUM,
                message=f"global batch of {global_batch_tokens:,} tokens: LoRA falls behind full "
                "FT at large batch sizes; use fewer GPUs or a smaller micro-batch",
                source=SCHULMAN_2025,
            )
        )
    return risks


def _cpt_risk(budget: Budget) -> QualityRisk:
    """LoRA on continued pre-training: the gap to full FT grows with the tokens trained."""
    tokens = budget.total_tokens
    if tokens >= CPT_HIGH_RISK_TOKENS:
        level = RiskLevel.HIGH
    elif tokens >= CPT_MEDIUM_RISK_TOKENS:
        level = RiskLevel.MEDIUM
    else:
        level = RiskLevel.LOW
    return QualityRisk(
        level=level,
        message=f"continued pre-training on {tokens / 1e6:,.0f}M tokens: LoRA learns less than "
        "full FT, and the gap grows with the tokens trained (it also forgets less of the base "
        "model's skills); full FT is preferred when affordable",
        source=BIDERMAN_2024,
    )


def _fp16_risk() -> QualityRisk:
    """fp16 autocast (GPUs without bf16): what the loss scaler fixes and what it does not."""
    return QualityRisk(
        level=RiskLevel.LOW,
        message="fp16 autocast with a dynamic loss scaler: the loss is multiplied (from 2^16) "
        "so small gradients do not underflow, a step whose gradients overflow to inf/NaN is "
        "skipped and the scale halved; what remains: forward activations or logits above "
        "fp16's 65504 still overflow (models pre-trained in bf16 can exceed it), and frequent "
        "skipped steps slow training: watch the scale and the loss for NaN",
        source=MICIKEVICIUS_2018,
    )
