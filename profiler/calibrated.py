"""The calibrated estimator as one object: estimate, eval pass and fit, with calibrations; and
recalibration from measurement files (``ftplan calibrate``).

:func:`profiler.estimator.estimate` and :func:`~profiler.estimator.eval_pass` take a calibration;
:func:`profiler.fit.fit_calibration` makes one. :class:`Estimator` holds where calibrations come
from (the GPU's own fit, else the H100 fit carried over: :func:`profiler.calibration.
calibration_for`) and offers the three, so a caller (the planner's ``Measurer``, the CLI, a
benchmark) holds one object instead of threading calibrations through closures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from catalog import DataError, get_gpu, loads_json, open_regular
from profiler.calibration import (
    FIRST_PRINCIPLES,
    REFERENCE_GPU,
    calibration_for,
    reference_measurements,
    shipped_calibration_for,
)
from profiler.estimator import estimate, eval_pass
from profiler.fit import fit_calibration, usable_rows
from profiler.store import ProfileStore

if TYPE_CHECKING:
    from pathlib import Path

    from catalog import GPU, ModelSpec
    from profiler._types import EvalEstimate, Measurement, Provenance, TuningConfig
    from profiler.calibration import Calibration


@dataclass(frozen=True, slots=True)
class Estimator:
    """The analytic estimator with its calibrations.

    Attributes:
        calibration_of: The calibration to use for a GPU (default: its own fit from the user's
            cache or the shipped data, else the H100 fit carried over to it).
    """

    calibration_of: Callable[[GPU], Calibration] = calibration_for

    def calibration(self, gpu: GPU) -> Calibration:
        """The calibration estimates for ``gpu`` use."""
        return self.calibration_of(gpu)

    def estimate(
        self,
        spec: ModelSpec,
        config: TuningConfig,
        gpu: GPU,
        *,
        nodes: int = 1,
        inter_node_gbps: float = 0.0,
    ) -> Measurement:
        """Peak memory per GPU and step time of ``config`` (:func:`profiler.estimator.estimate`).

        Raises:
            ValueError: For bf16 on a GPU without bf16, or several nodes without a bandwidth.
        """
        return estimate(
            spec,
            config,
            gpu,
            nodes=nodes,
            inter_node_gbps=inter_node_gbps,
            calibration=self.calibration_of(gpu),
        )

    def eval_pass(self, spec: ModelSpec, config: TuningConfig, gpu: GPU) -> EvalEstimate:
        """Memory and time of an eval pass of ``config`` (:func:`profiler.estimator.eval_pass`)."""
        return eval_pass(spec, config, gpu, calibration=self.calibration_of(gpu))

    def fit(
        self,
        measurements: Sequence[Measurement],
        spec_lookup: Callable[[str], ModelSpec],
        gpu: GPU,
        *,
        provenance: Provenance | None = None,
    ) -> Calibration:
        """A calibration for ``gpu`` fitted on ``measurements`` (:func:`profiler.fit.
        fit_calibration`), taking what they cannot show (the 8-bit AdamW terms without 8-bit
        runs, the reserved memory of sharded strategies) from this estimator's calibration of
        the reference GPU.

        Raises:
            InputError: If fewer than 4 usable measurements of ``gpu`` are given.
        """
        return fit_calibration(
            measurements,
            spec_lookup,
            gpu,
            provenance=provenance,
            fallback=self.calibration_of(get_gpu(REFERENCE_GPU)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EstimateErrors:
    """How far a calibration's estimates fall from measurements: the median and worst absolute
    error of peak allocated memory and of step time, % (NaN without a usable measurement)."""

    memory_median_pct: float
    memory_max_pct: float
    time_median_pct: float
    time_max_pct: float


def estimate_errors(
    measurements: Sequence[Measurement],
    spec_lookup: Callable[[str], ModelSpec],
    gpu: GPU,
    calibration: Calibration,
) -> EstimateErrors:
    """The errors of ``calibration``'s estimates on the measurements a fit for ``gpu`` would use
    (:func:`profiler.fit.usable_rows`); rows the estimator has no figure for are skipped."""
    memory, time = [], []
    for m in usable_rows(measurements, gpu):
        predicted = estimate(spec_lookup(m.model), m.config, gpu, calibration=calibration)
        assert m.peak_allocated_gib and m.step_time_s  # usable_rows keeps positive ones only
        if not (predicted.peak_allocated_gib and predicted.step_time_s):
            continue
        memory.append(abs(predicted.peak_allocated_gib / m.peak_allocated_gib - 1) * 100)
        time.append(abs(predicted.step_time_s / m.step_time_s - 1) * 100)
    if not memory:
        return EstimateErrors(
            memory_median_pct=math.nan,
            memory_max_pct=math.nan,
            time_median_pct=math.nan,
            time_max_pct=math.nan,
        )
    memory.sort()
    time.sort()
    return EstimateErrors(
        memory_median_pct=memory[len(memory) // 2],
        memory_max_pct=memory[-1],
        time_median_pct=time[len(time) // 2],
        time_max_pct=time[-1],
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Recalibration:
    """A new fit for one GPU, and the errors of the calibration estimates used before it (the
    fit's own errors are on :class:`~profiler.calibration.Calibration`)."""

    fitted: Calibration
    errors_before: EstimateErrors


def recalibrate(
    measurements: Sequence[Measurement], spec_lookup: Callable[[str], ModelSpec], gpu: GPU
) -> Recalibration:
    """Fit ``gpu``'s calibration on ``measurements`` (``ftplan calibrate``).

    What the measurements cannot show comes from the shipped reference fit, never from a
    calibration the user fitted before (:func:`profiler.calibration.shipped_calibration_for`).
    The errors before are those of the calibration estimates use now (the first-principles
    defaults when it was fitted on nothing).

    Raises:
        InputError: If fewer than 4 usable measurements of ``gpu`` are given.
    """
    fitted = Estimator(calibration_of=shipped_calibration_for).fit(measurements, spec_lookup, gpu)
    before = Estimator().calibration(gpu)
    errors = estimate_errors(
        measurements, spec_lookup, gpu, before if before.fit_inputs else FIRST_PRINCIPLES
    )
    return Recalibration(fitted=fitted, errors_before=errors)


def read_measurement_files(paths: Sequence[Path], gpu: GPU, *, what: str) -> list[Measurement]:
    """Measurements from JSONL files, each either profile-store records or raw reference rows
    (a first line with ``mode``, :func:`profiler.calibration.reference_measurements`, read as
    taken on ``gpu``); ``what`` names the files in messages (e.g. ``--from``).

    Raises:
        DataError: A file that is not valid JSONL of either kind (the message names the line).
    """
    records: list[Measurement] = []
    for path in paths:
        with open_regular(path, what=what) as handle:
            first = b"{}"
            while line := handle.readline(1024 * 1024):
                if line.strip():
                    first = line
                    break
        try:
            head = loads_json(first.decode("utf-8", errors="replace"), what=f"{what} {path}")
        except DataError:
            head = {}  # the reader below names the line
        if isinstance(head, dict) and "mode" in head:
            records += reference_measurements(path, gpu_name=gpu.name)
        else:
            records += ProfileStore([path]).records()
    return records
