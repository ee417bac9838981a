"""Fit of the analytic estimator's free parameters to real measurements (numpy, lazily).

:func:`fit_calibration` turns measurements of one GPU into a
:class:`~profiler.calibration.Calibration`. numpy is imported inside it only, never on the
estimate hot path; the estimator and the calibration type do not import this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from profiler._types import Measurement, Provenance, Source, Status
from profiler.calibration import FIRST_PRINCIPLES, Calibration
from profiler.estimator import estimate, memory_terms, time_terms

if TYPE_CHECKING:
    from catalog import GPU, ModelSpec


def _abs_pct(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured * 100.0


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# Upper bound on the fitted MFU. Without it the small reference models let the fit trade matmul
# time for memory-bound time (an unconstrained fit on the H100 rows gives 0.85), which would make
# large models, where matmuls dominate, look too fast; well-tuned large-model training reaches
# 40-60% (PaLM 46%, Chowdhery et al. 2022; Llama 3 38-43%, Dubey et al. 2024).
MAX_COMPUTE_EFFICIENCY = 0.6

SpecLookup = Callable[[str], "ModelSpec"]


def usable_rows(measurements: Sequence[Measurement], gpu: GPU) -> list[Measurement]:
    """The measurements a fit can use: status ok, measured at full depth, on ``gpu``, timed."""
    return [
        m
        for m in measurements
        if m.status is Status.OK
        and m.source is Source.MEASURED
        and m.gpu == gpu.name
        and m.step_time_s is not None
        and m.peak_allocated_gib is not None
    ]


def fit_calibration(
    measurements: Sequence[Measurement],
    spec_lookup: SpecLookup,
    gpu: GPU,
    *,
    provenance: Provenance | None = None,
    fitted_date: str | None = None,
) -> Calibration:
    """Fit the estimator's free parameters to measurements of one GPU by least squares.

    Time: ``step_time = flops/(peak·eff) + layer_passes·t_layer
    + autocast_layer_passes·t_autocast + nf4_calls·t_nf4 + fixed`` (fixed: the optimizer step and
    NF4 dequantization traffic) is linear in ``1/eff``, ``t_layer``, ``t_autocast`` and ``t_nf4``;
    the elementwise factor ``k`` is set to 0 (see the comment in the body). It is fitted on
    relative error (each row divided by its measured time) so short and long steps weigh the
    same; ``eff`` is capped at :data:`MAX_COMPUTE_EFFICIENCY`, and a coefficient that comes out
    negative is fixed at zero and the rest refitted. Memory: one scale on activation + logits
    bytes (relative least squares on rows whose peak is the forward/backward phase) and the
    median reserved/allocated ratio.

    Args:
        measurements: Records of real runs; only ok, measured, full-depth rows on ``gpu`` count.
        spec_lookup: Model name to architecture facts (``catalog.get_model``).
        gpu: The GPU the measurements were taken on.
        provenance: Where the data came from; defaults to the first usable record's provenance.
        fitted_date: ISO date to stamp; defaults to today (UTC).

    Returns:
        The fitted calibration, with its in-sample error statistics.

    Raises:
        ValueError: If fewer than 4 usable measurements are given.
    """
    import numpy as np

    rows = usable_rows(measurements, gpu)
    if len(rows) < 4:
        raise ValueError(
            f"calibrating {gpu.name} needs at least 4 ok full-depth measurements on it, got "
            f"{len(rows)}. To fix: run 'ftplan profile' on a few configs on that GPU first"
        )
    base = replace(FIRST_PRINCIPLES, gpu=gpu.name)
    specs = [spec_lookup(m.model) for m in rows]
    measured_s = np.array([m.step_time_s for m in rows], dtype=float)
    terms = [
        time_terms(spec, m.config, gpu, calibration=base)
        for spec, m in zip(specs, rows, strict=True)
    ]
    # The elementwise-traffic term is not fitted: on the reference rows it is not separable from
    # MFU (the full fit sets it to 0), and fitting it made the leave-one-model-out error worse
    # (median 8.5% vs 6.7%, worst 37% vs 31%), one held-out fold picking k > 0.
    columns = ["compute_s_at_peak", "layer_passes", "nf4_calls", "autocast_layer_passes"]
    design = np.array([[t[c] for c in columns] for t in terms], dtype=float)
    fixed = np.array([t["fixed_s"] for t in terms], dtype=float)
    active = [j for j in range(len(columns)) if design[:, j].any()]
    coef = np.zeros(len(columns))
    weights = 1.0 / measured_s
    target = measured_s - fixed
    while active:
        a = design[:, active] * weights[:, None]
        solution, *_ = np.linalg.lstsq(a, target * weights, rcond=None)
        if 0 in active and solution[0] < 1.0 / MAX_COMPUTE_EFFICIENCY:
            # An MFU above the cap would make large models look too fast: fix it, refit the rest.
            target = target - design[:, 0] / MAX_COMPUTE_EFFICIENCY
            coef[0] = 1.0 / MAX_COMPUTE_EFFICIENCY
            active = [j for j in active if j != 0]
            continue
        if (solution >= 0).all():
            coef[active] = solution
            break
        active = [j for j, s in zip(active, solution, strict=True) if s >= 0]
    efficiency = float(1.0 / coef[0]) if coef[0] > 0 else base.compute_efficiency
    fitted = replace(
        base,
        compute_efficiency=min(MAX_COMPUTE_EFFICIENCY, efficiency),
        layer_pass_overhead_s=float(coef[1]),
        elementwise_traffic_factor=0.0,
        nf4_call_overhead_s=float(coef[2]),
        autocast_layer_pass_overhead_s=float(coef[3]),
    )
    fitted = _fit_memory(fitted, rows, specs, gpu)
    if fitted_date is None:
        import datetime

        fitted_date = datetime.datetime.now(datetime.UTC).date().isoformat()
    fitted = replace(fitted, fitted_date=fitted_date)
    return _with_errors(fitted, rows, specs, gpu, provenance)


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
        if terms["fb_static_gib"] + terms["dynamic_gib"] < terms["optimizer_step_gib"]:
            continue  # the optimizer step sets this peak; it carries no activation information
        # Relative least squares of measured - static = scale * dynamic.
        w = 1.0 / m.peak_allocated_gib
        numerator += w * w * terms["dynamic_gib"] * (m.peak_allocated_gib - terms["fb_static_gib"])
        denominator += w * w * terms["dynamic_gib"] ** 2
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
        layer_pass_overhead_s=_round(calibration.layer_pass_overhead_s),
        elementwise_traffic_factor=_round(calibration.elementwise_traffic_factor),
        nf4_call_overhead_s=_round(calibration.nf4_call_overhead_s),
        autocast_layer_pass_overhead_s=_round(calibration.autocast_layer_pass_overhead_s),
        activation_scale=_round(calibration.activation_scale),
        reserved_ratio=_round(calibration.reserved_ratio),
        provenance=source,
    )


def _round(value: float) -> float:
    """Six significant digits, so a refit on the same data writes the same file."""
    return float(f"{value:.6g}") if math.isfinite(value) else value
