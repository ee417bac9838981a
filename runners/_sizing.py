"""How much disk a training node needs: one formula for every target, each target's allowances
as named values (its runner uses them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from catalog import GIB
from profiler.memory import checkpoint_bytes, download_bytes
from runners._types import LaunchSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskAllowance:
    """What a target's node disk holds besides the model's files.

    Attributes:
        system_gib: The OS, CUDA, the image and the Python environment, GiB.
        min_checkpoints_gib: Least room for the two kept checkpoints, GiB (small adapters).
        floor_gib: The smallest disk asked for, GiB.
    """

    system_gib: float
    min_checkpoints_gib: float
    floor_gib: int


#: A SkyPilot node's boot disk: 100 GiB for the OS, CUDA and the Python environment the task's
#: setup installs; at least SkyPilot's own default disk (``sky.resources.DEFAULT_DISK_SIZE_GB``).
SKYPILOT_DISK = DiskAllowance(system_gib=100.0, min_checkpoints_gib=2.0, floor_gib=256)
#: A SageMaker instance's EBS volume: 30 GiB for the training image's cache; 50 GiB at least.
SAGEMAKER_VOLUME = DiskAllowance(system_gib=30.0, min_checkpoints_gib=1.0, floor_gib=50)


def node_disk_gib(spec: LaunchSpec, allowance: DiskAllowance) -> int:
    """Disk per node, GiB: the 16-bit weights twice (download + cache), two kept checkpoints
    (:func:`profiler.memory.checkpoint_bytes`, at least ``allowance.min_checkpoints_gib``) and
    ``allowance.system_gib``, rounded up; at least ``allowance.floor_gib``."""
    weights = download_bytes(spec.model) / GIB
    checkpoints = max(
        allowance.min_checkpoints_gib, 2 * checkpoint_bytes(spec.model, spec.config) / GIB
    )
    return max(allowance.floor_gib, math.ceil(2 * weights + checkpoints + allowance.system_gib))
