"""Runners: launch a planned fine-tune on local GPUs (accelerate/torchrun) or on SageMaker (boto3),
both with a dry-run that prints the exact command or request."""

from __future__ import annotations

__all__: list[str] = []
