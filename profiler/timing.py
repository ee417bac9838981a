"""Step-time model: one training step's GPU work, host time and communication, in seconds.

Per pass (forward, backward), the GPU's work (matmul and attention FLOPs at the fitted share of
its sustained rate, the checkpointed re-run at its own; memory-bound elementwise, LoRA-path and
NF4-cast traffic at its sustained bandwidth times fitted factors; NF4 dequantization and eager
attention's score traffic) overlaps the host time that launches it (per decoder layer, once
more under autocast, per adapted and per NF4 linear), combined as ``hypot``; the optimizer step
adds. :func:`time_terms` gives a config's features (:class:`TimeTerms`), :func:`pass_features`
their arrangement in the two passes, :func:`gpu_pass_seconds`, :func:`host_pass_seconds` and
:func:`combine_passes` the formula: the estimate
(:func:`compute_seconds`) and the fit (:mod:`profiler.fit`) both go through these, so the model
is written once. Collectives: :func:`communication_seconds`. docs/estimator.md derives each term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from catalog import GIB, Interconnect
from profiler._types import (
    ATTENTION_MODULES,
    Method,
    OptimizerKind,
    Precision,
    TuningConfig,
    adapted_modules,
)
from profiler.calibration import TimeModel
from profiler.memory import (
    EAGER_ATTENTION_MODEL_TYPES,
    NF4_BYTES_PER_PARAM,
    MemoryTerms,
    eager_scores,
    memory_terms,
    shard_divisor,
    sharded_adapters,
    spec_terms,
    trainable_params,
)
from profiler.sharding import collective_bytes_per_gpu

if TYPE_CHECKING:
    from catalog import GPU, ModelSpec
    from profiler.calibration import Calibration

# Eager attention's score traffic (Gemma 2: EAGER_ATTENTION_MODEL_TYPES), per score in a forward:
# the scores written, scaled, soft-capped (divide, tanh, multiply), masked, soft-maxed to fp32,
# cast back and read by the value matmul, about 38 bytes; in the backward the same chain's
# gradients, about 50 (the fp32 softmax backward reads two fp32 tensors and writes one); a
# checkpointed re-run pays the forward's again. At the sustained bandwidth, not fitted (no
# reference run uses eager attention; profiler.memory has the bytes it holds).
EAGER_SCORE_FORWARD_TRAFFIC_BYTES = 38.0
EAGER_SCORE_BACKWARD_TRAFFIC_BYTES = 50.0


# NF4 dequantization traffic per parameter per pass: read 0.5 B of NF4 and write 2 B of bf16
# (bitsandbytes dequantizes the whole weight for inputs of >1 token). The matmul's read of the
# bf16 weight is not counted: at >=512 tokens the GEMM is compute-bound and hides its operand
# loads (4.5 B with that read counted: held-out median 6.7% -> 6.4% without it, and the H200
# 70B per-layer time 24% -> 22% over).
NF4_DEQUANT_BYTES_PER_PARAM = 2.5


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


def min_flops_per_token(spec: ModelSpec, method: Method) -> float:
    """Training FLOPs per token that no config of ``method`` goes below: 6 × the decoder-linear
    weights a token passes through for full FT, 4 × for LoRA/QLoRA (forward and input gradients;
    adapters, attention scores, the head and recomputation only add; see :func:`_step_flops`)."""
    return (4.0 if method.traits.adapters else 6.0) * spec_terms(spec).active_linear_params


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
    t = spec_terms(spec)
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
    if not config.method.traits.adapters:
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
    traits = config.method.traits
    if not traits.adapters:
        return 0.0, 0.0, 0
    assert config.lora_targets is not None
    cache = spec_terms(spec).traffic
    sharded = sharded_adapters(config)
    key = (traits.quantized_base, config.lora_targets, sharded)
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
        if traits.quantized_base and not sharded:
            # Linear4bit modules: not the (parametrized) experts
            quantized = ATTENTION_MODULES if spec.num_experts > 1 else tuple(shapes)
            cast = sum(6.0 * shapes[n][0] + 6.0 * shapes[n][1] for n in quantized)
        found = cache[key] = (lora, cast, len(adapted))
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeTerms:
    """The step-time features of one config on one GPU, per GPU, before the fitted coefficients.

    Seconds unless named otherwise. ``forward_s_at_rate`` and ``backward_s_at_rate``: the
    matmul and attention FLOPs of each pass at the GPU's sustained matmul rate (the backward
    holds the checkpointed re-run's attention); ``recompute_s_at_rate``: the linears gradient
    checkpointing re-runs. ``lora_traffic_s``, ``nf4_cast_traffic_s`` and ``elementwise_s``: the
    LoRA path's, QLoRA's casts' and the activation plus logits bytes at the sustained bandwidth,
    of which ``forward_traffic_share`` is the forward's. ``dequant_s``: NF4 dequantization
    traffic, ``forward_pass_share`` of it in the forward. ``eager_forward_s`` /
    ``eager_backward_s``: eager attention's score traffic (0 under SDPA). Host counts per
    forward: ``host_layers``, ``host_autocast_layers``, ``host_lora_linears``,
    ``host_nf4_linears``; ``recompute_host_passes`` is 1 with checkpointing. The additive form's
    counts over all passes: ``layer_passes``, ``autocast_layer_passes``, ``nf4_calls``. The
    optimizer step: ``adamw_traffic_s`` and ``bnb8_traffic_s`` at the sustained bandwidth,
    ``bnb8_tensors`` per GPU, and ``optimizer_s`` at the calibration's efficiencies
    (:func:`optimizer_seconds`; FSDP divides the work by n; offload runs it on the CPU).
    """

    forward_s_at_rate: float
    backward_s_at_rate: float
    recompute_s_at_rate: float
    lora_traffic_s: float
    nf4_cast_traffic_s: float
    elementwise_s: float
    forward_traffic_share: float
    dequant_s: float
    forward_pass_share: float
    eager_forward_s: float
    eager_backward_s: float
    host_layers: float
    host_autocast_layers: float
    host_lora_linears: float
    host_nf4_linears: float
    recompute_host_passes: float
    layer_passes: float
    autocast_layer_passes: float
    nf4_calls: float
    adamw_traffic_s: float
    bnb8_traffic_s: float
    bnb8_tensors: float
    optimizer_s: float

    @property
    def compute_s_at_rate(self) -> float:
        """Both passes' FLOPs at the sustained rate, s."""
        return self.forward_s_at_rate + self.backward_s_at_rate

    @property
    def fixed_s(self) -> float:
        """What no fitted coefficient scales: the optimizer step, NF4 dequantization and eager
        attention's score traffic, s."""
        return self.optimizer_s + self.dequant_s + self.eager_forward_s + self.eager_backward_s


def time_terms(
    spec: ModelSpec, config: TuningConfig, gpu: GPU, *, calibration: Calibration
) -> TimeTerms:
    """The step-time features of one config on one GPU (:class:`TimeTerms`)."""
    return time_terms_of(spec, config, gpu, memory_terms(spec, config, gpu), calibration)


def time_terms_of(
    spec: ModelSpec,
    config: TuningConfig,
    gpu: GPU,
    terms: MemoryTerms,
    calibration: Calibration,
) -> TimeTerms:
    """:func:`time_terms` from the config's memory terms (the estimator has them already)."""
    bandwidth_bytes_per_s = gpu.sustained_bandwidth_tbps * 1e12
    passes = _passes(config)
    tokens = config.micro_batch_size * config.seq_len
    # Decoder-layer activations once per pass, plus the logits/cross-entropy chain once (twice
    # when chunked: backward recomputes it).
    elementwise_bytes = (
        passes * spec.num_layers * tokens * terms.layer_bytes_per_token
        + terms.loss_traffic_gib * GIB
    )
    trainable = terms.trainable_params / shard_divisor(config)
    if config.sharding.offloads:
        trainable = 0.0  # the optimizer runs on the CPU (profiler.sharding.offload_seconds)
    adamw_s, bnb8_s, bnb8_tensors = _optimizer_features(spec, config, gpu, trainable=trainable)
    if config.sharding.offloads:
        bnb8_tensors = 0.0
    dequant_s = nf4_calls = 0.0
    # Recipes that run under autocast (all but pure-bf16 full FT) pay a second fixed per-layer
    # cost: the autocast dispatch of every op and the cast kernels it launches (fp32 weights or
    # LoRA adapters to the compute dtype and their gradients back), which pure bf16 does without.
    traits = config.method.traits
    autocast = traits.adapters or config.precision is not Precision.BF16
    if traits.quantized_base:
        dequant_s = (
            spec_terms(spec).quantized_params
            * passes
            * NF4_DEQUANT_BYTES_PER_PARAM
            / bandwidth_bytes_per_s
        )
        # NF4 linears; MoE layers: 4 attention linears + 2 dequantized expert stacks.
        linears_per_layer = 6 if spec.num_experts > 1 else 7
        nf4_calls = float(spec.num_layers * linears_per_layer * passes)
    rate_flops = gpu.sustained_matmul_tflops * 1e12
    forward, backward, recompute = _step_flops(spec, config, terms.trainable_params)
    lora_bytes, cast_bytes, adapted = _adapter_traffic_bytes_per_token(spec, config)
    # Forward once, backward twice the forward's traffic, and the checkpointed re-run once more.
    traffic_passes = (passes + 1) * spec.num_layers * tokens / bandwidth_bytes_per_s
    eager_forward_s = (
        spec.num_layers
        * EAGER_SCORE_FORWARD_TRAFFIC_BYTES
        * eager_scores(spec, config)
        / bandwidth_bytes_per_s
    )
    eager_backward_s = eager_forward_s * (
        EAGER_SCORE_BACKWARD_TRAFFIC_BYTES / EAGER_SCORE_FORWARD_TRAFFIC_BYTES + (passes - 2)
    )
    layers = float(spec.num_layers)
    return TimeTerms(
        forward_s_at_rate=forward / rate_flops,
        backward_s_at_rate=backward / rate_flops,
        recompute_s_at_rate=recompute / rate_flops,
        lora_traffic_s=lora_bytes * traffic_passes,
        nf4_cast_traffic_s=cast_bytes * traffic_passes,
        elementwise_s=elementwise_bytes / bandwidth_bytes_per_s,
        forward_traffic_share=1.0 / (passes + 1),
        dequant_s=dequant_s,
        forward_pass_share=1.0 / passes,
        eager_forward_s=eager_forward_s,
        eager_backward_s=eager_backward_s,
        host_layers=layers,
        host_autocast_layers=layers if autocast else 0.0,
        host_lora_linears=layers * adapted,
        host_nf4_linears=nf4_calls / passes,
        recompute_host_passes=1.0 if config.grad_checkpointing else 0.0,
        layer_passes=layers * passes,
        autocast_layer_passes=layers * passes if autocast else 0.0,
        nf4_calls=nf4_calls,
        adamw_traffic_s=adamw_s,
        bnb8_traffic_s=bnb8_s,
        bnb8_tensors=bnb8_tensors,
        optimizer_s=adamw_s / calibration.optimizer_bandwidth_efficiency
        + bnb8_s / calibration.bnb8_bandwidth_efficiency
        + bnb8_tensors * calibration.bnb8_host_s_per_tensor,
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
    adapters = config.method.traits.adapters
    pure_bf16 = not adapters and config.precision is Precision.BF16
    param_bytes = 2 if pure_bf16 else 4  # also the gradient dtype; LoRA adapters are fp32
    bandwidth_bytes_per_s = gpu.sustained_bandwidth_tbps * 1e12
    if config.optimizer is OptimizerKind.ADAMW:
        return trainable * _OPT_PASSES * param_bytes / bandwidth_bytes_per_s, 0.0, 0.0
    traffic_s = trainable * (3 * param_bytes + 4) / bandwidth_bytes_per_s
    if not adapters:
        # Per layer: 7 linear weights and 2 norms; plus embeddings, final norm and an untied head.
        tensors = 9 * spec.num_layers + 2 + (0 if spec.tied_embeddings else 1)
    else:
        assert config.lora_targets is not None
        adapted = adapted_modules(config.lora_targets, num_experts=spec.num_experts)
        tensors = 2 * len(adapted) * spec.num_layers  # lora_A and lora_B
    return 0.0, traffic_s, tensors / shard_divisor(config)


def optimizer_seconds(tt: TimeTerms, cal: Calibration) -> float:
    """Seconds of one optimizer step per GPU from :func:`time_terms`' optimizer features at
    ``cal``'s efficiencies (what ``tt.optimizer_s`` holds for the calibration it was made with)."""
    return (
        tt.adamw_traffic_s / cal.optimizer_bandwidth_efficiency
        + tt.bnb8_traffic_s / cal.bnb8_bandwidth_efficiency
        + tt.bnb8_tensors * cal.bnb8_host_s_per_tensor
    )


# --------------------------------------------------------------------------------------------
# The host-overlap formula, once, for the estimate and the fit.

# The fitted coefficients of the host-overlap model, in order: what multiplies the GPU features
# of a pass (1/MFU, 1/recompute efficiency, the LoRA-path, NF4-cast and elementwise traffic
# factors), then the host features (seconds per forward call of a decoder layer, of autocast
# per layer, of a LoRA-adapted linear, of an NF4 linear).
GPU_COEFFICIENTS = 5
HOST_COEFFICIENTS = 4


def coefficients(cal: Calibration) -> tuple[float, ...]:
    """``cal``'s host-overlap coefficients in the order of :func:`pass_features`' columns."""
    return (
        1.0 / cal.compute_efficiency,
        1.0 / (cal.recompute_efficiency or cal.compute_efficiency),
        cal.lora_traffic_factor,
        cal.nf4_cast_traffic_factor,
        cal.elementwise_traffic_factor,
        cal.layer_pass_overhead_s,
        cal.autocast_layer_pass_overhead_s,
        cal.lora_call_overhead_s,
        cal.nf4_call_overhead_s,
    )


@dataclass(frozen=True, slots=True)
class GpuPass:
    """One pass's GPU work, before the fitted coefficients (floats, or numpy arrays over rows in
    the fit): FLOPs at the sustained rate (``flops_s``; the re-run's linears apart,
    ``recompute_s``), the step's LoRA-path, NF4-cast and elementwise traffic at the sustained
    bandwidth (``traffic``) of which the pass takes ``traffic_share``, the step's NF4
    dequantization of which it takes ``dequant_share``, and unfitted seconds (``extra_s``:
    eager attention's score traffic)."""

    flops_s: Any
    recompute_s: Any
    traffic: tuple[Any, Any, Any]
    traffic_share: Any
    dequant_s: Any
    dequant_share: Any
    extra_s: Any


@dataclass(frozen=True, slots=True)
class PassFeatures:
    """One config's step laid out for the host-overlap formula: the GPU work of the forward and
    the backward pass, the host features of a forward (its host seconds are ``host`` times the
    host coefficients; the backward's that times ``host_backward_multiplier``) and the
    optimizer step, which adds."""

    forward: GpuPass
    backward: GpuPass
    host: tuple[Any, Any, Any, Any]
    host_backward_multiplier: Any
    optimizer_s: Any


def pass_features(tt: TimeTerms, *, backward_host_fraction: float) -> PassFeatures:
    """The arrangement of :class:`TimeTerms` in the forward and backward passes: the forward
    takes ``forward_traffic_share`` of the traffic and ``forward_pass_share`` of the
    dequantization; the backward the rest, the re-run's FLOPs and its host time (a checkpointed
    re-run pays the forward's host time again; autograd's C++ engine launches the backward with
    ``backward_host_fraction`` of it)."""
    traffic = (tt.lora_traffic_s, tt.nf4_cast_traffic_s, tt.elementwise_s)
    return PassFeatures(
        forward=GpuPass(
            flops_s=tt.forward_s_at_rate,
            recompute_s=0.0,
            traffic=traffic,
            traffic_share=tt.forward_traffic_share,
            dequant_s=tt.dequant_s,
            dequant_share=tt.forward_pass_share,
            extra_s=tt.eager_forward_s,
        ),
        backward=GpuPass(
            flops_s=tt.backward_s_at_rate,
            recompute_s=tt.recompute_s_at_rate,
            traffic=traffic,
            traffic_share=1.0 - tt.forward_traffic_share,
            dequant_s=tt.dequant_s,
            dequant_share=1.0 - tt.forward_pass_share,
            extra_s=tt.eager_backward_s,
        ),
        host=(
            tt.host_layers,
            tt.host_autocast_layers,
            tt.host_lora_linears,
            tt.host_nf4_linears,
        ),
        host_backward_multiplier=backward_host_fraction + tt.recompute_host_passes,
        optimizer_s=tt.optimizer_s,
    )


def gpu_pass_seconds(work: GpuPass, theta: Any) -> Any:
    """A pass's GPU seconds at the host-overlap coefficients ``theta`` (:func:`coefficients`
    order): FLOPs over the fitted efficiencies, traffic times its factors, plus the unfitted
    terms."""
    traffic = work.traffic[0] * theta[2] + work.traffic[1] * theta[3] + work.traffic[2] * theta[4]
    return (
        work.flops_s * theta[0]
        + work.recompute_s * theta[1]
        + traffic * work.traffic_share
        + work.dequant_s * work.dequant_share
        + work.extra_s
    )


def gpu_pass_gradient(work: GpuPass) -> tuple[Any, Any, Any, Any, Any]:
    """d :func:`gpu_pass_seconds` / d the five GPU coefficients (it is linear in them)."""
    share = work.traffic_share
    return (
        work.flops_s,
        work.recompute_s,
        work.traffic[0] * share,
        work.traffic[1] * share,
        work.traffic[2] * share,
    )


def host_pass_seconds(features: PassFeatures, theta: Any) -> Any:
    """A forward's host seconds at the coefficients ``theta``."""
    host = features.host
    return host[0] * theta[5] + host[1] * theta[6] + host[2] * theta[7] + host[3] * theta[8]


def combine_passes(
    gpu_forward_s: Any,
    gpu_backward_s: Any,
    host_forward_s: Any,
    host_backward_s: Any,
    optimizer_s: Any,
    *,
    hypot: Callable[[Any, Any], Any] = math.hypot,
) -> Any:
    """The step: each pass's GPU work overlapped with the host time that launches it (eager
    PyTorch queues kernels asynchronously), as ``hypot``: the longer of the two where one
    dominates, more where they are alike; plus the optimizer step. ``hypot`` is numpy's when
    the fit evaluates every row at once."""
    return (
        hypot(gpu_forward_s, host_forward_s) + hypot(gpu_backward_s, host_backward_s) + optimizer_s
    )


def _pass_parts(tt: TimeTerms, cal: Calibration) -> tuple[float, float, float, float]:
    """(GPU forward, GPU backward, host forward, host backward) seconds under host-overlap."""
    features = pass_features(tt, backward_host_fraction=cal.backward_host_fraction)
    theta = coefficients(cal)
    host_forward = host_pass_seconds(features, theta)
    return (
        gpu_pass_seconds(features.forward, theta),
        gpu_pass_seconds(features.backward, theta),
        host_forward,
        host_forward * features.host_backward_multiplier,
    )


def host_seconds(tt: TimeTerms, cal: Calibration) -> tuple[float, float]:
    """Host (launch) seconds of one step's (forward, backward) under ``host-overlap``."""
    parts = _pass_parts(tt, cal)
    return parts[2], parts[3]


def forward_seconds(tt: TimeTerms, cal: Calibration) -> float:
    """Seconds of one micro-batch's forward pass alone (an eval pass under ``torch.no_grad``).

    ``host-overlap``: ``hypot`` of the forward's GPU and host time, the same terms
    :func:`compute_seconds` charges the training forward. ``additive`` (older calibrations):
    the step's time less the optimizer, in the forward's share of the FLOPs. An eval forward
    records no autograd graph, so its host time is if anything lower: an upper bound.
    """
    if cal.time_model is TimeModel.ADDITIVE:
        flops = tt.compute_s_at_rate + tt.recompute_s_at_rate
        share = tt.forward_s_at_rate / flops if flops > 0 else 0.0
        return (compute_seconds(tt, cal) - tt.optimizer_s) * share
    gpu_forward, _, host_forward, _ = _pass_parts(tt, cal)
    return math.hypot(gpu_forward, host_forward)


def compute_seconds(tt: TimeTerms, cal: Calibration) -> float:
    """Seconds of one step's GPU work and host time on one GPU, before communication:
    :func:`combine_passes` of :func:`pass_features` at ``cal``'s coefficients. Under
    ``additive`` (older calibrations) every term adds instead.
    """
    if cal.time_model is TimeModel.ADDITIVE:
        traffic = (
            tt.lora_traffic_s * cal.lora_traffic_factor
            + tt.nf4_cast_traffic_s * cal.nf4_cast_traffic_factor
            + tt.elementwise_s * cal.elementwise_traffic_factor
        )
        return (
            tt.compute_s_at_rate / cal.compute_efficiency
            + tt.recompute_s_at_rate / (cal.recompute_efficiency or cal.compute_efficiency)
            + traffic
            + tt.layer_passes * cal.layer_pass_overhead_s
            + tt.autocast_layer_passes * cal.autocast_layer_pass_overhead_s
            + tt.nf4_calls * cal.nf4_call_overhead_s
            + tt.fixed_s
        )
    gpu_forward, gpu_backward, host_forward, host_backward = _pass_parts(tt, cal)
    return float(
        combine_passes(gpu_forward, gpu_backward, host_forward, host_backward, tt.optimizer_s)
    )


# --------------------------------------------------------------------------------------------
# Collectives between GPUs.


def link_gbps_per_direction(gpu: GPU) -> float:
    """GPU-to-GPU bandwidth inside a node, GB/s in one direction.

    The catalog's ``intra_node_gbps`` is the bidirectional total for NVLink (datasheet figures)
    and per direction for PCIe; see :data:`_BIDIRECTIONAL_LINK_DIVISOR`.
    """
    return gpu.intra_node_gbps / _BIDIRECTIONAL_LINK_DIVISOR.get(gpu.intra_node_interconnect, 1.0)


def communication_seconds(
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
    t = spec_terms(spec)
    trainable = trainable_params(spec, config)
    if config.sharding.shards_state:
        if config.method.traits.quantized_base:  # NF4 in bf16 storage: gathered 4-bit bytes
            gather = t.quantized_params * NF4_BYTES_PER_PARAM
            gather += (t.param_count - t.quantized_params) * 2.0
        else:
            gather = t.param_count * 2.0
        grads = trainable * 2.0  # reduce-scattered in bf16 (full FT) / bf16 adapters
    else:
        gather = 0.0
        full_bf16 = not config.method.traits.adapters and config.precision is Precision.BF16
        grads = trainable * (2.0 if full_bf16 else 4.0)
    return collective_bytes_per_gpu(
        sharding=config.sharding,
        gpu_count=config.gpu_count,
        gather_bytes=gather,
        trainable_gradient_bytes=grads,
    )
