"""The calibrated estimator as one object: estimate, eval pass and fit, with calibrations.

:func:`profiler.estimator.estimate` and :func:`~profiler.estimator.eval_pass` take a calibration;
:func:`profiler.fit.fit_calibration` makes one. :class:`Estimator` holds where calibrations come
from (the GPU's own fit, else the H100 fit carried over: :func:`profiler.calibration.
calibration_for`) and offers the three, so a caller (the planner's ``Measurer``, the CLI, a
benchmark) holds one object instead of threading calibrations through closures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from catalog import get_gpu
from profiler.calibration import REFERENCE_GPU, calibration_for
from profiler.estimator import estimate, eval_pass
from profiler.fit import fit_calibration

if TYPE_CHECKING:
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
