"""Calibration of the analytic estimator: a few fitted efficiencies per GPU, with provenance.

A :class:`Calibration` holds the handful of numbers the estimator cannot derive from first
principles (matmul efficiencies, factors on memory-bound traffic, the host's launch time per
decoder layer, under autocast, per adapted and per NF4 linear, an activation-memory scale and the
reserved/allocated ratio). ftplan ships one fitted on real H100
measurements (``profiler/data/calibration-h100-sxm-80gb.json``); ``ftplan calibrate`` fits one
from the user's own measurements into the user cache, which then overrides the shipped one.
This module holds the type, its files and the shipped reference data; the fit (numpy) is
:mod:`profiler.fit`. It does not import the estimator: the estimator takes a calibration.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog import cache_dir
from profiler._types import Measurement, Method, Precision, Provenance, Source, Status

if TYPE_CHECKING:
    from catalog import GPU
    from profiler._types import TuningConfig

SHIPPED_DATA_DIR = Path(__file__).resolve().parent / "data"
CALIBRATION_PREFIX = "calibration-"


class TimeModel(enum.Enum):
    """How the estimator combines a step's GPU work with the host time that launches it.

    ``additive``: every term adds (host time included), the form of calibrations written before
    ``host-overlap`` existed. ``host-overlap``: per pass, the GPU work and the host's launch time
    overlap (eager PyTorch queues kernels asynchronously), combined as ``hypot(gpu, host)``, so a
    short step is host-bound and a long one GPU-bound (docs/estimator.md, "Step time").
    """

    ADDITIVE = "additive"
    HOST_OVERLAP = "host-overlap"


# Host time of the backward pass as a fraction of the forward's (``host-overlap``): autograd's
# C++ engine launches the backward kernels without the Python module calls of the forward.
# Assumption: fitted freely on both H100 sets it went to 0-0.5 without a better cross-validation.
BACKWARD_HOST_FRACTION = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """Fitted estimator parameters for one GPU model.

    Attributes:
        gpu: Catalog name of the GPU the fit applies to (e.g. ``H100 SXM 80GB``).
        compute_efficiency: Fraction of ``gpu.matmul_tflops`` the model FLOPs (matmuls and
            attention) run at (MFU) once the fixed and memory-bound costs are separated out;
            dimensionless, (0, 1].
        recompute_efficiency: The same for the decoder layers' linears that gradient
            checkpointing re-runs; ``None`` uses ``compute_efficiency`` (calibrations written
            before it existed).
        time_model: How GPU work and host time combine (:class:`TimeModel`). Under
            ``host-overlap`` the four ``*_overhead_s`` fields are host seconds per forward call,
            which the backward pays again at :attr:`backward_host_fraction` (and the checkpointed
            re-run in full); under ``additive`` they are seconds per pass that add to the GPU time.
        layer_pass_overhead_s: Fixed seconds per decoder layer per pass (forward, backward,
            recomputation): kernel launches and Python dispatch that do not shrink with size.
        autocast_layer_pass_overhead_s: Further fixed seconds per decoder layer per pass for
            recipes under autocast (all but pure-bf16 full FT): autocast dispatch and its cast
            kernels.
        lora_call_overhead_s: Host seconds per LoRA-adapted linear per forward (PEFT's Python
            path: dropout, the A and B modules, scaling); ``host-overlap`` only.
        backward_host_fraction: The backward's host time over the forward's (``host-overlap``).
        elementwise_traffic_factor: Multiplier on the activation bytes one pass reads and writes
            in memory-bound kernels (norms, SiLU, RoPE, adds, casts), timed at the GPU bandwidth.
        lora_traffic_factor: Multiplier on the memory-bound bytes of the LoRA path (PEFT's input
            casts, the A and B products, scaling and the add), timed at the GPU bandwidth.
        nf4_cast_traffic_factor: Multiplier on the bytes of QLoRA's Linear4bit input and output
            casts (fp32 residual stream to bf16 and back), timed at the GPU bandwidth.
        nf4_call_overhead_s: Fixed seconds per NF4 (bitsandbytes Linear4bit) call per pass, on top
            of its dequantization traffic: the extra kernels and Python of the 4-bit path.
        optimizer_bandwidth_efficiency: Fraction of the memory bandwidth the optimizer step
            reaches (it is memory-bound).
        activation_scale: Multiplier on the estimator's activation and logits bytes.
        reserved_ratio: ``peak_reserved / peak_allocated`` (allocator caching/fragmentation).
        bands: Cross-validated residual ranges, ``(quantity, regime, low, high)``: the 10th and
            90th percentile of the signed residual ``predicted / measured - 1`` of the held-out
            predictions (leave one model out) of that regime (:func:`regime_of`; ``all`` pools
            every row), for ``step_time_s``, ``peak_allocated_gib`` and ``peak_reserved_gib``.
            Empty when the fit had fewer than two models to hold out.
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
    time_model: TimeModel = TimeModel.ADDITIVE
    lora_call_overhead_s: float = 0.0
    backward_host_fraction: float = BACKWARD_HOST_FRACTION
    recompute_efficiency: float | None = None
    lora_traffic_factor: float = 0.0
    nf4_cast_traffic_factor: float = 0.0
    activation_scale: float = 1.0
    reserved_ratio: float = 1.08
    bands: tuple[tuple[str, str, float, float], ...] = ()
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
        if self.recompute_efficiency is not None and not 0 < self.recompute_efficiency <= 1:
            raise ValueError(
                f"calibration {self.gpu!r}: recompute_efficiency must be in (0, 1], "
                f"got {self.recompute_efficiency}"
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
            "lora_traffic_factor",
            "nf4_cast_traffic_factor",
            "nf4_call_overhead_s",
            "lora_call_overhead_s",
            "backward_host_fraction",
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


# Quantities an estimate carries a band for, and the pooled regime every quantity has.
BAND_QUANTITIES = ("step_time_s", "peak_allocated_gib", "peak_reserved_gib")
ALL_REGIMES = "all"


def regime_of(config: TuningConfig) -> str:
    """The regime an estimate's band comes from: the recipe, and ``-ckpt`` with checkpointing.

    ``full`` (bf16-mixed), ``full-bf16``, ``lora`` or ``qlora`` (fp16-mixed counts as its bf16
    twin), e.g. ``qlora-ckpt``.
    """
    # Identity tests, not Enum.value or a dict of members: this runs on every estimate.
    method = config.method
    if method is Method.LORA:
        recipe = "lora"
    elif method is Method.QLORA:
        recipe = "qlora"
    else:
        recipe = "full-bf16" if config.precision is Precision.BF16 else "full"
    return recipe + "-ckpt" if config.grad_checkpointing else recipe


def calibration_file_name(gpu_name: str) -> str:
    """File name of a GPU's calibration, e.g. ``calibration-h100-sxm-80gb.json``."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return f"{CALIBRATION_PREFIX}{slug}.json"


def user_calibration_dir() -> Path:
    """Where ``ftplan calibrate`` writes: the ftplan cache (:func:`catalog.cache_dir`)."""
    return cache_dir()


def calibration_to_json(calibration: Calibration) -> str:
    """Stable JSON text of a calibration (sorted keys, trailing newline)."""
    from catalog import to_jsonable

    return json.dumps(to_jsonable(calibration), indent=2, sort_keys=True) + "\n"


def read_calibration(path: Path) -> Calibration:
    """Read one calibration file.

    Raises:
        DataError: If the file is not a valid calibration (the message names the file).
    """
    from catalog import DataError, from_jsonable, read_json_file

    try:
        data = read_json_file(path, what="calibration file", max_bytes=16 * 1024 * 1024)
        return from_jsonable(Calibration, data)
    except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
        raise DataError(
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

    The generic rule for a GPU without its own fit: the H100's efficiencies, traffic factors and
    host costs are reused unchanged, while FLOP/s and bandwidth come from the GPU's catalog row,
    so a GPU with half the bandwidth gets twice the memory-bound time and the same host time.
    """
    own = load_calibration(gpu.name)
    if own is not None:
        return own
    reference = load_calibration(REFERENCE_GPU)
    return reference if reference is not None else FIRST_PRINCIPLES


REFERENCE_H100_FILE = SHIPPED_DATA_DIR / "reference-h100.jsonl"
# The second set: the same H100 and conditions, larger models (7-13B), production-sized steps,
# ranks 8-128, attention-only targets and 2/4-layer truncated rows (profiler/data/README.md).
REFERENCE_H100_2_FILE = SHIPPED_DATA_DIR / "reference-h100-2.jsonl"
REFERENCE_H100_FILES = (REFERENCE_H100_FILE, REFERENCE_H100_2_FILE)
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
# Target names of the reference files -> ftplan's target specs.
_REFERENCE_TARGETS = {
    None: "all-linear",
    "all-linear": "all-linear",
    "attn": "attention",
    "qv": "q_proj,v_proj",
}


def reference_measurements(
    path: Path = REFERENCE_H100_FILE,
    *,
    gpu_name: str = REFERENCE_GPU,
    include_truncated: bool = False,
) -> list[Measurement]:
    """Reference runs as Measurement records (one per JSONL row).

    Modes map to recipes: ``full-mixed`` → full/bf16-mixed, ``full-bf16`` → full/bf16,
    ``lora``/``qlora`` → bf16-mixed with the row's ``lora_r`` (16 when absent), alpha 2·r and its
    targets (``attn`` → attention, ``qv`` → q_proj,v_proj; all-linear when absent). Rows of a
    model truncated to fewer decoder layers are skipped unless ``include_truncated``; then their
    layer count is in ``Measurement.fit`` as ``num_layers`` (the model name stays the same).

    Raises:
        DataError: If the file is not a regular UTF-8 file, or a row is not JSON, has an unknown
            mode or targets, or lacks a field (the message names file and line).
    """
    from catalog import DataError, loads_json, read_text_limited

    provenance = replace(
        REFERENCE_H100_PROVENANCE,
        notes=f"profiler/data/{path.name} (see profiler/data/README.md)",
    )
    records: list[Measurement] = []
    text = read_text_limited(path, what="reference measurements", max_bytes=64 * 1024 * 1024)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            measurement = _reference_row(
                loads_json(line, what=f"{path}:{number}"),
                gpu_name=gpu_name,
                provenance=provenance,
                include_truncated=include_truncated,
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(
                f"{path}:{number} is not a reference measurement ({type(exc).__name__}: {exc})"
            ) from None
        if measurement is not None:
            records.append(measurement)
    return records


def _reference_row(
    row: dict[str, Any],
    *,
    gpu_name: str,
    provenance: Provenance,
    include_truncated: bool,
) -> Measurement | None:
    """One reference row as a Measurement (None for a skipped truncated row)."""
    from profiler._types import TuningConfig

    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    if row["mode"] not in _REFERENCE_MODES:
        raise ValueError(
            f"unknown mode {row['mode']!r}; expected one of {sorted(_REFERENCE_MODES)}"
        )
    if row.get("lora_targets") not in _REFERENCE_TARGETS:
        raise ValueError(f"unknown lora_targets {row.get('lora_targets')!r}")
    truncated = row.get("layers") is not None and _is_truncated(row)
    if truncated and not include_truncated:
        return None
    method, precision = _REFERENCE_MODES[row["mode"]]
    lora = method != "full"
    rank = int(row.get("lora_r") or 16)
    config = TuningConfig(
        method=Method(method),
        precision=Precision(precision),
        lora_rank=rank if lora else None,
        lora_alpha=2 * rank if lora else None,
        lora_targets=_REFERENCE_TARGETS[row.get("lora_targets")] if lora else None,
        micro_batch_size=row["batch"],
        seq_len=row["seq"],
        grad_checkpointing=row["grad_ckpt"],
    )
    return Measurement(
        model=row["model"],
        gpu=gpu_name,
        config=config,
        status=Status(row["status"]),
        source=Source.MEASURED,
        provenance=provenance,
        peak_allocated_gib=row["peak_alloc_gib"],
        peak_reserved_gib=row["peak_reserved_gib"],
        step_time_s=row["step_s"],
        tokens_per_s=row["tokens_per_s"],
        trainable_params=row["trainable_params"],
        total_params=row["total_params"],
        fit=(("num_layers", float(row["layers"])),) if truncated else (),
    )


def all_reference_measurements(*, include_truncated: bool = False) -> list[Measurement]:
    """Both shipped H100 reference sets (:data:`REFERENCE_H100_FILES`), in file order."""
    return [
        m
        for path in REFERENCE_H100_FILES
        for m in reference_measurements(path, include_truncated=include_truncated)
    ]


def _is_truncated(row: dict[str, object]) -> bool:
    """Whether a reference row is a model cut to fewer decoder layers than the catalog's."""
    from catalog import get_model

    return int(str(row["layers"])) < get_model(str(row["model"])).num_layers
