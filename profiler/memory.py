"""Memory model: the bytes one training config holds per GPU, tensor by tensor, and what it
loads. Pure Python (no torch, no numpy), cached per model.

Weights, gradients, AdamW states and temporaries per recipe (:func:`model_state_bytes`), where
they live under each sharding strategy (:func:`profiler.sharding.place`), the activations each
decoder layer saves (Korthikanti et al. 2022 accounting adapted to Llama-style layers, per
adapted linear, eager attention's scores, MoE expert stacks), the logits/cross-entropy chain and
the allocator's overhead: :func:`memory_terms`; the loading peak: :func:`load_peak_gib`. The
estimator (:mod:`profiler.estimator`) turns these into the peak of each phase and applies the
calibration's scales; docs/estimator.md derives each term.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from catalog import GIB
from profiler._types import (
    ATTENTION_MODULES,
    OptimizerKind,
    Precision,
    TuningConfig,
    adapted_modules,
    expert_parameters,
)
from profiler.sharding import (
    StateBytes,
    loads_on_rank0,
    loads_whole_model_per_gpu,
    place,
    shard_count,
)

if TYPE_CHECKING:
    from catalog import GPU, ModelSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryTerms:
    """Memory components of one config per GPU, GiB unless named otherwise, before the
    calibration's scales.

    ``activations_gib`` and ``logits_gib`` are at the forward/backward peak and ``dynamic_gib``
    is their sum (the part a calibration scales); ``fb_static_gib`` is what is resident during
    forward/backward besides them (weights, autocast cache, optimizer states, overhead), of which
    ``forward_only_cache_gib`` is gone before backward builds the gradients (autocast's cache
    under checkpointing); ``optimizer_step_gib`` is the optimizer-step phase's peak.
    ``loss_traffic_gib`` is what the loss chain moves in a step (for the time model),
    ``layer_bytes_per_token`` what one decoder layer saves per token (bytes),
    ``host_bytes_per_gpu`` the state offloaded to host memory (bytes).
    """

    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    autocast_cache_gib: float
    optimizer_temp_gib: float
    activations_gib: float
    logits_gib: float
    loss_traffic_gib: float
    overhead_gib: float
    dynamic_gib: float
    fb_static_gib: float
    forward_only_cache_gib: float
    optimizer_step_gib: float
    layer_bytes_per_token: float
    trainable_params: int
    host_bytes_per_gpu: float


# NF4 with double quantization: 4 bits per weight + one 8-bit absmax per 64-weight block + one
# fp32 second-level absmax per 256 blocks (Dettmers et al. 2023, QLoRA, section 3):
# 0.5 + 1/64 + 4/(64*256) bytes per parameter.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)


# Tokens per chunk of the chunked cross-entropy (profiler.recipes, TuningConfig.chunked_loss): the
# LM head and the loss run over this many tokens at a time and are recomputed in backward, so
# only one chunk's logits chain is alive (Liger's fused linear cross-entropy works the same way).
CHUNKED_LOSS_TOKENS = 1024


# Bytes per token per vocabulary entry at the cross-entropy peak: bf16 logits (2, kept by the
# model output) + fp32 log-softmax output saved for backward (4) + its fp32 gradient (4) + the
# bf16 gradient cast back for the lm_head (2). Matches the H100 reference runs with gradient
# checkpointing (where this chain dominates) within 2%.
LOGITS_BYTES_PER_TOKEN_VOCAB = 12.0


# Activation bytes saved per token per decoder layer, as coefficients on hidden (h), query width
# (q = heads*head_dim), key/value width (kv) and MLP width (i), for bf16 activations. Counted per
# saved tensor for HF Llama-style layers with PyTorch SDPA (no s^2 term): q, k, v and the
# attention output saved by SDPA and the o_proj input copy (6q + 4kv); the h and i coefficients
# depend on the method and live in its traits (profiler._types.METHOD_TRAITS: RMSNorm's fp32
# upcast and bf16 output, larger with an fp32 residual stream; the gated MLP's gate, up, SiLU
# output and product, more for QLoRA, whose Linear4bit returns the fp32 input dtype).
# Reconciled with the 24 H100 reference runs (docs/estimator.md).
_Q_COEF = 6.0
_KV_COEF = 4.0


# Eager attention (the model types transformers runs without SDPA, EAGER_ATTENTION_MODEL_TYPES)
# materializes the b·H·s² attention scores of a layer. Saved for backward, per score: the
# soft-cap's tanh output (bf16), the softmax output (fp32) and its bf16 cast that the value matmul
# keeps: 8 bytes, counted with autograd's saved-tensor hooks on a 2-layer Gemma 2
# (tests/profiler/test_eager_attention.py). The backward of a layer holds about 6 more at once
# (the bf16 score gradient and its fp32 upcast for the softmax backward), and the two 4-D masks
# (causal and sliding window, bf16) take 4 bytes per b·s² while the step runs. Traffic per score
# in a forward: the scores written, scaled, soft-capped (divide, tanh, multiply), masked,
# soft-maxed to fp32, cast back and read by the value matmul, about 38 bytes; in the backward
# the same chain's gradients, about 50 (the fp32 softmax backward reads two fp32 tensors and
# writes one); a checkpointed re-run pays the forward's again. At peak bandwidth (not fitted: no
# reference run uses eager attention). The matmuls compute every score (4·b·s²·q FLOPs a layer
# forward, no causal skipping).
# Assumptions until measured on a GPU.
EAGER_ATTENTION_MODEL_TYPES = frozenset({"gemma2"})
EAGER_SCORE_SAVED_BYTES = 8.0
EAGER_SCORE_BACKWARD_BYTES = 6.0
EAGER_MASK_BYTES_PER_SCORE_PAIR = 4.0


# What a model type's layer saves per token beyond the Llama-style coefficients, per recipe, as a
# coefficient on h; and beyond LOGITS_BYTES_PER_TOKEN_VOCAB. Gemma 2's four RMSNorms per layer
# (two more than Llama's, with trained weights under full fine-tuning) and its final-logit soft
# cap (the tanh output, bf16), counted with the same hooks on 2-layer models of two widths.
_EXTRA_H_COEF = {"gemma2": {"adapters": 8.0, "full": 21.0, "full-mixed": 16.0}}
_EXTRA_LOGITS_BYTES_PER_TOKEN_VOCAB = {"gemma2": 2.0}


# Of those bytes, the inputs that only a LoRA adapter saves, per adapted linear: a frozen linear
# computes its input gradient from its weight alone and saves nothing, while PEFT casts the input
# to the fp32 adapter dtype and autocast casts it back to bf16 for lora_A, once per adapter, so
# each adapter saves its own bf16 copy (2 bytes per input feature). q/k/v and gate/up therefore
# add 2h each, o_proj 2q, down_proj 2i. The coefficients above are the all-linear totals; an
# unadapted linear takes its copy off. Checked on the H100 attention-only rows (no
# checkpointing): +15% over before, within 1% with this.
_ADAPTER_INPUT_BYTES_PER_FEATURE = 2.0


# Bytes per token per vocabulary entry at an eval forward's loss: bf16 logits (2) + their fp32
# upcast in transformers' causal-LM loss (4) + the fp32 log-softmax inside cross_entropy (4);
# nothing is saved for a backward. Counted from the code, not measured.
EVAL_LOGITS_BYTES_PER_TOKEN_VOCAB = 10.0


# Allocated memory no tensor formula covers (cuBLAS workspaces, RoPE caches, small buffers):
# 0.06 GiB, the mean gap between static memory and the weight count on the bf16 reference rows.
ALLOCATOR_OVERHEAD_GIB = 0.06


@dataclass(frozen=True, slots=True)
class SpecTerms:
    """Per-model quantities that do not depend on the config (cached)."""

    linear_params: int  # all decoder-layer linear weights, all experts
    quantized_params: int  # linear weights QLoRA stores in NF4 (MoE experts are not nn.Linear)
    active_linear_params: int  # linear weights one token passes through (experts_per_token)
    other_params: int  # embeddings, head, norms, biases
    layer_params: int  # one decoder layer's linear weights (FSDP unit)
    expert_stack_params: int  # one layer's fused expert parameters (0 for dense models)
    head_params: int  # vocab x hidden
    param_count: int
    adapters: dict[tuple[int, str], int]  # (rank, targets) -> LoRA parameters
    # (qlora, targets, sharded adapters) -> (LoRA path, NF4 cast) forward bytes per token per
    # layer, and the adapted linears per layer
    traffic: dict[tuple[bool, str, bool], tuple[float, float, int]]
    # (method value, full bf16-mixed, targets, sharded adapters) -> activation bytes per token
    activations: dict[tuple[str, bool, str | None, bool], float]


# Keyed by id() with an identity check: hashing a ModelSpec (17 fields) costs more than the
# whole memory formula, and the planner passes the same spec object to every call.
_SPEC_CACHE: dict[int, tuple[ModelSpec, SpecTerms]] = {}


def spec_terms(spec: ModelSpec) -> SpecTerms:
    hit = _SPEC_CACHE.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    if len(_SPEC_CACHE) > 512:
        _SPEC_CACHE.clear()
    terms = _compute_spec_terms(spec)
    _SPEC_CACHE[id(spec)] = (spec, terms)
    return terms


def _compute_spec_terms(spec: ModelSpec) -> SpecTerms:
    shapes = spec.linear_shapes()
    attn = sum(a * b for n, (a, b) in shapes.items() if n in ATTENTION_MODULES)
    mlp = sum(a * b for n, (a, b) in shapes.items() if n not in ATTENTION_MODULES)
    layer = attn + mlp * spec.num_experts
    linear = layer * spec.num_layers
    return SpecTerms(
        linear_params=linear,
        # bitsandbytes quantizes nn.Linear modules, and the recipe quantizes MoE experts (fused
        # 3-D parameters) through bitsandbytes' parametrization: all decoder linears are NF4.
        quantized_params=linear,
        active_linear_params=(attn + mlp * spec.experts_per_token) * spec.num_layers,
        other_params=max(spec.param_count - linear, spec.embedding_params()),
        layer_params=layer,
        expert_stack_params=mlp * spec.num_experts if spec.num_experts > 1 else 0,
        head_params=spec.vocab_size * spec.hidden_size,
        param_count=spec.param_count,
        adapters={},
        traffic={},
        activations={},
    )


def _adapter_params(spec: ModelSpec, config: TuningConfig) -> int:
    assert config.lora_rank is not None and config.lora_targets is not None
    cache = spec_terms(spec).adapters
    key = (config.lora_rank, config.lora_targets)
    found = cache.get(key)
    if found is None:
        found = cache[key] = lora_params(spec, config.lora_rank, config.lora_targets)
    return found


@functools.lru_cache(maxsize=4096)
def lora_params(spec: ModelSpec, rank: int, targets: str) -> int:
    """Trainable LoRA parameters: ``rank × (in + out)`` per adapted linear, all layers.

    Which linears are adapted is :func:`profiler.adapted_modules`; MoE experts are fused
    parameters adapted through PEFT ``target_parameters`` (rank r per expert), as in the recipes.

    Args:
        spec: Model architecture.
        rank: LoRA rank r.
        targets: ``all-linear``, ``attention`` or a comma-separated module list.
    """
    modules = adapted_modules(targets, num_experts=spec.num_experts)
    shapes = spec.linear_shapes()
    if spec.num_experts > 1:
        # PEFT target_parameters on a fused (experts, a, b) parameter: lora_A is a × (r·E) and
        # lora_B (r·E) × b, i.e. rank r per expert (peft/tuners/lora/layer.py ParamWrapper).
        h, i, e = spec.hidden_size, spec.intermediate_size, spec.num_experts
        fused = {"gate_up_proj": 2 * i + h, "down_proj": h + i}
        experts = sum(rank * e * fused[p] for p in expert_parameters(targets))
        attn = sum(
            rank * (a + b)
            for n, (a, b) in shapes.items()
            if n in modules and n in ATTENTION_MODULES
        )
        return (attn + experts) * spec.num_layers
    per_layer = sum(
        rank * (fan_in + fan_out) for n, (fan_in, fan_out) in shapes.items() if n in modules
    )
    return per_layer * spec.num_layers


def trainable_params(spec: ModelSpec, config: TuningConfig) -> int:
    """Parameters the optimizer updates: all for full FT, the adapters for LoRA/QLoRA."""
    if not config.method.traits.adapters:
        return spec.param_count
    return _adapter_params(spec, config)


def weight_bytes(spec: ModelSpec, config: TuningConfig) -> float:
    """Bytes of the weights as the recipe holds them, before sharding: fp32 for full bf16-mixed,
    bf16 for pure bf16 and LoRA's frozen base, NF4 linears with fp32 other parameters for QLoRA
    (``prepare_model_for_kbit_training``), plus the adapters."""
    return model_state_bytes(spec, config, trainable_params(spec, config)).weights


def download_bytes(spec: ModelSpec) -> float:
    """Bytes of the published 16-bit checkpoint a run downloads (2 per parameter)."""
    return spec.param_count * 2.0


def checkpoint_bytes(spec: ModelSpec, config: TuningConfig) -> float:
    """Bytes of a resumable checkpoint: the trainable weights and the optimizer states.

    Per trainable parameter: full bf16-mixed saves fp32 weights (4) and two fp32 AdamW moments
    (8); pure bf16 saves 2 + 4; LoRA adapters are saved with fp32 AdamW moments (4 + 8). 8-bit
    AdamW keeps 2 bytes of moments instead (bitsandbytes, Dettmers et al. 2022).
    """
    if not config.method.traits.adapters and config.precision is Precision.BF16:
        weights, states = 2.0, 4.0
    else:
        weights, states = 4.0, 8.0
    if config.optimizer is not OptimizerKind.ADAMW:
        states = 2.0
    return trainable_params(spec, config) * (weights + states)


def shard_divisor(config: TuningConfig) -> int:
    return shard_count(config.sharding, config.gpu_count)


def sharded_adapters(config: TuningConfig) -> bool:
    """LoRA/QLoRA under FSDP/ZeRO-3 keep every parameter 16-bit: FSDP flattens tensors of one
    dtype, so the adapters stay bf16 and QLoRA skips prepare_model_for_kbit_training's fp32
    upcast (the sharded-QLoRA recipe of Answer.AI and TRL)."""
    return config.sharding.shards_state and config.method.traits.adapters


def model_state_bytes(spec: ModelSpec, config: TuningConfig, trainable: int) -> StateBytes:
    """Whole-model state bytes of the recipe (see :class:`profiler.sharding.StateBytes`)."""
    t = spec_terms(spec)
    traits = config.method.traits
    full_mixed = not traits.adapters and config.precision is not Precision.BF16
    adapter_bytes = 2 if sharded_adapters(config) else 4
    weight_bytes: float
    other_bytes = 2.0  # per non-linear parameter (embedding, head, norms) as gathered
    if not traits.adapters:
        weight_bytes = spec.param_count * (4 if full_mixed else 2)
        state_bytes_each = 4 if full_mixed else 2
        other_bytes = 4.0 if full_mixed else 2.0  # the recipe's own autocast: FSDP gathers fp32
        layer_gather = t.layer_params * other_bytes
    elif not traits.quantized_base:
        weight_bytes = spec.param_count * 2 + trainable * adapter_bytes  # bf16 base
        state_bytes_each = adapter_bytes
        layer_gather = t.layer_params * 2.0
    else:  # QLoRA: NF4 linears (MoE experts too), other params fp32 (kbit prep) or bf16 sharded
        other_bytes = 2.0 if sharded_adapters(config) else 4.0
        weight_bytes = (
            t.quantized_params * NF4_BYTES_PER_PARAM
            + (t.other_params + t.linear_params - t.quantized_params) * other_bytes
            + trainable * adapter_bytes
        )
        state_bytes_each = adapter_bytes
        # bnb_4bit_quant_storage=bfloat16 packs NF4 in bf16 elements: FSDP gathers 4-bit bytes.
        layer_gather = t.layer_params * NF4_BYTES_PER_PARAM
    if config.optimizer is OptimizerKind.ADAMW:
        states = trainable * 2.0 * state_bytes_each
        temp = trainable * float(state_bytes_each)  # foreach sqrt(exp_avg_sq) temporary
    else:  # bitsandbytes 8-bit AdamW: two 1-byte states, fused update without temporaries
        states = trainable * 2.0
        temp = 0.0
    return StateBytes(
        weights=weight_bytes,
        gradients=trainable * float(state_bytes_each),
        optimizer_states=states,
        optimizer_temp=temp,
        # Autocast keeps a bf16 copy of every fp32 weight that requires grad until it exits.
        autocast_cache=spec.param_count * 2.0 if full_mixed else 0.0,
        layer_gather_bytes=layer_gather,
        root_gather_bytes=t.other_params * other_bytes,
        head_gather_bytes=t.head_params * other_bytes,
        unit_gradient_bytes=t.layer_params * float(state_bytes_each) if not traits.adapters else 0,
        # QLoRA's absmax and second-level quantization states are not parameters: whole on
        # every GPU however the packed weights are sharded or offloaded.
        unsharded_weights=t.quantized_params * (NF4_BYTES_PER_PARAM - 0.5)
        if traits.quantized_base
        else 0.0,
    )


def _expert_stack_bytes(spec: ModelSpec, config: TuningConfig) -> tuple[float, float]:
    """(saved bytes per layer, transient bytes) of MoE expert stacks materialized in bf16.

    QLoRA dequantizes a layer's whole expert stack (bitsandbytes parametrization); PEFT's
    target_parameters then folds the adapters in with one baddbmm (a second stack). The linear
    over ``stack[expert]`` saves a view of the stack for the input gradient, so without
    checkpointing every layer keeps one stack until backward. LoRA on bf16 experts only
    materializes the folded stack when the experts are adapted. Assumption until measured.
    """
    stack = spec_terms(spec).expert_stack_params * 2.0
    traits = config.method.traits
    if not stack or not traits.adapters:
        return 0.0, 0.0
    adapted = bool(expert_parameters(config.lora_targets or "attention"))
    if not traits.quantized_base and not adapted:
        return 0.0, 0.0
    stacks = 2 if (traits.quantized_base and adapted) else 1
    return stack, stack * stacks


def eager_scores(spec: ModelSpec, config: TuningConfig) -> float:
    """Attention scores one layer materializes (b·H·s²) under eager attention, else 0."""
    if spec.model_type not in EAGER_ATTENTION_MODEL_TYPES:
        return 0.0
    return float(config.micro_batch_size * spec.num_heads * config.seq_len**2)


def _logits_bytes_per_token_vocab(spec: ModelSpec) -> float:
    """:data:`LOGITS_BYTES_PER_TOKEN_VOCAB` plus what the model type's head adds (a soft cap)."""
    return LOGITS_BYTES_PER_TOKEN_VOCAB + _EXTRA_LOGITS_BYTES_PER_TOKEN_VOCAB.get(
        spec.model_type, 0.0
    )


def _head_cast_bytes(spec: ModelSpec, config: TuningConfig) -> float:
    """QLoRA's bf16 copy of the fp32 head, made at every head call (a frozen weight: autocast
    does not cache it); 0 for other recipes and sharded adapters."""
    if config.method.traits.quantized_base and not sharded_adapters(config):
        return 2.0 * spec_terms(spec).head_params
    return 0.0


def _loss_chain_traffic_bytes(spec: ModelSpec, config: TuningConfig, tokens: int) -> float:
    """Bytes the logits/cross-entropy chain moves in one step, as the elementwise term counts
    them: the chain's bytes at its peak (:data:`LOGITS_BYTES_PER_TOKEN_VOCAB`, plus QLoRA's bf16
    cast of the fp32 head). The chunked loss runs the chain over every chunk, casts QLoRA's head
    once per chunk, and runs it all again when backward recomputes each chunk: twice the
    unchunked chain plus one head cast per chunk per pass."""
    chain = _logits_bytes_per_token_vocab(spec) * tokens * spec.vocab_size
    head_cast = _head_cast_bytes(spec, config)
    if not config.chunked_loss:
        return chain + head_cast
    chunks = math.ceil(tokens / CHUNKED_LOSS_TOKENS)
    return 2.0 * (chain + chunks * head_cast)


def memory_terms(spec: ModelSpec, config: TuningConfig, gpu: GPU) -> MemoryTerms:
    """Memory components of one config per GPU, before calibration scaling (:class:`MemoryTerms`).
    Where state lives per sharding: :mod:`profiler.sharding`."""
    t = spec_terms(spec)
    traits = config.method.traits
    trainable = _adapter_params(spec, config) if traits.adapters else t.param_count
    full_mixed = not traits.adapters and config.precision is not Precision.BF16
    placed = place(
        model_state_bytes(spec, config, trainable),
        sharding=config.sharding,
        gpu_count=config.gpu_count,
    )
    tokens = config.micro_batch_size * config.seq_len
    layer_bytes_per_token = _layer_bytes_per_token(spec, config, full_mixed=full_mixed)
    loss_tokens = min(tokens, CHUNKED_LOSS_TOKENS) if config.chunked_loss else tokens
    logits = _logits_bytes_per_token_vocab(spec) * loss_tokens * spec.vocab_size
    if config.chunked_loss:
        logits += 2 * tokens * spec.hidden_size  # the final hidden states' gradient, bf16
    logits += _head_cast_bytes(spec, config)
    stack_saved, stack_transient = _expert_stack_bytes(spec, config)
    scores = eager_scores(spec, config)
    score_saved = EAGER_SCORE_SAVED_BYTES * scores
    score_transient = EAGER_SCORE_BACKWARD_BYTES * scores
    pairs = config.micro_batch_size * config.seq_len**2
    masks = EAGER_MASK_BYTES_PER_SCORE_PAIR * pairs if scores else 0.0
    if config.grad_checkpointing:
        fp32_residual = full_mixed or (traits.quantized_base and not sharded_adapters(config))
        residual_bytes = 4 if fp32_residual else 2
        saved = spec.num_layers * tokens * residual_bytes * spec.hidden_size + masks
        recompute = (
            tokens * layer_bytes_per_token + stack_transient + score_saved + score_transient
        )
        activations = saved + max(0.0, recompute - logits)
    else:
        activations = spec.num_layers * (
            tokens * layer_bytes_per_token + stack_saved + score_saved
        )
        activations += stack_transient - stack_saved + score_transient + masks
    overhead = ALLOCATOR_OVERHEAD_GIB * GIB + placed.working_set
    fb_static = placed.weights + placed.autocast_cache + placed.optimizer_states + overhead
    opt_step = (
        placed.weights + placed.gradients + placed.optimizer_states + placed.optimizer_temp
    ) + overhead
    return MemoryTerms(
        weights_gib=placed.weights / GIB,
        gradients_gib=placed.gradients / GIB,
        optimizer_gib=placed.optimizer_states / GIB,
        autocast_cache_gib=placed.autocast_cache / GIB,
        optimizer_temp_gib=placed.optimizer_temp / GIB,
        activations_gib=activations / GIB,
        logits_gib=logits / GIB,
        loss_traffic_gib=_loss_chain_traffic_bytes(spec, config, tokens) / GIB,
        overhead_gib=overhead / GIB,
        dynamic_gib=(activations + logits) / GIB,
        fb_static_gib=fb_static / GIB,
        # With checkpointing no layer saves its cast weights: autocast's cache is freed when the
        # forward's autocast region exits, before backward builds the gradients.
        forward_only_cache_gib=placed.autocast_cache / GIB if config.grad_checkpointing else 0.0,
        optimizer_step_gib=opt_step / GIB,
        layer_bytes_per_token=layer_bytes_per_token,
        trainable_params=trainable,
        host_bytes_per_gpu=placed.host_bytes_per_gpu,
    )


def _layer_bytes_per_token(spec: ModelSpec, config: TuningConfig, *, full_mixed: bool) -> float:
    """Activation bytes one decoder layer saves per token, for the recipe and its LoRA targets."""
    traits = config.method.traits
    cache = spec_terms(spec).activations
    # Enum members hash through Python code; a str's hash and plain values do not.
    key = (config.method._value_, full_mixed, config.lora_targets, sharded_adapters(config))
    found = cache.get(key)
    if found is not None:
        return found
    bf16_weights = not traits.adapters and not full_mixed
    h_coef = (
        traits.hidden_activation_bytes_bf16 or traits.hidden_activation_bytes
        if bf16_weights
        else traits.hidden_activation_bytes
    )
    extra = _EXTRA_H_COEF.get(spec.model_type)
    if extra is not None:
        h_coef += extra["adapters" if traits.adapters else "full-mixed" if full_mixed else "full"]
    q_coef = _Q_COEF
    # Sharded QLoRA keeps a bf16 residual stream (no kbit fp32 upcast), so Linear4bit returns
    # bf16 and its MLP chain costs what LoRA's does. Assumption until measured.
    i_coef = (
        traits.mlp_activation_bytes_sharded
        if sharded_adapters(config)
        else traits.mlp_activation_bytes
    )
    if traits.adapters:
        assert config.lora_targets is not None
        adapted = adapted_modules(config.lora_targets, num_experts=spec.num_experts)
        copy = _ADAPTER_INPUT_BYTES_PER_FEATURE
        h_coef -= copy * sum(n not in adapted for n in ("q_proj", "k_proj", "v_proj"))
        if "o_proj" not in adapted:
            q_coef -= copy
        if spec.num_experts == 1:  # MoE experts (fused parameters) save no per-adapter copy
            h_coef -= copy * sum(n not in adapted for n in ("gate_proj", "up_proj"))
            if "down_proj" not in adapted:
                i_coef -= copy
    found = cache[key] = (
        h_coef * spec.hidden_size
        + q_coef * spec.q_dim
        + _KV_COEF * spec.kv_dim
        + i_coef * spec.intermediate_size * spec.experts_per_token
    )
    return found


def load_peak_gib(spec: ModelSpec, config: TuningConfig) -> float:
    """GiB one GPU holds while ftplan's runner loads the model, before the first step. Not part
    of the training peak (:func:`estimate`): a plan whose steady state fits must load too, which
    the planner and ``ftplan launch`` check against :func:`profiler.headroom.capacity_gib`.

    - Unsharded (none, ddp): the whole model in the recipe's dtype (QLoRA: NF4, quantizing one
      16-bit linear at a time), as in training.
    - FSDP, every method (rank-0 loading, :func:`profiler.sharding.loads_on_rank0`): rank 0
      holds the weights in CPU memory; as FSDP syncs them each GPU gathers one unit (the root
      or a layer) on top of the shards made so far (none on the GPU when offloading). QLoRA
      adds every linear's quantization state (about 1/64 byte per weight, not a parameter, so
      whole on every GPU) and, on rank 0 before FSDP starts, one 16-bit linear being quantized.
    - ZeRO-3 full fine-tuning and LoRA (``zero.Init``, :func:`profiler.sharding.
      loads_partitioned`): the shards plus one module gathered while its weights load.
    - ZeRO-3 QLoRA (:func:`profiler.sharding.loads_whole_model_per_gpu`): the whole NF4 model
      and one 16-bit linear being quantized, on every GPU.

    Plus the allocator's overhead.
    """
    state = model_state_bytes(spec, config, trainable_params(spec, config))
    qlora = config.method.traits.quantized_base
    in_flight = 2.0 * max(a * b for a, b in spec.linear_shapes().values()) if qlora else 0.0
    whole = state.weights + in_flight
    if not config.sharding.shards_state or loads_whole_model_per_gpu(
        sharding=config.sharding, method=config.method
    ):
        return whole / GIB + ALLOCATOR_OVERHEAD_GIB
    quant_states = state.unsharded_weights  # QLoRA's quantization states, whole on every GPU
    packed = state.weights - quant_states
    shards = 0.0 if config.sharding.offloads else packed / shard_divisor(config)
    if loads_on_rank0(sharding=config.sharding, method=config.method):
        unit = max(state.root_gather_bytes, state.layer_gather_bytes)
    else:
        unit = max(state.head_gather_bytes, state.layer_gather_bytes)
    peak = max(quant_states + in_flight, shards + unit + quant_states)
    return peak / GIB + ALLOCATOR_OVERHEAD_GIB
