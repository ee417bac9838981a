"""What-if queries over the analytic estimator: the largest micro-batch or sequence length that
fits a GPU, what the chunked loss would add, and when nothing fits, the nearest change that
would. Pure; a bisection costs ~20 estimator calls (milliseconds).

Peak memory grows monotonically with micro-batch and sequence length for every recipe, so an
exponential probe followed by a bisection finds the exact largest value.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from profiler._types import (
    DEFAULT_LORA_RANK,
    DEFAULT_LORA_TARGETS,
    Method,
    OptimizerKind,
    Precision,
    TuningConfig,
    chunked_loss_problem,
    default_lora_alpha,
    default_sharding,
)
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


class Knob(enum.StrEnum):
    """What a what-if query grows: the micro-batch per GPU or the sequence length."""

    MICRO_BATCH = "micro_batch_size"
    SEQ_LEN = "seq_len"


@dataclass(frozen=True, slots=True, kw_only=True)
class WhatIf:
    """The answer to "how large can this knob go on this GPU".

    Attributes:
        found: The largest value that fits, and the largest that may (:class:`LargestFit`).
        with_chunked_loss: The largest value with the chunked loss, where it is off, ftplan's
            recipe could run it, and it allows more; else None.
        nearest_change: When nothing fits even at 1: the first change that makes batch 1 fit
            (:func:`nearest_change`); else None.
    """

    found: LargestFit
    with_chunked_loss: int | None = None
    nearest_change: str | None = None


def what_if(
    estimate: EstimateFn, spec: ModelSpec, config: TuningConfig, gpu: GPU, *, knob: Knob
) -> WhatIf:
    """How large ``knob`` can go for ``config`` on ``gpu`` (``estimate`` is the estimator for
    this model and GPU), with what the chunked loss would allow, and when even 1 does not fit,
    the nearest change that would."""

    def search(c: TuningConfig) -> LargestFit:
        if knob is Knob.MICRO_BATCH:
            return max_micro_batch(estimate, c, gpu)
        return max_seq_len(estimate, c, gpu, spec=spec)

    found = search(config)
    chunked = None
    if can_chunk(spec, config):
        chunked = search(dataclasses.replace(config, chunked_loss=True)).value
        if chunked is not None and found.value is not None and chunked <= found.value:
            chunked = None
    nearest = None
    if found.value_tight is None:
        nearest = nearest_change(estimate, spec, config, gpu)
    return WhatIf(found=found, with_chunked_loss=chunked, nearest_change=nearest)


def can_chunk(spec: ModelSpec, config: TuningConfig) -> bool:
    """Whether the chunked loss is off and ftplan's recipe could run it for this config."""
    return not config.chunked_loss and (
        chunked_loss_problem(
            model_type=spec.model_type, gpu_count=config.gpu_count, sharding=config.sharding
        )
        is None
    )


def nearest_change(estimate: EstimateFn, spec: ModelSpec, config: TuningConfig, gpu: GPU) -> str:
    """The first of: the chunked loss, gradient checkpointing, both, QLoRA with checkpointing
    (and the chunked loss), a shorter sequence, that makes batch 1 fit; else a larger GPU or
    several. Worded as the ``ftplan estimate`` options to change."""
    one = dataclasses.replace(config, micro_batch_size=1)
    ckpt = dataclasses.replace(one, grad_checkpointing=True)
    steps: list[tuple[str, TuningConfig]] = []
    if not config.grad_checkpointing:
        steps.append(("add --grad-checkpointing", ckpt))
    if config.method is not Method.QLORA:
        steps.append(("--method qlora with --grad-checkpointing", _as_qlora(ckpt)))
    options: list[tuple[str, TuningConfig]] = []
    chunk = can_chunk(spec, config)
    if chunk:
        options.append(("add --chunked-loss", dataclasses.replace(one, chunked_loss=True)))
    for text, candidate in steps:
        options.append((text, candidate))
        if chunk:
            chunked = dataclasses.replace(candidate, chunked_loss=True)
            options.append((f"{text} and --chunked-loss", chunked))
    for text, candidate in options:
        check = measurement_fit(estimate(candidate), gpu)
        if check.fits:
            return f"{text} ({check.peak_reserved_gib:.1f} GiB at batch 1)"
    shorter = max_seq_len(estimate, one, gpu, spec=spec).value
    if shorter:
        return f"a shorter --seq-len (at most {shorter} tokens at batch 1)"
    return "a GPU with more memory, or several GPUs (--gpu-count) to shard over"


def _as_qlora(config: TuningConfig) -> TuningConfig:
    """``config`` as QLoRA: its LoRA options (else the defaults), AdamW, the default sharding,
    bf16-mixed in place of pure bf16."""
    # One replace: QLoRA with pure bf16 is not a valid config, even for a moment.
    return dataclasses.replace(
        config,
        method=Method.QLORA,
        precision=Precision.BF16_MIXED if config.precision is Precision.BF16 else config.precision,
        lora_rank=config.lora_rank or DEFAULT_LORA_RANK,
        lora_alpha=config.lora_alpha or default_lora_alpha(config.lora_rank or DEFAULT_LORA_RANK),
        lora_targets=config.lora_targets or DEFAULT_LORA_TARGETS,
        optimizer=OptimizerKind.ADAMW,
        sharding=default_sharding(Method.QLORA, config.gpu_count),
    )
