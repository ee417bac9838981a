"""CLI command: ``ftplan recommend`` (flags -> RecommendRequest -> Plan -> table + reports).

Never imports torch: the estimator is pure Python and optuna is imported inside the search.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from planner._types import (
    DEFAULT_EVALUATIONS,
    MAX_BUDGET_USD,
    MAX_EVALUATIONS,
    MAX_HOURS,
    MAX_TOKENS,
    Plan,
    QualityPolicy,
    Task,
)
from planner.cli._plan_view import render
from planner.cli.params import (
    MAX_GPUS_PER_NODE,
    MAX_SEED,
    MAX_SEQ_LEN,
    SafePath,
    finite_float,
    int_range,
)
from planner.cli.storage import check_storage_url
from profiler._types import MAX_EPOCHS

if TYPE_CHECKING:
    from planner.engine.dataset import DatasetStats
    from planner.engine.space import RecommendRequest

#: Ranges of recommend's numbers: generous (a frontier-scale job), finite, and small enough that
#: every figure derived from them stays a plain float (no overflow, no 300-digit file names).
#: The budget's own (USD, tokens, epochs, hours, evaluations) are the Budget's.
MAX_USD_PER_HOUR = 1e6
MAX_HOST_RAM_GIB = 1e6
MAX_TRIALS = 100_000

EXIT_NO_PLAN = 1
#: Flags that say where and how to show the plan, not what to plan.
_OUTPUT_FLAGS = ("out", "fmt", "quiet")


def _build_request(o: dict[str, Any]) -> RecommendRequest:
    """Resolve the flags against the catalog (:func:`planner.engine.request.build_request`),
    counting datasets with a progress bar."""
    from planner.engine.request import RecommendOptions, build_request

    options = RecommendOptions(**{k: v for k, v in o.items() if k not in _OUTPUT_FLAGS})
    return build_request(options, count=_count_with_progress)


def _count_with_progress(
    path: str | Path, *, what: str = "dataset", size_flag: str = "--tokens"
) -> DatasetStats:
    """count_dataset with a progress bar on stderr for files of 64 MiB or more; ``what`` and
    ``size_flag`` name the file and its size flag in messages."""
    from planner.engine.dataset import count_dataset

    size = Path(path).stat().st_size if Path(path).is_file() else 0
    if size < 64 << 20:
        return count_dataset(path, what=what, size_flag=size_flag)
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    columns = ("counting tokens", BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("count", total=size)
        return count_dataset(
            path,
            on_progress=lambda done: bar.update(task, completed=done),
            what=what,
            size_flag=size_flag,
        )


def _inputs_hash(o: dict[str, Any], model_identity: str) -> str:
    """Eight hex digits naming the inputs: the model by what it is (the catalog name an alias or
    Hugging Face id resolves to, a config file's SHA-256), not by how it was typed."""
    # --method joined the flags later: leaving it out when unset keeps earlier slugs stable.
    keys = sorted(
        k
        for k in o
        if k not in ("out", "format", "quiet")
        and (
            k not in ("method", "host_ram_gib", "eval_dataset", "eval_tokens", "evaluations")
            or o[k] is not None
            and o[k] != ""
        )
        and not (k == "chunked_loss" and o[k])
    )
    named = {**o, "model": model_identity}
    return hashlib.sha256(repr([(k, named[k]) for k in keys]).encode()).hexdigest()[:8]


def _write(plan: Plan, o: dict[str, Any]) -> Path:
    """Reports (.md, .html and the plan .json) named by model, budget and an input hash;
    returns the plan's path. The same model typed two ways (``llama2-7b``,
    ``meta-llama/Llama-2-7b-hf``, two paths to one config.json) names the same reports."""
    from planner.report.write import report_slug, write_reports

    identity = plan.model_config_sha256 or plan.model
    slug = report_slug(plan.model, o["budget"], _inputs_hash(o, identity))
    return write_reports(plan, o["out"], slug=slug).json


@click.command("recommend")
@click.option("--model", required=True, help="Catalog name, HF id or path to a config.json.")
@click.option(
    "--budget",
    type=finite_float(0, MAX_BUDGET_USD, min_open=True),
    required=True,
    help="Most you will spend, USD.",
)
@click.option("--tokens", type=int_range(1, MAX_TOKENS), help="Dataset tokens per epoch.")
@click.option(
    "--dataset",
    type=SafePath(dir_okay=False, exists=True, regular_file=True, path_type=Path),
    help="JSONL dataset; tokens counted as characters ÷ 4 (no tokenizer).",
)
@click.option(
    "--eval-dataset",
    type=SafePath(dir_okay=False, exists=True, regular_file=True, path_type=Path),
    help="Held-out JSONL set the run evaluates (its passes are priced; tokens = characters ÷ 4).",
)
@click.option(
    "--eval-tokens", type=int_range(1, MAX_TOKENS), help="Tokens of the eval set (no file)."
)
@click.option(
    "--evaluations",
    type=int_range(1, MAX_EVALUATIONS),
    help=f"Eval passes over the run, the last after the final step (default {DEFAULT_EVALUATIONS}"
    " with an eval set).",
)
@click.option("--epochs", type=finite_float(0, MAX_EPOCHS, min_open=True), help="Default 3.")
@click.option(
    "--seq-len", type=int_range(1, MAX_SEQ_LEN), help="Tokens per sample (default 2048)."
)
@click.option("--gpu", multiple=True, help="Limit to these GPUs (name or alias; repeatable).")
@click.option("--gpu-count", type=int_range(1, MAX_GPUS_PER_NODE), help="GPUs per machine.")
@click.option(
    "--service",
    multiple=True,
    help="Only offers of this service, e.g. sagemaker (price what 'ftplan launch --target "
    "sagemaker' runs) or ec2 (repeatable).",
)
@click.option(
    "--provider",
    multiple=True,
    help="aws, gcp, azure, lambda, runpod or local (repeatable; default all clouds).",
)
@click.option(
    "--usd-per-hour",
    type=finite_float(0, MAX_USD_PER_HOUR),
    help="What an hour of your own machine costs (with --provider local).",
)
@click.option(
    "--host-ram-gib",
    type=finite_float(0, MAX_HOST_RAM_GIB, min_open=True),
    help="Your own machine's RAM, GiB (with --provider local; default: this machine's): plans "
    "that offload or load on rank 0 are checked against it.",
)
@click.option("--max-hours", type=finite_float(0, MAX_HOURS, min_open=True), help="Deadline, h.")
@click.option("--spot/--no-spot", default=False, help="Consider spot offers (default: no).")
@click.option(
    "--spot-interruptions-per-hour",
    type=finite_float(0, 60),
    default=0.1,
    show_default=True,
    help="Assumed spot reclaims per instance-hour.",
)
@click.option(
    "--spot-restart-minutes",
    type=finite_float(0, 7 * 24 * 60),
    default=10.0,
    show_default=True,
    help="Assumed minutes from a reclaim to training again.",
)
@click.option(
    "--task", type=click.Choice([t.value for t in Task]), default="sft", show_default=True
)
@click.option(
    "--quality",
    type=click.Choice([q.value for q in QualityPolicy]),
    default="balanced",
    show_default=True,
    help="Quality risk you accept.",
)
@click.option(
    "--method",
    type=click.Choice(["full", "lora", "qlora"]),
    default=None,
    help="Pin the method (default: search all three); its ranks, targets and precision still "
    "follow --quality.",
)
@click.option(
    "--chunked-loss/--no-chunked-loss",
    default=True,
    show_default=True,
    help="Let plans on one GPU compute the LM head and cross-entropy a chunk at a time "
    "(recomputed in backward) when that makes a larger micro-batch fit.",
)
@click.option(
    "--trials",
    type=int_range(1, MAX_TRIALS),
    help="optuna trials (default: every structural cell, exact).",
)
@click.option("--seed", type=int_range(0, MAX_SEED), default=0, show_default=True)
@click.option(
    "--storage",
    callback=lambda _ctx, _param, value: None if value is None else check_storage_url(value),
    help="optuna storage URL to store/resume the study, e.g. sqlite:///study.db",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "md"]),
    default="table",
    show_default=True,
)
@click.option("--quiet", is_flag=True, help="Print only the chosen plan's line.")
def recommend_command(**o: Any) -> None:
    """Rank fine-tuning plans (method, rank, GPU offer, ...) that fit a budget.

    \b
    Example: ftplan recommend --model llama2-7b --budget 200
    Exit codes: 0 plan found, 1 no feasible plan (report still written), 2 bad input.
    """
    request = _build_request(o)
    plan = _plan(request)
    path = _write(plan, o)
    render(plan, fmt=o["fmt"], quiet=o["quiet"], report=path)
    if plan.chosen is None:
        sys.exit(EXIT_NO_PLAN)


def _plan(request: RecommendRequest) -> Plan:
    from planner.engine.measurer import Measurer
    from planner.engine.plan import recommend

    return recommend(request, Measurer.calibrated())


COMMANDS: list[click.Command] = [recommend_command]
