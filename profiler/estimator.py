"""Analytic estimator: peak GPU memory and step time of a training config, without a GPU.

Pure Python (no torch, no numpy) and fast (the planner calls it thousands of times per
``ftplan recommend``). Memory is counted tensor by tensor for the recipes in DESIGN.md (weights,
gradients, AdamW states, activations after Korthikanti et al. 2022, the logits/cross-entropy chain,
allocator overhead) and the peak is the maximum of two phases (forward/backward and optimizer
step). Time is, per pass, the GPU's work (FLOPs at a fitted efficiency, the checkpointed re-run
at its own; memory-bound elementwise, LoRA-path and NF4-cast traffic at the bandwidth) overlapped
with the host time that launches it (per decoder layer, once more under autocast, per adapted
and per NF4 linear), plus the optimizer step (:func:`compute_seconds`), with the free
parameters taken from the :class:`~profiler.calibration.Calibration` the caller passes; an
estimate's bands come from that calibration's cross-validated residuals. docs/estimator.md
derives each term and gives its validation against real H100 and H200 runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from catalog import GIB, Interconnect
from profiler._types import (
    ATTENTION_MODULES,
    EvalEstimate,
    Measurement,
    MemoryBreakdown,
    Method,
    OptimizerKind,
    Precision,
    Provenance,
    Sharding,
    Source,
    Status,
    TuningConfig,
    adapted_modules,
    expert_parameters,
)
from profiler.calibration import (
    ALL_REGIMES,
    BAND_QUANTITIES,
    TimeModel,
    regime_of,
    transfer_factor,
    transfer_regime,
    transferred,
)
from profiler.headroom import check_fit
from profiler.sharding import (
    StateBytes,
    collective_bytes_per_gpu,
    host_ram_gib,
    loads_on_rank0,
    loads_whole_model_per_gpu,
    offload_seconds,
    place,
    shard_count,
    zero3_master_copy_bytes,
)

if TYPE_CHECKING:
    from catalog import GPU, ModelSpec
    from profiler.calibration import Calibration


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
# attention output saved by SDPA and the o_proj input copy (6q + 4kv); gate, up, SiLU output and
# their product in the gated MLP (8i); RMSNorm saves its fp32 upcast and its bf16 output (the
# h term, larger when the residual stream is fp32: full bf16-mixed and QLoRA after
# prepare_model_for_kbit_training). QLoRA's Linear4bit returns the input dtype, so part of the
# MLP chain is fp32 (+5.5i). Reconciled with the 24 H100 reference runs (docs/estimator.md).
_H_COEF = {
    ("full", True): 25.0,
    ("full", False): 14.5,
    ("lora", False): 18.0,
    ("qlora", False): 18.0,
}
_Q_COEF = 6.0
_KV_COEF = 4.0
_I_COEF = {"full": 8.0, "lora": 8.0, "qlora": 13.5}

# Eager attention (the model types transformers runs without SDPA, EAGER_ATTENTION_MODEL_TYPES)
# materializes the b·H·s² attention scores of a layer. Saved for backward, per score: the
# soft-cap's tanh output (bf16), the softmax output (fp32) and its bf16 cast that the value matmul
# keeps: 8 bytes, counted with autograd's saved-tensor hooks on a 2-layer Gemma 2
# (tests/test_eager_attention.py). The backward of a layer holds about 6 more at once (the bf16
# score gradient and its fp32 upcast for the softmax backward), and the two 4-D masks (causal and
# sliding window, bf16) take 4 bytes per b·s² while the step runs. Traffic per score in a
# forward: the scores written, scaled, soft-capped (divide, tanh, multiply), masked, soft-maxed
# to fp32, cast back and read by the value matmul, about 38 bytes; in the backward the same
# chain's gradients, about 50 (the fp32 softmax backward reads two fp32 tensors and writes one);
# a checkpointed re-run pays the forward's again. At peak bandwidth (not fitted: no reference
# run uses eager attention). The matmuls compute every score (4·b·s²·q FLOPs a layer forward,
# no causal skipping).
# Assumptions until measured on a GPU.
EAGER_ATTENTION_MODEL_TYPES = frozenset({"gemma2"})
EAGER_SCORE_SAVED_BYTES = 8.0
EAGER_SCORE_BACKWARD_BYTES = 6.0
EAGER_MASK_BYTES_PER_SCORE_PAIR = 4.0
EAGER_SCORE_FORWARD_TRAFFIC_BYTES = 38.0
EAGER_SCORE_BACKWARD_TRAFFIC_BYTES = 50.0
# What a model type's layer saves per token beyond the Llama-style coefficients, per recipe, as a
# coefficient on h; and beyond LOGITS_BYTES_PER_TOKEN_VOCAB. Gemma 2's four RMSNorms per layer
# (two more than Llama's, with trained weights under full fine-tuning) and its final-logit soft
# cap (the tanh output, bf16), counted with the same hooks on 2-layer models of two widths.
_EXTRA_H_COEF = {"gemma2": {"lora": 8.0, "qlora": 8.0, "full": 21.0, "full-mixed": 16.0}}
_EXTRA_LOGITS_BYTES_PER_TOKEN_VOCAB = {"gemma2": 2.0}

# Of those bytes, the inputs that only a LoRA adapter saves, per adapted linear: a frozen linear
# computes its input gradient from its weight alone and saves nothing, while PEFT casts the input
# to the fp32 adapter dtype and autocast casts it back to bf16 for lora_A, once per adapter, so
# each adapter saves its own bf16 copy (2 bytes per input feature). q/k/v and gate/up therefore
# add 2h each, o_proj 2q, down_proj 2i. The coefficients above are the all-linear totals; an
# unadapted linear takes its copy off. Checked on the H100 attention-only rows (no
# checkpointing): +15% over before, within 1% with this.
_ADAPTER_INPUT_BYTES_PER_FEATURE = 2.0

# NF4 dequantization traffic per parameter per pass: read 0.5 B of NF4 and write 2 B of bf16
# (bitsandbytes dequantizes the whole weight for inputs of >1 token). The matmul's read of the
# bf16 weight is not counted: at >=512 tokens the GEMM is compute-bound and hides its operand
# loads (4.5 B with that read counted: held-out median 6.7% -> 6.4% without it, and the H200
# 70B per-layer time 24% -> 22% over).
NF4_DEQUANT_BYTES_PER_PARAM = 2.5

# Bytes per token per vocabulary entry at an eval forward's loss: bf16 logits (2) + their fp32
# upcast in transformers' causal-LM loss (4) + the fp32 log-softmax inside cross_entropy (4);
# nothing is saved for a backward. Counted from the code, not measured.
EVAL_LOGITS_BYTES_PER_TOKEN_VOCAB = 10.0

# Allocated memory no tensor formula covers (cuBLAS workspaces, RoPE caches, small buffers):
# 0.06 GiB, the mean gap between static memory and the weight count on the bf16 reference rows.
ALLOCATOR_OVERHEAD_GIB = 0.06

# Multi-GPU communication: NCCL reaches ~70% of link peak as bus bandwidth on large messages
# (nccl-tests all_reduce_perf on NVLink/InfiniBand); half of the communication is assumed hidden
# behind compute (FSDP prefetch, DDP bucketed all-reduce during backward).
COMM_EFFICIENCY = 0.7
COMM_OVERLAP = 0.5

# The catalog's NVLink figures are NVIDIA's bidirectional totals (H100 SXM: 900 GB/s = 18 links x
# 25 GB/s x 2 directions; A100 SXM: 600 = 12 x 25 x 2; H100 NVL bridge: 600), while its PCIe
# figures are already per direction (Gen5 x16: 64 GB/s, Gen4 x16: 32 GB/s each way). A ring
# collective sends and receives at once, and each hop moves its bytes over one direction of a
# link, so the time is bytes / per-direction bandwidth (nccl-tests PERFORMANCE.md: bus bandwidth
# is compared with the per-direction link speed).
_BIDIRECTIONAL_LINK_DIVISOR = {Interconnect.NVLINK: 2.0}

# Optimizer step traffic, bytes per trainable parameter: torch AdamW (foreach) reads param, grad,
# exp_avg, exp_avg_sq, writes param and both states, and writes and reads one temporary
# (sqrt(exp_avg_sq)): 9 tensor passes of the state dtype. 8-bit AdamW (bitsandbytes, fused):
# param r/w, grad read and two 1-byte states r/w.
_OPT_PASSES = 9


@dataclass(frozen=True, slots=True)
class _SpecTerms:
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
    # (lora, qlora, full bf16-mixed, targets, sharded adapters) -> activation bytes per token
    activations: dict[tuple[bool, bool, bool, str | None, bool], float]


# Keyed by id() with an identity check: hashing a ModelSpec (17 fields) costs more than the
# whole memory formula, and the planner passes the same spec object to every call.
_SPEC_CACHE: dict[int, tuple[ModelSpec, _SpecTerms]] = {}


def _spec_terms(spec: ModelSpec) -> _SpecTerms:
    hit = _SPEC_CACHE.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    if len(_SPEC_CACHE) > 512:
        _SPEC_CACHE.clear()
    terms = _compute_spec_terms(spec)
    _SPEC_CACHE[id(spec)] = (spec, terms)
    return terms


def _compute_spec_terms(spec: ModelSpec) -> _SpecTerms:
    shapes = spec.linear_shapes()
    attn = sum(a * b for n, (a, b) in shapes.items() if n in ATTENTION_MODULES)
    mlp = sum(a * b for n, (a, b) in shapes.items() if n not in ATTENTION_MODULES)
    layer = attn + mlp * spec.num_experts
    linear = layer * spec.num_layers
    return _SpecTerms(
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
    cache = _spec_terms(spec).adapters
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
    if config.method is Method.FULL:
        return spec.param_count
    return _adapter_params(spec, config)


def weight_bytes(spec: ModelSpec, config: TuningConfig) -> float:
    """Bytes of the weights as the recipe holds them, before sharding: fp32 for full bf16-mixed,
    bf16 for pure bf16 and LoRA's frozen base, NF4 linears with fp32 other parameters for QLoRA
    (``prepare_model_for_kbit_training``), plus the adapters."""
    return _state_bytes(spec, config, trainable_params(spec, config)).weights


def download_bytes(spec: ModelSpec) -> float:
    """Bytes of the published 16-bit checkpoint a run downloads (2 per parameter)."""
    return spec.param_count * 2.0


def checkpoint_bytes(spec: ModelSpec, config: TuningConfig) -> float:
    """Bytes of a resumable checkpoint: the trainable weights and the optimizer states.

    Per trainable parameter: full bf16-mixed saves fp32 weights (4) and two fp32 AdamW moments
    (8); pure bf16 saves 2 + 4; LoRA adapters are saved with fp32 AdamW moments (4 + 8). 8-bit
    AdamW keeps 2 bytes of moments instead (bitsandbytes, Dettmers et al. 2022).
    """
    if config.method is Method.FULL and config.precision is Precision.BF16:
        weights, states = 2.0, 4.0
    else:
        weights, states = 4.0, 8.0
    if config.optimizer is not OptimizerKind.ADAMW:
        states = 2.0
    return trainable_params(spec, config) * (weights + states)


def min_flops_per_token(spec: ModelSpec, method: Method) -> float:
    """Training FLOPs per token that no config of ``method`` goes below: 6 × the decoder-linear
    weights a token passes through for full FT, 4 × for LoRA/QLoRA (forward and input gradients;
    adapters, attention scores, the head and recomputation only add; see :func:`_step_flops`)."""
    return (6.0 if method is Method.FULL else 4.0) * _spec_terms(spec).active_linear_params


def _shard_divisor(config: TuningConfig) -> int:
    return shard_count(config.sharding, config.gpu_count)


def _sharded_adapters(config: TuningConfig) -> bool:
    """LoRA/QLoRA under FSDP/ZeRO-3 keep every parameter 16-bit: FSDP flattens tensors of one
    dtype, so the adapters stay bf16 and QLoRA skips prepare_model_for_kbit_training's fp32
    upcast (the sharded-QLoRA recipe of Answer.AI and TRL)."""
    return config.sharding.shards_state and config.method is not Method.FULL


def _state_bytes(spec: ModelSpec, config: TuningConfig, trainable: int) -> StateBytes:
    """Whole-model state bytes of the recipe (see :class:`profiler.sharding.StateBytes`)."""
    t = _spec_terms(spec)
    method = config.method
    full_mixed = method is Method.FULL and config.precision is not Precision.BF16
    adapter_bytes = 2 if _sharded_adapters(config) else 4
    weight_bytes: float
    other_bytes = 2.0  # per non-linear parameter (embedding, head, norms) as gathered
    if method is Method.FULL:
        weight_bytes = spec.param_count * (4 if full_mixed else 2)
        state_bytes_each = 4 if full_mixed else 2
        other_bytes = 4.0 if full_mixed else 2.0  # the recipe's own autocast: FSDP gathers fp32
        layer_gather = t.layer_params * other_bytes
    elif method is Method.LORA:
        weight_bytes = spec.param_count * 2 + trainable * adapter_bytes  # bf16 base
        state_bytes_each = adapter_bytes
        layer_gather = t.layer_params * 2.0
    else:  # QLoRA: NF4 linears (MoE experts too), other params fp32 (kbit prep) or bf16 sharded
        other_bytes = 2.0 if _sharded_adapters(config) else 4.0
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
        unit_gradient_bytes=t.layer_params * float(state_bytes_each)
        if method is Method.FULL
        else 0,
        # QLoRA's absmax and second-level quantization states are not parameters: whole on
        # every GPU however the packed weights are sharded or offloaded.
        unsharded_weights=t.quantized_params * (NF4_BYTES_PER_PARAM - 0.5)
        if method is Method.QLORA
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
    stack = _spec_terms(spec).expert_stack_params * 2.0
    if not stack or config.method is Method.FULL:
        return 0.0, 0.0
    adapted = bool(expert_parameters(config.lora_targets or "attention"))
    if config.method is Method.LORA and not adapted:
        return 0.0, 0.0
    stacks = 2 if (config.method is Method.QLORA and adapted) else 1
    return stack, stack * stacks


def _eager_scores(spec: ModelSpec, config: TuningConfig) -> float:
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
    if config.method is Method.QLORA and not _sharded_adapters(config):
        return 2.0 * _spec_terms(spec).head_params
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


def memory_terms(spec: ModelSpec, config: TuningConfig, gpu: GPU) -> dict[str, float]:
    """Memory components of one config per GPU, GiB, before calibration scaling.

    Keys: ``weights_gib``, ``gradients_gib``, ``optimizer_gib``, ``autocast_cache_gib``,
    ``optimizer_temp_gib``, ``activations_gib``, ``logits_gib`` (activations and logits at the
    forward/backward peak), ``loss_traffic_gib`` (what the loss chain moves in a step, for the
    time model), ``dynamic_gib`` (their sum, the part a calibration scales),
    ``fb_static_gib`` (what is resident during forward/backward besides ``dynamic_gib``),
    ``optimizer_step_gib`` (the optimizer-step phase peak) and ``host_bytes_per_gpu`` (state
    offloaded to host memory, bytes). Where state lives per sharding: :mod:`profiler.sharding`.
    """
    t = _spec_terms(spec)
    method = config.method
    trainable = t.param_count if method is Method.FULL else _adapter_params(spec, config)
    full_mixed = method is Method.FULL and config.precision is not Precision.BF16
    placed = place(
        _state_bytes(spec, config, trainable),
        sharding=config.sharding,
        gpu_count=config.gpu_count,
    )
    weight_bytes = placed.weights
    grad_bytes = placed.gradients
    state_bytes = placed.optimizer_states
    temp_bytes = placed.optimizer_temp
    cache_bytes = placed.autocast_cache
    extra_bytes = placed.working_set

    tokens = config.micro_batch_size * config.seq_len
    layer_bytes_per_token = _layer_bytes_per_token(spec, config, full_mixed=full_mixed)
    loss_tokens = min(tokens, CHUNKED_LOSS_TOKENS) if config.chunked_loss else tokens
    logits = _logits_bytes_per_token_vocab(spec) * loss_tokens * spec.vocab_size
    if config.chunked_loss:
        logits += 2 * tokens * spec.hidden_size  # the final hidden states' gradient, bf16
    logits += _head_cast_bytes(spec, config)
    stack_saved, stack_transient = _expert_stack_bytes(spec, config)
    scores = _eager_scores(spec, config)
    score_saved = EAGER_SCORE_SAVED_BYTES * scores
    score_transient = EAGER_SCORE_BACKWARD_BYTES * scores
    pairs = config.micro_batch_size * config.seq_len**2
    masks = EAGER_MASK_BYTES_PER_SCORE_PAIR * pairs if scores else 0.0
    if config.grad_checkpointing:
        fp32_residual = full_mixed or (method is Method.QLORA and not _sharded_adapters(config))
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
    overhead = ALLOCATOR_OVERHEAD_GIB * GIB + extra_bytes
    dynamic = activations + logits
    loss_traffic = _loss_chain_traffic_bytes(spec, config, tokens)
    fb_static = weight_bytes + cache_bytes + state_bytes + overhead
    opt_step = weight_bytes + grad_bytes + state_bytes + temp_bytes + overhead
    return {
        "weights_gib": weight_bytes / GIB,
        "gradients_gib": grad_bytes / GIB,
        "optimizer_gib": state_bytes / GIB,
        "autocast_cache_gib": cache_bytes / GIB,
        "optimizer_temp_gib": temp_bytes / GIB,
        "activations_gib": activations / GIB,
        "logits_gib": logits / GIB,
        "loss_traffic_gib": loss_traffic / GIB,
        "overhead_gib": overhead / GIB,
        "dynamic_gib": dynamic / GIB,
        "fb_static_gib": fb_static / GIB,
        # With checkpointing no layer saves its cast weights: autocast's cache is freed when the
        # forward's autocast region exits, before backward builds the gradients.
        "forward_only_cache_gib": cache_bytes / GIB if config.grad_checkpointing else 0.0,
        "fb_end_gib": (fb_static + grad_bytes) / GIB,
        "optimizer_step_gib": opt_step / GIB,
        "layer_bytes_per_token": layer_bytes_per_token,
        "trainable_params": trainable,
        "host_bytes_per_gpu": placed.host_bytes_per_gpu,
    }


def _layer_bytes_per_token(spec: ModelSpec, config: TuningConfig, *, full_mixed: bool) -> float:
    """Activation bytes one decoder layer saves per token, for the recipe and its LoRA targets."""
    method = config.method
    cache = _spec_terms(spec).activations
    # Enum members hash through Python code; identity tests and a string hash in C do not.
    key = (
        method is Method.LORA,
        method is Method.QLORA,
        full_mixed,
        config.lora_targets,
        _sharded_adapters(config),
    )
    found = cache.get(key)
    if found is not None:
        return found
    h_coef = _H_COEF[
        (method.value, full_mixed) if method is Method.FULL else (method.value, False)
    ]
    extra = _EXTRA_H_COEF.get(spec.model_type)
    if extra is not None:
        h_coef += extra["full-mixed" if full_mixed else method.value]
    q_coef = _Q_COEF
    # Sharded QLoRA keeps a bf16 residual stream (no kbit fp32 upcast), so Linear4bit returns
    # bf16 and its MLP chain costs what LoRA's does. Assumption until measured.
    i_coef = _I_COEF["lora" if _sharded_adapters(config) else method.value]
    if method is not Method.FULL:
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


def _passes(config: TuningConfig) -> int:
    """Passes over the decoder layers per step: forward, backward, and a recompute with ckpt."""
    return 3 if config.grad_checkpointing else 2


def _step_flops(
    spec: ModelSpec, config: TuningConfig, trainable: float
) -> tuple[float, float, float]:
    """Model FLOPs of one step per GPU: (forward, backward, re-run linears); elementwise work is
    timed apart.

    Forward linears cost 2 FLOPs per weight per token; backward costs 2× forward when weights are
    trained (input and weight gradients) and 1× when frozen (input gradients only; LoRA/QLoRA),
    plus 6 FLOPs per adapter parameter per token (2 forward, 4 backward). Causal SDPA attention
    costs 2·b·s²·q per layer forward (QKᵀ and AV at half of 4·b·s²·q thanks to the causal mask)
    and 2× that backward. Gradient checkpointing re-runs the decoder layers' forward inside the
    backward pass: its attention joins the backward figure, its linears are the third, timed at
    their own efficiency. The chunked loss re-runs the LM head's forward in backward.
    """
    t = _spec_terms(spec)
    tokens = config.micro_batch_size * config.seq_len
    layers_fwd = 2.0 * tokens * t.active_linear_params
    head_fwd = 2.0 * tokens * t.head_params
    # Causal SDPA skips the masked half of the scores; eager attention computes them all.
    attn_fwd = (
        (4.0 if spec.model_type in EAGER_ATTENTION_MODEL_TYPES else 2.0)
        * config.micro_batch_size
        * config.seq_len
        * config.seq_len
        * spec.q_dim
        * spec.num_layers
    )
    if config.method is Method.FULL:
        forward = layers_fwd + head_fwd + attn_fwd
        backward = 2.0 * (layers_fwd + head_fwd + attn_fwd)
    else:
        forward = layers_fwd + head_fwd + attn_fwd + 2.0 * tokens * trainable
        backward = layers_fwd + head_fwd + 2.0 * attn_fwd + 4.0 * tokens * trainable
    if config.chunked_loss:
        backward += head_fwd
    if config.grad_checkpointing:
        return forward, backward + attn_fwd, layers_fwd
    return forward, backward, 0.0


def _adapter_traffic_bytes_per_token(
    spec: ModelSpec, config: TuningConfig
) -> tuple[float, float, int]:
    """Forward bytes per token per decoder layer of (the LoRA path, QLoRA's Linear4bit casts),
    and the LoRA-adapted linears per layer (MoE expert adapters fold into the weights).

    LoRA path, per adapted linear (in → out features): PEFT casts the bf16 input to the fp32
    adapter dtype and autocast casts it back for ``lora_A`` (read 2, write 4, read 4, write 2 B
    per input feature), ``lora_A`` reads it (2), ``lora_B`` writes its output (2 per output
    feature), the scaling reads and writes it (4) and the add to the base output reads two and
    writes one (6): 14·in + 12·out. QLoRA, per NF4 linear: Linear4bit casts its fp32 input to
    bf16 (read 4, write 2) and its output back to fp32 (read 2, write 4): 6·in + 6·out. The
    backward pass is counted as twice the forward's traffic by the caller.
    """
    if config.method is Method.FULL:
        return 0.0, 0.0, 0
    assert config.lora_targets is not None
    cache = _spec_terms(spec).traffic
    sharded = _sharded_adapters(config)
    key = (config.method is Method.QLORA, config.lora_targets, sharded)
    found = cache.get(key)
    if found is None:
        shapes = spec.linear_shapes()
        adapted = adapted_modules(config.lora_targets, num_experts=spec.num_experts)
        if spec.num_experts > 1:  # expert adapters are folded into the weights, not the tokens
            adapted = tuple(n for n in adapted if n in ATTENTION_MODULES)
        # Sharded adapters are bf16 like their input: PEFT casts nothing, lora_A reads it (2·in).
        input_bytes = 2.0 if sharded else 14.0
        lora = sum(input_bytes * shapes[n][0] + 12.0 * shapes[n][1] for n in adapted)
        cast = 0.0
        # Linear4bit casts an fp32 input (the kbit-prepared residual stream) to bf16 and back;
        # sharded QLoRA keeps a bf16 stream, so there is nothing to cast.
        if config.method is Method.QLORA and not sharded:
            # Linear4bit modules: not the (parametrized) experts
            quantized = ATTENTION_MODULES if spec.num_experts > 1 else tuple(shapes)
            cast = sum(6.0 * shapes[n][0] + 6.0 * shapes[n][1] for n in quantized)
        found = cache[key] = (lora, cast, len(adapted))
    return found


def time_terms(
    spec: ModelSpec, config: TuningConfig, gpu: GPU, *, calibration: Calibration
) -> dict[str, float]:
    """The step-time features of one config on one GPU, before the fitted coefficients.

    Keys: ``compute_s_at_peak`` (matmul and attention FLOPs at the GPU's dense peak, s), split
    into ``forward_s_at_peak`` and ``backward_s_at_peak`` (the backward holds the checkpointed
    re-run's attention), ``recompute_s_at_peak`` (the linears gradient checkpointing re-runs,
    s), ``lora_traffic_s``, ``nf4_cast_traffic_s`` and ``elementwise_s`` (the LoRA path's,
    QLoRA's cast and the activation plus logits bytes at peak bandwidth, s; the forward's share
    of each is ``forward_traffic_share``), ``dequant_s`` (NF4 dequantization traffic, s;
    ``forward_pass_share`` of it in the forward), ``eager_forward_s`` and ``eager_backward_s``
    (eager attention's score traffic, s; 0 under SDPA), the host counts per forward pass
    ``host_layers``, ``host_autocast_layers``, ``host_lora_linears`` and ``host_nf4_linears``,
    ``recompute_host_passes`` (1 with checkpointing), the additive form's ``layer_passes``,
    ``autocast_layer_passes`` and ``nf4_calls`` (over all passes), ``optimizer_s`` (the optimizer
    step at the calibration's bandwidth efficiency, not fitted) and ``fixed_s`` (optimizer step
    plus dequantization and eager score traffic). Per GPU; FSDP divides the optimizer
    work by n. The optimizer step alone is ``optimizer_s``.
    """
    return _time_terms(spec, config, gpu, memory_terms(spec, config, gpu), calibration)


def _time_terms(
    spec: ModelSpec,
    config: TuningConfig,
    gpu: GPU,
    terms: dict[str, float],
    calibration: Calibration,
) -> dict[str, float]:
    bandwidth_bytes_per_s = gpu.sustained_bandwidth_tbps * 1e12
    passes = _passes(config)
    tokens = config.micro_batch_size * config.seq_len
    # Decoder-layer activations once per pass, plus the logits/cross-entropy chain once (twice
    # when chunked: backward recomputes it).
    elementwise_bytes = (
        passes * spec.num_layers * tokens * terms["layer_bytes_per_token"]
        + terms["loss_traffic_gib"] * GIB
    )
    trainable = terms["trainable_params"] / _shard_divisor(config)
    if config.sharding.offloads:
        trainable = 0.0  # the optimizer runs on the CPU (profiler.sharding.offload_seconds)
    adamw_s, bnb8_s, bnb8_tensors = _optimizer_features(spec, config, gpu, trainable=trainable)
    if config.sharding.offloads:
        bnb8_tensors = 0.0
    optimizer_s = (
        adamw_s / calibration.optimizer_bandwidth_efficiency
        + bnb8_s / calibration.bnb8_bandwidth_efficiency
        + bnb8_tensors * calibration.bnb8_host_s_per_tensor
    )
    dequant_s = nf4_calls = 0.0
    # Recipes that run under autocast (all but pure-bf16 full FT) pay a second fixed per-layer
    # cost: the autocast dispatch of every op and the cast kernels it launches (fp32 weights or
    # LoRA adapters to the compute dtype and their gradients back), which pure bf16 does without.
    autocast = config.method is not Method.FULL or config.precision is not Precision.BF16
    if config.method is Method.QLORA:
        dequant_s = (
            _spec_terms(spec).quantized_params
            * passes
            * NF4_DEQUANT_BYTES_PER_PARAM
            / bandwidth_bytes_per_s
        )
        # NF4 linears; MoE layers: 4 attention linears + 2 dequantized expert stacks.
        linears_per_layer = 6 if spec.num_experts > 1 else 7
        nf4_calls = float(spec.num_layers * linears_per_layer * passes)
    peak_flops = gpu.sustained_matmul_tflops * 1e12
    forward, backward, recompute = _step_flops(spec, config, terms["trainable_params"])
    lora_bytes, cast_bytes, adapted = _adapter_traffic_bytes_per_token(spec, config)
    # Forward once, backward twice the forward's traffic, and the checkpointed re-run once more.
    traffic_passes = (passes + 1) * spec.num_layers * tokens / bandwidth_bytes_per_s
    eager_forward_s = (
        spec.num_layers
        * EAGER_SCORE_FORWARD_TRAFFIC_BYTES
        * _eager_scores(spec, config)
        / bandwidth_bytes_per_s
    )
    eager_backward_s = eager_forward_s * (
        EAGER_SCORE_BACKWARD_TRAFFIC_BYTES / EAGER_SCORE_FORWARD_TRAFFIC_BYTES + (passes - 2)
    )
    layers = float(spec.num_layers)
    return {
        "compute_s_at_peak": (forward + backward) / peak_flops,
        "forward_s_at_peak": forward / peak_flops,
        "backward_s_at_peak": backward / peak_flops,
        "recompute_s_at_peak": recompute / peak_flops,
        "lora_traffic_s": lora_bytes * traffic_passes,
        "nf4_cast_traffic_s": cast_bytes * traffic_passes,
        "forward_traffic_share": 1.0 / (passes + 1),
        "layer_passes": layers * passes,
        "autocast_layer_passes": layers * passes if autocast else 0.0,
        "elementwise_s": elementwise_bytes / bandwidth_bytes_per_s,
        "nf4_calls": nf4_calls,
        "dequant_s": dequant_s,
        "eager_forward_s": eager_forward_s,
        "eager_backward_s": eager_backward_s,
        "forward_pass_share": 1.0 / passes,
        "host_layers": layers,
        "host_autocast_layers": layers if autocast else 0.0,
        "host_lora_linears": layers * adapted,
        "host_nf4_linears": nf4_calls / passes,
        "recompute_host_passes": 1.0 if config.grad_checkpointing else 0.0,
        "optimizer_s": optimizer_s,
        "adamw_traffic_s": adamw_s,
        "bnb8_traffic_s": bnb8_s,
        "bnb8_tensors": bnb8_tensors,
        "fixed_s": optimizer_s + dequant_s + eager_forward_s + eager_backward_s,
    }


def host_seconds(tt: dict[str, float], cal: Calibration) -> tuple[float, float]:
    """Host (launch) seconds of one step's (forward, backward) under ``host-overlap``.

    ``tt`` is :func:`time_terms`' output. Forward: the calibration's host cost per decoder layer,
    per layer under autocast, per adapted and per NF4 linear; backward: that times
    :attr:`Calibration.backward_host_fraction`, plus the forward's again for a checkpointed re-run.
    """
    forward = (
        tt["host_layers"] * cal.layer_pass_overhead_s
        + tt["host_autocast_layers"] * cal.autocast_layer_pass_overhead_s
        + tt["host_lora_linears"] * cal.lora_call_overhead_s
        + tt["host_nf4_linears"] * cal.nf4_call_overhead_s
    )
    return forward, forward * (cal.backward_host_fraction + tt["recompute_host_passes"])


def _gpu_forward_s(tt: dict[str, float], cal: Calibration) -> float:
    """GPU seconds of one step's forward pass under ``host-overlap``: its FLOPs at the MFU, its
    share of the memory-bound traffic and of the NF4 dequantization."""
    traffic = (
        tt["lora_traffic_s"] * cal.lora_traffic_factor
        + tt["nf4_cast_traffic_s"] * cal.nf4_cast_traffic_factor
        + tt["elementwise_s"] * cal.elementwise_traffic_factor
    )
    return (
        tt["forward_s_at_peak"] / cal.compute_efficiency
        + traffic * tt["forward_traffic_share"]
        + tt["dequant_s"] * tt["forward_pass_share"]
        + tt["eager_forward_s"]
    )


def forward_seconds(tt: dict[str, float], cal: Calibration) -> float:
    """Seconds of one micro-batch's forward pass alone (an eval pass under ``torch.no_grad``).

    ``host-overlap``: ``hypot`` of the forward's GPU and host time, the same terms
    :func:`compute_seconds` charges the training forward. ``additive`` (older calibrations):
    the step's time less the optimizer, in the forward's share of the FLOPs. An eval forward
    records no autograd graph, so its host time is if anything lower: an upper bound.
    """
    if cal.time_model is TimeModel.ADDITIVE:
        flops = tt["compute_s_at_peak"] + tt["recompute_s_at_peak"]
        share = tt["forward_s_at_peak"] / flops if flops > 0 else 0.0
        return (compute_seconds(tt, cal) - tt["optimizer_s"]) * share
    return math.hypot(_gpu_forward_s(tt, cal), host_seconds(tt, cal)[0])


def compute_seconds(tt: dict[str, float], cal: Calibration) -> float:
    """Seconds of one step's GPU work and host time on one GPU, before communication.

    ``tt`` is :func:`time_terms`' output. Under ``host-overlap`` each pass takes
    ``hypot(gpu, host)``: eager PyTorch queues kernels asynchronously, so a pass whose host time
    (Python, autocast and PEFT/bitsandbytes dispatch; fitted seconds per forward call) exceeds its
    GPU time is host-bound, a long one GPU-bound, and the smooth maximum covers the mix of both
    inside a pass. The backward's host time is :attr:`Calibration.backward_host_fraction` of the
    forward's, plus the forward's again for the checkpointed re-run. The optimizer step adds.
    Under ``additive`` (older calibrations) every term adds.
    """
    inv_mfu = 1.0 / cal.compute_efficiency
    inv_recompute = 1.0 / (cal.recompute_efficiency or cal.compute_efficiency)
    traffic = (
        tt["lora_traffic_s"] * cal.lora_traffic_factor
        + tt["nf4_cast_traffic_s"] * cal.nf4_cast_traffic_factor
        + tt["elementwise_s"] * cal.elementwise_traffic_factor
    )
    if cal.time_model is TimeModel.ADDITIVE:
        return (
            tt["compute_s_at_peak"] * inv_mfu
            + tt["recompute_s_at_peak"] * inv_recompute
            + traffic
            + tt["layer_passes"] * cal.layer_pass_overhead_s
            + tt["autocast_layer_passes"] * cal.autocast_layer_pass_overhead_s
            + tt["nf4_calls"] * cal.nf4_call_overhead_s
            + tt["fixed_s"]
        )
    gpu_forward = _gpu_forward_s(tt, cal)
    gpu_backward = (
        tt["backward_s_at_peak"] * inv_mfu
        + tt["recompute_s_at_peak"] * inv_recompute
        + traffic * (1.0 - tt["forward_traffic_share"])
        + tt["dequant_s"] * (1.0 - tt["forward_pass_share"])
        + tt["eager_backward_s"]
    )
    host_forward, host_backward = host_seconds(tt, cal)
    return (
        math.hypot(gpu_forward, host_forward)
        + math.hypot(gpu_backward, host_backward)
        + tt["optimizer_s"]
    )


def _optimizer_features(
    spec: ModelSpec, config: TuningConfig, gpu: GPU, *, trainable: float
) -> tuple[float, float, float]:
    """One optimizer step per GPU as (torch AdamW traffic at the sustained bandwidth, s;
    8-bit AdamW traffic at the sustained bandwidth, s; 8-bit trainable tensors per GPU).

    torch AdamW (foreach) streams :data:`_OPT_PASSES` passes of the state dtype per trainable
    parameter. bitsandbytes 8-bit AdamW reads and writes the parameter, reads the gradient and
    reads and writes two 1-byte states (3·p + 4 bytes, p the parameter's bytes), one kernel per
    trainable tensor, each followed by a device synchronize (``Calibration.bnb8_*``)."""
    pure_bf16 = config.method is Method.FULL and config.precision is Precision.BF16
    param_bytes = 2 if pure_bf16 else 4  # also the gradient dtype; LoRA adapters are fp32
    bandwidth_bytes_per_s = gpu.sustained_bandwidth_tbps * 1e12
    if config.optimizer is OptimizerKind.ADAMW:
        return trainable * _OPT_PASSES * param_bytes / bandwidth_bytes_per_s, 0.0, 0.0
    traffic_s = trainable * (3 * param_bytes + 4) / bandwidth_bytes_per_s
    if config.method is Method.FULL:
        # Per layer: 7 linear weights and 2 norms; plus embeddings, final norm and an untied head.
        tensors = 9 * spec.num_layers + 2 + (0 if spec.tied_embeddings else 1)
    else:
        assert config.lora_targets is not None
        adapted = adapted_modules(config.lora_targets, num_experts=spec.num_experts)
        tensors = 2 * len(adapted) * spec.num_layers  # lora_A and lora_B
    return 0.0, traffic_s, tensors / _shard_divisor(config)


def optimizer_seconds(tt: dict[str, float], cal: Calibration) -> float:
    """Seconds of one optimizer step per GPU from :func:`time_terms`' optimizer features."""
    return (
        tt["adamw_traffic_s"] / cal.optimizer_bandwidth_efficiency
        + tt["bnb8_traffic_s"] / cal.bnb8_bandwidth_efficiency
        + tt["bnb8_tensors"] * cal.bnb8_host_s_per_tensor
    )


def link_gbps_per_direction(gpu: GPU) -> float:
    """GPU-to-GPU bandwidth inside a node, GB/s in one direction.

    The catalog's ``intra_node_gbps`` is the bidirectional total for NVLink (datasheet figures)
    and per direction for PCIe; see :data:`_BIDIRECTIONAL_LINK_DIVISOR`.
    """
    return gpu.intra_node_gbps / _BIDIRECTIONAL_LINK_DIVISOR.get(gpu.intra_node_interconnect, 1.0)


def _communication_s(
    spec: ModelSpec, config: TuningConfig, gpu: GPU, *, nodes: int, inter_node_gbps: float
) -> float:
    """Seconds of collective communication per step (before overlap with compute).

    DDP all-reduces the trainable gradients (ring: 2·(n−1)/n of their bytes per GPU). FSDP and
    ZeRO-3 all-gather the 16-bit (QLoRA: 4-bit) parameters in forward and again in backward and
    reduce-scatter the gradients (:func:`profiler.sharding.collective_bytes_per_gpu`). Bandwidth is
    the GPU's intra-node link per direction (GB/s; :func:`link_gbps_per_direction`) on one node;
    over several nodes each GPU gets its share of the node's network bandwidth
    (``inter_node_gbps`` / GPUs per node), the ring's slowest hop.
    """
    n = config.gpu_count
    if n == 1:
        return 0.0
    if nodes > 1:
        if inter_node_gbps <= 0:
            raise ValueError(
                f"{nodes} nodes need the network bandwidth between them: inter_node_gbps must be "
                f"> 0, got {inter_node_gbps}. To fix: use an offer with inter_node_gbps set"
            )
        link_gbps = min(
            link_gbps_per_direction(gpu) or inter_node_gbps, inter_node_gbps / max(1, n // nodes)
        )
    else:
        link_gbps = link_gbps_per_direction(gpu)
    if link_gbps <= 0:
        raise ValueError(
            f"{gpu.name} has no GPU-to-GPU link in the catalog (intra_node_gbps=0); "
            f"{n} GPUs cannot be estimated. To fix: use one GPU per node"
        )
    bytes_per_s = link_gbps * 1e9 * COMM_EFFICIENCY
    return _collective_bytes(spec, config) / bytes_per_s


def _collective_bytes(spec: ModelSpec, config: TuningConfig) -> float:
    """Bytes each GPU sends per step (:func:`profiler.sharding.collective_bytes_per_gpu`)."""
    t = _spec_terms(spec)
    trainable = trainable_params(spec, config)
    if config.sharding.shards_state:
        if config.method is Method.QLORA:  # NF4 in bf16 storage is gathered as 4-bit bytes
            gather = t.quantized_params * NF4_BYTES_PER_PARAM
            gather += (t.param_count - t.quantized_params) * 2.0
        else:
            gather = t.param_count * 2.0
        grads = trainable * 2.0  # reduce-scattered in bf16 (full FT) / bf16 adapters
    else:
        gather = 0.0
        full_bf16 = config.method is Method.FULL and config.precision is Precision.BF16
        grads = trainable * (2.0 if full_bf16 else 4.0)
    return collective_bytes_per_gpu(
        sharding=config.sharding,
        gpu_count=config.gpu_count,
        gather_bytes=gather,
        trainable_gradient_bytes=grads,
    )


# Per regime: (quantity, index in BAND_QUANTITIES, low factor, high factor).
Band = tuple[tuple[str, int, float, float], ...]


@dataclass(slots=True)
class _Applied:
    """A calibration as applied to one GPU: the transferred calibration, the estimate's
    provenance, and its bands per (recipe regime, transfer regime), built on first use."""

    calibration: Calibration
    gpu: GPU
    on_gpu: Calibration
    provenance: Provenance
    ranges: dict[str, dict[str, tuple[float, float]]]
    transfer: dict[str, dict[str, tuple[float, float]]]
    bands: dict[tuple[str, str], Band]

    def band(self, config: TuningConfig) -> Band:
        """Per quantity, the factors that give the band's low and high ends: the residual
        range of the recipe's regime (the pooled one where it has none), widened to the
        transfer range of the config's transfer regime on a GPU without its own fit."""
        key = (regime_of(config), transfer_regime(config) if self.transfer else "")
        found = self.bands.get(key)
        if found is None:
            found = self.bands[key] = self._band(*key)
        return found

    def _band(self, regime: str, transfer: str) -> Band:
        own = self.ranges.get(regime) or self.ranges.get(ALL_REGIMES) or {}
        pooled = self.ranges.get(ALL_REGIMES, {})
        wider = self.transfer.get(transfer, {})
        factors = []
        for i, quantity in enumerate(BAND_QUANTITIES):
            found = own.get(quantity) or pooled.get(quantity)
            extra = wider.get(quantity)
            if found is None and extra is None:
                continue
            low, high = found if found is not None else extra  # type: ignore[misc]
            if extra is not None:
                low, high = min(low, extra[0]), max(high, extra[1])
            if low <= -1.0:
                continue
            # The true value lies in estimate / (1 + residual).
            factors.append((quantity, i, 1.0 / (1.0 + high), 1.0 / (1.0 + low)))
        return tuple(factors)


_APPLIED_CACHE: dict[tuple[int, str], _Applied] = {}


def _applied(calibration: Calibration, gpu: GPU) -> _Applied:
    """The calibration as it applies to ``gpu`` (:func:`profiler.calibration.transferred`),
    with the estimate's provenance and bands, cached per (calibration, GPU)."""
    # By id() with an identity check: hashing a Calibration on every call costs ~5 µs.
    key = (id(calibration), gpu.name)
    hit = _APPLIED_CACHE.get(key)
    if hit is not None and hit.calibration is calibration and hit.gpu is gpu:
        return hit
    if len(_APPLIED_CACHE) > 256:
        _APPLIED_CACHE.clear()
    ranges: dict[str, dict[str, tuple[float, float]]] = {}
    for quantity, regime, low, high in calibration.bands:
        ranges.setdefault(regime, {})[quantity] = (low, high)
    transfer: dict[str, dict[str, tuple[float, float]]] = {}
    if calibration.gpu != gpu.name:
        for quantity, regime, low, high in calibration.transfer_bands:
            transfer.setdefault(regime, {})[quantity] = (low, high)
    found = _APPLIED_CACHE[key] = _Applied(
        calibration=calibration,
        gpu=gpu,
        on_gpu=transferred(calibration, gpu),
        provenance=_make_provenance(calibration, gpu),
        ranges=ranges,
        transfer=transfer,
        bands={},
    )
    return found


def _scaling_note(calibration: Calibration, gpu: GPU) -> str:
    """How a calibration fitted on another GPU is carried over to ``gpu``: the measured
    (sustained) matmul rate and bandwidth of each, and the transferred efficiency."""
    from catalog import CatalogError, get_gpu

    try:
        source = get_gpu(calibration.gpu)
    except (CatalogError, KeyError, ValueError):
        return f"; fitted on {calibration.gpu}, applied to {gpu.name} with its own specs"
    compute = gpu.sustained_matmul_tflops / source.sustained_matmul_tflops
    bandwidth = gpu.sustained_bandwidth_tbps / source.sustained_bandwidth_tbps
    factor = transfer_factor(calibration, gpu)
    measured = "measured" if gpu.achievable_matmul_tflops else "datasheet (no measurement)"
    return (
        f"; no {gpu.name} calibration: the {source.name} fit carried over by the sustained "
        f"rates microbenchmarks measured ({measured}): matmul x{compute:.2f} "
        f"({source.sustained_matmul_tflops:g} -> {gpu.sustained_matmul_tflops:g} TFLOP/s), "
        f"its efficiency x{factor:.2f} (a slower card spends more of a step in its matmuls; "
        f"exponent {calibration.transfer_exponent:g} fitted on "
        f"{calibration.transfer_source or 'nothing'}), "
        f"bandwidth x{bandwidth:.2f} ({source.sustained_bandwidth_tbps:g} -> "
        f"{gpu.sustained_bandwidth_tbps:g} TB/s), host launch time x1.00 (it follows the host "
        f"CPU, not the GPU)"
    )


def _make_provenance(calibration: Calibration, gpu: GPU) -> Provenance:
    fitted = (
        f"calibration {calibration.gpu} fitted {calibration.fitted_date} on "
        f"{calibration.fit_inputs} runs ({calibration.provenance.device}, data "
        f"{calibration.provenance.date})"
        if calibration.fit_inputs
        else "first-principles defaults, no calibration"
    )
    if calibration.fit_inputs and calibration.gpu != gpu.name:
        fitted += _scaling_note(calibration, gpu)
    if calibration.bands:
        fitted += (
            "; bands: 80% intervals of the leave-one-model-out residuals of the estimate's "
            "regime (recipe, checkpointing)"
        )
        if calibration.gpu != gpu.name and calibration.transfer_bands:
            fitted += (
                ", widened to those of estimates for GPUs without a fit of their own in its "
                "sharding regime (published figures held out by GPU)"
            )
    return Provenance(device="none (analytic)", date="", method="analytic estimator", notes=fitted)


def _bands(
    applied: _Applied, config: TuningConfig, values: tuple[float, float, float]
) -> tuple[tuple[str, float, float], ...]:
    """Each quantity's band; ``values`` are step time, peak allocated and peak reserved."""
    return tuple(
        [(q, values[i] * low, values[i] * high) for q, i, low, high in applied.band(config)]
    )


def estimate(
    spec: ModelSpec,
    config: TuningConfig,
    gpu: GPU,
    *,
    nodes: int = 1,
    inter_node_gbps: float = 0.0,
    calibration: Calibration,
) -> Measurement:
    """Estimate peak memory per GPU and step time of a training config, analytically.

    Args:
        spec: Model architecture.
        config: Training config (per-GPU micro-batch and sequence length, GPU count, sharding).
        gpu: The GPU model (all GPUs alike).
        nodes: Machines the ``config.gpu_count`` GPUs are spread over.
        inter_node_gbps: Network bandwidth between nodes, GB/s per node (used when nodes > 1).
        calibration: Fitted parameters; the caller loads them
            (:func:`profiler.calibration.calibration_for`: the GPU's own fit, else the H100 fit
            scaled to this GPU).

    Returns:
        A Measurement with ``source=estimated``: peak allocated and reserved GiB per GPU (the
        maximum of the forward/backward and optimizer-step phases, both in ``phase_peaks_gib``),
        step time in seconds, tokens/s over all GPUs, parameter counts and a breakdown.

    Raises:
        ValueError: For bf16 on a GPU without bf16, or several nodes without a bandwidth.
    """
    if config.precision is not Precision.FP16_MIXED and not gpu.bf16_supported:
        raise ValueError(
            f"{gpu.name} has no bf16; precision={config.precision.value} cannot run on it. "
            f"To fix: use precision fp16-mixed"
        )
    applied = _applied(calibration, gpu)
    cal = applied.on_gpu
    mem = memory_terms(spec, config, gpu)
    scaled_dynamic = mem["dynamic_gib"] * cal.activation_scale
    forward_only = mem["forward_only_cache_gib"]
    fb_peak = (
        mem["fb_static_gib"]
        - forward_only
        + max(scaled_dynamic + forward_only, mem["gradients_gib"])
    )
    opt_peak = mem["optimizer_step_gib"]
    peak = max(fb_peak, opt_peak)
    if fb_peak >= opt_peak:
        breakdown = MemoryBreakdown(
            weights_gib=mem["weights_gib"] + mem["autocast_cache_gib"],
            gradients_gib=max(0.0, mem["gradients_gib"] - scaled_dynamic - forward_only),
            optimizer_gib=mem["optimizer_gib"],
            activations_gib=mem["activations_gib"] * cal.activation_scale,
            logits_gib=mem["logits_gib"] * cal.activation_scale,
            overhead_gib=mem["overhead_gib"],
        )
    else:
        breakdown = MemoryBreakdown(
            weights_gib=mem["weights_gib"],
            gradients_gib=mem["gradients_gib"],
            optimizer_gib=mem["optimizer_gib"] + mem["optimizer_temp_gib"],
            activations_gib=0.0,
            logits_gib=0.0,
            overhead_gib=mem["overhead_gib"],
        )

    tt = _time_terms(spec, config, gpu, mem, cal)
    compute_s = compute_seconds(tt, cal)
    comm_s = _communication_s(spec, config, gpu, nodes=nodes, inter_node_gbps=inter_node_gbps)
    gpus_per_node = max(1, config.gpu_count // max(1, nodes))
    pcie_s = cpu_optimizer_s = 0.0
    if config.sharding.offloads:
        shards = _shard_divisor(config)
        weights = _state_bytes(spec, config, int(mem["trainable_params"])).weights
        pcie_s, cpu_optimizer_s = offload_seconds(
            sharding=config.sharding,
            gpu=gpu,
            offloaded_weight_bytes_per_gpu=weights / shards,
            gradient_bytes_per_gpu=mem["trainable_params"] * 2.0 / shards,
            trainable_params_per_node=mem["trainable_params"] * gpus_per_node / shards,
        )
    # PCIe offload traffic overlaps compute like the collectives (prefetch); the CPU optimizer
    # step runs after backward and adds in full. Both are assumptions until measured.
    link_s = comm_s + pcie_s
    step_s = compute_s + link_s - COMM_OVERLAP * min(compute_s, link_s) + cpu_optimizer_s
    host_gib = host_ram_gib(
        mem["host_bytes_per_gpu"],
        gpus_per_node=gpus_per_node,
        extra_host_bytes_per_gpu=(
            zero3_master_copy_bytes(
                method=config.method,
                full_mixed=config.precision is not Precision.BF16,
                param_count=spec.param_count,
            )
            / _shard_divisor(config)
            if config.sharding is Sharding.ZERO3_OFFLOAD
            else 0.0
        ),
    )
    trainable = int(mem["trainable_params"])
    if loads_on_rank0(sharding=config.sharding, method=config.method):
        # Rank 0 holds the whole model in CPU memory while it loads, before FSDP moves the
        # shards to the GPUs (or, offloading, keeps them): its node needs that much at least.
        whole = _state_bytes(spec, config, trainable).weights
        loading = host_ram_gib(
            0.0, gpus_per_node=gpus_per_node, extra_host_bytes_per_gpu=whole / gpus_per_node
        )
        host_gib = max(host_gib, loading)
    tokens = config.micro_batch_size * config.seq_len
    reserved = cal.reserved_gib(peak, config.sharding)
    bands = _bands(applied, config, (step_s, peak, reserved))
    return Measurement(
        model=spec.name,
        gpu=gpu.name,
        config=config,
        status=Status.OK,
        source=Source.ESTIMATED,
        provenance=applied.provenance,
        peak_allocated_gib=peak,
        peak_reserved_gib=reserved,
        host_ram_gib=host_gib,
        step_time_s=step_s,
        tokens_per_s=tokens * config.gpu_count / step_s,
        trainable_params=trainable,
        total_params=spec.param_count + (0 if config.method is Method.FULL else trainable),
        breakdown=breakdown,
        phase_peaks_gib=(("forward_backward", fb_peak), ("optimizer_step", opt_peak)),
        bands=bands,
    )


def eval_pass(
    spec: ModelSpec, config: TuningConfig, gpu: GPU, *, calibration: Calibration
) -> EvalEstimate:
    """Memory and time of an eval pass of ``config`` on one GPU (see :class:`EvalEstimate`).

    Memory: what stays resident between steps (weights, autocast cache, optimizer states, the
    sharding working set) plus the forward's transients: one decoder layer's activations (a
    no-grad forward frees each layer's as it goes) and the loss chain at
    :data:`EVAL_LOGITS_BYTES_PER_TOKEN_VOCAB`, both scaled like the training activations. Time:
    :func:`forward_seconds`. Assumptions until measured: the eval micro-batch is the training
    one, and no gradients are held (the recipe's ``zero_grad(set_to_none=True)``).
    """
    cal = _applied(calibration, gpu).on_gpu
    mem = memory_terms(spec, config, gpu)
    tokens = config.micro_batch_size * config.seq_len
    loss_tokens = min(tokens, CHUNKED_LOSS_TOKENS) if config.chunked_loss else tokens
    transient = (
        tokens * mem["layer_bytes_per_token"]
        + EAGER_SCORE_SAVED_BYTES * _eager_scores(spec, config)
        + EVAL_LOGITS_BYTES_PER_TOKEN_VOCAB * loss_tokens * spec.vocab_size
    )
    peak = mem["fb_static_gib"] + transient / GIB * cal.activation_scale
    tt = _time_terms(spec, config, gpu, mem, cal)
    forward_tt = tt
    if config.chunked_loss:
        # A forward runs the loss chain once, chunked or not; the chunked terms are backward
        # work (the head and the chain recomputed), so the pass is timed unchunked.
        unchunked = dataclasses.replace(config, chunked_loss=False)
        forward_tt = _time_terms(
            spec,
            unchunked,
            gpu,
            memory_terms(spec, unchunked, gpu),
            cal,
        )
    return EvalEstimate(
        peak_allocated_gib=peak,
        step_time_s=forward_seconds(forward_tt, cal),
        train_step_time_s=compute_seconds(tt, cal),
    )


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
    state = _state_bytes(spec, config, trainable_params(spec, config))
    qlora = config.method is Method.QLORA
    in_flight = 2.0 * max(a * b for a, b in spec.linear_shapes().values()) if qlora else 0.0
    whole = state.weights + in_flight
    if not config.sharding.shards_state or loads_whole_model_per_gpu(
        sharding=config.sharding, method=config.method
    ):
        return whole / GIB + ALLOCATOR_OVERHEAD_GIB
    quant_states = (
        _spec_terms(spec).quantized_params * (NF4_BYTES_PER_PARAM - 0.5) if qlora else 0.0
    )
    shards = 0.0 if config.sharding.offloads else state.weights / _shard_divisor(config)
    if loads_on_rank0(sharding=config.sharding, method=config.method):
        unit = max(state.root_gather_bytes, state.layer_gather_bytes)
    else:
        unit = max(state.head_gather_bytes, state.layer_gather_bytes)
    peak = max(quant_states + in_flight, shards + unit + quant_states)
    return peak / GIB + ALLOCATOR_OVERHEAD_GIB


def memory_fits(peak_reserved_gib: float, gpu: GPU) -> bool:
    """Whether an *estimated* peak reserved memory (GiB per GPU) fits on ``gpu``: the fit
    verdict (:func:`profiler.headroom.check_fit`) is ``fits`` or ``tight``."""
    return check_fit(peak_reserved_gib, gpu, source=Source.ESTIMATED).fits
