"""CLI command: ``ftplan profile``: measure configs on this machine's GPU (or time them on CPU).

Each config runs in its own subprocess (``profiler.measure``); by default the model is measured
truncated to 2 and 4 decoder layers and extrapolated to its real depth. Records go to the user's
profile store, where ``ftplan recommend`` and ``ftplan estimate`` find them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from catalog import (
    EnvironmentProblem,
    InputError,
    ModelSpec,
    get_gpu,
    get_model,
    printable,
    to_jsonable,
)
from planner.cli.errors import require_extra
from planner.cli.params import (
    MAX_BATCH,
    MAX_LORA_ALPHA,
    MAX_LORA_RANK,
    MAX_SEQ_LEN,
    SafePath,
    check_targets,
    finite_float,
    int_range,
    user_config,
)
from profiler import (
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    TuningConfig,
    chunked_loss_problem,
)
from profiler._worker import PHASE_FORWARD_BACKWARD, PHASE_OPTIMIZER_STEP

if TYPE_CHECKING:
    from rich.progress import Progress

# CPU runs time a tiny stand-in of the model: wide layers and a 100k+ vocabulary would take
# minutes per step on a laptop CPU and tell nothing about GPU memory anyway.
CPU_MAX_LAYERS = 2
CPU_MAX_HIDDEN = 256
CPU_MAX_VOCAB = 4096
MAX_LAYERS = 1024
MAX_WARMUP_STEPS = 1000
MAX_TIMED_STEPS = 10_000
MAX_TIMEOUT_S = 7 * 24 * 3600.0
_DEVICE = re.compile(r"^(cpu|cuda(:[0-9]{1,3})?)$")


def check_device(text: str) -> str:
    """``text`` when it names a device ftplan can profile on: ``cuda``, ``cuda:<i>`` or ``cpu``."""
    if not _DEVICE.match(text.strip().lower()):
        raise click.BadParameter(f"{text!r} is not cuda, cuda:<index> or cpu")
    return text.strip().lower()


def cpu_stand_in(spec: ModelSpec) -> tuple[ModelSpec, str]:
    """A tiny model of the same architecture type for CPU timing, and a note on what shrank.

    Layers are cut to 2, and hidden size, heads, MLP width and vocabulary are scaled down where
    they exceed 256 / 4096, keeping the attention grouping (heads per KV head) and head size.
    """
    heads, kv_heads, head_dim, hidden = (
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
        spec.hidden_size,
    )
    if hidden > CPU_MAX_HIDDEN:
        group = spec.num_heads // spec.num_kv_heads  # query heads per KV head, kept
        head_dim = min(spec.head_dim, 32)
        kv_heads = max(1, CPU_MAX_HIDDEN // (group * head_dim))
        heads = kv_heads * group
        hidden = heads * head_dim
    layers = min(spec.num_layers, CPU_MAX_LAYERS)
    vocab = min(spec.vocab_size, CPU_MAX_VOCAB)
    tiny = dataclasses.replace(
        spec,
        name=f"{spec.name}-cpu-tiny",
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=max(1, round(spec.intermediate_size * hidden / spec.hidden_size)),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        param_count=1,
        source=f"CPU stand-in of {spec.name}",
    )
    note = (
        f"CPU run on a tiny stand-in of {spec.name}: {layers} of {spec.num_layers} layers, "
        f"hidden {hidden} (was {spec.hidden_size}), vocab {vocab} (was {spec.vocab_size}); "
        f"step time only, no memory figures, not representative of a GPU"
    )
    return tiny, note


def _parse_layers(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        counts = ()
    if len(counts) < 2 or counts[0] <= 0 or counts[-1] > MAX_LAYERS or len(counts) > 8:
        raise InputError(
            f"--layers {text!r}: give two to eight layer counts between 1 and {MAX_LAYERS}, "
            "e.g. 2,4"
        )
    return counts


def _configs(
    method: Method,
    *,
    precision: Precision,
    rank: int,
    alpha: int | None,
    targets: str,
    batches: Sequence[int],
    seq_lens: Sequence[int],
    grad_checkpointing: bool,
    optimizer: OptimizerKind,
    chunked_loss: bool = False,
) -> list[TuningConfig]:
    lora = method is not Method.FULL
    return [
        user_config(
            method=method,
            precision=precision,
            lora_rank=rank if lora else None,
            lora_alpha=alpha if lora else None,
            lora_targets=targets if lora else None,
            micro_batch_size=batch,
            seq_len=seq_len,
            grad_checkpointing=grad_checkpointing,
            optimizer=optimizer,
            chunked_loss=chunked_loss,
        )
        for batch in batches
        for seq_len in seq_lens
    ]


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


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _render_table(results: Sequence[Measurement], note: str) -> None:
    from rich.console import Console  # deferred: only table output needs rich
    from rich.table import Table

    table = Table(title="ftplan profile", caption=note or None, header_style="bold")
    for column in (
        "model",
        "config",
        "gpu",
        "source",
        "status",
        "alloc GiB",
        "reserved GiB",
        "fwd+bwd GiB",
        "optim GiB",
        "step s",
        "tokens/s",
    ):
        numeric = column.endswith(("GiB", "s"))
        table.add_column(
            column,
            justify="right" if numeric else "left",
            no_wrap=column in ("model", "config", "gpu", "source"),
        )
    for m in results:
        phases = dict(m.phase_peaks_gib)
        table.add_row(
            m.model,
            m.config.label(),
            m.gpu,
            m.source.value,
            m.status.value,
            _cell(m.peak_allocated_gib, 2),
            _cell(m.peak_reserved_gib, 2),
            _cell(phases.get(PHASE_FORWARD_BACKWARD), 2),
            _cell(phases.get(PHASE_OPTIMIZER_STEP), 2),
            _cell(m.step_time_s, 4),
            _cell(m.tokens_per_s, 0),
        )
    console = Console(width=max(200, shutil.get_terminal_size().columns))
    with console.capture() as captured:  # through click.echo, so CliRunner sees it
        console.print(table)
    click.echo(captured.get(), nl=False)
    for m in results:
        if m.error:
            click.echo(f"{m.model} {m.config.label()}: {m.status.value}: {m.error[:300]}")


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
    "--rank", type=int_range(1, MAX_LORA_RANK), default=16, show_default=True, help="LoRA rank."
)
@click.option(
    "--alpha",
    type=int_range(1, MAX_LORA_ALPHA),
    default=None,
    help="LoRA alpha [default: 2 x rank].",
)
@click.option(
    "--targets",
    default="all-linear",
    show_default=True,
    callback=lambda _ctx, _param, value: check_targets(value),
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
    from rich.console import Console
    from rich.progress import Progress

    from profiler.store import ProfileStore, default_store, user_profiles_path

    require_extra("train", "ftplan profile")
    spec, note = get_model(model_name), ""
    problem = chunked_loss_problem(model_type=spec.model_type) if chunked_loss else None
    if problem is not None:
        raise InputError(f"--chunked-loss: {problem}. To fix: drop --chunked-loss")
    cpu = device == "cpu"
    if cpu:
        spec, note = cpu_stand_in(spec)
    if not cpu:
        _require_cuda(device)
    configs = _configs(
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
    layers = None if (full_depth or cpu) else _parse_layers(layers_text)
    options = dict(
        device=device,
        warmup_steps=warmup_steps,
        timed_steps=timed_steps,
        checkpoint=checkpoint,
        timeout_s=timeout_s,
        gpu=get_gpu(gpu_name).name if gpu_name else None,
    )
    results: list[Measurement] = []
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(
            f"profiling {spec.name}", total=len(configs) * (len(layers) if layers else 1)
        )
        for config in configs:
            results.extend(
                _run(spec, config, layers=layers, options=options, progress=progress, task=task)
            )
    target = out or user_profiles_path()
    ProfileStore([target]).append(target, results)
    default_store.cache_clear()
    if output_format == "json":
        click.echo(json.dumps([to_jsonable(m) for m in results], indent=2, sort_keys=True))
    else:
        _render_table(results, note)
    if note and output_format == "json":
        click.echo(note, err=True)
    click.echo(f"{len(results)} records appended to {printable(target)}", err=True)


COMMANDS: list[click.Command] = [profile_command]
