"""Profiler: what a training config needs on a GPU. Recipes (the one definition of full, LoRA and
QLoRA training), real measurement in a subprocess per config, 2/4-layer extrapolation, the
analytic estimator and the store of profiles. torch is imported only inside measurement code."""

from __future__ import annotations

from profiler._types import (
    ALL_LINEAR_MODULES,
    ATTENTION_MODULES,
    MLP_MODULES,
    TARGETS_ALL_LINEAR,
    TARGETS_ATTENTION,
    EvalEstimate,
    Measurement,
    MemoryBreakdown,
    Method,
    OptimizerKind,
    Precision,
    Provenance,
    Sharding,
    Source,
    Status,
    TuningConfig,
    adapted_modules,
    chunked_loss_problem,
    expert_parameters,
    resolve_targets,
    sharding_problem,
)
from profiler.calibrated import Estimator
from profiler.calibration import Calibration, calibration_for, load_calibration
from profiler.estimator import estimate, eval_pass, memory_fits
from profiler.extrapolate import extrapolate
from profiler.fit import fit_calibration
from profiler.headroom import (
    CUDA_CONTEXT_GIB,
    FitCheck,
    FitVerdict,
    capacity_gib,
    check_fit,
    fit_verdict,
    measurement_fit,
)
from profiler.measure import profile_extrapolated
from profiler.memory import (
    CHUNKED_LOSS_TOKENS,
    MemoryTerms,
    checkpoint_bytes,
    download_bytes,
    load_peak_gib,
    memory_terms,
    trainable_params,
    weight_bytes,
)
from profiler.recipes import (
    SETUP_FUNCTIONS,
    PreparedModel,
    build_base_model,
    checkpoint_config,
    hf_config_for,
    setup_full,
    setup_lora,
    setup_qlora,
    train_step,
)
from profiler.sharding import PCIE_EFFICIENCY, host_link_gbps
from profiler.store import ProfileStore, default_store
from profiler.timing import TimeTerms, min_flops_per_token, time_terms

__all__ = [
    "ALL_LINEAR_MODULES",
    "ATTENTION_MODULES",
    "CHUNKED_LOSS_TOKENS",
    "CUDA_CONTEXT_GIB",
    "MLP_MODULES",
    "PCIE_EFFICIENCY",
    "SETUP_FUNCTIONS",
    "TARGETS_ALL_LINEAR",
    "TARGETS_ATTENTION",
    "Calibration",
    "Estimator",
    "EvalEstimate",
    "FitCheck",
    "FitVerdict",
    "Measurement",
    "MemoryBreakdown",
    "MemoryTerms",
    "Method",
    "OptimizerKind",
    "Precision",
    "PreparedModel",
    "ProfileStore",
    "Provenance",
    "Sharding",
    "Source",
    "Status",
    "TimeTerms",
    "TuningConfig",
    "adapted_modules",
    "build_base_model",
    "calibration_for",
    "capacity_gib",
    "check_fit",
    "checkpoint_bytes",
    "checkpoint_config",
    "chunked_loss_problem",
    "default_store",
    "download_bytes",
    "estimate",
    "eval_pass",
    "expert_parameters",
    "extrapolate",
    "fit_calibration",
    "fit_verdict",
    "hf_config_for",
    "host_link_gbps",
    "load_calibration",
    "load_peak_gib",
    "measurement_fit",
    "memory_fits",
    "memory_terms",
    "min_flops_per_token",
    "profile_extrapolated",
    "resolve_targets",
    "setup_full",
    "setup_lora",
    "setup_qlora",
    "sharding_problem",
    "time_terms",
    "train_step",
    "trainable_params",
    "weight_bytes",
]
