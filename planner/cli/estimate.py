"""CLI command: ``ftplan estimate`` (memory and speed of one config, without a GPU).

``estimate`` prefers a stored measured/extrapolated profile (the profile store) and falls back to
the analytic estimator; ``--analytic-only`` skips the store. The config comes from
:mod:`profiler.request`, the answers from :mod:`profiler.results` and :mod:`profiler.whatif`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from catalog import GPU, ModelSpec, get_gpu, get_model
from planner.cli._tables import print_estimate_table
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
from profiler import Estimator, Method, OptimizerKind, Precision, Sharding, TuningConfig
from profiler.request import ConfigRequest, estimate_config
from profiler.results import estimate_result, what_if_result, with_eval_pass
from profiler.store import profile_for_estimate
from profiler.whatif import Knob, WhatIf, what_if


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
    "--alpha",
    type=int_range(1, MAX_LORA_ALPHA),
    default=None,
    help="LoRA alpha (default 2 x rank).",
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
    gpu_name: str,
    analytic_only: bool,
    max_batch: bool,
    max_seq_len: bool,
    eval_dataset: Path | None,
    eval_tokens: int | None,
    fmt: str,
    **config_options: Any,
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
    if eval_dataset is not None and eval_tokens is not None:
        raise UserInputError("give either --eval-tokens or --eval-dataset, not both")
    spec, gpu = get_model(model), get_gpu(gpu_name)
    config, notes = estimate_config(_config_request(**config_options), spec, gpu)
    estimator = Estimator()
    if max_batch or max_seq_len:
        knob = Knob.MICRO_BATCH if max_batch else Knob.SEQ_LEN
        _what_if(estimator, spec, config, gpu, knob=knob, fmt=fmt)
        return
    stored = None if analytic_only else profile_for_estimate(spec.name, config, gpu.name)
    measurement = stored if stored is not None else estimator.estimate(spec, config, gpu)
    result = estimate_result(measurement, gpu, notes)
    tokens = eval_tokens if eval_dataset is None else _count_tokens(eval_dataset)
    if tokens is not None:
        eval_pass = estimator.eval_pass(spec, config, gpu)
        result = with_eval_pass(result, eval_pass, config, measurement, tokens)
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        print_estimate_table(result)


def _config_request(
    *,
    method: str,
    precision: str | None,
    rank: int | None,
    alpha: int | None,
    targets: str | None,
    batch: int,
    seq_len: int,
    grad_checkpointing: bool,
    optimizer: str,
    gpu_count: int,
    sharding: str | None,
    chunked_loss: bool,
) -> ConfigRequest:
    """The config options of ``ftplan estimate``, parsed (None: ftplan's default)."""
    return ConfigRequest(
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


def _count_tokens(path: Path) -> int:
    """Tokens of the eval set at ``path``."""
    from planner.engine.dataset import count_dataset

    return count_dataset(path, what="eval dataset", size_flag="--eval-tokens").tokens


def _what_if(
    estimator: Estimator, spec: ModelSpec, config: TuningConfig, gpu: GPU, *, knob: Knob, fmt: str
) -> None:
    """--max-batch / --max-seq-len: bisection over the analytic estimator; exit 1 when even
    batch 1 (or one token) does not fit, naming the nearest change that would."""
    answer = what_if(lambda c: estimator.estimate(spec, c, gpu), spec, config, gpu, knob=knob)
    found = answer.found
    if found.value_tight is None:
        start = "batch 1" if knob is Knob.MICRO_BATCH else "sequence length 1"
        raise NothingFitsError(
            f"nothing fits at {start} on {gpu.name}: {found.check.describe()}. "
            f"Nearest change: {answer.nearest_change}"
        )
    if fmt == "json":
        result = what_if_result(answer, spec, config, gpu, knob=knob)
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        _echo_what_if(answer, config, gpu, knob=knob)


def _echo_what_if(answer: WhatIf, config: TuningConfig, gpu: GPU, *, knob: Knob) -> None:
    found = answer.found
    if knob is Knob.MICRO_BATCH:
        label = f"micro-batch at seq-len {config.seq_len}"
    else:
        label = f"sequence length at micro-batch {config.micro_batch_size}"
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
    if answer.with_chunked_loss is not None:
        click.echo(
            "  with --chunked-loss (the LM head and loss a chunk at a time): "
            f"{answer.with_chunked_loss}"
        )


COMMANDS: list[click.Command] = [estimate_command]
