"""Analytic estimator: peak GPU memory and step time of a training config, without a GPU.

Pure Python (no torch, no numpy) and fast (the planner calls it thousands of times per
``ftplan recommend``). :mod:`profiler.memory` counts the bytes (weights, gradients, states,
activations, the logits chain, overhead) and :mod:`profiler.timing` the seconds (per-pass GPU
work overlapped with host time, the optimizer step, collectives); this module applies the
calibration the caller passes (carried to the GPU by :func:`profiler.calibration.transferred`),
takes the peak of the forward/backward and optimizer-step phases, adds offload and
communication, and attaches the provenance and the 80% bands. docs/estimator.md derives each
term and gives its validation against real H100 and H200 runs and published figures.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from catalog import GIB
from profiler._types import (
    EvalEstimate,
    Measurement,
    MemoryBreakdown,
    Precision,
    Provenance,
    Sharding,
    Source,
    Status,
    TuningConfig,
    default_precision,
    precision_problem,
)
from profiler.calibration import (
    ALL_REGIMES,
    BAND_QUANTITIES,
    regime_of,
    transfer_factor,
    transfer_regime,
    transferred,
)
from profiler.headroom import check_fit
from profiler.memory import (
    CHUNKED_LOSS_TOKENS,
    EAGER_SCORE_SAVED_BYTES,
    EVAL_LOGITS_BYTES_PER_TOKEN_VOCAB,
    MemoryTerms,
    eager_scores,
    memory_terms,
    model_state_bytes,
    shard_divisor,
)
from profiler.sharding import (
    host_ram_gib,
    loads_on_rank0,
    offload_seconds,
    zero3_master_copy_bytes,
)
from profiler.timing import (
    COMM_OVERLAP,
    communication_seconds,
    compute_seconds,
    forward_seconds,
    time_terms_of,
)

if TYPE_CHECKING:
    from catalog import GPU, ModelSpec
    from profiler.calibration import Calibration


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


def _phase_peaks(mem: MemoryTerms, cal: Calibration) -> tuple[float, float, MemoryBreakdown]:
    """Peak allocated GiB of the forward/backward and optimizer-step phases, and the breakdown
    of the higher one (activations scaled by the fitted ``activation_scale``)."""
    scaled_dynamic = mem.dynamic_gib * cal.activation_scale
    forward_only = mem.forward_only_cache_gib
    fb_peak = (
        mem.fb_static_gib - forward_only + max(scaled_dynamic + forward_only, mem.gradients_gib)
    )
    opt_peak = mem.optimizer_step_gib
    if fb_peak >= opt_peak:
        breakdown = MemoryBreakdown(
            weights_gib=mem.weights_gib + mem.autocast_cache_gib,
            gradients_gib=max(0.0, mem.gradients_gib - scaled_dynamic - forward_only),
            optimizer_gib=mem.optimizer_gib,
            activations_gib=mem.activations_gib * cal.activation_scale,
            logits_gib=mem.logits_gib * cal.activation_scale,
            overhead_gib=mem.overhead_gib,
        )
    else:
        breakdown = MemoryBreakdown(
            weights_gib=mem.weights_gib,
            gradients_gib=mem.gradients_gib,
            optimizer_gib=mem.optimizer_gib + mem.optimizer_temp_gib,
            activations_gib=0.0,
            logits_gib=0.0,
            overhead_gib=mem.overhead_gib,
        )
    return fb_peak, opt_peak, breakdown


def _step_seconds(
    spec: ModelSpec,
    config: TuningConfig,
    gpu: GPU,
    mem: MemoryTerms,
    cal: Calibration,
    *,
    nodes: int,
    inter_node_gbps: float,
) -> float:
    """Seconds per optimizer step: compute, collectives and PCIe offload traffic overlapped by
    ``COMM_OVERLAP``, plus the CPU optimizer step in full."""
    tt = time_terms_of(spec, config, gpu, mem, cal)
    compute_s = compute_seconds(tt, cal)
    comm_s = communication_seconds(spec, config, gpu, nodes=nodes, inter_node_gbps=inter_node_gbps)
    gpus_per_node = max(1, config.gpu_count // max(1, nodes))
    pcie_s = cpu_optimizer_s = 0.0
    if config.sharding.offloads:
        shards = shard_divisor(config)
        weights = model_state_bytes(spec, config, mem.trainable_params).weights
        pcie_s, cpu_optimizer_s = offload_seconds(
            sharding=config.sharding,
            gpu=gpu,
            offloaded_weight_bytes_per_gpu=weights / shards,
            gradient_bytes_per_gpu=mem.trainable_params * 2.0 / shards,
            trainable_params_per_node=mem.trainable_params * gpus_per_node / shards,
        )
    # PCIe offload traffic overlaps compute like the collectives (prefetch); the CPU optimizer
    # step runs after backward and adds in full. Both are assumptions until measured.
    link_s = comm_s + pcie_s
    step_s = compute_s + link_s - COMM_OVERLAP * min(compute_s, link_s) + cpu_optimizer_s
    return step_s


def _host_gib(spec: ModelSpec, config: TuningConfig, mem: MemoryTerms, *, nodes: int) -> float:
    """Host RAM GiB per node: pinned and offloaded state, ZeRO-3's fp32 master copy, and rank 0
    holding the whole model while it loads where the method loads that way."""
    gpus_per_node = max(1, config.gpu_count // max(1, nodes))
    host_gib = host_ram_gib(
        mem.host_bytes_per_gpu,
        gpus_per_node=gpus_per_node,
        extra_host_bytes_per_gpu=(
            zero3_master_copy_bytes(
                method=config.method,
                full_mixed=config.precision is not Precision.BF16,
                param_count=spec.param_count,
            )
            / shard_divisor(config)
            if config.sharding is Sharding.ZERO3_OFFLOAD
            else 0.0
        ),
    )
    if loads_on_rank0(sharding=config.sharding, method=config.method):
        # Rank 0 holds the whole model in CPU memory while it loads, before FSDP moves the
        # shards to the GPUs (or, offloading, keeps them): its node needs that much at least.
        whole = model_state_bytes(spec, config, mem.trainable_params).weights
        loading = host_ram_gib(
            0.0, gpus_per_node=gpus_per_node, extra_host_bytes_per_gpu=whole / gpus_per_node
        )
        host_gib = max(host_gib, loading)
    return host_gib


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
    problem = precision_problem(gpu, config.precision)
    if problem is not None:
        raise ValueError(
            f"{problem}; precision={config.precision.value} cannot run on it. "
            f"To fix: use precision {default_precision(gpu).value}"
        )
    applied = _applied(calibration, gpu)
    cal = applied.on_gpu
    mem = memory_terms(spec, config, gpu)
    fb_peak, opt_peak, breakdown = _phase_peaks(mem, cal)
    peak = max(fb_peak, opt_peak)
    step_s = _step_seconds(
        spec, config, gpu, mem, cal, nodes=nodes, inter_node_gbps=inter_node_gbps
    )
    host_gib = _host_gib(spec, config, mem, nodes=nodes)
    trainable = mem.trainable_params
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
        total_params=spec.param_count + (trainable if config.method.traits.adapters else 0),
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
        tokens * mem.layer_bytes_per_token
        + EAGER_SCORE_SAVED_BYTES * eager_scores(spec, config)
        + EVAL_LOGITS_BYTES_PER_TOKEN_VOCAB * loss_tokens * spec.vocab_size
    )
    peak = mem.fb_static_gib + transient / GIB * cal.activation_scale
    tt = time_terms_of(spec, config, gpu, mem, cal)
    forward_tt = tt
    if config.chunked_loss:
        # A forward runs the loss chain once, chunked or not; the chunked terms are backward
        # work (the head and the chain recomputed), so the pass is timed unchunked.
        unchunked = dataclasses.replace(config, chunked_loss=False)
        forward_tt = time_terms_of(
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


def memory_fits(peak_reserved_gib: float, gpu: GPU) -> bool:
    """Whether an *estimated* peak reserved memory (GiB per GPU) fits on ``gpu``: the fit
    verdict (:func:`profiler.headroom.check_fit`) is ``fits`` or ``tight``."""
    return check_fit(peak_reserved_gib, gpu, source=Source.ESTIMATED).fits
