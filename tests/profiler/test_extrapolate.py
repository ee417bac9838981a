"""Truncated-layer extrapolation on synthetic measurements (pure; no torch)."""

from __future__ import annotations

import dataclasses

import pytest

from profiler import Measurement, Method, Provenance, Source, Status, TuningConfig
from profiler.extrapolate import extrapolate, fit_line, layers_of

CONFIG = TuningConfig(
    method=Method.FULL, micro_batch_size=4, seq_len=2048, grad_checkpointing=True
)


def _point(
    layers: int,
    *,
    fb: float | None,
    opt: float | None,
    reserved_gap: float = 0.5,
    step_s: float = 0.1,
    status: Status = Status.OK,
    date: str = "2026-11-23",
    config: TuningConfig = CONFIG,
) -> Measurement:
    ok = status is Status.OK
    phases = (("forward_backward", fb), ("optimizer_step", opt)) if fb is not None else ()
    peak = max(fb, opt) if fb is not None and opt is not None else None
    return Measurement(
        model=f"m@{layers}-layers",
        gpu="H100 SXM 80GB",
        config=config,
        status=status,
        source=Source.MEASURED,
        provenance=Provenance(device="NVIDIA H100 80GB HBM3", date=date),
        peak_allocated_gib=peak if ok else None,
        peak_reserved_gib=peak + reserved_gap if ok and peak is not None else None,
        step_time_s=step_s if ok else None,
        tokens_per_s=CONFIG.tokens_per_step / step_s if ok else None,
        trainable_params=1000 + 100 * layers,
        total_params=1000 + 100 * layers,
        phase_peaks_gib=phases if ok else (),  # type: ignore[arg-type]
        error="" if ok else "CUDA out of memory",
        fit=(("num_layers", float(layers)),),
    )


def test_fit_line_through_two_points_and_least_squares() -> None:
    assert fit_line([2, 4], [3.0, 7.0]) == pytest.approx((2.0, -1.0))
    # y = 2x + 1 with noise +0.1, -0.2, +0.1 (zero mean, zero correlation with x - mean(x)).
    slope, intercept = fit_line([2, 4, 6], [5.1, 8.8, 13.1])
    assert slope == pytest.approx(2.0)
    assert intercept == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two distinct"):
        fit_line([2, 2], [1.0, 2.0])


def test_peak_is_the_max_of_extrapolated_phases_when_phases_cross() -> None:
    """DESIGN.md's trap: truncated models peak in backward, the full model in the optimizer."""

    def fb(n: int) -> float:
        return 3.0 + 0.2 * n  # activations of the logits dominate small models

    def opt(n: int) -> float:
        return 1.0 + 0.5 * n  # weights + grads + AdamW states grow with depth

    points = [_point(n, fb=fb(n), opt=opt(n)) for n in (2, 4)]
    result = extrapolate(points, target_layers=32, model="m")
    assert result.source is Source.EXTRAPOLATED and result.status is Status.OK
    assert result.peak_allocated_gib == pytest.approx(opt(32))  # 17.0, not the naive 9.4
    fit = dict(result.fit)
    naive = fit["peak_allocated_gib_slope_per_layer"] * 32 + fit["peak_allocated_gib_intercept"]
    assert naive == pytest.approx(fb(32))
    assert dict(result.phase_peaks_gib) == pytest.approx(
        {"forward_backward": fb(32), "optimizer_step": opt(32)}
    )
    # Reserved is never below allocated plus the smallest gap the inputs showed.
    assert result.peak_reserved_gib == pytest.approx(opt(32) + 0.5)
    assert (fit["layers_measured_0"], fit["layers_measured_1"], fit["target_layers"]) == (
        2.0,
        4.0,
        32.0,
    )


def test_time_and_params_are_linear_in_layers() -> None:
    points = [_point(2, fb=4.0, opt=2.0, step_s=0.030), _point(4, fb=5.0, opt=3.0, step_s=0.050)]
    result = extrapolate(points, target_layers=32, model="m")
    assert result.step_time_s == pytest.approx(0.010 * 32 + 0.010)
    assert result.tokens_per_s == pytest.approx(CONFIG.tokens_per_step / 0.33)
    assert result.trainable_params == 1000 + 100 * 32
    assert result.model == "m" and result.gpu == "H100 SXM 80GB"
    assert result.provenance.date == "2026-11-23"
    assert "2 layers" in result.provenance.notes and "4 layers" in result.provenance.notes


def test_three_points_use_least_squares() -> None:
    points = [
        _point(n, fb=1.0 + n + noise, opt=0.5, step_s=0.01 * n)
        for n, noise in ((2, 0.1), (4, -0.2), (6, 0.1))
    ]
    result = extrapolate(points, target_layers=10, model="m")
    assert result.peak_allocated_gib == pytest.approx(11.0)


def test_an_oom_at_few_layers_propagates() -> None:
    points = [_point(2, fb=70.0, opt=60.0), _point(4, fb=None, opt=None, status=Status.OOM)]
    result = extrapolate(points, target_layers=80, model="llama2-70b")
    assert result.status is Status.OOM and result.source is Source.EXTRAPOLATED
    assert "4-layer model already ran out of memory" in result.error
    assert "80-layer model cannot fit" in result.error
    assert result.peak_allocated_gib is None


def test_cpu_inputs_give_time_without_memory() -> None:
    points = [_point(n, fb=None, opt=None, step_s=0.1 * n) for n in (1, 2)]
    points = [
        Measurement(
            **{
                **{f: getattr(p, f) for f in p.__dataclass_fields__},
                "peak_allocated_gib": None,
                "peak_reserved_gib": None,
            }
        )
        for p in points
    ]
    result = extrapolate(points, layer_counts=[1, 2], target_layers=4, model="m")
    assert result.peak_allocated_gib is None and result.peak_reserved_gib is None
    assert result.step_time_s == pytest.approx(0.4)


def test_inputs_must_share_config_and_name_their_depth() -> None:
    other = TuningConfig(method=Method.FULL, micro_batch_size=1)
    points = [_point(2, fb=1.0, opt=1.0), _point(4, fb=2.0, opt=2.0, config=other)]
    with pytest.raises(ValueError, match="differ in config"):
        extrapolate(points, target_layers=32, model="m")
    assert layers_of(points[0]) == 2
    bare = Measurement(
        model="m",
        gpu="g",
        config=CONFIG,
        status=Status.OK,
        source=Source.MEASURED,
        provenance=Provenance(device="d", date="x"),
        step_time_s=1.0,
        tokens_per_s=1.0,
    )
    with pytest.raises(ValueError, match="records no layer count"):
        extrapolate([bare, bare], target_layers=32, model="m")


def test_noisy_timings_that_extrapolate_below_zero_are_rejected() -> None:
    points = [_point(2, fb=1.0, opt=1.0, step_s=0.5), _point(4, fb=2.0, opt=2.0, step_s=0.1)]
    result = extrapolate(points, target_layers=32, model="m")
    assert result.status is Status.ERROR and "not positive" in result.error
    assert result.step_time_s is None


def test_gpu_timings_are_extrapolated_when_every_input_has_them() -> None:
    points = []
    for layers in (2, 4):
        base = _point(layers, fb=1.0, opt=1.0, step_s=0.02 * layers)
        timings = (("cuda_event_time_s", 0.018 * layers), ("kernel_busy_s", 0.01 * layers))
        points.append(dataclasses.replace(base, fit=base.fit + timings))
    fit = dict(extrapolate(points, target_layers=32, model="m").fit)
    assert fit["cuda_event_time_s"] == pytest.approx(0.018 * 32)
    assert fit["kernel_busy_s"] == pytest.approx(0.01 * 32)
    points[0] = _point(2, fb=1.0, opt=1.0)
    assert "kernel_busy_s" not in dict(extrapolate(points, target_layers=32, model="m").fit)
