"""A free TCP port and a deadline for tests that start several processes (gloo, torchrun)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

#: How long a pair of CPU workers may take before the test fails: their slowest run here is
#: under a minute, so ten minutes means a collective that never completes, not a slow machine.
WORKERS_TIMEOUT_S = 600.0


def free_port() -> int:
    """A port nothing listens on now (a fixed one collides with other runs on the same host)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spawn_workers(
    fn: Callable[..., None],
    args: tuple[Any, ...],
    *,
    nprocs: int = 2,
    timeout_s: float = WORKERS_TIMEOUT_S,
) -> None:
    """``torch.multiprocessing.spawn`` with a deadline: ``fn(rank, *args)`` in ``nprocs``
    processes; a worker's exception fails the test (torch stops the others), and workers still
    running after ``timeout_s`` seconds are killed and fail it, so a hung collective costs one
    test, not the whole run."""
    import torch.multiprocessing as mp

    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=5.0):
        if time.monotonic() < deadline:
            continue
        for process in context.processes:
            if process.is_alive():
                process.kill()
        for process in context.processes:
            process.join(10.0)
        pytest.fail(
            f"{nprocs} worker processes were still running after {timeout_s:.0f} s "
            "(a collective that never completes?); they were killed"
        )
