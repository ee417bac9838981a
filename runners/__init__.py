"""Runners: launch a planned fine-tune on local GPUs (accelerate/torchrun), on SageMaker (boto3) or
on any cloud through SkyPilot, each with a dry-run that prints the exact command or request."""

from __future__ import annotations

from runners._distributed import launch_problem
from runners._stop import parse_checkpoint_every
from runners._types import (
    LaunchResult,
    LaunchSpec,
    Runner,
    RunnerError,
    RunState,
    RunStatus,
    Target,
    evaluations_in_run,
    launch_spec_from_json,
    launch_spec_to_json,
)
from runners._weights import gated_token_problem
from runners.data import DataFormatError
from runners.local import HostGPUs, LocalRunner
from runners.sagemaker import SageMakerRunner
from runners.skypilot import SkyPilotRunner, default_target

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
    "SkyPilotRunner",
    "Target",
    "default_target",
    "evaluations_in_run",
    "gated_token_problem",
    "launch_problem",
    "launch_spec_from_json",
    "launch_spec_to_json",
    "parse_checkpoint_every",
]
