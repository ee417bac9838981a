"""What-if queries over the analytic estimator: the largest micro-batch or sequence length that
fits a GPU. Pure; a bisection costs ~20 estimator calls (milliseconds).

Peak memory grows monotonically with micro-batch and sequence length for every recipe, so an
exponential probe followed by a bisection finds the exact largest value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from profiler._types import TuningConfig
from profiler.headroom import FitCheck, FitVerdict, measurement_fit

if TYPE_CHECKING:
    from catalog import GPU, ModelSpec
    from profiler._types import Measurement

EstimateFn = Callable[[TuningConfig], "Measurement"]
"""``estimate(config) -> Measurement`` for one model and GPU (the analytic estimator)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LargestFit:
    """The largest value of a knob that fits, with its fit check.

    ``value`` is the largest whose verdict is ``fits``: the peak at the high end of the
    estimate's own error band fits too, so a real run should get there (what ftplan promises;
    None when nothing is sure to fit). ``value_tight`` is the largest whose verdict is not
    ``no`` (>= ``value``; between them a run may or may not fit); None when even the smallest
    does not fit. ``check`` is the fit check of ``value`` (else of ``value_tight``, else of 1).
    ``limit`` is the cap the search stopped at, when it was reached."""

    knob: str
    value: int | None
    check: FitCheck
    limit: int | None = None
    value_tight: int | None = None


def largest_true(predicate: Callable[[int], bool], *, low: int, high: int) -> int | None:
    """Largest ``n`` in [low, high] with ``predicate(n)``, for a predicate that is True up to
    some point and False after it; None when ``predicate(low)`` is False."""
    if not predicate(low):
        return None
    good, probe = low, low
    while probe < high:  # double until it fails or reaches the cap
        probe = min(high, probe * 2)
        if not predicate(probe):
            bad = probe
            break
        good = probe
    else:
        return good
    while bad - good > 1:
        mid = (good + bad) // 2
        if predicate(mid):
            good = mid
        else:
            bad = mid
    return good


def _check(estimate: EstimateFn, config: TuningConfig, gpu: GPU) -> FitCheck:
    return measurement_fit(estimate(config), gpu)


def _largest(
    estimate: EstimateFn,
    with_value: Callable[[int], TuningConfig],
    gpu: GPU,
    *,
    knob: str,
    high: int,
) -> LargestFit:
    """Largest value in [1, high] of a knob (``with_value(n)`` is the config at ``n``) whose fit
    is ``fits`` (within the figure's error margin), and the largest whose fit is not ``no``."""
    checks: dict[int, FitCheck] = {}

    def check(value: int) -> FitCheck:
        if value not in checks:
            checks[value] = _check(estimate, with_value(value), gpu)
        return checks[value]

    tight = largest_true(lambda v: check(v).verdict is not FitVerdict.NO, low=1, high=high)
    safe = None
    if tight is not None:
        safe = largest_true(lambda v: check(v).verdict is FitVerdict.FITS, low=1, high=tight)
    shown = safe if safe is not None else tight
    return LargestFit(
        knob=knob,
        value=safe,
        check=check(1 if shown is None else shown),
        limit=high if shown == high else None,
        value_tight=tight,
    )


def max_micro_batch(
    estimate: EstimateFn, config: TuningConfig, gpu: GPU, *, limit: int = 4096
) -> LargestFit:
    """Largest micro-batch per GPU (at ``config``'s sequence length) that fits
    (:class:`LargestFit`)."""

    def with_batch(batch: int) -> TuningConfig:
        return dataclasses.replace(config, micro_batch_size=batch)

    return _largest(estimate, with_batch, gpu, knob="micro_batch_size", high=limit)


def max_seq_len(
    estimate: EstimateFn, config: TuningConfig, gpu: GPU, *, spec: ModelSpec
) -> LargestFit:
    """Largest sequence length (at ``config``'s micro-batch, up to the model's context length)
    that fits (:class:`LargestFit`)."""

    def with_seq(seq: int) -> TuningConfig:
        return dataclasses.replace(config, seq_len=seq)

    return _largest(estimate, with_seq, gpu, knob="seq_len", high=spec.max_seq_len)
