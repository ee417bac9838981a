"""What carries one GPU's fit to the GPUs and regimes it never saw, fitted on published figures.

A calibration is fitted on one GPU's own runs (:mod:`profiler.fit`: the H100 reference sets).
Three things in it are fitted here instead, on what other people measured on other GPUs
(:mod:`profiler.published`: RTX 3090/4090, RTX 6000 Ada, A10G, A100), because one GPU's runs
cannot show them:

* ``transfer_exponent``: how the matmul efficiency changes with the GPU's sustained matmul rate
  (:func:`profiler.calibration.transfer_factor`), from published training throughput;
* ``reserved_by_sharding``: peak reserved over peak allocated per sharding strategy (a ratio, or
  a fixed overhead for FSDP offload), from published ``max_memory_reserved`` figures of DDP,
  FSDP and FSDP-offload runs;
* ``transfer_bands``: the spread of the estimate's error on GPUs and in regimes without a fit of
  their own, from predictions of each GPU's published figures by a fit on the other GPUs'
  (leave one GPU out), plus runs held out from the fit on other GPUs (the H200 steps).

Pure given its inputs; numpy-free (a grid search and medians).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from profiler._types import Measurement, Sharding
from profiler.calibration import band_of, transfer_regime
from profiler.estimator import estimate
from profiler.published import Comparable, PublishedMeasurement, Statistic

if TYPE_CHECKING:
    from catalog import GPU, ModelSpec
    from profiler.calibration import Calibration

# The band quantity whose residuals are taken figure by figure (calibrate_transfer).
BAND_RESERVED = "peak_reserved_gib"

# The exponent is searched on this grid (0 to 0.6): wide enough for every GPU in the catalog
# (from T4 to B200 the sustained-rate ratio to the H100 spans 0.05 to 2.2).
_EXPONENT_GRID = tuple(i / 200 for i in range(121))

# Sharding strategies without published reserved figures take a measured strategy's form:
# ZeRO-3 gathers parameters per module on a side stream as FSDP does, and offloads as FSDP
# offload does (an assumption until a ZeRO-3 run is measured).
_RESERVED_STAND_INS = {
    Sharding.ZERO3: Sharding.FSDP,
    Sharding.ZERO3_OFFLOAD: Sharding.FSDP_OFFLOAD,
}

SpecLookup = Callable[[str], "ModelSpec"]
GpuLookup = Callable[[str], "GPU"]


@dataclass(frozen=True, slots=True)
class Residual:
    """One held-out prediction's signed error, ``predicted / measured - 1``."""

    row_id: str
    source_key: str
    quantity: str  # one of profiler.calibration.BAND_QUANTITIES
    regime: str  # one of TRANSFER_REGIMES
    error: float


def _predict(
    calibration: Calibration, row: PublishedMeasurement, spec_lookup: SpecLookup, gpus: GpuLookup
) -> Measurement:
    return estimate(spec_lookup(row.model), row.config, gpus(row.gpu), calibration=calibration)


def _throughput_rows(rows: Sequence[PublishedMeasurement]) -> list[PublishedMeasurement]:
    return [r for r in rows if r.tokens_per_s and r.comparable is Comparable.YES]


def fit_exponent(
    calibration: Calibration,
    rows: Sequence[PublishedMeasurement],
    spec_lookup: SpecLookup,
    gpus: GpuLookup,
) -> float:
    """The transfer exponent that minimizes the median absolute log error of the published
    throughput (comparable rows only); the calibration's own exponent when there are none.
    Ties go to the smaller exponent (the grid is searched upwards)."""
    usable = _throughput_rows(rows)
    if not usable:
        return calibration.transfer_exponent
    best, best_error = calibration.transfer_exponent, math.inf
    for exponent in _EXPONENT_GRID:
        trial = replace(calibration, transfer_exponent=exponent)
        errors = [
            abs(
                math.log(
                    (_predict(trial, r, spec_lookup, gpus).tokens_per_s or 0.0) / r.tokens_per_s
                )
            )
            for r in usable
            if r.tokens_per_s
        ]
        error = statistics.median(errors)
        if error < best_error - 1e-12:
            best, best_error = exponent, error
    return best


def _leave_one_out_error(
    allocated: Sequence[float], reserved: Sequence[float], *, additive: bool
) -> float:
    """Median absolute error of each reserved figure predicted from the others' ratio (or, with
    ``additive``, their overhead above what they allocate)."""
    errors = []
    for i in range(len(allocated)):
        rest = [j for j in range(len(allocated)) if j != i]
        if additive:
            overhead = statistics.median(reserved[j] - allocated[j] for j in rest)
            guess = allocated[i] + overhead
        else:
            guess = allocated[i] * statistics.median(reserved[j] / allocated[j] for j in rest)
        errors.append(abs(guess / reserved[i] - 1.0))
    return statistics.median(errors)


def fit_reserved_by_sharding(
    calibration: Calibration,
    rows: Sequence[PublishedMeasurement],
    spec_lookup: SpecLookup,
    gpus: GpuLookup,
) -> tuple[tuple[str, float, float], ...]:
    """``(strategy, ratio, overhead GiB)`` per sharding strategy other than ``none``, from
    comparable published reserved figures and the estimate's allocated memory (within 1% of the
    published allocated figures of FSDP runs): peak reserved = allocated × ratio + overhead,
    either a ratio (the median of reserved / allocated) or a fixed overhead (the median of
    reserved - allocated), whichever predicts each figure from the others better (leave one
    out; two figures or more, else a ratio). FSDP's overhead grows with what it allocates; with
    CPU offload it is about 6-9 GiB whatever the model (Answer.AI's 7B and 70B runs).
    Strategies without a figure take a stand-in's (:data:`_RESERVED_STAND_INS`)."""
    by_strategy: dict[Sharding, tuple[list[float], list[float]]] = {}
    for row in rows:
        if row.statistic is not Statistic.PEAK_RESERVED or row.comparable is not Comparable.YES:
            continue
        if row.config.sharding is Sharding.NONE or row.memory_gib is None:
            continue
        estimated = _predict(calibration, row, spec_lookup, gpus).peak_allocated_gib
        assert estimated is not None
        found = by_strategy.setdefault(row.config.sharding, ([], []))
        found[0].append(estimated)
        found[1].append(row.memory_gib)
    fitted: dict[Sharding, tuple[float, float]] = {}
    for strategy, (allocated, reserved) in by_strategy.items():
        additive = len(allocated) >= 2 and _leave_one_out_error(
            allocated, reserved, additive=True
        ) < _leave_one_out_error(allocated, reserved, additive=False)
        if additive:
            overhead = statistics.median(r - a for a, r in zip(allocated, reserved, strict=True))
            fitted[strategy] = (1.0, max(0.0, overhead))
        else:
            ratio = statistics.median(r / a for a, r in zip(allocated, reserved, strict=True))
            fitted[strategy] = (max(1.0, ratio), 0.0)
    for strategy, stand_in in _RESERVED_STAND_INS.items():
        if strategy not in fitted and stand_in in fitted:
            fitted[strategy] = fitted[stand_in]
    return tuple(
        (s.value, round(ratio, 4), round(overhead, 3))
        for s, (ratio, overhead) in sorted(fitted.items(), key=lambda i: i[0].value)
    )


def fit_on_published(
    calibration: Calibration,
    rows: Sequence[PublishedMeasurement],
    spec_lookup: SpecLookup,
    gpus: GpuLookup,
    *,
    source: str = "",
) -> Calibration:
    """``calibration`` with its transfer exponent and reserved memory by sharding strategy
    fitted on ``rows``."""
    exponent = fit_exponent(calibration, rows, spec_lookup, gpus)
    fitted = replace(calibration, transfer_exponent=exponent, transfer_source=source)
    return replace(
        fitted, reserved_by_sharding=fit_reserved_by_sharding(fitted, rows, spec_lookup, gpus)
    )


def _residuals_of(
    calibration: Calibration,
    row: PublishedMeasurement,
    spec_lookup: SpecLookup,
    gpus: GpuLookup,
) -> list[Residual]:
    predicted = _predict(calibration, row, spec_lookup, gpus)
    regime = transfer_regime(row.config)
    found: list[Residual] = []
    if row.tokens_per_s and predicted.tokens_per_s:
        # Step time is tokens per step over tokens/s: its residual is the inverse throughput's.
        error = row.tokens_per_s / predicted.tokens_per_s - 1.0
        found.append(Residual(row.id, row.source_key, "step_time_s", regime, error))
    if row.memory_gib is not None:
        value = (
            predicted.peak_reserved_gib
            if row.statistic is Statistic.PEAK_RESERVED
            else predicted.peak_allocated_gib
        )
        assert value is not None
        found.append(
            Residual(
                row.id, row.source_key, row.statistic.value, regime, value / row.memory_gib - 1
            )
        )
    return found


def _group(row: PublishedMeasurement, by: str) -> str:
    if by == "source":
        return row.source_key
    return f"{row.source_key}/{row.gpu}" if by == "gpu" else row.id


def held_out_by(
    calibration: Calibration,
    rows: Sequence[PublishedMeasurement],
    spec_lookup: SpecLookup,
    gpus: GpuLookup,
    *,
    by: str,
) -> list[Residual]:
    """Residuals of every comparable published figure, each predicted by a calibration whose
    transfer exponent and reserved ratios were fitted without its group's figures: ``by`` is
    ``source`` (leave one publisher out), ``gpu`` (leave one publisher's GPU out: how well a
    GPU nobody measured for ftplan is estimated) or ``row`` (leave one figure out)."""
    if by not in ("source", "gpu", "row"):
        raise ValueError(f"by must be 'source', 'gpu' or 'row', got {by!r}")
    comparable = [r for r in rows if r.comparable is Comparable.YES]
    residuals: list[Residual] = []
    for key in sorted({_group(r, by) for r in comparable}):
        fold = fit_on_published(
            calibration, [r for r in rows if _group(r, by) != key], spec_lookup, gpus
        )
        for row in comparable:
            if _group(row, by) == key:
                residuals += _residuals_of(fold, row, spec_lookup, gpus)
    return residuals


# A transfer regime needs this many residuals of a quantity for a band of its own; a regime
# with fewer takes the quantity's band over every regime. Fewer than profiler.fit's 9: the
# extremes of 5 hold a new residual 67% of the time alone, but an estimate takes the wider of
# this band and its recipe's, which already holds 80% of the H100's held-out errors; pooling
# instead would give one-GPU estimates the spread of multi-GPU runs on slow PCIe machines.
MIN_TRANSFER_ROWS = 5


def transfer_bands(residuals: Sequence[Residual]) -> tuple[tuple[str, str, float, float], ...]:
    """An 80% interval of the signed residuals (:func:`profiler.calibration.band_of`) per
    (quantity, transfer regime) that has any: its own from :data:`MIN_TRANSFER_ROWS`
    residuals, else the quantity's over every regime. A regime without residuals of a
    quantity gets no band for it (its estimates keep their recipe's band)."""
    grouped: dict[tuple[str, str], list[float]] = {}
    pooled: dict[str, list[float]] = {}
    for r in residuals:
        grouped.setdefault((r.quantity, r.regime), []).append(r.error)
        pooled.setdefault(r.quantity, []).append(r.error)
    return tuple(
        (
            quantity,
            regime,
            *band_of(errors if len(errors) >= MIN_TRANSFER_ROWS else pooled[quantity]),
        )
        for (quantity, regime), errors in sorted(grouped.items())
    )


def held_out_residuals(
    calibration: Calibration,
    pairs: Sequence[tuple[Measurement, Measurement]],
) -> list[Residual]:
    """Step-time residuals of (measured, predicted) runs on GPUs the calibration was not fitted
    on (e.g. the H200 runs), as one-GPU transfer residuals of source ``ftplan``."""
    found = []
    for measured, predicted in pairs:
        if measured.step_time_s and predicted.step_time_s and measured.gpu != calibration.gpu:
            error = predicted.step_time_s / measured.step_time_s - 1.0
            found.append(
                Residual(
                    measured.model,
                    "ftplan",
                    "step_time_s",
                    transfer_regime(measured.config),
                    error,
                )
            )
    return found


def calibrate_transfer(
    calibration: Calibration,
    rows: Sequence[PublishedMeasurement],
    spec_lookup: SpecLookup,
    gpus: GpuLookup,
    *,
    held_out: Sequence[tuple[Measurement, Measurement]] = (),
) -> Calibration:
    """``calibration`` with everything this module fits: the transfer exponent and reserved
    ratios on all of ``rows``, and the transfer bands: step time and allocated memory from
    their leave-one-GPU-out residuals (:func:`held_out_by`) plus the step-time residuals of
    ``held_out`` (measured, predicted) runs on other GPUs; reserved memory, whose allocator
    overhead depends on the sharding strategy and not on the GPU, from leave-one-figure-out
    residuals."""
    throughput = _throughput_rows(rows)
    sources = ", ".join(sorted({r.source_key for r in throughput}))
    fitted = fit_on_published(
        calibration,
        rows,
        spec_lookup,
        gpus,
        source=f"{len(throughput)} published throughput figures ({sources})",
    )
    reserved = BAND_RESERVED
    residuals = [
        r
        for r in held_out_by(calibration, rows, spec_lookup, gpus, by="gpu")
        if r.quantity != reserved
    ]
    residuals += [
        r
        for r in held_out_by(calibration, rows, spec_lookup, gpus, by="row")
        if r.quantity == reserved
    ]
    residuals += held_out_residuals(calibration, held_out)
    return replace(fitted, transfer_bands=transfer_bands(residuals))
