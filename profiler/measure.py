"""Measure a training config on a real device, one subprocess per config.

The work happens in ``python -m profiler._worker``; here a crash, an out-of-memory error, a hang
or a hard exit of that process becomes a ``Measurement`` with status oom or error, never an
exception in the caller. torch is not imported here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog import from_jsonable, loads_json, to_jsonable
from profiler._types import Measurement, Provenance, Source, Status, TuningConfig
from profiler._worker import truncated_model_name
from profiler.extrapolate import FIT_NUM_LAYERS, extrapolate

if TYPE_CHECKING:
    from catalog import ModelSpec

DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_LAYERS = (2, 4)
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Exit code and output a CUDA OOM leaves when it kills the process outside Python's handler.
_OOM_MARKERS = ("out of memory", "OutOfMemoryError", "CUDA_ERROR_OUT_OF_MEMORY")


def build_job(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    num_layers: int | None = None,
    device: str = "cuda",
    warmup_steps: int = 3,
    timed_steps: int = 10,
    checkpoint: str | None = None,
    gpu: str | None = None,
    fault: str | None = None,
) -> dict[str, Any]:
    """The worker's job as JSON-ready data (see :mod:`profiler._worker`)."""
    job: dict[str, Any] = {
        "model": to_jsonable(spec),
        "config": to_jsonable(config),
        "num_layers": num_layers,
        "device": device,
        "warmup_steps": warmup_steps,
        "timed_steps": timed_steps,
        "checkpoint": checkpoint,
        "gpu": gpu,
    }
    if fault is not None:
        job["fault"] = fault
    return job


def _failure(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    num_layers: int | None,
    device: str,
    gpu: str | None,
    status: Status,
    error: str,
) -> Measurement:
    layers = spec.num_layers if num_layers is None else num_layers
    return Measurement(
        model=truncated_model_name(spec.name, num_layers),
        gpu=gpu or device,
        config=config,
        status=status,
        source=Source.MEASURED,
        provenance=Provenance(
            device=device,
            date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            method="ftplan profiler worker subprocess (failed before writing a record)",
        ),
        error=error[-2000:],
        fit=((FIT_NUM_LAYERS, float(layers)),),
    )


def measure(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    num_layers: int | None = None,
    device: str = "cuda",
    warmup_steps: int = 3,
    timed_steps: int = 10,
    checkpoint: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    gpu: str | None = None,
    fault: str | None = None,
) -> Measurement:
    """Measure one config in a fresh ``python -m profiler._worker`` process.

    Args:
        spec: Architecture facts of the model.
        config: The training config (one GPU).
        num_layers: Keep only this many decoder layers (``None``: the full model). Truncated
            records are named ``<model>@<n>-layers``.
        device: ``cuda`` (or ``cuda:<i>``) to measure memory and time; ``cpu`` for time only.
        warmup_steps: Steps run before timing and before the memory peaks are reset.
        timed_steps: Steps timed; the median wall time is reported, in seconds.
        checkpoint: Hub id or local path of real weights (``None``: random weights).
        timeout_s: Wall-clock limit of the subprocess in seconds; past it the record is an error.
        gpu: Catalog GPU name to record (``None``: derived from the device name).
        fault: Fault injection for tests (``oom``, ``error``, ``hard-exit``).

    Returns:
        A measured record with status ok, oom or error; never raises for a failed run.
    """
    job = build_job(
        spec,
        config,
        num_layers=num_layers,
        device=device,
        warmup_steps=warmup_steps,
        timed_steps=timed_steps,
        checkpoint=checkpoint,
        gpu=gpu,
        fault=fault,
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.setdefault("TOKENIZERS_PARALLELISM", "false")

    def fail(status: Status, error: str) -> Measurement:
        return _failure(
            spec, config, num_layers=num_layers, device=device, gpu=gpu, status=status, error=error
        )

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "profiler._worker"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return fail(Status.ERROR, f"timed out after {timeout_s:.0f} s")
    if proc.returncode in (-signal.SIGINT, 128 + signal.SIGINT):
        # Ctrl-C reached the worker (same process group) first: the user stopped the run, so
        # stop here too rather than record an error and go on to the next config.
        raise KeyboardInterrupt
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode == 0 and lines:
        try:
            return from_jsonable(Measurement, loads_json(lines[-1], what="worker output"))
        except ValueError as exc:
            return fail(Status.ERROR, f"unreadable worker output ({exc}): {lines[-1][:500]}")
    stderr_tail = proc.stderr.strip()[-1500:]
    oom = any(marker in proc.stderr for marker in _OOM_MARKERS)
    return fail(
        Status.OOM if oom else Status.ERROR,
        f"worker exited with code {proc.returncode}: {stderr_tail}",
    )


def profile_extrapolated(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    layers: Sequence[int] = DEFAULT_LAYERS,
    device: str = "cuda",
    warmup_steps: int = 3,
    timed_steps: int = 10,
    checkpoint: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    gpu: str | None = None,
    on_measured: Callable[[Measurement], None] | None = None,
) -> Measurement:
    """Measure the model truncated to each of ``layers`` decoder layers and extrapolate.

    Args:
        spec: Architecture facts (``spec.num_layers`` is where the fit is evaluated).
        config: The training config.
        layers: Layer counts to measure (at least two distinct values).
        device, warmup_steps, timed_steps, checkpoint, timeout_s, gpu: As :func:`measure`.
        on_measured: Called with each truncated measurement as it completes (progress, storage).

    Returns:
        An extrapolated record (status ok), or an oom/error record saying which input failed.

    Raises:
        ValueError: If fewer than two distinct layer counts are given.
    """
    counts = sorted(set(layers))
    if len(counts) < 2:
        raise ValueError(f"extrapolation needs at least two distinct layer counts, got {layers}")
    points: list[Measurement] = []
    for count in counts:
        measurement = measure(
            spec,
            config,
            num_layers=count,
            device=device,
            warmup_steps=warmup_steps,
            timed_steps=timed_steps,
            checkpoint=checkpoint,
            timeout_s=timeout_s,
            gpu=gpu,
        )
        if on_measured is not None:
            on_measured(measurement)
        points.append(measurement)
        if measurement.status is not Status.OK:
            break  # a larger truncation will not fit either; the fit reports the failure
    return extrapolate(
        points, layer_counts=counts[: len(points)], target_layers=spec.num_layers, model=spec.name
    )
