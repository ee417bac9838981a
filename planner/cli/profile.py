"""CLI command: ``ftplan profile``: measure configs on this machine's GPU (or time them on CPU).

Each config runs in its own subprocess (``profiler.measure``); by default the model is measured
truncated to 2 and 4 decoder layers and extrapolated to its real depth. Records go to the user's
profile store, where ``ftplan recommend`` and ``ftplan estimate`` find them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from catalog import EnvironmentProblem, ModelSpec, get_gpu, get_model, printable, to_jsonable
from planner.cli._tables import echo_profile_table
from planner.cli.errors import require_extra
from planner.cli.params import (
    MAX_BATCH,
    MAX_LORA_ALPHA,
    MAX_LORA_RANK,
    MAX_SEQ_LEN,
    SafePath,
    check_device,
    finite_float,
    int_range,
)
from profiler import (
    DEFAULT_LORA_RANK,
    DEFAULT_LORA_TARGETS,
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    TuningConfig,
)
from profiler.request import checked_targets, layer_counts, profiled_model, sweep_configs

if TYPE_CHECKING:
    from rich.progress import Progress

MAX_WARMUP_STEPS = 1000
MAX_TIMED_STEPS = 10_000
MAX_TIMEOUT_S = 7 * 24 * 3600.0


def _require_cuda(device: str) -> None:
    import torch  # deferred: only profiling needs torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EnvironmentProblem(
            "ftplan profile measures GPU memory and needs a CUDA GPU, and torch sees none "
            f"(torch {torch.__version__}). Run it on a machine with an NVIDIA GPU, or pass "
            "--device cpu to time a tiny stand-in of the model on CPU (no memory figures)."
        )


def _run(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    layers: tuple[int, ...] | None,
    options: dict[str, Any],
    progress: Progress,
    task: Any,
) -> list[Measurement]:
    from profiler.measure import measure, profile_extrapolated

    if layers is None:
        result = measure(spec, config, **options)
        progress.advance(task)
        return [result]
    inputs: list[Measurement] = []

    def done(measurement: Measurement) -> None:
        inputs.append(measurement)
        progress.advance(task)

    result = profile_extrapolated(spec, config, layers=layers, on_measured=done, **options)
    progress.advance(task, len(layers) - len(inputs))  # steps skipped after an OOM
    return [*inputs, result]


@click.command("profile")
@click.option(
    "--model",
    "model_name",
    required=True,
    help="Catalog model name, Hugging Face id, or path to a config.json.",
)
@click.option("--method", type=click.Choice([m.value for m in Method]), required=True)
@click.option(
    "--precision",
    type=click.Choice([p.value for p in Precision]),
    default=Precision.BF16_MIXED.value,
    show_default=True,
)
@click.option(
    "--rank",
    type=int_range(1, MAX_LORA_RANK),
    default=DEFAULT_LORA_RANK,
    show_default=True,
    help="LoRA rank.",
)
@click.option(
    "--alpha",
    type=int_range(1, MAX_LORA_ALPHA),
    default=None,
    help="LoRA alpha [default: 2 x rank].",
)
@click.option(
    "--targets",
    default=DEFAULT_LORA_TARGETS,
    show_default=True,
    callback=lambda _ctx, _param, value: checked_targets(value),
    help="LoRA targets: all-linear, attention, or e.g. q_proj,v_proj.",
)
@click.option(
    "--batch",
    "batches",
    type=int_range(1, MAX_BATCH),
    multiple=True,
    help="Micro-batch (repeatable).",
)
@click.option(
    "--seq-len",
    "seq_lens",
    type=int_range(1, MAX_SEQ_LEN),
    multiple=True,
    help="Tokens (repeatable).",
)
@click.option("--grad-checkpointing", is_flag=True, help="Non-reentrant activation checkpointing.")
@click.option(
    "--optimizer",
    type=click.Choice([o.value for o in OptimizerKind]),
    default=OptimizerKind.ADAMW.value,
    show_default=True,
)
@click.option(
    "--chunked-loss",
    is_flag=True,
    help="Chunked cross-entropy: the LM head and loss run 1024 tokens at a time.",
)
@click.option(
    "--layers",
    "layers_text",
    default="2,4",
    show_default=True,
    help="Truncated depths to measure and extrapolate from.",
)
@click.option("--full-depth", is_flag=True, help="Measure the whole model instead.")
@click.option(
    "--device",
    default="cuda",
    show_default=True,
    callback=lambda _ctx, _param, value: check_device(value),
    help="cuda, cuda:<i>, or cpu (a 2-layer tiny stand-in at full depth, time only).",
)
@click.option("--checkpoint", default=None, help="Real weights: hub id or local path.")
@click.option(
    "--gpu",
    "gpu_name",
    default=None,
    help="Catalog GPU name or alias to record [default: from the device name].",
)
@click.option("--warmup-steps", type=int_range(0, MAX_WARMUP_STEPS), default=3, show_default=True)
@click.option("--timed-steps", type=int_range(1, MAX_TIMED_STEPS), default=10, show_default=True)
@click.option(
    "--timeout-s",
    type=finite_float(0, MAX_TIMEOUT_S, min_open=True),
    default=1800.0,
    show_default=True,
    help="Limit per measurement subprocess, seconds.",
)
@click.option(
    "--out",
    type=SafePath(dir_okay=False, path_type=Path),
    default=None,
    help="JSONL file to append to [default: the user profile store].",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
def profile_command(
    model_name: str,
    method: str,
    precision: str,
    rank: int,
    alpha: int | None,
    targets: str,
    batches: tuple[int, ...],
    seq_lens: tuple[int, ...],
    grad_checkpointing: bool,
    optimizer: str,
    chunked_loss: bool,
    layers_text: str,
    full_depth: bool,
    device: str,
    checkpoint: str | None,
    gpu_name: str | None,
    warmup_steps: int,
    timed_steps: int,
    timeout_s: float,
    out: Path | None,
    output_format: str,
) -> None:
    """Measure peak GPU memory and step time of configs (subprocess per config), and store them.

    \b
    Examples:
      ftplan profile --model llama2-7b --method qlora --batch 1 --batch 4 --seq-len 1024
      ftplan profile --model llama3.2-1b --method full --full-depth --grad-checkpointing
      ftplan profile --model llama2-7b --method lora --device cpu      (tiny stand-in, time only)
      ftplan profile --model llama3.1-8b --method lora --seq-len 8192 --chunked-loss
    """
    require_extra("train", "ftplan profile")
    cpu = device == "cpu"
    spec, note = profiled_model(get_model(model_name), chunked_loss=chunked_loss, cpu=cpu)
    if not cpu:
        _require_cuda(device)
    configs = sweep_configs(
        Method(method),
        precision=Precision(precision),
        rank=rank,
        alpha=alpha,
        targets=targets,
        batches=batches or (1,),
        seq_lens=seq_lens or (2048,),
        grad_checkpointing=grad_checkpointing,
        optimizer=OptimizerKind(optimizer),
        chunked_loss=chunked_loss,
    )
    layers = None if (full_depth or cpu) else layer_counts(layers_text)
    options = dict(
        device=device,
        warmup_steps=warmup_steps,
        timed_steps=timed_steps,
        checkpoint=checkpoint,
        timeout_s=timeout_s,
        gpu=get_gpu(gpu_name).name if gpu_name else None,
    )
    results = _run_all(spec, configs, layers=layers, options=options)
    target = _store(results, out)
    _print(results, note, output_format)
    click.echo(f"{len(results)} records appended to {printable(target)}", err=True)


def _run_all(
    spec: ModelSpec,
    configs: list[TuningConfig],
    *,
    layers: tuple[int, ...] | None,
    options: dict[str, Any],
) -> list[Measurement]:
    """Every config's measurements (a truncated depth's and the extrapolation, or the full
    depth's), in order, with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import Progress

    results: list[Measurement] = []
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(
            f"profiling {spec.name}", total=len(configs) * (len(layers) if layers else 1)
        )
        for config in configs:
            results.extend(
                _run(spec, config, layers=layers, options=options, progress=progress, task=task)
            )
    return results


def _store(results: list[Measurement], out: Path | None) -> Path:
    """Append ``results`` to ``out`` (default: the user's profile store); the file written."""
    from profiler.store import ProfileStore, default_store, user_profiles_path

    target = out or user_profiles_path()
    ProfileStore([target]).append(target, results)
    default_store.cache_clear()
    return target


def _print(results: list[Measurement], note: str, output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps([to_jsonable(m) for m in results], indent=2, sort_keys=True))
        if note:
            click.echo(note, err=True)
    else:
        echo_profile_table(results, note)


COMMANDS: list[click.Command] = [profile_command]
