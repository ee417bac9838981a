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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog import cache_dir
from profiler._types import (
    DEFAULT_LORA_RANK,
    DEFAULT_LORA_TARGETS,
    TARGETS_ALL_LINEAR,
    TARGETS_ATTENTION,
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    Provenance,
    Sharding,
    Source,
    Status,
    default_lora_alpha,
)

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


# bitsandbytes 8-bit AdamW (plain and paged) before any 8-bit run is fitted: its blockwise kernel
# dequantizes both states, reduces a new absmax per 256-value block and requantizes each value
# through the 256-entry dynamic map, assumed to reach 43% of the sustained bandwidth (35% of the
# H100's datasheet figure; torch's foreach AdamW: 98%); Optimizer8bit.step loops over the
# parameters in Python, launches one kernel per tensor (no multi-tensor apply) and synchronizes
# the device after every parameter (bitsandbytes 0.50 ``sync_gpu(p)``): assumed 60 µs of host
# time and round trip per trainable tensor, which the GPU cannot hide.
BNB8_BANDWIDTH_EFFICIENCY = 0.43
BNB8_HOST_S_PER_TENSOR = 60e-6


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
        reserved_ratio: ``peak_reserved / peak_allocated`` (allocator caching/fragmentation) on
            one GPU without sharding.
        reserved_by_sharding: Per sharding strategy, ``(strategy value, ratio, overhead GiB)``:
            peak reserved = peak allocated × ratio + overhead (:meth:`reserved_gib`). FSDP's
            all-gather buffers and offload staging are allocated on their own streams, whose
            cached blocks the caching allocator cannot share, so those runs reserve more above
            what they allocate; a strategy not listed uses ``reserved_ratio`` and no overhead.
        bnb8_bandwidth_efficiency: Share of the sustained bandwidth bitsandbytes' blockwise
            8-bit AdamW kernel reaches.
        bnb8_host_s_per_tensor: Host seconds and device round trip per trainable tensor of an
            8-bit AdamW step (``Optimizer8bit.step`` runs one kernel per tensor from Python and
            synchronizes after each), added to the kernels' time.
        transfer_exponent: How the matmul efficiencies carry over to a GPU the fit was not made
            on (:func:`transferred`): a GPU with a lower sustained matmul rate reaches a larger
            share of it, ``efficiency × (fitted GPU's rate / this GPU's rate) ** exponent``;
            fitted on training throughput other people published for other GPUs
            (:mod:`profiler.published`), ``transfer_source`` says on which. 0: no scaling.
        bands: Cross-validated residual ranges, ``(quantity, regime, low, high)``: an 80%
            interval (:func:`band_of`) of the signed residual ``predicted / measured - 1`` of
            the held-out predictions (leave one model out) of that regime (:func:`regime_of`;
            ``all`` pools every row), for ``step_time_s``, ``peak_allocated_gib`` and
            ``peak_reserved_gib``.
            Empty when the fit had fewer than two models to hold out.
        transfer_bands: Residual ranges, ``(quantity, regime, low, high)``, of estimates on GPUs
            and in regimes the fit did not see, from published measurements held out by GPU
            (:mod:`profiler.transfer`; regimes ``one-gpu``, ``multi-gpu``, ``offload``): an
            estimate for another GPU takes the wider of them and its recipe's band.
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
    reserved_by_sharding: tuple[tuple[str, float, float], ...] = ()
    bnb8_bandwidth_efficiency: float = BNB8_BANDWIDTH_EFFICIENCY
    bnb8_host_s_per_tensor: float = BNB8_HOST_S_PER_TENSOR
    transfer_exponent: float = 0.0
    transfer_source: str = ""
    bands: tuple[tuple[str, str, float, float], ...] = ()
    transfer_bands: tuple[tuple[str, str, float, float], ...] = ()
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
        if not 0 < self.bnb8_bandwidth_efficiency <= 1 or self.bnb8_host_s_per_tensor < 0:
            raise ValueError(
                f"calibration {self.gpu!r}: bnb8_bandwidth_efficiency must be in (0, 1] and "
                f"bnb8_host_s_per_tensor >= 0, got {self.bnb8_bandwidth_efficiency}, "
                f"{self.bnb8_host_s_per_tensor}"
            )
        for strategy, ratio, overhead in self.reserved_by_sharding:
            if not (ratio >= 1.0 and overhead >= 0.0):
                raise ValueError(
                    f"calibration {self.gpu!r}: reserved memory of {strategy!r} needs a ratio "
                    f">= 1 and an overhead >= 0, got {ratio}, {overhead}"
                )
        if not 0 <= self.transfer_exponent <= 1:
            raise ValueError(
                f"calibration {self.gpu!r}: transfer_exponent must be in [0, 1], "
                f"got {self.transfer_exponent}"
            )
        if self.activation_scale <= 0 or self.reserved_ratio < 1:
            raise ValueError(
                f"calibration {self.gpu!r}: activation_scale must be > 0 and "
                f"reserved_ratio >= 1, got {self.activation_scale}, "
                f"{self.reserved_ratio}"
            )

    def reserved_gib(self, allocated_gib: float, sharding: Sharding) -> float:
        """Peak reserved GiB for a peak of ``allocated_gib`` under ``sharding``
        (:attr:`reserved_by_sharding`, else :attr:`reserved_ratio`)."""
        for strategy, ratio, overhead in self.reserved_by_sharding:
            if strategy == sharding.value:
                return allocated_gib * ratio + overhead
        return allocated_gib * self.reserved_ratio


# First-principles defaults, used when no fit exists for any GPU. Efficiencies are shares of the
# GPU's sustained (measured) matmul rate and bandwidth (catalog.GPU.sustained_matmul_tflops,
# sustained_bandwidth_tbps). MFU 0.5 of peak is a common large-model training figure (PaLM,
# Chowdhery et al. 2022, Table 3: 46%), about 0.6 of a sustained rate at 80% of peak; no fixed
# per-call costs; the optimizer step is elementwise and streams at about the rate of a device
# copy (0.98 of it: the same H100 time as the former 80% of its datasheet bandwidth).
FIRST_PRINCIPLES = Calibration(
    gpu="any",
    compute_efficiency=0.6,
    layer_pass_overhead_s=0.0,
    elementwise_traffic_factor=1.0,
    nf4_call_overhead_s=0.0,
    optimizer_bandwidth_efficiency=0.98,
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
# The share of held-out errors a band is built to contain.
BAND_COVERAGE = 0.8


def band_of(residuals: Sequence[float]) -> tuple[float, float]:
    """An interval of signed residuals that holds a new residual with probability at least
    :data:`BAND_COVERAGE` when it is exchangeable with these (split conformal prediction,
    Vovk et al. 2005; Lei et al. 2018): the k-th smallest and k-th largest, with
    k = floor((n + 1) · (1 - coverage) / 2), at least 1 (the extremes for fewer than 19
    residuals). Six significant digits.

    Raises:
        ValueError: If ``residuals`` is empty.
    """
    if not residuals:
        raise ValueError("a band needs at least one residual")
    ordered = sorted(residuals)
    k = max(1, int((len(ordered) + 1) * (1.0 - BAND_COVERAGE) / 2.0))
    low, high = ordered[k - 1], ordered[-k]
    return float(f"{low:.6g}"), float(f"{high:.6g}")


def regime_of(config: TuningConfig) -> str:
    """The regime an estimate's band comes from: the recipe, and ``-ckpt`` with checkpointing.

    ``full`` (bf16-mixed), ``full-bf16``, ``lora`` or ``qlora`` (fp16-mixed counts as its bf16
    twin), e.g. ``qlora-ckpt``.
    """
    traits = config.method.traits
    recipe = traits.band_regime
    if not traits.adapters and config.precision is Precision.BF16:
        recipe += "-bf16"
    return recipe + "-ckpt" if config.grad_checkpointing else recipe


# Transfer regimes: where an estimate for a GPU without a fit of its own stands
# (Calibration.transfer_bands, profiler.transfer).
ONE_GPU = "one-gpu"
MULTI_GPU = "multi-gpu"
OFFLOAD = "offload"
TRANSFER_REGIMES = (ONE_GPU, MULTI_GPU, OFFLOAD)


def transfer_regime(config: TuningConfig) -> str:
    """``offload`` for CPU-offload strategies, ``multi-gpu`` for several GPUs, else ``one-gpu``."""
    if config.sharding.offloads:
        return OFFLOAD
    return MULTI_GPU if config.gpu_count > 1 else ONE_GPU


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


# The largest share of a GPU's sustained matmul rate a transferred efficiency may reach: the
# share microbenchmarks themselves reach at their best shape (the rate is that best shape's).
MAX_TRANSFERRED_EFFICIENCY = 0.9


def transfer_factor(calibration: Calibration, gpu: GPU) -> float:
    """How much larger a share of its sustained matmul rate ``gpu`` reaches than the GPU the
    calibration was fitted on: ``(fitted GPU's rate / gpu's rate) ** transfer_exponent``; 1 for
    the fitted GPU itself, for an exponent of 0 and where the fitted GPU is not in the catalog.

    Why: the same training step leaves a fast GPU idle for a larger share of its time (kernel
    tails, the gaps between kernels, the memory-bound work between matmuls that its matmul rate
    does not speed up), so its matmul efficiency is lower; a slower card spends more of the step
    in its matmuls. Measured: one H100 fit scaled by rate alone made RTX 4090 and A100 runs
    25-52% too slow (docs/estimator.md, "GPUs without a calibration").
    """
    if calibration.transfer_exponent == 0 or calibration.gpu == gpu.name:
        return 1.0
    from catalog import CatalogError, get_gpu

    try:
        fitted = get_gpu(calibration.gpu)
    except (CatalogError, KeyError, ValueError):
        return 1.0
    ratio = fitted.sustained_matmul_tflops / gpu.sustained_matmul_tflops
    return float(ratio**calibration.transfer_exponent)


def transferred(calibration: Calibration, gpu: GPU) -> Calibration:
    """``calibration`` as it applies to ``gpu``: its matmul and recompute efficiencies times
    :func:`transfer_factor`, at most :data:`MAX_TRANSFERRED_EFFICIENCY`; everything else (host
    costs, traffic factors, memory) unchanged. The calibration itself for its own GPU."""
    factor = transfer_factor(calibration, gpu)
    if factor == 1.0:
        return calibration
    recompute = calibration.recompute_efficiency
    return replace(
        calibration,
        compute_efficiency=min(
            MAX_TRANSFERRED_EFFICIENCY, calibration.compute_efficiency * factor
        ),
        recompute_efficiency=None
        if recompute is None
        else min(MAX_TRANSFERRED_EFFICIENCY, recompute * factor),
    )


def calibration_for(gpu: GPU) -> Calibration:
    """The calibration to use for ``gpu``: its own, else the reference H100 fit, else defaults.

    The generic rule for a GPU without its own fit: the H100's efficiencies, traffic factors and
    host costs are reused unchanged, while FLOP/s and bandwidth come from the GPU's catalog row,
    so a GPU with half the bandwidth gets twice the memory-bound time and the same host time.
    """
    return _first_found(gpu, load_calibration)


def shipped_calibration(gpu_name: str) -> Calibration | None:
    """The calibration shipped with ftplan for a GPU (never the user's), else ``None``."""
    path = SHIPPED_DATA_DIR / calibration_file_name(gpu_name)
    return read_calibration(path) if path.is_file() else None


def shipped_calibration_for(gpu: GPU) -> Calibration:
    """:func:`calibration_for` from the shipped calibrations alone, as ftplan is installed: what
    a new fit takes the terms its measurements cannot show from, whatever the user fitted."""
    return _first_found(gpu, shipped_calibration)


def _first_found(gpu: GPU, load: Callable[[str], Calibration | None]) -> Calibration:
    own = load(gpu.name)
    if own is not None:
        return own
    reference = load(REFERENCE_GPU)
    return reference if reference is not None else FIRST_PRINCIPLES


REFERENCE_H100_FILE = SHIPPED_DATA_DIR / "reference-h100.jsonl"
# The second set: the same H100 and conditions, larger models (7-13B), production-sized steps,
# ranks 8-128, attention-only targets and 2/4-layer truncated rows (profiler/data/README.md).
REFERENCE_H100_2_FILE = SHIPPED_DATA_DIR / "reference-h100-2.jsonl"
# Six llama3.2-3b steps on the same H100 with bitsandbytes 8-bit AdamW (full bf16, full
# bf16-mixed and LoRA; short steps, where the optimizer step is a large share).
REFERENCE_H100_OPTIM8BIT_FILE = SHIPPED_DATA_DIR / "reference-h100-optim8bit.jsonl"
REFERENCE_H100_FILES = (REFERENCE_H100_FILE, REFERENCE_H100_2_FILE, REFERENCE_H100_OPTIM8BIT_FILE)
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
# Optimizer names of the reference files (absent: torch AdamW) -> ftplan's optimizers.
_REFERENCE_OPTIMIZERS = {None: OptimizerKind.ADAMW, "adamw": OptimizerKind.ADAMW}
_REFERENCE_OPTIMIZERS["adamw8bit"] = OptimizerKind.ADAMW_8BIT
# Target names of the reference files -> ftplan's target specs.
_REFERENCE_TARGETS = {
    None: DEFAULT_LORA_TARGETS,
    "all-linear": TARGETS_ALL_LINEAR,
    "attn": TARGETS_ATTENTION,
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
    if row.get("optim") not in _REFERENCE_OPTIMIZERS:
        raise ValueError(
            f"unknown optim {row.get('optim')!r}; expected one of "
            f"{sorted(k for k in _REFERENCE_OPTIMIZERS if k)}"
        )
    truncated = row.get("layers") is not None and _is_truncated(row)
    if truncated and not include_truncated:
        return None
    method, precision = _REFERENCE_MODES[row["mode"]]
    lora = method != "full"
    rank = int(row.get("lora_r") or DEFAULT_LORA_RANK)
    config = TuningConfig(
        method=Method(method),
        precision=Precision(precision),
        lora_rank=rank if lora else None,
        lora_alpha=default_lora_alpha(rank) if lora else None,
        lora_targets=_REFERENCE_TARGETS[row.get("lora_targets")] if lora else None,
        micro_batch_size=row["batch"],
        seq_len=row["seq"],
        grad_checkpointing=row["grad_ckpt"],
        optimizer=_REFERENCE_OPTIMIZERS[row.get("optim")],
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
    """The shipped H100 reference sets (:data:`REFERENCE_H100_FILES`), in file order."""
    return [
        m
        for path in REFERENCE_H100_FILES
        for m in reference_measurements(path, include_truncated=include_truncated)
    ]


def _is_truncated(row: dict[str, object]) -> bool:
    """Whether a reference row is a model cut to fewer decoder layers than the catalog's."""
    from catalog import get_model

    return int(str(row["layers"])) < get_model(str(row["model"])).num_layers
