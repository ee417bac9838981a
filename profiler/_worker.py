"""One measurement in its own process: ``python -m profiler._worker`` reads a job (JSON) on stdin
and writes one Measurement (JSON) on stdout.

One config per process, so that an out-of-memory error or a crash cannot poison the next
measurement (DESIGN.md, "Measuring on the GPU"). This module is the only one in the profiler that
touches the GPU and the clock.

Job fields: ``model`` (a catalog name or a ModelSpec object), ``config`` (TuningConfig object),
``num_layers`` (int or null: truncate), ``device`` (``cuda``/``cpu``), ``warmup_steps``,
``timed_steps``, ``checkpoint`` (hub id / path or null), ``gpu`` (catalog GPU name or null: derived
from the device), ``seed``, and ``fault`` (``oom``/``error``/``hard-exit``: fault injection for
ftplan's own tests).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, TextIO

from catalog import GIB, ModelSpec, from_jsonable, to_jsonable
from profiler._types import Measurement, Provenance, Source, Status, TuningConfig
from profiler.extrapolate import FIT_CUDA_EVENT_TIME_S, FIT_KERNEL_BUSY_S, FIT_NUM_LAYERS

PHASE_FORWARD_BACKWARD = "forward_backward"
PHASE_OPTIMIZER_STEP = "optimizer_step"
FIT_STEP_TIME_MEAN_S = "step_time_mean_s"
FIT_STEP_TIME_STDEV_S = "step_time_stdev_s"

# Device name (torch.cuda.get_device_name) substrings -> ftplan catalog GPU names (catalog/data/
# gpus.csv); first match wins, so the more specific entries come first.
_DEVICE_TO_CATALOG: tuple[tuple[tuple[str, ...], str], ...] = (
    (("GH200",), "GH200"),
    (("H100", "PCIE"), "H100 PCIe"),
    (("H100", "NVL"), "H100 NVL"),
    (("H100",), "H100 SXM 80GB"),
    (("H200",), "H200"),
    (("B200",), "B200"),
    (("A100", "PCIE"), "A100 PCIe 80GB"),
    (("A100", "40GB"), "A100 SXM 40GB"),
    (("A100",), "A100 SXM 80GB"),
    (("A10G",), "A10G"),
    (("A10",), "A10"),
    (("L40S",), "L40S"),
    (("L4",), "L4"),
    (("T4",), "T4"),
    (("V100", "32GB"), "V100 32GB"),
    (("V100",), "V100 16GB"),
    (("RTX 4090",), "RTX 4090"),
    (("RTX 3090",), "RTX 3090"),
    (("RTX 6000 ADA",), "RTX 6000 Ada"),
    (("RTX A6000",), "RTX A6000"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One measurement to run. ``num_layers`` None measures the model at full depth."""

    spec: ModelSpec
    config: TuningConfig
    num_layers: int | None = None
    device: str = "cuda"
    warmup_steps: int = 3
    timed_steps: int = 10
    checkpoint: str | None = None
    gpu: str | None = None
    seed: int = 0
    fault: str | None = None


def truncated_model_name(name: str, num_layers: int | None) -> str:
    """Name under which a truncated measurement is recorded (never mistaken for the full model)."""
    return name if num_layers is None else f"{name}@{num_layers}-layers"


def catalog_gpu_name(device_name: str) -> str:
    """The ftplan catalog name for a torch device name (e.g. ``NVIDIA H100 80GB HBM3`` ->
    ``H100 SXM 80GB``); the device name itself when unknown."""
    upper = device_name.upper()
    for needles, name in _DEVICE_TO_CATALOG:
        if all(n.upper() in upper for n in needles):
            return name
    return device_name


def parse_job(data: dict[str, Any]) -> Job:
    """Build a :class:`Job` from its JSON form.

    Raises:
        ValueError: If a field is missing or malformed, or the model name is unknown.
    """
    model = data.get("model")
    if isinstance(model, str):
        from catalog import get_model

        spec = get_model(model)
    else:
        spec = from_jsonable(ModelSpec, model)
    if "config" not in data:
        raise ValueError("job has no 'config'")
    known = {
        "model",
        "config",
        "num_layers",
        "device",
        "warmup_steps",
        "timed_steps",
        "checkpoint",
        "gpu",
        "seed",
        "fault",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"job has unknown fields {unknown}")
    job = Job(
        spec=spec,
        config=from_jsonable(TuningConfig, data["config"]),
        **{k: data[k] for k in known - {"model", "config"} if k in data},
    )
    if job.timed_steps <= 0 or job.warmup_steps < 0:
        raise ValueError(
            f"need timed_steps > 0 and warmup_steps >= 0, got "
            f"{job.timed_steps} and {job.warmup_steps}"
        )
    return job


def _provenance(job: Job, *, notes: str = "") -> Provenance:
    versions: list[tuple[str, str]] = [("python", sys.version.split()[0])]
    device = "cpu"
    for package in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            versions.append((package, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((package, "not installed"))
    if job.device.startswith("cuda"):
        import torch

        device = (
            torch.cuda.get_device_name(job.device)
            if torch.cuda.is_available()
            else f"{job.device} (not available)"
        )
        versions.append(("cuda", str(torch.version.cuda)))
        try:
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            ).stdout.split("\n")[0]
            versions.append(("nvidia-driver", driver.strip() or "unknown"))
        except (OSError, subprocess.SubprocessError):
            versions.append(("nvidia-driver", "unknown"))
    layers = job.spec.num_layers if job.num_layers is None else job.num_layers
    base = (
        f"{layers} of {job.spec.num_layers} decoder layers; random weights"
        if job.checkpoint is None
        else f"{layers} of {job.spec.num_layers} layers; weights from {job.checkpoint}"
    )
    return Provenance(
        device=device,
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        versions=tuple(versions),
        method=f"ftplan profiler worker: {job.warmup_steps} warm-up + {job.timed_steps} timed "
        f"steps, median wall time (synchronized); peaks reset before the timed steps",
        notes="; ".join(n for n in (base, notes) if n),
    )


def _record(
    job: Job, *, status: Status, gpu: str, provenance: Provenance, error: str = "", **values: Any
) -> Measurement:
    fit = (
        (
            FIT_NUM_LAYERS,
            float(job.num_layers if job.num_layers is not None else job.spec.num_layers),
        ),
    ) + values.pop("fit", ())
    return Measurement(
        model=truncated_model_name(job.spec.name, job.num_layers),
        gpu=gpu,
        config=job.config,
        status=status,
        source=Source.MEASURED,
        provenance=provenance,
        error=error,
        fit=fit,
        **values,
    )


def _inject_fault(job: Job) -> None:
    if job.fault is None:
        return
    if job.fault == "oom":
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. (fault injected by the job)")
    if job.fault == "error":
        raise RuntimeError("fault injected by the job")
    if job.fault == "hard-exit":
        os._exit(3)
    raise ValueError(f"unknown fault {job.fault!r}")


def run_job(job: Job) -> Measurement:
    """Run one job in this process; an OOM or an exception becomes a record, not a crash."""
    if job.fault in ("error", "hard-exit"):
        try:
            _inject_fault(job)  # before importing torch, so that isolation tests stay fast
        except Exception as exc:  # noqa: BLE001 - any failure is data for the caller
            return _error_record(job, gpu=job.gpu or job.device, exc=exc)
    import torch

    if job.device.startswith("cuda") and not torch.cuda.is_available():
        return _record(
            job,
            status=Status.ERROR,
            gpu=job.gpu or job.device,
            provenance=_provenance(job),
            error=f"device {job.device!r} asked for, but torch {torch.__version__} "
            f"sees no CUDA GPU; run on a GPU machine or use device 'cpu'",
        )
    gpu = job.gpu or (
        catalog_gpu_name(torch.cuda.get_device_name(job.device))
        if job.device.startswith("cuda")
        else "cpu"
    )
    try:
        _inject_fault(job)
        return _measure(job, gpu=gpu)
    except torch.cuda.OutOfMemoryError as exc:  # = torch.OutOfMemoryError; both names exist
        return _record(
            job,
            status=Status.OOM,
            gpu=gpu,
            provenance=_provenance(job),
            error=str(exc).split("\n")[0][:500],
        )
    except Exception as exc:  # noqa: BLE001 - any failure is data for the caller
        return _error_record(job, gpu=gpu, exc=exc)


def _error_record(job: Job, *, gpu: str, exc: BaseException) -> Measurement:
    tail = traceback.format_exc().strip().splitlines()[-3:]
    return _record(
        job,
        status=Status.ERROR,
        gpu=gpu,
        provenance=_provenance(job),
        error=f"{type(exc).__name__}: {exc} | {' / '.join(tail)}"[:2000],
    )


def _measure(job: Job, *, gpu: str) -> Measurement:
    import torch

    from profiler.recipes import SETUP_FUNCTIONS, forward_backward, optimizer_step

    cuda = job.device.startswith("cuda")
    torch.manual_seed(job.seed)
    prepared = SETUP_FUNCTIONS[job.config.method](
        job.spec,
        job.config,
        device=job.device,
        num_layers=job.num_layers,
        checkpoint=job.checkpoint,
    )
    shape = (job.config.micro_batch_size, job.config.seq_len)
    generator = torch.Generator(device="cpu").manual_seed(job.seed)
    input_ids = torch.randint(0, job.spec.vocab_size, shape, generator=generator).to(job.device)

    for _ in range(job.warmup_steps):
        forward_backward(prepared, input_ids, input_ids)
        optimizer_step(prepared)
    if cuda:
        torch.cuda.synchronize(job.device)
        torch.cuda.reset_peak_memory_stats(job.device)

    wall_s: list[float] = []
    event_s: list[float] = []
    fb_peak = opt_peak = 0
    alloc_peak = reserved_peak = 0
    loss = float("nan")
    for _ in range(job.timed_steps):
        if cuda:
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(job.device)
            torch.cuda.reset_peak_memory_stats(job.device)
            start_event.record()
        start = time.perf_counter()
        loss_tensor = forward_backward(prepared, input_ids, input_ids)
        if cuda:
            # The caching allocator records peaks when work is enqueued (host side), so no
            # synchronize is needed between the phases.
            fb_peak = max(fb_peak, torch.cuda.max_memory_allocated(job.device))
            reserved_peak = max(reserved_peak, torch.cuda.max_memory_reserved(job.device))
            # The peak is a maximum of phases: record the optimizer step's peak on its own.
            torch.cuda.reset_peak_memory_stats(job.device)
        optimizer_step(prepared)
        if cuda:
            end_event.record()
            torch.cuda.synchronize(job.device)
            opt_peak = max(opt_peak, torch.cuda.max_memory_allocated(job.device))
            reserved_peak = max(reserved_peak, torch.cuda.max_memory_reserved(job.device))
            event_s.append(start_event.elapsed_time(end_event) / 1000.0)
        loss = float(loss_tensor)
        wall_s.append(time.perf_counter() - start)
    # Random weights in fp16 can overflow; memory and time stay valid, so say so, do not fail.
    loss_note = "" if math.isfinite(loss) else f"final loss {loss} (random weights)"

    step_time_s = statistics.median(wall_s)
    fit: tuple[tuple[str, float], ...] = (
        (FIT_STEP_TIME_MEAN_S, statistics.fmean(wall_s)),
        (FIT_STEP_TIME_STDEV_S, statistics.pstdev(wall_s)),
    )
    values: dict[str, Any] = {}
    if cuda:
        alloc_peak = max(fb_peak, opt_peak)
        fit += ((FIT_CUDA_EVENT_TIME_S, statistics.median(event_s)),)
        busy_s = _kernel_busy_s(prepared, input_ids, device=job.device)
        if busy_s is not None:
            fit += ((FIT_KERNEL_BUSY_S, busy_s),)
        values = {
            "peak_allocated_gib": alloc_peak / GIB,
            "peak_reserved_gib": reserved_peak / GIB,
            "phase_peaks_gib": (
                (PHASE_FORWARD_BACKWARD, fb_peak / GIB),
                (PHASE_OPTIMIZER_STEP, opt_peak / GIB),
            ),
        }
    notes = "; ".join(
        n
        for n in ("" if cuda else "CPU run: step time only, no GPU memory figures", loss_note)
        if n
    )
    return _record(
        job,
        status=Status.OK,
        gpu=gpu,
        provenance=_provenance(job, notes=notes),
        step_time_s=step_time_s,
        tokens_per_s=job.config.tokens_per_step * job.config.gpu_count / step_time_s,
        trainable_params=prepared.trainable_params,
        total_params=prepared.total_params,
        fit=fit,
        **values,
    )


def _kernel_busy_s(prepared: Any, input_ids: Any, *, device: str) -> float | None:
    """Summed CUDA kernel time (seconds) of one extra step under torch.profiler, or None.

    Runs after the timed steps and after their peaks were read, so it changes neither.
    """
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from profiler.recipes import forward_backward, optimizer_step

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            forward_backward(prepared, input_ids, input_ids)
            optimizer_step(prepared)
            torch.cuda.synchronize(device)
        total_us = sum(
            getattr(e, "self_device_time_total", 0.0)
            for e in prof.key_averages()
            if e.device_type == DeviceType.CUDA
        )
    except Exception as exc:  # noqa: BLE001 - an optional diagnostic must not fail the record
        print(f"warning: kernel time not recorded: {exc}", file=sys.stderr)
        return None
    return total_us / 1e6 if total_us > 0 else None


def main(*, record_stream: TextIO | None = None) -> int:
    """Read one job from stdin, write one Measurement JSON line to ``record_stream`` (stdout).

    Returns:
        0 if a record (ok, oom or error) was written; 2 if the job itself could not be read.
    """
    stream = record_stream or sys.stdout
    # Libraries print progress and warnings; only the record may reach the record stream.
    saved_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        try:
            job = parse_job(json.loads(sys.stdin.read()))
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            print(f"error: bad job: {exc}", file=sys.stderr)
            return 2
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        measurement = run_job(job)
        stream.write(json.dumps(to_jsonable(measurement), sort_keys=True) + "\n")
        stream.flush()
        return 0
    finally:
        sys.stdout = saved_stdout


if __name__ == "__main__":
    # Native code (CUDA, bitsandbytes) writes to file descriptor 1 directly: point it at stderr
    # and keep a private duplicate of the real stdout for the record.
    _record_fd = os.dup(1)
    os.dup2(2, 1)
    sys.exit(main(record_stream=os.fdopen(_record_fd, "w", encoding="utf-8")))
