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
    MemoryBreakdown,
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    Provenance,
    Sharding,
    Source,
    Status,
    TuningConfig,
    resolve_targets,
)

__all__ = [
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
    "resolve_targets",
]
