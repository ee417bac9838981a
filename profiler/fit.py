"""Fit of the analytic estimator's free parameters to real measurements (numpy, lazily).

:func:`fit_calibration` turns measurements of one GPU into a
:class:`~profiler.calibration.Calibration`. numpy is imported inside it only, never on the
estimate hot path; the estimator and the calibration type do not import this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from catalog import InputError
from profiler._types import Measurement, OptimizerKind, Provenance, Source, Status
from profiler.calibration import (
    ALL_REGIMES,
    BAND_QUANTITIES,
    FIRST_PRINCIPLES,
    Calibration,
    TimeModel,
    band_of,
    regime_of,
)
from profiler.estimator import estimate
from profiler.memory import memory_terms
from profiler.timing import (
    GpuPass,
    PassFeatures,
    TimeTerms,
    combine_passes,
    compute_seconds,
    gpu_pass_gradient,
    gpu_pass_seconds,
    host_pass_seconds,
    pass_features,
    time_terms,
)

if TYPE_CHECKING:
    from catalog import GPU, ModelSpec


def _abs_pct(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured * 100.0


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# Upper bound on the fitted MFU, as a share of the GPU's sustained matmul rate. Without it the
# small reference models let the fit trade matmul time for memory-bound time (an unconstrained
# fit on the H100 rows gives 0.85 of peak), which would make large models, where matmuls
# dominate, look too fast; well-tuned large-model training reaches 40-60% of peak (PaLM 46%,
# Chowdhery et al. 2022; Llama 3 38-43%, Dubey et al. 2024): 0.6 of the H100's 989 TFLOP/s
# peak is 0.75 of its sustained 794.5.
MAX_COMPUTE_EFFICIENCY = 0.75

# Rows weigh (tokens / 4096) ** TOKEN_WEIGHT_POWER on top of relative error: production-sized
# steps count more than host-bound short ones. Leave-one-model-out on both H100 sets with the
# host-overlap model: median / worst / 8k-token signed median 7.4% / 32.1% / -4.3% unweighted,
# 6.4% / 28.2% / -0.9% at 0.5, 6.6% / 28.6% / -0.3% at 1; the held-out H200 runs: median 7.2%
# at 0.5, 8.2% at 1.
TOKEN_WEIGHT_POWER = 0.5

SpecLookup = Callable[[str], "ModelSpec"]


def _efficiency(coefficient: float, unfitted: float | None) -> float | None:
    """1/coefficient, or ``unfitted`` when the column was absent (coefficient 0)."""
    return float(1.0 / coefficient) if coefficient > 0 else unfitted


def usable_rows(measurements: Sequence[Measurement], gpu: GPU) -> list[Measurement]:
    """The measurements a fit can use: status ok, measured at full depth, on ``gpu``, timed."""
    return [
        m
        for m in measurements
        if m.status is Status.OK
        and m.source is Source.MEASURED
        and m.gpu == gpu.name
        and m.step_time_s is not None
        and m.step_time_s > 0
        and m.peak_allocated_gib is not None
        and m.peak_allocated_gib > 0
    ]


def _fit_time(
    base: Calibration, stage1: Sequence[Measurement], spec_lookup: SpecLookup, gpu: GPU
) -> Calibration:
    """``base`` with the nine step-time coefficients fitted to ``stage1`` (see
    :func:`fit_calibration`)."""
    import numpy as np

    stage1_specs = [spec_lookup(m.model) for m in stage1]
    measured_s = np.array([m.step_time_s for m in stage1], dtype=float)
    tokens = np.array([m.config.micro_batch_size * m.config.seq_len for m in stage1], dtype=float)
    terms = [
        time_terms(spec, m.config, gpu, calibration=base)
        for spec, m in zip(stage1_specs, stage1, strict=True)
    ]
    weights = (tokens / 4096.0) ** TOKEN_WEIGHT_POWER / measured_s
    coef = _fit_host_overlap(terms, measured_s, weights, base.backward_host_fraction)
    fitted = replace(
        base,
        compute_efficiency=float(1.0 / coef[0]),
        recompute_efficiency=_efficiency(coef[1], None),
        lora_traffic_factor=float(coef[2]),
        nf4_cast_traffic_factor=float(coef[3]),
        elementwise_traffic_factor=float(coef[4]),
        layer_pass_overhead_s=float(coef[5]),
        autocast_layer_pass_overhead_s=float(coef[6]),
        lora_call_overhead_s=float(coef[7]),
        nf4_call_overhead_s=float(coef[8]),
    )
    return fitted


def fit_calibration(
    measurements: Sequence[Measurement],
    spec_lookup: SpecLookup,
    gpu: GPU,
    *,
    provenance: Provenance | None = None,
    fitted_date: str | None = None,
    bands: bool = True,
    fallback: Calibration | None = None,
) -> Calibration:
    """Fit the estimator's free parameters to measurements of one GPU by least squares.

    Time: the ``host-overlap`` model of :func:`profiler.timing.compute_seconds`. Per pass,
    ``hypot(gpu, host)``; GPU time ``flops/(peak·eff) + recompute/(peak·eff_recompute)
    + (lora_traffic·k_lora + nf4_cast_traffic·k_cast + elementwise·k_elem) + dequantization``,
    host time per forward ``layers·t_layer + autocast_layers·t_autocast
    + adapted_linears·t_lora + nf4_linears·t_nf4`` (the backward pays
    :data:`~profiler.calibration.BACKWARD_HOST_FRACTION` of it, a checkpointed re-run all of
    it); plus the optimizer step. Nine coefficients, fitted by bounded nonlinear least squares
    (:func:`_fit_host_overlap`) on relative error (each row divided by its measured time)
    weighted by ``(tokens / 4096) ** TOKEN_WEIGHT_POWER``, so production-sized steps count more
    than host-bound short ones. ``eff`` is capped at :data:`MAX_COMPUTE_EFFICIENCY` and
    ``eff_recompute`` at 1; factors and host costs are >= 0. Memory: one scale on activation +
    logits bytes (relative least squares on rows whose peak is the forward/backward phase) and
    the median reserved/allocated ratio.

    Args:
        measurements: Records of real runs; only ok, measured, full-depth rows on ``gpu`` count.
        spec_lookup: Model name to architecture facts (``catalog.get_model``).
        gpu: The GPU the measurements were taken on.
        provenance: Where the data came from; defaults to the first usable record's provenance.
        fitted_date: ISO date to stamp; defaults to today (UTC).
        bands: Also refit once per model with that model held out and store the held-out
            residual ranges per regime (:attr:`Calibration.bands`; needs two or more models).
        fallback: Where the measurements cannot show them, take from this calibration (the
            shipped H100 fit): the 8-bit AdamW terms when no 8-bit rows are given, and the
            reserved ratios of the sharding strategies (fitted on published figures).

    Returns:
        The fitted calibration, with its in-sample error statistics.

    Raises:
        ValueError: If fewer than 4 usable measurements are given.
    """

    rows = usable_rows(measurements, gpu)
    if len(rows) < 4:
        raise InputError(
            f"calibrating {gpu.name} needs at least 4 ok full-depth measurements on it, got "
            f"{len(rows)}. To fix: run 'ftplan profile' on a few configs on that GPU first"
        )
    base = replace(FIRST_PRINCIPLES, gpu=gpu.name, time_model=TimeModel.HOST_OVERLAP)
    if fallback is not None:
        base = replace(
            base,
            bnb8_bandwidth_efficiency=fallback.bnb8_bandwidth_efficiency,
            bnb8_host_s_per_tensor=fallback.bnb8_host_s_per_tensor,
            reserved_by_sharding=fallback.reserved_by_sharding,
        )
    specs = [spec_lookup(m.model) for m in rows]
    # Stage 1: every coefficient but the 8-bit optimizer's, on the torch AdamW rows (all rows
    # where there are too few of those). Stage 2 (_fit_bnb8): the 8-bit optimizer step on what
    # stage 1 leaves of the 8-bit rows.
    eight_bit = [m.config.optimizer is not OptimizerKind.ADAMW for m in rows]
    stage1 = [m for m, e in zip(rows, eight_bit, strict=True) if not e]
    fitted = _fit_time(base, stage1 if len(stage1) >= 4 else list(rows), spec_lookup, gpu)
    fitted = _fit_bnb8(
        fitted, [m for m, e in zip(rows, eight_bit, strict=True) if e], spec_lookup, gpu
    )
    fitted = _fit_memory(fitted, rows, specs, gpu)
    if fitted_date is None:
        import datetime

        fitted_date = datetime.datetime.now(datetime.UTC).date().isoformat()
    fitted = replace(fitted, fitted_date=fitted_date)
    if bands and len({m.model for m in rows}) > 1:
        fitted = replace(
            fitted, bands=residual_bands(held_out_predictions(rows, spec_lookup, gpu))
        )
    return _with_errors(fitted, rows, specs, gpu, provenance)


# The host-overlap model's coefficients, in the order of profiler.timing.coefficients: 1/MFU,
# 1/recompute efficiency, the LoRA-path, NF4-cast and elementwise traffic factors, then host
# seconds per forward call of a decoder layer, of autocast per layer, of a LoRA-adapted linear
# and of an NF4 linear.
# Lower bounds: the MFU cap, efficiencies <= 1, factors and host seconds >= 0.
_LOWER = (1.0 / MAX_COMPUTE_EFFICIENCY, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
# Where the solver starts (a typical H100 fit; the problem is small and smooth, and starting
# from elsewhere in the physical range reaches the same optimum on both reference sets).
_START = (2.0, 2.4, 0.2, 1.0, 1.0, 1.5e-3, 1e-3, 1e-4, 2e-4)


def _fit_bnb8(
    calibration: Calibration,
    rows: Sequence[Measurement],
    spec_lookup: SpecLookup,
    gpu: GPU,
) -> Calibration:
    """The 8-bit AdamW step's bandwidth efficiency and seconds per tensor, by relative least
    squares of what ``calibration`` leaves of each 8-bit row's step time once its optimizer step
    is taken out (``traffic / efficiency + tensors × seconds``); ``calibration`` unchanged
    without 8-bit rows. Efficiency at most 1, seconds at least 0."""
    import numpy as np

    if not rows:
        return calibration
    design, left, weights = [], [], []
    for m in rows:
        assert m.step_time_s is not None
        tt = time_terms(spec_lookup(m.model), m.config, gpu, calibration=calibration)
        design.append([tt.bnb8_traffic_s, tt.bnb8_tensors])
        left.append(m.step_time_s - (compute_seconds(tt, calibration) - tt.optimizer_s))
        weights.append(1.0 / m.step_time_s)
    a = np.array(design) * np.array(weights)[:, None]
    b = np.array(left) * np.array(weights)
    inverse_efficiency, per_tensor = np.linalg.lstsq(a, b, rcond=None)[0]
    if inverse_efficiency < 1.0 or per_tensor < 0.0:  # on a bound: fix it, refit the other
        if inverse_efficiency < 1.0:
            inverse_efficiency = 1.0
            per_tensor = max(0.0, float((a[:, 1] @ (b - a[:, 0])) / (a[:, 1] @ a[:, 1])))
        else:
            per_tensor = 0.0
            inverse_efficiency = max(1.0, float((a[:, 0] @ b) / (a[:, 0] @ a[:, 0])))
    return replace(
        calibration,
        bnb8_bandwidth_efficiency=float(1.0 / inverse_efficiency),
        bnb8_host_s_per_tensor=float(per_tensor),
    )


def _stacked_features(terms: Sequence[TimeTerms], backward_host_fraction: float) -> PassFeatures:
    """Every row's pass features stacked as one ``PassFeatures`` of numpy arrays (the step-time
    formula is elementwise, so the estimate's own functions evaluate all rows at once)."""
    import numpy as np

    features = [pass_features(t, backward_host_fraction=backward_host_fraction) for t in terms]

    def stacked(passes: Sequence[GpuPass]) -> GpuPass:
        """The rows' passes as one pass of numpy arrays (the formula is elementwise)."""

        def column(get: Callable[[GpuPass], float]) -> Any:
            return np.array([get(p) for p in passes], dtype=float)

        return GpuPass(
            flops_s=column(lambda p: p.flops_s),
            recompute_s=column(lambda p: p.recompute_s),
            traffic=(
                column(lambda p: p.traffic[0]),
                column(lambda p: p.traffic[1]),
                column(lambda p: p.traffic[2]),
            ),
            traffic_share=column(lambda p: p.traffic_share),
            dequant_s=column(lambda p: p.dequant_s),
            dequant_share=column(lambda p: p.dequant_share),
            extra_s=column(lambda p: p.extra_s),
        )

    forward = stacked([f.forward for f in features])
    backward = stacked([f.backward for f in features])
    rows = PassFeatures(
        forward=forward,
        backward=backward,
        host=(
            np.array([f.host[0] for f in features], dtype=float),
            np.array([f.host[1] for f in features], dtype=float),
            np.array([f.host[2] for f in features], dtype=float),
            np.array([f.host[3] for f in features], dtype=float),
        ),
        host_backward_multiplier=np.array([f.host_backward_multiplier for f in features]),
        optimizer_s=np.array([f.optimizer_s for f in features], dtype=float),
    )
    return rows


def _levenberg_marquardt(
    residuals: Callable[[Any], tuple[Any, Any]], theta: Any, lower: Any, active: Any
) -> Any:
    """Projected Levenberg-Marquardt from ``theta``: minimises ``|r|²`` of ``residuals`` (which
    returns residuals and Jacobian) over the ``active`` coefficients, each kept at or above
    ``lower``; at most 500 iterations. Returns the scaled coefficients."""
    import numpy as np

    damping = 1e-3
    r, jac = residuals(theta)
    cost = float(r @ r)
    for _ in range(500):
        jac = jac[:, active]
        normal = jac.T @ jac
        step = np.linalg.solve(
            normal + damping * (np.diag(np.diag(normal)) + 1e-12 * np.eye(len(normal))),
            -jac.T @ r,
        )
        candidate = theta.copy()
        candidate[active] = np.maximum(theta[active] + step, lower[active])
        r_new, jac_new = residuals(candidate)
        cost_new = float(r_new @ r_new)
        if cost_new < cost:
            converged = cost - cost_new < 1e-12 * cost
            theta, r, jac, cost = candidate, r_new, jac_new, cost_new
            damping = max(damping * 0.3, 1e-12)
            if converged:
                break
        else:
            r, jac = residuals(theta)
            damping *= 10.0
            if damping > 1e12:
                break
    return theta


def _fit_host_overlap(
    terms: Sequence[TimeTerms],
    measured_s: Any,
    weights: Any,
    backward_host_fraction: float,
) -> Any:
    """Least squares of ``weights · (predicted - measured)`` for the host-overlap step time of
    :func:`profiler.timing.combine_passes` over :func:`profiler.timing.pass_features` (the
    formula the estimate uses), by projected Levenberg-Marquardt with the bounds of
    :data:`_LOWER`; coefficients whose feature is zero on every row stay 0 (e.g. NF4 costs
    without QLoRA rows; the recompute efficiency without checkpointed rows is then unfitted).
    The optimizer step is not fitted: it adds as a constant at the terms' efficiencies.
    """
    import numpy as np

    rows = _stacked_features(terms, backward_host_fraction)
    forward, backward = rows.forward, rows.backward
    gpu_fwd = np.column_stack(gpu_pass_gradient(forward))
    gpu_bwd = np.column_stack(gpu_pass_gradient(backward))
    host = np.column_stack(rows.host)
    host_bwd = rows.host_backward_multiplier
    design = np.hstack([gpu_fwd + gpu_bwd, host])
    active = np.array([bool(design[:, j].any()) for j in range(design.shape[1])])
    # Solve in units where every active coefficient's feature peaks at 1 (they span 1e-4 to 3):
    # theta is the scaled coefficient vector, theta / unit the physical one.
    unit = np.where(active, np.abs(design).max(axis=0), 1.0)
    lower = np.array(_LOWER) * unit
    theta = np.where(active, np.maximum(np.array(_START) * unit, lower), 0.0)

    def residuals(t: Any) -> tuple[Any, Any]:
        physical = t / unit
        g_f = gpu_pass_seconds(forward, physical)
        g_b = gpu_pass_seconds(backward, physical)
        c_f = host_pass_seconds(rows, physical)
        c_b = c_f * host_bwd
        predicted = combine_passes(g_f, g_b, c_f, c_b, rows.optimizer_s, hypot=np.hypot)
        # d hypot(a, b) = (a·da + b·db) / hypot(a, b), per pass; the formula is linear in the
        # coefficients inside each hypot.
        s_f = np.maximum(np.hypot(g_f, c_f), 1e-30)
        s_b = np.maximum(np.hypot(g_b, c_b), 1e-30)
        jacobian = (
            np.hstack(
                [
                    (g_f / s_f)[:, None] * gpu_fwd + (g_b / s_b)[:, None] * gpu_bwd,
                    ((c_f / s_f) + (c_b / s_b) * host_bwd)[:, None] * host,
                ]
            )
            / unit
        )
        return (predicted - measured_s) * weights, jacobian * weights[:, None]

    theta = _levenberg_marquardt(residuals, theta, lower, active)
    return np.where(active, theta / unit, 0.0)


def _fit_memory(
    calibration: Calibration, rows: Sequence[Measurement], specs: Sequence[ModelSpec], gpu: GPU
) -> Calibration:
    numerator = denominator = 0.0
    ratios: list[float] = []
    for spec, m in zip(specs, rows, strict=True):
        assert m.peak_allocated_gib is not None
        if m.peak_reserved_gib is not None:
            ratios.append(m.peak_reserved_gib / m.peak_allocated_gib)
        terms = memory_terms(spec, m.config, gpu)
        if terms.fb_static_gib + terms.dynamic_gib < terms.optimizer_step_gib:
            continue  # the optimizer step sets this peak; it carries no activation information
        # Relative least squares of measured - static = scale * dynamic.
        w = 1.0 / m.peak_allocated_gib
        numerator += w * w * terms.dynamic_gib * (m.peak_allocated_gib - terms.fb_static_gib)
        denominator += w * w * terms.dynamic_gib**2
    scale = numerator / denominator if denominator > 0 else 1.0
    reserved = _median(ratios) if ratios else calibration.reserved_ratio
    return replace(calibration, activation_scale=scale, reserved_ratio=max(1.0, reserved))


def _with_errors(
    calibration: Calibration,
    rows: Sequence[Measurement],
    specs: Sequence[ModelSpec],
    gpu: GPU,
    provenance: Provenance | None,
) -> Calibration:
    memory_errors: list[float] = []
    time_errors: list[float] = []
    for spec, m in zip(specs, rows, strict=True):
        predicted = estimate(spec, m.config, gpu, calibration=calibration)
        assert predicted.peak_allocated_gib is not None and predicted.step_time_s is not None
        assert m.peak_allocated_gib is not None and m.step_time_s is not None
        memory_errors.append(float(_abs_pct(predicted.peak_allocated_gib, m.peak_allocated_gib)))
        time_errors.append(float(_abs_pct(predicted.step_time_s, m.step_time_s)))
    source = provenance if provenance is not None else rows[0].provenance
    return replace(
        calibration,
        fit_inputs=len(rows),
        memory_error_median_pct=round(_median(memory_errors), 2),
        memory_error_max_pct=round(max(memory_errors), 2),
        time_error_median_pct=round(_median(time_errors), 2),
        time_error_max_pct=round(max(time_errors), 2),
        compute_efficiency=_round(calibration.compute_efficiency),
        recompute_efficiency=_round_or_none(calibration.recompute_efficiency),
        lora_traffic_factor=_round(calibration.lora_traffic_factor),
        nf4_cast_traffic_factor=_round(calibration.nf4_cast_traffic_factor),
        layer_pass_overhead_s=_round(calibration.layer_pass_overhead_s),
        elementwise_traffic_factor=_round(calibration.elementwise_traffic_factor),
        nf4_call_overhead_s=_round(calibration.nf4_call_overhead_s),
        autocast_layer_pass_overhead_s=_round(calibration.autocast_layer_pass_overhead_s),
        lora_call_overhead_s=_round(calibration.lora_call_overhead_s),
        activation_scale=_round(calibration.activation_scale),
        reserved_ratio=_round(calibration.reserved_ratio),
        bnb8_bandwidth_efficiency=_round(calibration.bnb8_bandwidth_efficiency),
        bnb8_host_s_per_tensor=_round(calibration.bnb8_host_s_per_tensor),
        provenance=source,
    )


def _round_or_none(value: float | None) -> float | None:
    return None if value is None else _round(value)


def _round(value: float) -> float:
    """Six significant digits, so a refit on the same data writes the same file."""
    return float(f"{value:.6g}") if math.isfinite(value) else value


def held_out_predictions(
    measurements: Sequence[Measurement], spec_lookup: SpecLookup, gpu: GPU
) -> list[tuple[Measurement, Measurement]]:
    """(measured, predicted) for every usable row, each predicted by a fit without its model.

    Raises:
        ValueError: If a fold has fewer than 4 usable rows to fit on.
    """
    rows = usable_rows(measurements, gpu)
    pairs: list[tuple[Measurement, Measurement]] = []
    for model in sorted({m.model for m in rows}):
        training = [m for m in rows if m.model != model]
        fold = fit_calibration(training, spec_lookup, gpu, fitted_date="", bands=False)
        pairs += [
            (m, estimate(spec_lookup(m.model), m.config, gpu, calibration=fold))
            for m in rows
            if m.model == model
        ]
    return pairs


# A regime needs this many held-out residuals for a band of its own; fewer use the pooled one.
# With n residuals the extremes hold a new one with probability (n - 1) / (n + 1): 80% needs 9.
MIN_BAND_ROWS = 9


def residual_bands(
    pairs: Sequence[tuple[Measurement, Measurement]],
) -> tuple[tuple[str, str, float, float], ...]:
    """An 80% interval of the signed residual (predicted / measured - 1) per quantity and
    regime (:func:`profiler.calibration.band_of`: order statistics that hold a new held-out
    error with probability at least 80%).

    Regimes with fewer than :data:`MIN_BAND_ROWS` rows are left out (the estimate then uses
    the pooled ``all`` range).
    """
    residuals: dict[tuple[str, str], list[float]] = {}
    for measured, predicted in pairs:
        for quantity in BAND_QUANTITIES:
            truth, guess = getattr(measured, quantity), getattr(predicted, quantity)
            if truth is None or guess is None:
                continue
            error = guess / truth - 1.0
            residuals.setdefault((quantity, regime_of(measured.config)), []).append(error)
            residuals.setdefault((quantity, ALL_REGIMES), []).append(error)
    return tuple(
        (quantity, regime, *band_of(values))
        for (quantity, regime), values in sorted(residuals.items())
        if len(values) >= MIN_BAND_ROWS or regime == ALL_REGIMES
    )
