"""Where the search gets memory and speed: the estimator, stored profiles and the memory-fit
rule (:class:`Measurer`), and the host-RAM and loading checks a candidate must pass.

Pure: the estimator and profile lookup are given (:meth:`Measurer.calibrated` builds the ones
``ftplan recommend`` plans with).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from catalog import GPU, ModelSpec, Offer
from planner._types import Candidate
from profiler import (
    Estimator,
    EvalEstimate,
    FitVerdict,
    Measurement,
    TuningConfig,
    measurement_fit,
)
from profiler.headroom import capacity_gib
from profiler.memory import load_peak_gib
from profiler.sharding import HOST_RAM_PER_PROCESS_GIB

EstimateFn = Callable[..., Measurement]
"""``estimate(spec, config, gpu, *, nodes, inter_node_gbps) -> Measurement`` (profiler)."""
LookupFn = Callable[[str, TuningConfig, str], "Measurement | None"]
"""``lookup(model_name, config, gpu_name)``: a stored measured/extrapolated profile or None."""
EvalFn = Callable[[ModelSpec, TuningConfig, GPU], EvalEstimate]
"""``eval_pass(spec, config, gpu) -> EvalEstimate`` (profiler, with a calibration bound)."""
FitsFn = Callable[[Measurement, GPU], FitVerdict]
"""``fits(measurement, gpu)``: the fit verdict of a measurement's per-GPU peak on the card, with
its own error band or its source's margin (:func:`profiler.measurement_fit`)."""


def default_fits(measurement: Measurement, gpu: GPU) -> FitVerdict:
    """The profiler's verdict: torch's usable memory less the CUDA context, with the figure's
    own error band (estimates) or its source's margin (measured, extrapolated)."""
    return measurement_fit(measurement, gpu).verdict


def host_ram_fits(measurement: Measurement, offer: Offer) -> bool:
    """Whether the offer's host memory (``memory_gib`` per instance) holds what the run keeps
    there (``host_ram_gib`` per node: the training processes, offloaded state, the whole model
    while rank 0 loads it). An offer whose memory the catalog does not know passes: the plan
    says so as a risk (:func:`host_ram_unknown`) and prefers plans that need less."""
    needed, have = measurement.host_ram_gib, offer.memory_gib
    return needed is None or have is None or needed <= have


def host_ram_unknown(candidate: Candidate) -> bool:
    """Whether ``candidate`` needs host RAM beyond its training processes (offload, rank-0
    loading) on an offer whose memory the catalog does not list, so nothing could check it."""
    needed = candidate.measurement.host_ram_gib
    if needed is None or candidate.offer.memory_gib is not None:
        return False
    processes = HOST_RAM_PER_PROCESS_GIB * candidate.config.gpu_count / candidate.nodes
    return needed > processes + 1e-6


def loads(spec: ModelSpec, config: TuningConfig, gpu: GPU) -> bool:
    """Whether ftplan's runner can load ``config`` on ``gpu``: its loading peak
    (:func:`profiler.memory.load_peak_gib`, 0 where the runner never holds more than the
    training peak while loading) within the card's capacity."""
    return load_peak_gib(spec, config) <= capacity_gib(gpu)


class Estimating(Protocol):
    """What the search asks of an estimator (:class:`profiler.Estimator` is one)."""

    def estimate(
        self,
        spec: ModelSpec,
        config: TuningConfig,
        gpu: GPU,
        *,
        nodes: int = 1,
        inter_node_gbps: float = 0.0,
    ) -> Measurement: ...

    def eval_pass(self, spec: ModelSpec, config: TuningConfig, gpu: GPU) -> EvalEstimate: ...


@dataclass(frozen=True, slots=True)
class EstimateFunctions:
    """An estimator made of bare functions, for stand-ins (tests, benchmarks that time a
    variant): ``estimate`` has :meth:`Estimating.estimate`'s signature; without ``eval_pass``
    a plan with evaluations is refused."""

    estimate_fn: EstimateFn
    eval_pass_fn: EvalFn | None = None

    def estimate(
        self,
        spec: ModelSpec,
        config: TuningConfig,
        gpu: GPU,
        *,
        nodes: int = 1,
        inter_node_gbps: float = 0.0,
    ) -> Measurement:
        return self.estimate_fn(spec, config, gpu, nodes=nodes, inter_node_gbps=inter_node_gbps)

    def eval_pass(self, spec: ModelSpec, config: TuningConfig, gpu: GPU) -> EvalEstimate:
        if self.eval_pass_fn is None:
            raise ValueError("the budget has eval passes but this estimator cannot time them")
        return self.eval_pass_fn(spec, config, gpu)


@dataclass(frozen=True, slots=True)
class Measurer:
    """Where the search gets memory and speed: the estimator, stored profiles and the memory-fit
    rule, passed together (:meth:`calibrated` for ``ftplan recommend``; tests pass stand-ins)."""

    estimator: Estimating
    """The calibrated :class:`profiler.Estimator`, or a stand-in (:class:`EstimateFunctions`)."""
    lookup: LookupFn | None = None
    """Stored measured/extrapolated profiles, or None for the estimator alone."""
    fits: FitsFn = default_fits
    """The fit verdict of a figure on a card (the profiler's rule by default)."""

    @classmethod
    def calibrated(cls) -> Measurer:
        """The calibrated estimator (each GPU's own fit, else the H100's carried over) and the
        profile store (shipped profiles and the user's), as ``ftplan recommend`` plans."""
        from profiler.store import default_store

        store = default_store()

        def lookup(model: str, config: TuningConfig, gpu: str) -> Measurement | None:
            return store.lookup(model=model, config=config, gpu=gpu)

        return cls(Estimator(), lookup)


__all__ = [
    "EstimateFn",
    "EstimateFunctions",
    "Estimating",
    "EvalFn",
    "FitsFn",
    "LookupFn",
    "Measurer",
    "default_fits",
    "host_ram_fits",
    "host_ram_unknown",
    "loads",
]
