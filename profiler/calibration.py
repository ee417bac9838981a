"""Calibration of the analytic estimator: a few fitted efficiencies per GPU, with provenance.

A :class:`Calibration` holds the handful of numbers the estimator cannot derive from first
principles (matmul efficiency, a fixed per-layer launch cost for all recipes and one more under
autocast, a fixed cost per NF4 linear call, an activation-memory scale and the reserved/allocated
ratio). ftplan ships one fitted on real H100
measurements (``profiler/data/calibration-h100.json``); ``ftplan calibrate`` fits one from the
user's own measurements into the user cache, which then overrides the shipped one.
numpy is imported inside :func:`fit_calibration` only, never on the estimate hot path.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from profiler._types import Measurement, Provenance, Source, Status

if TYPE_CHECKING:
    from catalog import GPU, ModelSpec

SHIPPED_DATA_DIR = Path(__file__).resolve().parent / "data"
CALIBRATION_PREFIX = "calibration-"


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """Fitted estimator parameters for one GPU model.

    Attributes:
        gpu: Catalog name of the GPU the fit applies to (e.g. ``H100 SXM 80GB``).
        compute_efficiency: Fraction of ``gpu.matmul_tflops`` the model FLOPs run at (MFU) once
            the per-layer fixed cost is separated out; dimensionless, (0, 1].
        layer_pass_overhead_s: Fixed seconds per decoder layer per pass (forward, backward,
            recomputation): kernel launches and Python dispatch that do not shrink with size.
        autocast_layer_pass_overhead_s: Further fixed seconds per decoder layer per pass for
            recipes under autocast (all but pure-bf16 full FT): autocast dispatch and its cast
            kernels.
        elementwise_traffic_factor: Multiplier on the activation bytes one pass reads and writes
            in memory-bound kernels (norms, SiLU, RoPE, adds, casts), timed at the GPU bandwidth.
        nf4_call_overhead_s: Fixed seconds per NF4 (bitsandbytes Linear4bit) call per pass, on top
            of its dequantization traffic: the extra kernels and Python of the 4-bit path.
        optimizer_bandwidth_efficiency: Fraction of the memory bandwidth the optimizer step
            reaches (it is memory-bound).
        activation_scale: Multiplier on the estimator's activation and logits bytes.
        reserved_ratio: ``peak_reserved / peak_allocated`` (allocator caching/fragmentation).
        fit_inputs: Number of measurements the fit used (0 for the first-principles defaults).
        memory_error_median_pct: Median absolute error of peak allocated memory on the inputs, %.
        memory_error_max_pct: Worst absolute error of peak allocated memory on the inputs, %.
        time_error_median_pct: Median absolute error of step time on the inputs, %.
        time_error_max_pct: Worst absolute error of step time on the inputs, %.
        fitted_date: UTC date of the fit (ISO ``YYYY-MM-DD``).
        provenance: Data source, device, library versions and the date of the fit.
    """

    gpu: str
    compute_efficiency: float
    layer_pass_overhead_s: float
    elementwise_traffic_factor: float
    nf4_call_overhead_s: float
    optimizer_bandwidth_efficiency: float
    autocast_layer_pass_overhead_s: float = 0.0
    activation_scale: float = 1.0
    reserved_ratio: float = 1.08
    fit_inputs: int = 0
    memory_error_median_pct: float | None = None
    memory_error_max_pct: float | None = None
    time_error_median_pct: float | None = None
    time_error_max_pct: float | None = None
    fitted_date: str = ""
    provenance: Provenance

    def __post_init__(self) -> None:
        if not 0 < self.compute_efficiency <= 1:
            raise ValueError(
                f"calibration {self.gpu!r}: compute_efficiency must be in (0, 1], "
                f"got {self.compute_efficiency}"
            )
        if not 0 < self.optimizer_bandwidth_efficiency <= 1:
            raise ValueError(
                f"calibration {self.gpu!r}: optimizer_bandwidth_efficiency must be "
                f"in (0, 1], got {self.optimizer_bandwidth_efficiency}"
            )
        for name in (
            "layer_pass_overhead_s",
            "autocast_layer_pass_overhead_s",
            "elementwise_traffic_factor",
            "nf4_call_overhead_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"calibration {self.gpu!r}: {name} must be >= 0")
        if self.activation_scale <= 0 or self.reserved_ratio < 1:
            raise ValueError(
                f"calibration {self.gpu!r}: activation_scale must be > 0 and "
                f"reserved_ratio >= 1, got {self.activation_scale}, "
                f"{self.reserved_ratio}"
            )


# First-principles defaults, used when no fit exists for any GPU. MFU 0.5 is a common large-model
# training figure (PaLM, Chowdhery et al. 2022, Table 3: 46%); no fixed per-call costs; the
# optimizer step is
# elementwise and reaches ~80% of peak bandwidth in STREAM-like kernels.
FIRST_PRINCIPLES = Calibration(
    gpu="any",
    compute_efficiency=0.5,
    layer_pass_overhead_s=0.0,
    elementwise_traffic_factor=1.0,
    nf4_call_overhead_s=0.0,
    optimizer_bandwidth_efficiency=0.8,
    provenance=Provenance(
        device="none",
        date="",
        method="first principles",
        notes="defaults before any fit; see docs/estimator.md",
    ),
)


def calibration_file_name(gpu_name: str) -> str:
    """File name of a GPU's calibration, e.g. ``calibration-h100-sxm-80gb.json``."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return f"{CALIBRATION_PREFIX}{slug}.json"


def user_calibration_dir() -> Path:
    """Where ``ftplan calibrate`` writes: ``$FTPLAN_CACHE_DIR`` or ``~/.cache/ftplan``."""
    root = os.environ.get("FTPLAN_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "ftplan"


def calibration_to_json(calibration: Calibration) -> str:
    """Stable JSON text of a calibration (sorted keys, trailing newline)."""
    from catalog import to_jsonable

    return json.dumps(to_jsonable(calibration), indent=2, sort_keys=True) + "\n"


def read_calibration(path: Path) -> Calibration:
    """Read one calibration file.

    Raises:
        ValueError: If the file is not a valid calibration (the message names the file).
    """
    from catalog import from_jsonable

    try:
        return from_jsonable(Calibration, json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise ValueError(
            f"calibration file {path} is not valid ({exc}). To fix: delete it and "
            f"run 'ftplan calibrate' again"
        ) from None


_LOADED: dict[str, Calibration | None] = {}


def load_calibration(gpu_name: str) -> Calibration | None:
    """The calibration for a GPU: the user's cache first, then the shipped one, else ``None``.

    Results are cached per process; call ``load_calibration.cache_clear()`` after writing one.

    Args:
        gpu_name: Catalog name of the GPU, e.g. ``H100 SXM 80GB``.
    """
    if gpu_name in _LOADED:
        return _LOADED[gpu_name]
    name = calibration_file_name(gpu_name)
    found: Calibration | None = None
    for folder in (user_calibration_dir(), SHIPPED_DATA_DIR):
        path = folder / name
        if path.is_file():
            found = read_calibration(path)
            break
    _LOADED[gpu_name] = found
    return found


def _cache_clear() -> None:
    _LOADED.clear()


load_calibration.cache_clear = _cache_clear  # type: ignore[attr-defined]

# The GPU whose fit stands in for GPUs without their own (its efficiencies transfer; bandwidth
# and TFLOP/s terms use the target GPU's own figures).
REFERENCE_GPU = "H100 SXM 80GB"


def calibration_for(gpu: GPU) -> Calibration:
    """The calibration to use for ``gpu``: its own, else the reference H100 fit, else defaults.

    The generic rule for a GPU without its own fit: the H100's MFU, per-layer fixed cost and
    NF4 per-call cost are reused unchanged, while FLOP/s and bandwidth come from the GPU's
    catalog row, so a GPU with half the bandwidth gets twice the memory-bound time.
    """
    own = load_calibration(gpu.name)
    if own is not None:
        return own
    reference = load_calibration(REFERENCE_GPU)
    return reference if reference is not None else FIRST_PRINCIPLES


def _abs_pct(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured * 100.0


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# Upper bound on the fitted MFU. Without it the small reference models let the fit trade matmul
# time for memory-bound time (an unconstrained fit on the H100 rows gives 0.85), which would make
# large models, where matmuls dominate, look too fast; well-tuned large-model training reaches
# 40-60% (PaLM 46%, Chowdhery et al. 2022; Llama 3 38-43%, Dubey et al. 2024).
MAX_COMPUTE_EFFICIENCY = 0.6

SpecLookup = Callable[[str], "ModelSpec"]


def usable_rows(measurements: Sequence[Measurement], gpu: GPU) -> list[Measurement]:
    """The measurements a fit can use: status ok, measured at full depth, on ``gpu``, timed."""
    return [
        m
        for m in measurements
        if m.status is Status.OK
        and m.source is Source.MEASURED
        and m.gpu == gpu.name
        and m.step_time_s is not None
        and m.peak_allocated_gib is not None
    ]


def fit_calibration(
    measurements: Sequence[Measurement],
    spec_lookup: SpecLookup,
    gpu: GPU,
    *,
    provenance: Provenance | None = None,
    fitted_date: str | None = None,
) -> Calibration:
    """Fit the estimator's free parameters to measurements of one GPU by least squares.

    Time: ``step_time = flops/(peak·eff) + layer_passes·t_layer
    + autocast_layer_passes·t_autocast + nf4_calls·t_nf4 + fixed`` (fixed: the optimizer step and
    NF4 dequantization traffic) is linear in ``1/eff``, ``t_layer``, ``t_autocast`` and ``t_nf4``;
    the elementwise factor ``k`` is set to 0 (see the comment in the body). It is fitted on
    relative error (each row divided by its measured time) so short and long steps weigh the
    same; ``eff`` is capped at :data:`MAX_COMPUTE_EFFICIENCY`, and a coefficient that comes out
    negative is fixed at zero and the rest refitted. Memory: one scale on activation + logits
    bytes (relative least squares on rows whose peak is the forward/backward phase) and the
    median reserved/allocated ratio.

    Args:
        measurements: Records of real runs; only ok, measured, full-depth rows on ``gpu`` count.
        spec_lookup: Model name to architecture facts (``catalog.get_model``).
        gpu: The GPU the measurements were taken on.
        provenance: Where the data came from; defaults to the first usable record's provenance.
        fitted_date: ISO date to stamp; defaults to today (UTC).

    Returns:
        The fitted calibration, with its in-sample error statistics.

    Raises:
        ValueError: If fewer than 4 usable measurements are given.
    """
    import numpy as np

    from profiler.estimator import estimate, time_terms

    rows = usable_rows(measurements, gpu)
    if len(rows) < 4:
        raise ValueError(
            f"calibrating {gpu.name} needs at least 4 ok full-depth measurements on it, got "
            f"{len(rows)}. To fix: run 'ftplan profile' on a few configs on that GPU first"
        )
    base = replace(FIRST_PRINCIPLES, gpu=gpu.name)
    specs = [spec_lookup(m.model) for m in rows]
    measured_s = np.array([m.step_time_s for m in rows], dtype=float)
    terms = [
        time_terms(spec, m.config, gpu, calibration=base)
        for spec, m in zip(specs, rows, strict=True)
    ]
    # The elementwise-traffic term is not fitted: on the reference rows it is not separable from
    # MFU (the full fit sets it to 0), and fitting it made the leave-one-model-out error worse
    # (median 8.5% vs 6.7%, worst 37% vs 31%), one held-out fold picking k > 0.
    columns = ["compute_s_at_peak", "layer_passes", "nf4_calls", "autocast_layer_passes"]
    design = np.array([[t[c] for c in columns] for t in terms], dtype=float)
    fixed = np.array([t["fixed_s"] for t in terms], dtype=float)
    active = [j for j in range(len(columns)) if design[:, j].any()]
    coef = np.zeros(len(columns))
    weights = 1.0 / measured_s
    target = measured_s - fixed
    while active:
        a = design[:, active] * weights[:, None]
        solution, *_ = np.linalg.lstsq(a, target * weights, rcond=None)
        if 0 in active and solution[0] < 1.0 / MAX_COMPUTE_EFFICIENCY:
            # An MFU above the cap would make large models look too fast: fix it, refit the rest.
            target = target - design[:, 0] / MAX_COMPUTE_EFFICIENCY
            coef[0] = 1.0 / MAX_COMPUTE_EFFICIENCY
            active = [j for j in active if j != 0]
            continue
        if (solution >= 0).all():
            coef[active] = solution
            break
        active = [j for j, s in zip(active, solution, strict=True) if s >= 0]
    efficiency = float(1.0 / coef[0]) if coef[0] > 0 else base.compute_efficiency
    fitted = replace(
        base,
        compute_efficiency=min(MAX_COMPUTE_EFFICIENCY, efficiency),
        layer_pass_overhead_s=float(coef[1]),
        elementwise_traffic_factor=0.0,
        nf4_call_overhead_s=float(coef[2]),
        autocast_layer_pass_overhead_s=float(coef[3]),
    )
    fitted = _fit_memory(fitted, rows, specs, gpu)
    if fitted_date is None:
        import datetime

        fitted_date = datetime.datetime.now(datetime.UTC).date().isoformat()
    fitted = replace(fitted, fitted_date=fitted_date)
    return _with_errors(fitted, rows, specs, gpu, provenance, estimate)


def _fit_memory(
    calibration: Calibration, rows: Sequence[Measurement], specs: Sequence[ModelSpec], gpu: GPU
) -> Calibration:
    from profiler.estimator import memory_terms

    numerator = denominator = 0.0
    ratios: list[float] = []
    for spec, m in zip(specs, rows, strict=True):
        assert m.peak_allocated_gib is not None
        if m.peak_reserved_gib is not None:
            ratios.append(m.peak_reserved_gib / m.peak_allocated_gib)
        terms = memory_terms(spec, m.config, gpu)
        if terms["fb_static_gib"] + terms["dynamic_gib"] < terms["optimizer_step_gib"]:
            continue  # the optimizer step sets this peak; it carries no activation information
        # Relative least squares of measured - static = scale * dynamic.
        w = 1.0 / m.peak_allocated_gib
        numerator += w * w * terms["dynamic_gib"] * (m.peak_allocated_gib - terms["fb_static_gib"])
        denominator += w * w * terms["dynamic_gib"] ** 2
    scale = numerator / denominator if denominator > 0 else 1.0
    reserved = _median(ratios) if ratios else calibration.reserved_ratio
    return replace(calibration, activation_scale=scale, reserved_ratio=max(1.0, reserved))


def _with_errors(
    calibration: Calibration,
    rows: Sequence[Measurement],
    specs: Sequence[ModelSpec],
    gpu: GPU,
    provenance: Provenance | None,
    estimate: Callable[..., Measurement],
) -> Calibration:
    memory_errors: list[float] = []
    time_errors: list[float] = []
    for spec, m in zip(specs, rows, strict=True):
        predicted = estimate(spec, m.config, gpu, calibration=calibration)
        assert predicted.peak_allocated_gib is not None and predicted.step_time_s is not None
        assert m.peak_allocated_gib is not None and m.step_time_s is not None
        memory_errors.append(float(_abs_pct(predicted.peak_allocated_gib, m.peak_allocated_gib)))
        time_errors.append(float(_abs_pct(predicted.step_time_s, m.step_time_s)))
    source = provenance if provenance is not None else rows[0].provenance
    return replace(
        calibration,
        fit_inputs=len(rows),
        memory_error_median_pct=round(_median(memory_errors), 2),
        memory_error_max_pct=round(max(memory_errors), 2),
        time_error_median_pct=round(_median(time_errors), 2),
        time_error_max_pct=round(max(time_errors), 2),
        compute_efficiency=_round(calibration.compute_efficiency),
        layer_pass_overhead_s=_round(calibration.layer_pass_overhead_s),
        elementwise_traffic_factor=_round(calibration.elementwise_traffic_factor),
        nf4_call_overhead_s=_round(calibration.nf4_call_overhead_s),
        autocast_layer_pass_overhead_s=_round(calibration.autocast_layer_pass_overhead_s),
        activation_scale=_round(calibration.activation_scale),
        reserved_ratio=_round(calibration.reserved_ratio),
        provenance=source,
    )


def _round(value: float) -> float:
    """Six significant digits, so a refit on the same data writes the same file."""
    return float(f"{value:.6g}") if math.isfinite(value) else value


REFERENCE_H100_FILE = SHIPPED_DATA_DIR / "reference-h100.jsonl"
REFERENCE_H100_PROVENANCE = Provenance(
    device="NVIDIA H100 80GB HBM3",
    date="2026-11",
    versions=(
        ("torch", "2.11"),
        ("transformers", "5.17"),
        ("peft", "0.21.0"),
        ("bitsandbytes", "0.50.2"),
    ),
    method="measured: 7 steps, median of the last 5; torch.cuda.max_memory_allocated/reserved",
    notes="profiler/data/reference-h100.jsonl (see profiler/data/README.md)",
)
_REFERENCE_MODES = {
    "full-mixed": ("full", "bf16-mixed"),
    "full-bf16": ("full", "bf16"),
    "lora": ("lora", "bf16-mixed"),
    "qlora": ("qlora", "bf16-mixed"),
}


def reference_measurements(
    path: Path = REFERENCE_H100_FILE, *, gpu_name: str = REFERENCE_GPU
) -> list[Measurement]:
    """The H100 reference runs as Measurement records (one per JSONL row).

    Modes map to recipes: ``full-mixed`` → full/bf16-mixed, ``full-bf16`` → full/bf16,
    ``lora``/``qlora`` → r=16, alpha=32, all-linear, bf16-mixed.

    Raises:
        ValueError: If a row has an unknown mode.
    """
    from profiler._types import Method, Precision, TuningConfig

    records: list[Measurement] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row["mode"] not in _REFERENCE_MODES:
            raise ValueError(
                f"{path}: unknown mode {row['mode']!r}; expected one of {sorted(_REFERENCE_MODES)}"
            )
        method, precision = _REFERENCE_MODES[row["mode"]]
        lora = method != "full"
        config = TuningConfig(
            method=Method(method),
            precision=Precision(precision),
            lora_rank=16 if lora else None,
            lora_alpha=32 if lora else None,
            lora_targets="all-linear" if lora else None,
            micro_batch_size=row["batch"],
            seq_len=row["seq"],
            grad_checkpointing=row["grad_ckpt"],
        )
        records.append(
            Measurement(
                model=row["model"],
                gpu=gpu_name,
                config=config,
                status=Status(row["status"]),
                source=Source.MEASURED,
                provenance=REFERENCE_H100_PROVENANCE,
                peak_allocated_gib=row["peak_alloc_gib"],
                peak_reserved_gib=row["peak_reserved_gib"],
                step_time_s=row["step_s"],
                tokens_per_s=row["tokens_per_s"],
                trainable_params=row["trainable_params"],
                total_params=row["total_params"],
            )
        )
    return records
