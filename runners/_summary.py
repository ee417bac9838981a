"""The end-of-run summary a training run writes: measured tokens/s and peak memory against the
plan's prediction, with the library versions that produced them. Pure but for the version
lookup; used by :mod:`runners.train`.
"""

from __future__ import annotations

import statistics
from typing import Any

from runners._eval import EvalResult, eval_summary
from runners._types import LaunchSpec

SUMMARY_FORMAT = "ftplan-run-summary/1"
# Steps left out of the throughput median: the first steps pay for allocator growth, kernel
# selection and clock ramp-up (DESIGN.md, "Measuring on the GPU": warm-up, then the median).
WARMUP_STEPS = 2


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def _compare(
    measured: float | None, expected: float | None, tolerance: float, why_missing: str
) -> dict[str, Any]:
    if measured is None or expected is None or expected <= 0:
        reason = why_missing if measured is None else "the plan gave no prediction"
        return {
            "measured": measured,
            "expected": expected,
            "ratio": None,
            "tolerance_fraction": tolerance,
            "within": None,
            "note": reason,
        }
    ratio = measured / expected
    return {
        "measured": measured,
        "expected": expected,
        "ratio": ratio,
        "tolerance_fraction": tolerance,
        "within": abs(ratio - 1.0) <= tolerance,
    }


def build_summary(
    spec: LaunchSpec,
    *,
    step_times_s: list[float],
    tokens_per_step: int,
    peak_allocated_gib: float | None,
    peak_reserved_gib: float | None,
    first_loss: float | None,
    last_loss: float | None,
    steps_done: int,
    start_step: int,
    device_name: str,
    model_config: dict[str, Any] | None = None,
    evaluations: list[EvalResult] | None = None,
) -> dict[str, Any]:
    """The end-of-run summary: measured vs planned tokens/s and peak allocated memory.

    Throughput is the median over the steps after :data:`WARMUP_STEPS` (all steps when the
    run is shorter; eval passes are never part of a step's time); memory is
    ``torch.cuda.max_memory_allocated`` of this process, GiB. ``model_config`` is the
    transformers config the run trained with (the checkpoint's own for real weights).
    ``evaluations`` are this process's eval passes (None: no eval data; the summary's ``eval``
    is then None).
    """
    timed = step_times_s[WARMUP_STEPS:] if len(step_times_s) > WARMUP_STEPS else step_times_s
    step_time = statistics.median(timed) if timed else None
    tokens_per_s = tokens_per_step / step_time if step_time else None
    no_cuda = "not measured: no CUDA device (peak memory is read from torch.cuda)"
    return {
        "format": SUMMARY_FORMAT,
        "model": spec.model.name,
        "config": spec.config.label(),
        "device": device_name,
        "model_config": model_config,
        "versions": _versions(),
        "steps_completed": steps_done,
        "resumed_from_step": start_step,
        "first_loss": first_loss,
        "last_loss": last_loss,
        "eval": eval_summary(evaluations),
        "measured": {
            "step_time_s": step_time,
            "tokens_per_s": tokens_per_s,
            "peak_allocated_gib": peak_allocated_gib,
            "peak_reserved_gib": peak_reserved_gib,
            "timed_steps": len(timed),
        },
        "expected_source": spec.expected_source,
        "comparison": {
            "tokens_per_s": _compare(
                tokens_per_s,
                spec.expected_tokens_per_s,
                spec.throughput_tolerance_fraction,
                "no timed steps",
            ),
            "peak_allocated_gib": _compare(
                peak_allocated_gib,
                spec.expected_peak_allocated_gib,
                spec.memory_tolerance_fraction,
                no_cuda,
            ),
        },
    }
