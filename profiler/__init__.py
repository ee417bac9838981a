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

__all__ = [
    "PCIE_EFFICIENCY",
    "host_link_gbps",
    "CUDA_CONTEXT_GIB",
    "Calibration",
    "FitCheck",
    "FitVerdict",
    "capacity_gib",
    "check_fit",
    "fit_verdict",
    "measurement_fit",
    "estimate",
    "eval_pass",
    "EvalEstimate",
    "calibration_for",
    "fit_calibration",
    "load_calibration",
    "memory_fits",
    "SETUP_FUNCTIONS",
    "PreparedModel",
    "ProfileStore",
    "build_base_model",
    "checkpoint_config",
    "default_store",
    "extrapolate",
    "hf_config_for",
    "profile_extrapolated",
    "setup_full",
    "setup_lora",
    "setup_qlora",
    "train_step",
    "ALL_LINEAR_MODULES",
    "ATTENTION_MODULES",
    "MLP_MODULES",
    "TARGETS_ALL_LINEAR",
    "TARGETS_ATTENTION",
    "MemoryBreakdown",
    "Measurement",
    "Method",
    "OptimizerKind",
    "Precision",
    "Provenance",
    "Sharding",
    "Source",
    "Status",
    "TuningConfig",
    "adapted_modules",
    "expert_parameters",
    "resolve_targets",
    "chunked_loss_problem",
    "sharding_problem",
]
