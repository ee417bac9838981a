"""CLI command: ``ftplan estimate`` (memory and speed of one config, without a GPU).

``estimate`` prefers a stored measured/extrapolated profile (the profile store) and falls back to
the analytic estimator; ``--analytic-only`` skips the store.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from catalog import (
    GPU,
    ModelSpec,
    get_gpu,
    get_model,
    to_jsonable,
)
from planner.cli.errors import NothingFitsError, UserInputError
from planner.cli.params import (
    MAX_BATCH,
    MAX_GPUS_PER_NODE,
    MAX_INT_OPTION,
    MAX_LORA_ALPHA,
    MAX_LORA_RANK,
    MAX_SEQ_LEN,
    SafePath,
    int_range,
)
from profiler import (
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    Sharding,
    TuningConfig,
    chunked_loss_problem,
)
from profiler.request import ConfigRequest, estimate_config


def _stored(model: str, config: TuningConfig, gpu: GPU) -> Measurement | None:
    """A stored measured/extrapolated profile for this config, if the store is available."""
    try:
        from profiler.store import default_store
    except ImportError:
        return None
    found = default_store().lookup(model=model, config=config, gpu=gpu.name)
    return found if found is not None and found.peak_reserved_gib is not None else None


def _result(measurement: Measurement, gpu: GPU, notes: Sequence[str]) -> dict[str, Any]:
    from profiler.headroom import capacity_gib, measurement_fit

    reserved = measurement.peak_reserved_gib
    # The band from the cross-validated residuals of the estimate's regime (null when measured
    # or when the calibration has none).
    bands = {
        f"{quantity}_{end}": None if measurement.band(quantity) is None else value
        for quantity in ("step_time_s", "peak_allocated_gib", "peak_reserved_gib")
        for end, value in zip(
            ("low", "high"), measurement.band(quantity) or (0.0, 0.0), strict=True
        )
    }
    fit = measurement_fit(measurement, gpu)
    return {
        **bands,
        "model": measurement.model,
        "gpu": gpu.name,
        "config": to_jsonable(measurement.config),
        "source": measurement.source.value,
        "status": measurement.status.value,
        "peak_allocated_gib": measurement.peak_allocated_gib,
        "peak_reserved_gib": reserved,
        "sharding": measurement.config.sharding.value,
        "host_ram_gib": measurement.host_ram_gib,
        "step_time_s": measurement.step_time_s,
        "tokens_per_s": measurement.tokens_per_s,
        "trainable_params": measurement.trainable_params,
        "total_params": measurement.total_params,
        "usable_memory_gib": gpu.usable_memory_gib,
        "memory_limit_gib": capacity_gib(gpu),
        "fit": fit.verdict.value,
        "fits": fit.fits,
        "fit_margin_fraction": fit.margin_fraction,
        "fit_detail": fit.describe(),
        "breakdown": to_jsonable(measurement.breakdown) if measurement.breakdown else None,
        "phase_peaks_gib": dict(measurement.phase_peaks_gib),
        "provenance": to_jsonable(measurement.provenance),
        "notes": list(notes),
    }


def _eval_result(
    spec: ModelSpec, config: TuningConfig, gpu: GPU, measurement: Measurement, tokens: int
) -> dict[str, Any]:
    """One eval pass over ``tokens`` tokens: its memory phase and time, estimated (the
    estimator's forward share applied to the training step, measured or estimated)."""
    from profiler.calibration import calibration_for
    from profiler.estimator import eval_pass

    found = eval_pass(spec, config, gpu, calibration=calibration_for(gpu))
    step_s = (measurement.step_time_s or found.train_step_time_s) * found.step_fraction
    tokens_per_s = config.tokens_per_step * config.gpu_count / step_s
    return {
        "source": "estimated",
        "tokens": tokens,
        "peak_allocated_gib": found.peak_allocated_gib,
        "step_time_s": step_s,
        "tokens_per_s": tokens_per_s,
        "pass_s": tokens / tokens_per_s,
    }


def _range(result: dict[str, Any], quantity: str, spec: str, unit: str) -> str:
    """`` (80% band 0.41–0.52 s)`` when the result has a band for ``quantity``, else ''."""
    low, high = result.get(f"{quantity}_low"), result.get(f"{quantity}_high")
    if low is None or high is None:
        return ""
    return f" (80% band {format(low, spec)}–{format(high, spec)} {unit})"


def _render_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['model']} on {result['gpu']} ({result['source']})")
    table.add_column("quantity")
    table.add_column("value", justify="right")

    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    table.add_row(
        "peak allocated",
        f"{fmt(result['peak_allocated_gib'], '.2f')} GiB"
        + _range(result, "peak_allocated_gib", ".2f", "GiB"),
    )
    table.add_row(
        "peak reserved",
        f"{fmt(result['peak_reserved_gib'], '.2f')} GiB"
        + _range(result, "peak_reserved_gib", ".2f", "GiB"),
    )
    table.add_row("memory limit (torch's − CUDA context)", f"{result['memory_limit_gib']:.2f} GiB")
    table.add_row("fit", result["fit"] if result["fits"] else "NO")
    table.add_row("sharding", result["sharding"])
    table.add_row("host RAM per node", f"{fmt(result['host_ram_gib'], '.1f')} GiB")
    table.add_row(
        "step time",
        f"{fmt(result['step_time_s'], '.4f')} s" + _range(result, "step_time_s", ".4f", "s"),
    )
    table.add_row("throughput", f"{fmt(result['tokens_per_s'], ',.0f')} tokens/s")
    table.add_row("trainable params", fmt(result["trainable_params"], ","))
    for name, value in (result["breakdown"] or {}).items():
        table.add_row(f"  {name.removesuffix('_gib')}", f"{value:.2f} GiB")
    for phase, value in result["phase_peaks_gib"].items():
        table.add_row(f"  phase {phase}", f"{value:.2f} GiB")
    if result.get("eval"):
        ev = result["eval"]
        table.add_row(
            "eval pass",
            f"{ev['pass_s']:,.1f} s for {ev['tokens']:,} tokens ({ev['tokens_per_s']:,.0f} "
            "tokens/s, estimated)",
        )
    console = Console()
    console.print(table)
    console.print(result["fit_detail"])
    for note in result["notes"]:
        console.print(f"note: {note}")


@click.command("estimate")
@click.option("--model", required=True, help="Catalog model name, alias or config.json path.")
@click.option("--method", required=True, type=click.Choice([m.value for m in Method]))
@click.option(
    "--precision",
    type=click.Choice([p.value for p in Precision]),
    default=None,
    help="Default bf16-mixed (fp16-mixed on GPUs without bf16).",
)
@click.option(
    "--rank", type=int_range(1, MAX_LORA_RANK), default=None, help="LoRA rank (default 16)."
)
@click.option(
    "--alpha", type=int_range(1, MAX_LORA_ALPHA), default=None, help="LoRA alpha (default 32)."
)
@click.option(
    "--targets",
    default=None,
    help="all-linear (default), attention, or a list such as q_proj,v_proj.",
)
@click.option(
    "--batch",
    type=int_range(1, MAX_BATCH),
    default=1,
    show_default=True,
    help="Micro-batch per GPU.",
)
@click.option("--seq-len", type=int_range(1, MAX_SEQ_LEN), default=2048, show_default=True)
@click.option("--grad-checkpointing", is_flag=True)
@click.option(
    "--optimizer",
    type=click.Choice([o.value for o in OptimizerKind]),
    default=OptimizerKind.ADAMW.value,
    show_default=True,
)
@click.option("--gpu", "gpu_name", default="h100", show_default=True)
@click.option(
    "--gpu-count",
    type=int_range(1, MAX_GPUS_PER_NODE),
    default=1,
    show_default=True,
    help="GPUs on one node.",
)
@click.option(
    "--sharding",
    type=click.Choice([s.value for s in Sharding]),
    default=None,
    help="none, ddp, fsdp, fsdp-offload, zero3, zero3-offload (default: none on one GPU, "
    "ddp for LoRA/QLoRA and fsdp for full FT on several).",
)
@click.option(
    "--chunked-loss",
    is_flag=True,
    help="Chunked cross-entropy: the LM head and loss run a chunk of tokens at a time.",
)
@click.option("--analytic-only", is_flag=True, help="Skip stored profiles; use the formula.")
@click.option(
    "--max-batch",
    is_flag=True,
    help="Find the largest micro-batch that fits (at --seq-len); JSON key max_micro_batch.",
)
@click.option(
    "--max-seq-len",
    is_flag=True,
    help="Find the longest sequence that fits (at --batch); JSON key max_seq_len.",
)
@click.option(
    "--eval-dataset",
    type=SafePath(dir_okay=False, exists=True, regular_file=True, path_type=Path),
    help="Held-out JSONL set: adds the eval pass (its memory phase and time; JSON key eval).",
)
@click.option(
    "--eval-tokens",
    type=int_range(1, MAX_INT_OPTION),
    help="Tokens of the eval set (instead of --eval-dataset).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def estimate_command(
    model: str,
    method: str,
    precision: str | None,
    rank: int | None,
    alpha: int | None,
    targets: str | None,
    batch: int,
    seq_len: int,
    grad_checkpointing: bool,
    optimizer: str,
    gpu_name: str,
    gpu_count: int,
    sharding: str | None,
    chunked_loss: bool,
    analytic_only: bool,
    max_batch: bool,
    max_seq_len: bool,
    eval_dataset: Path | None,
    eval_tokens: int | None,
    fmt: str,
) -> None:
    """Peak GPU memory and step time of one fine-tuning config, without a GPU.

    Uses a stored measured/extrapolated profile when one matches, else the analytic estimator
    (--analytic-only forces the estimator).

    \b
    Examples:
      ftplan estimate --model llama2-7b --method lora --batch 4 --seq-len 1024
      ftplan estimate --model llama3.1-8b --method qlora --gpu l4 --grad-checkpointing
      ftplan estimate --model ./my-model/config.json --method full --precision bf16 --format json
      ftplan estimate --model llama3.1-8b --method lora --gpu l4 --grad-checkpointing --max-batch
      ftplan estimate --model llama3.1-70b --method qlora --gpu rtx4090 --gpu-count 2 \\
        --sharding fsdp-offload --seq-len 1024 --grad-checkpointing
      ftplan estimate --model llama3.1-8b --method full --gpu rtx4090 --sharding zero3-offload
      ftplan estimate --model llama2-7b --method lora --batch 4 --eval-dataset eval.jsonl
    """
    from profiler.calibration import calibration_for
    from profiler.estimator import estimate

    if eval_dataset is not None and eval_tokens is not None:
        raise UserInputError("give either --eval-tokens or --eval-dataset, not both")
    spec, gpu = get_model(model), get_gpu(gpu_name)
    request = ConfigRequest(
        method=Method(method),
        precision=Precision(precision) if precision else None,
        rank=rank,
        alpha=alpha,
        targets=targets,
        batch=batch,
        seq_len=seq_len,
        grad_checkpointing=grad_checkpointing,
        optimizer=OptimizerKind(optimizer),
        gpu_count=gpu_count,
        sharding=Sharding(sharding) if sharding else None,
        chunked_loss=chunked_loss,
    )
    config, notes = estimate_config(request, spec, gpu)
    if max_batch or max_seq_len:
        _what_if(spec, config, gpu, knob="micro_batch" if max_batch else "seq_len", fmt=fmt)
        return
    stored = None if analytic_only else _stored(spec.name, config, gpu)
    measurement = (
        stored
        if stored is not None
        else estimate(spec, config, gpu, calibration=calibration_for(gpu))
    )
    result = _result(measurement, gpu, notes)
    if eval_dataset is not None or eval_tokens is not None:
        if eval_dataset is not None:
            from planner.engine.dataset import count_dataset

            eval_tokens = count_dataset(
                eval_dataset, what="eval dataset", size_flag="--eval-tokens"
            ).tokens
        assert eval_tokens is not None
        result["eval"] = _eval_result(spec, config, gpu, measurement, eval_tokens)
        result["phase_peaks_gib"]["eval"] = result["eval"]["peak_allocated_gib"]
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        _render_table(result)


def _what_if(spec: ModelSpec, config: TuningConfig, gpu: GPU, *, knob: str, fmt: str) -> None:
    """--max-batch / --max-seq-len: bisection over the analytic estimator; exit 1 when even
    batch 1 (or one token) does not fit, naming the nearest change that would."""
    from profiler.calibration import calibration_for
    from profiler.estimator import estimate
    from profiler.whatif import max_micro_batch, max_seq_len

    calibration = calibration_for(gpu)

    def run(c: TuningConfig) -> Measurement:
        return estimate(spec, c, gpu, calibration=calibration)

    def search(c: TuningConfig) -> Any:
        if knob == "micro_batch":
            return max_micro_batch(run, c, gpu)
        return max_seq_len(run, c, gpu, spec=spec)

    found = search(config)
    if knob == "micro_batch":
        key, label = "max_micro_batch", f"micro-batch at seq-len {config.seq_len}"
    else:
        key, label = "max_seq_len", f"sequence length at micro-batch {config.micro_batch_size}"
    # What the chunked loss would allow, where ftplan's recipe can run it and it was not asked.
    chunked = None
    if _can_chunk(spec, config):
        chunked = search(dataclasses.replace(config, chunked_loss=True)).value
        if chunked is not None and found.value is not None and chunked <= found.value:
            chunked = None
    if found.value_tight is None:
        start = "batch 1" if knob == "micro_batch" else "sequence length 1"
        raise NothingFitsError(
            f"nothing fits at {start} on {gpu.name}: {found.check.describe()}. "
            f"Nearest change: {_nearest_change(run, spec, config, gpu)}"
        )
    result = {
        "model": spec.name,
        "gpu": gpu.name,
        "config": to_jsonable(config),
        "source": "estimated",
        key: found.value,
        f"{key}_tight": found.value_tight,
        "fit": found.check.verdict.value,
        "fits": found.check.fits,
        "peak_reserved_gib": found.check.peak_reserved_gib,
        "memory_limit_gib": found.check.capacity_gib,
        "fit_detail": found.check.describe(),
        "capped_at": found.limit,
        f"{key}_with_chunked_loss": chunked,
    }
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    cap = f" (the search stops at {found.limit})" if found.limit else ""
    if found.value is not None:
        click.echo(
            f"largest {label} that fits {gpu.name}, error margin included: {found.value}{cap}"
        )
    else:
        click.echo(f"nothing is sure to fit {gpu.name} at {label}: every size that may is 'tight'")
    if found.value_tight is not None and found.value_tight != found.value:
        click.echo(
            f"  up to {found.value_tight} may fit ('tight': only if the estimate is not low by "
            f"its error margin)"
        )
    click.echo(f"  {found.check.describe()}")
    if chunked is not None:
        click.echo(f"  with --chunked-loss (the LM head and loss a chunk at a time): {chunked}")


def _can_chunk(spec: ModelSpec, config: TuningConfig) -> bool:
    """Whether the chunked loss is off and ftplan's recipe could run it for this config."""
    return not config.chunked_loss and (
        chunked_loss_problem(
            model_type=spec.model_type, gpu_count=config.gpu_count, sharding=config.sharding
        )
        is None
    )


def _nearest_change(
    run: Callable[[TuningConfig], Measurement], spec: ModelSpec, config: TuningConfig, gpu: GPU
) -> str:
    """The first of: the chunked loss, gradient checkpointing, both, QLoRA with checkpointing
    (and the chunked loss), a shorter sequence, that makes batch 1 fit."""
    from profiler.headroom import measurement_fit
    from profiler.whatif import max_seq_len

    one = dataclasses.replace(config, micro_batch_size=1)
    ckpt = dataclasses.replace(one, grad_checkpointing=True)
    steps: list[tuple[str, TuningConfig]] = []
    if not config.grad_checkpointing:
        steps.append(("add --grad-checkpointing", ckpt))
    if config.method is not Method.QLORA:
        qlora = dataclasses.replace(
            ckpt,
            method=Method.QLORA,
            lora_rank=config.lora_rank or 16,
            lora_alpha=config.lora_alpha or 32,
            lora_targets=config.lora_targets or "all-linear",
            optimizer=OptimizerKind.ADAMW,
            sharding=Sharding.DDP if config.gpu_count > 1 else Sharding.NONE,
        )
        if qlora.precision is Precision.BF16:
            qlora = dataclasses.replace(qlora, precision=Precision.BF16_MIXED)
        steps.append(("--method qlora with --grad-checkpointing", qlora))
    options: list[tuple[str, TuningConfig]] = []
    chunk = _can_chunk(spec, config)
    if chunk:
        options.append(("add --chunked-loss", dataclasses.replace(one, chunked_loss=True)))
    for text, candidate in steps:
        options.append((text, candidate))
        if chunk:
            chunked = dataclasses.replace(candidate, chunked_loss=True)
            options.append((f"{text} and --chunked-loss", chunked))
    for text, candidate in options:
        probe = run(candidate)
        if measurement_fit(probe, gpu).fits:
            return f"{text} ({probe.peak_reserved_gib or 0:.1f} GiB at batch 1)"
    shorter = max_seq_len(run, one, gpu, spec=spec).value
    if shorter:
        return f"a shorter --seq-len (at most {shorter} tokens at batch 1)"
    return "a GPU with more memory, or several GPUs (--gpu-count) to shard over"


COMMANDS: list[click.Command] = [estimate_command]
