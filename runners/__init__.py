"""Runners: launch a planned fine-tune on local GPUs (accelerate/torchrun) or on SageMaker (boto3),
both with a dry-run that prints the exact command or request."""

from __future__ import annotations

from runners._types import (
    LaunchResult,
    LaunchSpec,
    Runner,
    RunnerError,
    RunState,
    RunStatus,
    Target,
    launch_spec_from_json,
    launch_spec_to_json,
)
from runners.data import DataFormatError
from runners.local import HostGPUs, LocalRunner
from runners.sagemaker import SageMakerRunner

__all__ = [
    "DataFormatError",
    "HostGPUs",
    "LaunchResult",
    "LaunchSpec",
    "LocalRunner",
    "RunState",
    "RunStatus",
    "Runner",
    "RunnerError",
    "SageMakerRunner",
    "Target",
    "launch_spec_from_json",
    "launch_spec_to_json",
]
