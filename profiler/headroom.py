"""Fit verdict: whether a config's peak memory fits a GPU, from the figure's own error. Pure.

The capacity is what torch can allocate on the card (``GPU.usable_memory_gib``, the
``torch.cuda.mem_get_info`` total where measured) less the CUDA context, which
``max_memory_reserved`` does not count. The margin is how far the figure has been seen to fall
short of a real run: none for a measurement, the truncated-layer extrapolation's worst miss for an
extrapolated profile, and for an estimate the high end of its own error band (the estimator's
cross-validated residuals of reserved memory for its regime, ``Measurement.band``), or, without
a band, the estimator's worst cross-validated under-prediction.

The verdict reads the figure as a band of GiB, ``[low, high]``: an estimate's own band where it
has one (``peak_reserved_gib`` low/high), else ``[peak, peak × (1 + margin)]``.

- ``fits``: the whole band fits the capacity (its high end is within it);
- ``tight``: the band straddles the capacity (allowed, and plans say so);
- ``no``: even the band's low end is over the capacity.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from profiler._types import Source, Status

if TYPE_CHECKING:
    from catalog import GPU
    from profiler._types import Measurement

# CUDA context and allocator start-up: memory the process holds before its first tensor, which
# max_memory_reserved does not count. Measured twice: 0.75 GiB on the H100 80GB HBM3 reference
# runs (nvidia-smi used minus peak reserved; see profiler/data/README.md) and 526 MiB (0.51 GiB) on
# an H200 (torch.cuda.mem_get_info total 143155 MiB, free before any allocation 142629 MiB;
# benchmarks/results/README.md, 2026-11-30). The larger is kept: the context grows with the
# driver and CUDA version, and an OOM costs more than 0.24 GiB of unused memory.
CUDA_CONTEXT_GIB = 0.75

# How much a real run's peak reserved memory has exceeded each kind of figure, as a fraction of
# the figure. ESTIMATED: the analytic estimator's worst leave-one-model-out under-prediction of
# peak reserved memory on the 24 H100 reference runs, -14.1% (benchmarks/validate_estimator.py,
# 2026-11-30), i.e. real = estimate / (1 - 0.141). EXTRAPOLATED: truncated-layer extrapolation's
# worst miss, 3% too little (gemma-2b full bf16-mixed, DESIGN.md). MEASURED: the run itself.
ESTIMATE_UNDER_PREDICTION = 0.141
MARGIN_BY_SOURCE: dict[Source, float] = {
    Source.MEASURED: 0.0,
    Source.EXTRAPOLATED: 0.03 / (1 - 0.03),
    Source.ESTIMATED: ESTIMATE_UNDER_PREDICTION / (1 - ESTIMATE_UNDER_PREDICTION),
}


class FitVerdict(enum.StrEnum):
    """Three-state memory verdict; ``fits`` and ``tight`` both count as fitting."""

    FITS = "fits"
    TIGHT = "tight"
    NO = "no"

    @property
    def fits(self) -> bool:
        return self is not FitVerdict.NO


@dataclass(frozen=True, slots=True, kw_only=True)
class FitCheck:
    """A verdict with the numbers behind it (GiB per GPU)."""

    verdict: FitVerdict
    peak_reserved_gib: float
    peak_with_margin_gib: float
    capacity_gib: float
    margin_fraction: float
    low_gib: float | None = None
    """The band's low end (the peak itself when the figure has no band of its own)."""

    @property
    def fits(self) -> bool:
        return self.verdict.fits

    def describe(self) -> str:
        """One sentence: the verdict, the peak, its margin and the capacity."""
        pct = f"{self.margin_fraction:+.0%}"
        head = (
            f"{self.peak_reserved_gib:.1f} GiB peak reserved of {self.capacity_gib:.1f} GiB "
            "usable (torch's total less the CUDA context)"
        )
        if self.verdict is FitVerdict.FITS:
            return (
                f"fits: {head}, with its {pct} error margin ({self.peak_with_margin_gib:.1f} GiB)"
            )
        low = self.peak_reserved_gib if self.low_gib is None else self.low_gib
        if self.verdict is FitVerdict.TIGHT:
            return (
                f"tight: {head}; its error band, {low:.1f}-{self.peak_with_margin_gib:.1f} GiB, "
                "straddles the card, so a real run may run out of memory"
            )
        if self.peak_reserved_gib <= self.capacity_gib:
            return f"does not fit: {head}; even its error band's low end, {low:.1f} GiB, is over"
        return f"does not fit: {head}"


def capacity_gib(gpu: GPU) -> float:
    """GiB a training process can reserve on ``gpu``: torch's total less the CUDA context."""
    return gpu.usable_memory_gib - CUDA_CONTEXT_GIB


def check_fit(
    peak_reserved_gib: float,
    gpu: GPU,
    *,
    source: Source = Source.ESTIMATED,
    high_gib: float | None = None,
    low_gib: float | None = None,
) -> FitCheck:
    """Fit verdict of a per-GPU peak reserved memory (GiB) on ``gpu``.

    Args:
        peak_reserved_gib: Peak reserved memory per GPU, GiB (inf for an OOM).
        gpu: The card.
        source: Where the peak came from; sets the error margin (:data:`MARGIN_BY_SOURCE`).
        high_gib: The high end of the estimate's own error band (the estimator's
            cross-validated residuals for its regime); replaces the source's margin.
        low_gib: The low end of that band; ``no`` only when it is over the capacity. Without
            it the band starts at the peak.

    Returns:
        The verdict with the peak, the band's ends and the capacity, GiB.
    """
    capacity = capacity_gib(gpu)
    finite = 0 < peak_reserved_gib < float("inf")
    if high_gib is not None and finite:
        with_margin = max(high_gib, peak_reserved_gib)
        margin = with_margin / peak_reserved_gib - 1
    else:
        margin = MARGIN_BY_SOURCE[source]
        with_margin = peak_reserved_gib * (1 + margin)
    low = low_gib if low_gib is not None and finite else peak_reserved_gib
    if low > capacity:
        verdict = FitVerdict.NO
    elif with_margin > capacity:
        verdict = FitVerdict.TIGHT
    else:
        verdict = FitVerdict.FITS
    return FitCheck(
        verdict=verdict,
        peak_reserved_gib=peak_reserved_gib,
        peak_with_margin_gib=with_margin,
        capacity_gib=capacity,
        margin_fraction=margin,
        low_gib=low,
    )


def peak_for_fit_gib(measurement: Measurement) -> float:
    """The peak a fit check compares with the capacity, GiB per GPU:
    :attr:`~profiler._types.Measurement.peak_memory_gib` (reserved, else allocated), and inf for
    a run that did not finish (OOM, error) or has no memory figure, which then fits nothing."""
    peak = measurement.peak_memory_gib
    if measurement.status is not Status.OK or peak is None:
        return float("inf")
    return peak


def measurement_fit(measurement: Measurement, gpu: GPU) -> FitCheck:
    """Fit check of a measurement or estimate: its :func:`peak_for_fit_gib`, with its own error
    band when it has one, else its source's margin."""
    band = measurement.band("peak_reserved_gib")
    return check_fit(
        peak_for_fit_gib(measurement),
        gpu,
        source=measurement.source,
        high_gib=None if band is None else band[1],
        low_gib=None if band is None else band[0],
    )


def fit_verdict(
    peak_reserved_gib: float, gpu: GPU, *, source: Source = Source.ESTIMATED
) -> FitVerdict:
    """The verdict alone (see :func:`check_fit`)."""
    return check_fit(peak_reserved_gib, gpu, source=source).verdict
