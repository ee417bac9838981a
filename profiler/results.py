"""What ``ftplan estimate`` answers, as JSON-ready dicts (its ``--format json`` output, which
its table shows too): one config's figures with the fit verdict, its eval pass, and a what-if
query's largest fit. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from catalog import to_jsonable
from profiler.headroom import capacity_gib, measurement_fit
from profiler.whatif import Knob

if TYPE_CHECKING:
    from catalog import GPU, ModelSpec
    from profiler._types import EvalEstimate, Measurement, TuningConfig
    from profiler.whatif import WhatIf

# The quantities whose 80% band an estimate carries, as ``<quantity>_low`` / ``_high`` keys.
BAND_KEYS = ("step_time_s", "peak_allocated_gib", "peak_reserved_gib")
# The JSON key of each what-if knob's answer.
WHAT_IF_KEYS = {Knob.MICRO_BATCH: "max_micro_batch", Knob.SEQ_LEN: "max_seq_len"}


def estimate_result(measurement: Measurement, gpu: GPU, notes: Sequence[str]) -> dict[str, Any]:
    """One config's memory and speed on ``gpu`` (measured, extrapolated or estimated), its fit
    verdict against the GPU's capacity, and ``notes`` for the user.

    Bands (``step_time_s_low`` ...) come from the cross-validated residuals of the estimate's
    regime; null when measured or when the calibration has none.
    """
    bands = {
        f"{quantity}_{end}": None if measurement.band(quantity) is None else value
        for quantity in BAND_KEYS
        for end, value in zip(
            ("low", "high"), measurement.band(quantity) or (0.0, 0.0), strict=True
        )
    }
    fit = measurement_fit(measurement, gpu)
    return {
        **bands,
        "model": measurement.model,
        "gpu": gpu.name,
        "config": to_jsonable(measurement.config),
        "source": measurement.source.value,
        "status": measurement.status.value,
        "peak_allocated_gib": measurement.peak_allocated_gib,
        "peak_reserved_gib": measurement.peak_reserved_gib,
        "sharding": measurement.config.sharding.value,
        "host_ram_gib": measurement.host_ram_gib,
        "step_time_s": measurement.step_time_s,
        "tokens_per_s": measurement.tokens_per_s,
        "trainable_params": measurement.trainable_params,
        "total_params": measurement.total_params,
        "usable_memory_gib": gpu.usable_memory_gib,
        "memory_limit_gib": capacity_gib(gpu),
        "fit": fit.verdict.value,
        "fits": fit.fits,
        "fit_margin_fraction": fit.margin_fraction,
        "fit_detail": fit.describe(),
        "breakdown": to_jsonable(measurement.breakdown) if measurement.breakdown else None,
        "phase_peaks_gib": dict(measurement.phase_peaks_gib),
        "provenance": to_jsonable(measurement.provenance),
        "notes": list(notes),
    }


def with_eval_pass(
    result: dict[str, Any],
    eval_pass: EvalEstimate,
    config: TuningConfig,
    measurement: Measurement,
    tokens: int,
) -> dict[str, Any]:
    """``result`` with one eval pass over ``tokens`` tokens (key ``eval``) and its memory phase
    (``phase_peaks_gib["eval"]``), estimated: the estimator's forward share
    (:attr:`EvalEstimate.step_fraction`) of the training step, measured or estimated."""
    step_s = (measurement.step_time_s or eval_pass.train_step_time_s) * eval_pass.step_fraction
    tokens_per_s = config.tokens_per_step * config.gpu_count / step_s
    found = {
        "source": "estimated",
        "tokens": tokens,
        "peak_allocated_gib": eval_pass.peak_allocated_gib,
        "step_time_s": step_s,
        "tokens_per_s": tokens_per_s,
        "pass_s": tokens / tokens_per_s,
    }
    phases = {**result["phase_peaks_gib"], "eval": eval_pass.peak_allocated_gib}
    return {**result, "eval": found, "phase_peaks_gib": phases}


def what_if_result(
    answer: WhatIf, spec: ModelSpec, config: TuningConfig, gpu: GPU, *, knob: Knob
) -> dict[str, Any]:
    """A what-if answer (``--max-batch`` / ``--max-seq-len``): the largest value that fits
    within the estimate's error margin, the largest that may (``_tight``), the fit check of the
    value shown, the cap the search stopped at, and what the chunked loss would allow."""
    key, found = WHAT_IF_KEYS[knob], answer.found
    return {
        "model": spec.name,
        "gpu": gpu.name,
        "config": to_jsonable(config),
        "source": "estimated",
        key: found.value,
        f"{key}_tight": found.value_tight,
        "fit": found.check.verdict.value,
        "fits": found.check.fits,
        "peak_reserved_gib": found.check.peak_reserved_gib,
        "memory_limit_gib": found.check.capacity_gib,
        "fit_detail": found.check.describe(),
        "capped_at": found.limit,
        f"{key}_with_chunked_loss": answer.with_chunked_loss,
    }
