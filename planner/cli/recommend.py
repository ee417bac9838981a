"""CLI command: ``ftplan recommend`` (flags -> RecommendRequest -> Plan -> table + reports).

Never imports torch: the estimator is pure Python and optuna is imported inside the search.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from datetime import date
from pathlib import Path
from typing import Any

import click

from catalog import InputError, printable, read_text_limited
from planner._types import (
    MAX_BUDGET_USD,
    MAX_EVALUATIONS,
    MAX_HOURS,
    MAX_TOKENS,
    Budget,
    Plan,
    QualityPolicy,
    Task,
    TokensSource,
)
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

#: Ranges of recommend's numbers: generous (a frontier-scale job), finite, and small enough that
#: every figure derived from them stays a plain float (no overflow, no 300-digit file names).
#: The budget's own (USD, tokens, epochs, hours, evaluations) are the Budget's.
MAX_USD_PER_HOUR = 1e6
MAX_HOST_RAM_GIB = 1e6
MAX_TRIALS = 100_000

EXIT_NO_PLAN = 1
#: Eval passes over a run when an eval set is given and --evaluations is not: often enough to
#: see a trend and catch overfitting, few enough to cost little (a judgement, stated in the plan).
DEFAULT_EVALUATIONS = 10


def _build_request(o: dict[str, Any]) -> Any:
    """Resolve flags against the catalog into a RecommendRequest (raises ValueError/CatalogError
    with close matches on bad input)."""
    import catalog
    from planner.engine.cost import SpotAssumptions
    from planner.engine.space import (
        DEFAULT_DATASET_TOKENS,
        DEFAULT_EPOCHS,
        DEFAULT_SEQ_LEN,
        RecommendRequest,
        SearchSpace,
    )
    from profiler import Method

    if o["tokens"] is not None and o["dataset"] is not None:
        raise InputError("give either --tokens or --dataset, not both")
    eval_tokens, evaluations = _eval_set(o)
    spec = catalog.get_model(o["model"])
    tokens, source, longest = DEFAULT_DATASET_TOKENS, TokensSource.ASSUMED, None
    if o["tokens"] is not None:
        tokens, source = o["tokens"], TokensSource.GIVEN
    stats = None
    if o["tokens"] is None and o["dataset"] is not None:
        stats = _count_with_progress(o["dataset"])
        tokens, source, longest = stats.tokens, TokensSource.COUNTED, stats.longest_sample_tokens
    seq_len = o["seq_len"] or DEFAULT_SEQ_LEN
    if o["seq_len"] is None and stats is not None and stats.p95_sample_tokens > seq_len:
        # ftplan's runner packs samples into seq_len blocks, so memory is sized for the block,
        # not the longest sample: blocks of the 95th-percentile length (rounded up to 256, within
        # the model's context) keep 95% of samples whole without sizing for one outlier.
        seq_len = min(spec.max_seq_len, math.ceil(stats.p95_sample_tokens / 256) * 256)
    budget = Budget(
        max_usd=o["budget"],
        dataset_tokens=tokens,
        epochs=o["epochs"] if o["epochs"] is not None else DEFAULT_EPOCHS,
        tokens_source=source,
        max_hours=o["max_hours"],
        task=Task(o["task"]),
        # The policy holds whatever is pinned: --method narrows the search to one method, whose
        # ranks, targets and precisions are still chosen under --quality.
        quality=QualityPolicy(o["quality"]),
        longest_sample_tokens=longest,
        p50_sample_tokens=None if stats is None else stats.p50_sample_tokens,
        p95_sample_tokens=None if stats is None else stats.p95_sample_tokens,
        eval_tokens=eval_tokens,
        evaluations=evaluations,
    )
    gpus = [catalog.get_gpu(g) for g in o["gpu"]]
    providers = [catalog.parse_provider(p) for p in o["provider"]] or None
    offers = _offers(providers, gpus, o)
    info = catalog.catalog_info(providers={o_.provider for o_ in offers})
    warnings = tuple(w for w in [catalog.catalog_age_warning(info, date.today())] if w)
    if seq_len > spec.max_seq_len:
        warnings += (
            f"--seq-len {seq_len} exceeds {spec.name}'s context of {spec.max_seq_len} tokens",
        )
    gpu_by_name = {g.name: g for g in catalog.list_gpus()}
    spot = SpotAssumptions(
        interruptions_per_hour=o["spot_interruptions_per_hour"],
        restart_minutes=o["spot_restart_minutes"],
    )
    config_path, config_digest = _config_identity(spec)
    return RecommendRequest(
        spec=spec,
        budget=budget,
        space=SearchSpace(
            methods=(Method(o["method"]),) if o["method"] else SearchSpace().methods,
            chunked_loss=(False, True) if o["chunked_loss"] else (False,),
        ),
        offers=offers,
        seq_len=seq_len,
        seq_len_given=o["seq_len"] is not None,
        gpus={o_.gpu: gpu_by_name[o_.gpu] for o_ in offers},
        spot=spot,
        spot_allowed=o["spot"],
        seed=o["seed"],
        trials=o["trials"],
        storage=o["storage"],
        catalog_as_of=f"{info.oldest_price_as_of}..{info.newest_price_as_of}",
        # A plan travels (reports are forwarded, plans launched elsewhere): name the catalog,
        # not this machine's absolute path.
        catalog_source=(
            f"refreshed catalog in the user cache ({Path(info.offers_path).name})"
            if info.refreshed
            else "ftplan's shipped catalog (catalog/data/offers.csv)"
        ),
        warnings=warnings,
        price_references=catalog.list_offers(),
        ftplan_version=_version(),
        model_config_path=config_path,
        model_config_sha256=config_digest,
    )


def _eval_set(o: dict[str, Any]) -> tuple[int, int]:
    """(tokens of one eval pass, eval passes over the run) from --eval-dataset / --eval-tokens
    and --evaluations; (0, 0) without an eval set.

    Raises:
        InputError: Both eval sizes given, or --evaluations without an eval set.
    """
    if o["eval_tokens"] is not None and o["eval_dataset"] is not None:
        raise InputError("give either --eval-tokens or --eval-dataset, not both")
    tokens = o["eval_tokens"]
    if o["eval_dataset"] is not None:
        tokens = _count_with_progress(
            o["eval_dataset"], what="eval dataset", size_flag="--eval-tokens"
        ).tokens
    if tokens is None:
        if o["evaluations"] is not None:
            raise InputError(
                "--evaluations needs an eval set: add --eval-dataset FILE.jsonl or --eval-tokens N"
            )
        return 0, 0
    return tokens, o["evaluations"] if o["evaluations"] is not None else DEFAULT_EVALUATIONS


def _count_with_progress(path: str, *, what: str = "dataset", size_flag: str = "--tokens") -> Any:
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


def _offers(providers: list[Any] | None, gpus: list[Any], o: dict[str, Any]) -> tuple[Any, ...]:
    import catalog
    from catalog import Provider

    offers: list[Any] = []
    cloud = None if providers is None else [p for p in providers if p is not Provider.LOCAL]
    if cloud is None or cloud:
        listed = catalog.list_offers(providers=cloud, gpus=gpus or None, include_spot=o["spot"])
        offers += catalog.cheapest_per_instance(listed)
        if o["gpu_count"] is not None:
            offers = [x for x in offers if x.gpu_count == o["gpu_count"]]
        if o["service"]:
            offers = _of_services(offers, o["service"])
    if providers is not None and Provider.LOCAL in providers:
        if len(gpus) != 1:
            raise InputError(
                "--provider local needs exactly one --gpu NAME (your card) and --gpu-count N"
            )
        local = catalog.local_offer(
            gpu=gpus[0], gpu_count=o["gpu_count"] or 1, usd_per_hour=o["usd_per_hour"] or 0.0
        )
        ram, origin = o.get("host_ram_gib"), "given with --host-ram-gib"
        if ram is None:
            ram = machine_ram_gib()
            origin = "read from this machine (--host-ram-gib names another's)"
        if ram is not None:
            source = f"{local.source}; host RAM {ram:,.0f} GiB {origin}"
            local = dataclasses.replace(local, memory_gib=ram, source=source)
        offers.append(local)
    elif o["usd_per_hour"] is not None or o.get("host_ram_gib") is not None:
        raise InputError(
            "--usd-per-hour and --host-ram-gib describe your own machine: use them with "
            "--provider local"
        )
    return tuple(offers)


def machine_ram_gib() -> float | None:
    """This machine's physical memory, GiB (``os.sysconf``: pages × page size, the MemTotal of
    /proc/meminfo on Linux); None where the platform does not say. ``--provider local`` plans
    are checked against it unless ``--host-ram-gib`` names another machine's."""
    import os

    from catalog import GIB

    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size / GIB if pages > 0 and size > 0 else None


def _of_services(offers: list[Any], services: tuple[str, ...]) -> list[Any]:
    """Offers of the named services (e.g. ``sagemaker`` to price what SageMaker would run)."""
    import difflib

    known = sorted({x.service for x in offers})
    wanted = {s.strip().lower() for s in services}
    for name in sorted(wanted - set(known)):
        close = difflib.get_close_matches(name, known, n=2, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise InputError(
            f"unknown service {name!r} for these offers.{hint} Known: {', '.join(known)}."
        )
    return [x for x in offers if x.service in wanted]


def _config_identity(spec: Any) -> tuple[str | None, str | None]:
    """For a model read from a config.json: its resolved path and SHA-256 (for the plan)."""
    from catalog import config_sha256

    source = Path(spec.source)
    if source.suffix != ".json" or not source.is_file():
        return None, None  # a catalog model: its name is its identity
    return str(source.resolve()), config_sha256(source)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ftplan")
    except PackageNotFoundError:
        return "0+unknown"


def _inputs_hash(o: dict[str, Any]) -> str:
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
    return hashlib.sha256(repr([(k, o[k]) for k in keys]).encode()).hexdigest()[:8]


def _write(plan: Plan, o: dict[str, Any]) -> Path:
    """Reports (.md, .html and the plan .json) named by model, budget and an input hash;
    returns the plan's path."""
    from planner.report.write import report_slug, write_reports

    slug = report_slug(o["model"], o["budget"], _inputs_hash(o))
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


def _plan(request: Any) -> Plan:
    from planner.engine.evaluate import Measurer
    from planner.engine.plan import recommend

    return recommend(request, Measurer.calibrated())


def render(plan: Plan, *, fmt: str, quiet: bool, report: Path) -> None:
    """Print the plan: one line (--quiet), JSON, markdown or rich tables."""
    from planner.explain import describe

    if fmt == "json":
        from planner.plan_io import plan_to_json

        click.echo(plan_to_json(plan), nl=False)
    elif quiet:
        click.echo(
            describe(plan.chosen)
            if plan.chosen
            else "no feasible plan: " + "; ".join(plan.suggestions[:1])
        )
    elif fmt == "md":
        click.echo(
            read_text_limited(report.with_suffix(".md"), what="report")
            if report.with_suffix(".md").is_file()
            else f"report: {report}"
        )
    else:
        _render_table(plan, report)
    if plan.chosen is None:
        click.echo("error: no feasible plan. To fix: " + "; or ".join(plan.suggestions), err=True)


def _render_table(plan: Plan, report: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from planner.engine.evaluate import with_nodes_label
    from planner.explain import describe

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped or captured: no terminal width to respect
        console = Console(highlight=False, soft_wrap=True, width=max(console.width, 160))
    rows = plan.ranked or plan.near_misses
    title = (
        f"ftplan: {plan.model}, budget ${plan.budget.max_usd:,.2f}"
        if plan.ranked
        else f"ftplan: no feasible plan for {plan.model}; nearest misses"
    )
    table = Table(title=escape(title), title_justify="left", pad_edge=False)
    for name in (
        "#",
        "method",
        "batch",
        "GPUs",
        "offer",
        "hours",
        "USD",
        "GiB/GPU",
        "risk",
        "figures",
    ):
        numeric = name in ("hours", "USD", "GiB/GPU")
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for i, c in enumerate(rows, start=1):
        table.add_row(*(escape(cell) for cell in _row(i, c, with_nodes_label(c))))
    console.print(table)
    if plan.chosen is not None:
        console.print(f"[bold]Chosen:[/bold] {escape(describe(plan.chosen))}")
        if plan.chosen.suggested_learning_rate:
            console.print(
                f"  learning rate ~{plan.chosen.suggested_learning_rate:.0e}, "
                f"gradient accumulation {plan.chosen.grad_accum_steps}",
                markup=False,
            )
    console.print("[bold]Why:[/bold]")
    for verdict in plan.verdicts:
        console.print(f"  - {verdict.reason}", markup=False)
    if plan.budget_frontier:
        console.print(f"[bold]What ${plan.budget.max_usd:,.0f} buys:[/bold]")
        for e in plan.budget_frontier:
            rate = (
                ""
                if e.usd_per_million_tokens is None
                else (f" at ${e.usd_per_million_tokens:,.3f}/M tokens on {e.offer}")
            )
            console.print(
                f"  - {e.method.value}: {e.max_tokens:,} tokens "
                f"({e.max_epochs:,.1f} epochs){rate}",
                markup=False,
            )
    for option in plan.stronger_options:
        console.print(f"  - {option}", markup=False)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    console.print("[bold]Assumptions:[/bold]")
    for assumption in plan.assumptions:
        console.print(f"  - {assumption}", markup=False)
    console.print(
        f"Search: {plan.search.sampler}, {plan.search.trials} trials, "
        f"{plan.search.evaluated} estimates; prices {plan.search.catalog_as_of}",
        markup=False,
    )
    console.print(f"Report: {printable(report.with_suffix('.md'))} (.html, .json)", markup=False)


def _row(rank: int, c: Any, gpus: str) -> tuple[str, ...]:
    """One table row: compact cells so the table reads in a 100-column terminal."""
    cfg, m = c.config, c.measurement
    if cfg.method.value == "full":
        method = f"full {cfg.precision.value}"
    else:
        method = f"{cfg.method.value} r{cfg.lora_rank} {cfg.lora_targets}"
        if cfg.precision.value != "bf16-mixed":
            method += f" {cfg.precision.value}"
    if cfg.optimizer.value != "adamw":
        method += f" {cfg.optimizer.value}"
    batch = (
        f"{cfg.micro_batch_size}×{c.grad_accum_steps}"
        + (" ckpt" if cfg.grad_checkpointing else "")
        + (" chunked-ce" if cfg.chunked_loss else "")
    )
    offer = f"{c.offer.provider.value} {c.offer.instance_type}" + (" spot" if c.offer.spot else "")
    peak = m.peak_reserved_gib or m.peak_allocated_gib or 0.0
    return (
        str(rank),
        method,
        batch,
        gpus,
        offer,
        f"{c.cost.hours:,.1f}",
        f"${c.cost.usd:,.2f}",
        f"{peak:.1f}/{c.usable_memory_gib:.0f}" + (" tight" if c.fit.value == "tight" else ""),
        c.risk_level.value,
        m.source.value,
    )


COMMANDS: list[click.Command] = [recommend_command]
