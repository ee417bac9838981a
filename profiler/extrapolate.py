"""Truncated-layer extrapolation: from 2- and 4-layer (or more) measurements to the full depth.

A straight line in the decoder-layer count, fitted by least squares and evaluated at the model's
real depth, predicted llama2-7b's peak memory within 0.1% on an H100 (DESIGN.md, "Facts
established on real hardware"). The peak is a maximum of phases: each phase's peak is
extrapolated on its own and the largest is taken, because the full model can peak in a different
phase (the optimizer step) than the truncated ones (backward). Pure; no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from profiler._types import Measurement, Provenance, Source, Status

FIT_NUM_LAYERS = "num_layers"  # same key the worker records on each measurement
# GPU-side timings the worker records in ``fit`` (seconds per step), extrapolated like step time:
# the CUDA-event span of a step (GPU timeline, idle gaps included) and the summed kernel
# durations of one profiled step (torch.profiler). Wall time far above kernel time means the
# step is bound by launches, not by GPU work.
FIT_CUDA_EVENT_TIME_S = "cuda_event_time_s"
FIT_KERNEL_BUSY_S = "kernel_busy_s"
TIMING_FIT_KEYS = (FIT_CUDA_EVENT_TIME_S, FIT_KERNEL_BUSY_S)


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line through the points.

    Returns:
        ``(slope, intercept)``; with two points, the line through both.

    Raises:
        ValueError: If the lengths differ or fewer than two distinct x values are given.
    """
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
    if len(set(xs)) < 2:
        raise ValueError(f"a line needs at least two distinct x values, got {list(xs)}")
    n = len(xs)
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    var_x = sum((x - mean_x) ** 2 for x in xs)
    cov_xy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = cov_xy / var_x
    return slope, mean_y - slope * mean_x


def layers_of(measurement: Measurement) -> int | None:
    """The decoder-layer count a measured record was taken at, where it is recorded."""
    for key, value in measurement.fit:
        if key == FIT_NUM_LAYERS:
            return int(value)
    return None


def _phase_names(points: Sequence[Measurement]) -> list[str]:
    names = [dict(p.phase_peaks_gib).keys() for p in points]
    common = set(names[0]).intersection(*names[1:]) if names else set()
    return [n for n, _ in points[0].phase_peaks_gib if n in common]


def _check_inputs(points: Sequence[Measurement], counts: Sequence[int]) -> None:
    if not points:
        raise ValueError("extrapolation needs measurements, got none")
    if len(points) != len(counts):
        raise ValueError(f"{len(points)} measurements but {len(counts)} layer counts")
    configs = {p.config for p in points}
    gpus = {p.gpu for p in points}
    if len(configs) > 1 or len(gpus) > 1:
        raise ValueError(
            f"extrapolation inputs differ in config or GPU ({sorted(c.label() for c in configs)}, "
            f"{sorted(gpus)}); measure one config on one GPU at several depths"
        )


def _failed(
    points: Sequence[Measurement], counts: Sequence[int], *, target_layers: int, model: str
) -> Measurement:
    """The record when an input is not ok: an OOM at few layers means an OOM at full depth."""
    bad_index = next(i for i, p in enumerate(points) if p.status is not Status.OK)
    bad = points[bad_index]
    status = Status.OOM if bad.status is Status.OOM else Status.ERROR
    why = (
        f"the {counts[bad_index]}-layer model already ran out of memory, so the "
        f"{target_layers}-layer model cannot fit"
        if status is Status.OOM
        else f"the {counts[bad_index]}-layer measurement failed"
    )
    return Measurement(
        model=model,
        gpu=bad.gpu,
        config=bad.config,
        status=status,
        source=Source.EXTRAPOLATED,
        provenance=Provenance(
            device=bad.provenance.device,
            date=bad.provenance.date,
            versions=bad.provenance.versions,
            method="truncated-layer extrapolation (not fitted)",
            notes=f"input {bad.model}: {bad.error}"[:2000],
        ),
        error=f"{why}: {bad.error}"[:2000],
        fit=tuple((f"layers_measured_{i}", float(c)) for i, c in enumerate(counts))
        + (("target_layers", float(target_layers)),),
    )


@dataclass(slots=True)
class _Line:
    """Least-squares lines in the layer count, each evaluated at ``target_layers``; ``fit``
    collects the measured depths and every line's slope and intercept for the record."""

    xs: list[float]
    target_layers: int
    fit: list[tuple[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fit += [(f"layers_measured_{i}", x) for i, x in enumerate(self.xs)]
        self.fit.append(("target_layers", float(self.target_layers)))

    def predict(self, name: str, ys: Sequence[float]) -> float:
        slope, intercept = fit_line(self.xs, ys)
        self.fit.extend(((f"{name}_slope_per_layer", slope), (f"{name}_intercept", intercept)))
        return slope * self.target_layers + intercept


def _column(points: Sequence[Measurement], attr: str) -> list[float] | None:
    values = [getattr(p, attr) for p in points]
    return None if any(v is None for v in values) else [float(v) for v in values]


def _peaks(
    line: _Line, points: Sequence[Measurement], phase_peaks: tuple[tuple[str, float], ...]
) -> tuple[float | None, float | None]:
    """(peak allocated, peak reserved): allocated is the largest extrapolated phase peak (else
    the line through the peaks); reserved at least allocated plus the smallest
    reserved-minus-allocated gap the inputs show."""
    peak_allocated: float | None = None
    allocated = _column(points, "peak_allocated_gib")
    if allocated is not None:
        direct = line.predict("peak_allocated_gib", allocated)
        peak_allocated = max(v for _, v in phase_peaks) if phase_peaks else direct
    peak_reserved: float | None = None
    reserved = _column(points, "peak_reserved_gib")
    if reserved is not None:
        peak_reserved = line.predict("peak_reserved_gib", reserved)
        if peak_allocated is not None and allocated is not None:
            gap = min(max(r - a, 0.0) for r, a in zip(reserved, allocated, strict=True))
            peak_reserved = max(peak_reserved, peak_allocated + gap)
    return peak_allocated, peak_reserved


def _rejected(
    points: Sequence[Measurement], *, model: str, step_time_s: float, fit: list[tuple[str, float]]
) -> Measurement:
    """The error record of an extrapolation whose step time is not positive."""
    first = points[0]
    return Measurement(
        model=model,
        gpu=first.gpu,
        config=first.config,
        status=Status.ERROR,
        source=Source.EXTRAPOLATED,
        provenance=Provenance(
            device=first.provenance.device,
            date=max(p.provenance.date for p in points),
            versions=first.provenance.versions,
            method="truncated-layer extrapolation (rejected)",
        ),
        error=f"extrapolated step time {step_time_s:.4g} s is not positive: the truncated "
        f"timings are too noisy; use more timed steps or longer steps",
        fit=tuple(fit),
    )


def extrapolate(
    points: Sequence[Measurement],
    *,
    layer_counts: Sequence[int] | None = None,
    target_layers: int,
    model: str,
) -> Measurement:
    """Fit each figure linearly in the layer count and evaluate it at ``target_layers``.

    Peak allocated memory is the maximum of the extrapolated phase peaks when the inputs record
    phases (else the line through the peaks); peak reserved memory is at least the predicted
    allocated peak plus the smallest reserved-minus-allocated gap seen in the inputs. Step time,
    parameter counts and the GPU timings (``TIMING_FIT_KEYS``) are fitted the same way.

    Args:
        points: Measurements of one config on one GPU at different depths.
        layer_counts: Decoder layers of each measurement (``None``: read from each record).
        target_layers: The model's real number of decoder layers.
        model: Name of the full model (recorded on the result).

    Returns:
        ``Source.EXTRAPOLATED`` record. If any input is oom/error, a record with that status and
        the reason (an OOM of a truncated model propagates as an OOM); a step time that
        extrapolates to <= 0 s (noisy timings) gives an error record.

    Raises:
        ValueError: If inputs are missing, differ in config or GPU, or have too few depths.
    """
    counts = list(layer_counts) if layer_counts is not None else [layers_of(p) for p in points]
    if any(c is None for c in counts):
        raise ValueError("a measurement records no layer count; pass layer_counts")
    ints = [int(c) for c in counts if c is not None]
    _check_inputs(points, ints)
    if any(p.status is not Status.OK for p in points):
        return _failed(points, ints, target_layers=target_layers, model=model)
    line = _Line(xs=[float(c) for c in ints], target_layers=target_layers)
    step_time_s = line.predict("step_time_s", [p.step_time_s for p in points])  # type: ignore[misc]
    if step_time_s <= 0:
        return _rejected(points, model=model, step_time_s=step_time_s, fit=line.fit)
    phases = _phase_names(points)
    phase_peaks = tuple(
        (name, line.predict(f"phase_{name}_gib", [dict(p.phase_peaks_gib)[name] for p in points]))
        for name in phases
    )
    peak_allocated, peak_reserved = _peaks(line, points, phase_peaks)
    for key in TIMING_FIT_KEYS:
        timings = [dict(p.fit).get(key) for p in points]
        if all(t is not None for t in timings):
            line.fit.append((key, line.predict(key, timings)))  # type: ignore[arg-type]

    def count(attr: str) -> int | None:
        values = _column(points, attr)
        return None if values is None else round(line.predict(attr, values))

    first = points[0]
    summary = "; ".join(
        f"{c} layers: "
        + (f"{p.peak_allocated_gib:.3f} GiB alloc, " if p.peak_allocated_gib is not None else "")
        + f"{p.step_time_s:.4f} s"
        for c, p in zip(ints, points, strict=True)
    )
    return Measurement(
        model=model,
        gpu=first.gpu,
        config=first.config,
        status=Status.OK,
        source=Source.EXTRAPOLATED,
        provenance=Provenance(
            device=first.provenance.device,
            date=max(p.provenance.date for p in points),
            versions=first.provenance.versions,
            method=f"least-squares line in the decoder-layer count over {len(points)} truncated "
            f"measurements, evaluated at {target_layers} layers; peak = max of phase fits",
            notes=f"inputs: {summary}",
        ),
        peak_allocated_gib=peak_allocated,
        peak_reserved_gib=peak_reserved,
        step_time_s=step_time_s,
        tokens_per_s=first.config.tokens_per_step * first.config.gpu_count / step_time_s,
        trainable_params=count("trainable_params"),
        total_params=count("total_params"),
        phase_peaks_gib=phase_peaks,
        fit=tuple(line.fit),
    )
