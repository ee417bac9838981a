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
    """The largest value of a knob that fits, with its fit check; ``value`` None when even the
    smallest does not fit. ``value_within_margin`` is the largest whose verdict is ``fits``
    (its peak plus error margin fits too; None when every fitting value is ``tight``).
    ``limit`` is the cap the search stopped at, when it was reached."""

    knob: str
    value: int | None
    check: FitCheck
    limit: int | None = None
    value_within_margin: int | None = None


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
    is not ``no``, and the largest whose fit is ``fits`` (within the figure's error margin)."""
    checks: dict[int, FitCheck] = {}

    def check(value: int) -> FitCheck:
        if value not in checks:
            checks[value] = _check(estimate, with_value(value), gpu)
        return checks[value]

    best = largest_true(lambda v: check(v).verdict is not FitVerdict.NO, low=1, high=high)
    safe = None
    if best is not None:
        safe = largest_true(lambda v: check(v).verdict is FitVerdict.FITS, low=1, high=best)
    return LargestFit(
        knob=knob,
        value=best,
        check=check(1 if best is None else best),
        limit=high if best == high else None,
        value_within_margin=safe,
    )


def max_micro_batch(
    estimate: EstimateFn, config: TuningConfig, gpu: GPU, *, limit: int = 4096
) -> LargestFit:
    """Largest micro-batch per GPU (at ``config``'s sequence length) whose fit is not ``no``."""

    def with_batch(batch: int) -> TuningConfig:
        return dataclasses.replace(config, micro_batch_size=batch)

    return _largest(estimate, with_batch, gpu, knob="micro_batch_size", high=limit)


def max_seq_len(
    estimate: EstimateFn, config: TuningConfig, gpu: GPU, *, spec: ModelSpec
) -> LargestFit:
    """Largest sequence length (at ``config``'s micro-batch, up to the model's context length)
    whose fit is not ``no``."""

    def with_seq(seq: int) -> TuningConfig:
        return dataclasses.replace(config, seq_len=seq)

    return _largest(estimate, with_seq, gpu, knob="seq_len", high=spec.max_seq_len)
