"""CLI commands: ``launch`` (a plan's chosen candidate, locally or on SageMaker) and ``status``.

The plan's candidate becomes a :class:`runners.LaunchSpec` here, because runners may not import
the planner. Bad input (plan file, no chosen candidate, no role, unknown region, missing data)
is a one-line error with exit code 2 and nothing started or sent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from catalog import (
    InputError,
    ModelSpec,
    config_sha256,
    expand_user,
    get_gpu,
    get_model,
    model_from_hf_config,
    printable,
)
from planner._types import Candidate, Plan
from planner.cli.errors import UserInputError, require_extra
from planner.cli.params import (
    check_checkpoint_every,
    check_env_var,
    check_region,
    check_run_id,
)
from planner.cli.runs import runs_dir_option
from profiler import chunked_loss_problem
from profiler.recipes import DEFAULT_LEARNING_RATE
from runners import (
    LaunchSpec,
    LocalRunner,
    RunnerError,
    RunState,
    RunStatus,
    SageMakerRunner,
    SkyPilotRunner,
    Target,
    default_target,
    evaluations_in_run,
    launch_problem,
    parse_checkpoint_every,
)
from runners._length import RunLength, dataset_tokens, difference_note, run_length
from runners._types import refuse_credentials_in_uri
from runners.local import DEFAULT_RUNS_DIR, run_dir_for

DEFAULT_CHECKPOINT_MINUTES = 30.0


def plan_candidate(plan: Plan, *, rank: int | None = None) -> Candidate:
    """The plan's chosen candidate, or its ``rank``-th ranked one (1-based).

    Raises:
        ValueError: If nothing was chosen or the rank is out of range.
    """
    if rank is not None:
        if not 1 <= rank <= len(plan.ranked):
            raise InputError(
                f"--candidate {rank} is out of range: the plan ranks "
                f"{len(plan.ranked)} candidates (1..{len(plan.ranked)})"
            )
        return plan.ranked[rank - 1]
    if plan.chosen is None:
        raise InputError(
            "the plan has no chosen candidate (nothing was feasible within the budget). To fix: "
            "re-run 'ftplan recommend' with a larger --budget, or pick one with --candidate N"
        )
    return plan.chosen


def plan_model(plan: Plan) -> ModelSpec:
    """The plan's model: the config.json it was made from (by resolved path, refused when its
    SHA-256 changed since), else its config folder named by the hub id, else the catalog entry.

    Raises:
        CatalogError / InputError: If none resolves, or the config.json changed since the plan.
    """
    if plan.model_config_path is not None:
        path = Path(plan.model_config_path)
        if not path.is_file():
            raise InputError(
                f"the plan was made from {str(path)!r}, which is gone. To fix: restore it, or "
                "re-plan with 'ftplan recommend --model PATH/TO/config.json'"
            )
        if plan.model_config_sha256 and config_sha256(path) != plan.model_config_sha256:
            raise InputError(
                f"{str(path)!r} changed since the plan was made (its SHA-256 differs), so the "
                "plan's memory and cost figures are for another model. To fix: re-plan with "
                "'ftplan recommend'"
            )
        return model_from_hf_config(path)
    folder = expand_user(plan.model_hf_id)
    if (folder / "config.json").is_file():
        return model_from_hf_config(folder)
    return get_model(plan.model)


def launch_spec_from_plan(
    plan: Plan,
    candidate: Candidate,
    *,
    device: str = "cuda",
    max_steps: int | None = None,
    weights: str | None = None,
    random_init: bool = False,
    grad_accum_steps: int | None = None,
    learning_rate: float | None = None,
    checkpoint_every: str | None = None,
) -> LaunchSpec:
    """Turn a plan's candidate into the runners' LaunchSpec.

    Weights come from ``weights`` or else the catalog model's hub id; gradient accumulation
    and learning rate from the arguments when given, else from the candidate; the checkpoint
    interval from ``checkpoint_every`` (``200steps``, ``15m``), else the plan's spot interval,
    else 30 minutes.

    The expectation carried along (peak allocated GiB per GPU, tokens/s over all GPUs) is the
    candidate's measurement, which the run's summary compares with what it measures.

    Raises:
        CatalogError: If the plan's model is not in the catalog.
        InputError: If ``checkpoint_every`` is not an interval, or the candidate does not hold
            together (a plan edited by hand: GPUs that do not match its offer, no hours).
    """
    every_steps, every_minutes = (
        parse_checkpoint_every(checkpoint_every)
        if checkpoint_every
        else (None, candidate.cost.checkpoint_interval_minutes or DEFAULT_CHECKPOINT_MINUTES)
    )
    measurement = candidate.measurement
    method = candidate.config.method
    model = plan_model(plan)
    try:
        return LaunchSpec(
            model=model,
            config=candidate.config,
            checkpoint=weights,
            random_init=random_init,
            offer=candidate.offer,
            nodes=candidate.nodes,
            device=device,
            grad_accum_steps=grad_accum_steps or candidate.grad_accum_steps,
            learning_rate=learning_rate
            or candidate.suggested_learning_rate
            or DEFAULT_LEARNING_RATE[method],
            epochs=plan.budget.epochs,
            max_steps=max_steps,
            checkpoint_every_steps=every_steps,
            checkpoint_every_minutes=every_minutes,
            expected_peak_allocated_gib=measurement.peak_allocated_gib,
            expected_tokens_per_s=measurement.tokens_per_s,
            expected_source=measurement.source.value,
            max_hours=candidate.cost.hours,
        )
    except ValueError as exc:
        raise InputError(
            f"the plan's candidate cannot be launched as it is written: {exc}. To fix: re-plan "
            "with 'ftplan recommend' rather than editing the plan"
        ) from None


def eval_schedule(
    plan: Plan, *, steps: int, eval_data: str | None, eval_every_steps: int | None
) -> tuple[int | None, int, list[str]]:
    """``(eval_every_steps, evaluations, notes)`` of a run of ``steps`` optimizer steps: the
    plan's eval passes spread evenly over the steps (the last after the final step) unless
    ``--eval-every-steps`` says otherwise, and a note where the run evaluates other than the plan
    priced.

    Raises:
        UserInputError: ``--eval-every-steps`` without ``--eval-data``.
    """
    planned = plan.budget.evaluations
    if eval_data is None:
        if eval_every_steps is not None:
            raise UserInputError("--eval-every-steps needs --eval-data FILE.jsonl")
        notes = (
            [
                f"note: the plan priced {planned} eval passes; without --eval-data this run "
                "does not evaluate"
            ]
            if planned
            else []
        )
        return None, 0, notes
    if eval_every_steps is None and planned:
        eval_every_steps = max(1, math.ceil(steps / planned))
    count = evaluations_in_run(steps, eval_every_steps)
    notes = [
        f"eval: {count} pass{'' if count == 1 else 'es'} over --eval-data, "
        + (f"every {eval_every_steps} steps and " if eval_every_steps is not None else "")
        + "after the last step"
    ]
    if not planned:
        notes.append(
            "note: the plan priced no eval passes, so its hours and cost leave them out. To fix:"
            " re-plan with --eval-dataset FILE.jsonl"
        )
    return eval_every_steps, count, notes


def with_real_length(
    plan: Plan,
    candidate: Candidate,
    spec: LaunchSpec,
    *,
    data: str,
    tokens: int | None,
    eval_data: str | None = None,
    eval_every_steps: int | None = None,
) -> tuple[LaunchSpec, list[str]]:
    """The spec with ``max_hours`` re-derived from the data the run really gets (a local file
    counted with its tokenizer, else ``--tokens``, else the plan's figure) and with its eval
    schedule (:func:`eval_schedule`), and the lines to print once the launch is accepted: which
    figure, and the difference from the plan when it is over 10%.

    Raises:
        DataFormatError: On a malformed line of a local data file.
        UserInputError: ``--eval-every-steps`` without ``--eval-data``.
    """
    cost = candidate.cost
    rate = candidate.measurement.tokens_per_s
    if not rate:
        every, _count, eval_notes = eval_schedule(
            plan, steps=0, eval_data=eval_data, eval_every_steps=eval_every_steps
        )
        return dataclasses.replace(spec, eval_every_steps=every), eval_notes
    tokens_per_step = spec.config.micro_batch_size * spec.config.seq_len * spec.grad_accum_steps
    overhead = cost.spot_overhead_hours / cost.train_hours if cost.train_hours else 0.0

    def length(dataset: int, source: str, eval_hours: float = cost.eval_hours) -> RunLength:
        return run_length(
            dataset_tokens=dataset,
            source=source,
            epochs=spec.epochs,
            tokens_per_step=tokens_per_step * spec.config.gpu_count,
            tokens_per_s=rate,
            max_steps=spec.max_steps,
            startup_hours=cost.startup_hours,
            overhead_fraction=overhead,
            usd_per_hour=cost.usd_per_hour,
            eval_hours=eval_hours,
        )

    planned = length(plan.budget.dataset_tokens, "the plan's assumption")
    found = dataset_tokens(spec, data=data, tokens=tokens)
    actual = planned if found is None else length(*found)
    every, count, eval_notes = eval_schedule(
        plan, steps=actual.steps, eval_data=eval_data, eval_every_steps=eval_every_steps
    )
    # The plan's eval hours per pass, for the passes this run makes over the eval set it gets
    # (a local file counted with the run's tokenizer; none priced: none).
    scale = 1.0
    found_eval = None if eval_data is None else dataset_tokens(spec, data=eval_data, tokens=None)
    if found_eval is not None and plan.budget.eval_tokens:
        scale = found_eval[0] / plan.budget.eval_tokens
        eval_notes.append(
            f"eval set: {found_eval[0]:,} tokens ({found_eval[1]}), the plan assumed "
            f"{plan.budget.eval_tokens:,}"
        )
    if count != plan.budget.evaluations or scale != 1.0:
        per_pass = cost.eval_hours / plan.budget.evaluations if plan.budget.evaluations else 0.0
        actual = length(actual.dataset_tokens, actual.source, eval_hours=per_pass * count * scale)
    notes = [
        f"run length: {actual.dataset_tokens:,} tokens per epoch ({actual.source}), "
        f"{actual.steps:,} steps, {actual.hours:.2f} h, {actual.usd:.2f} USD"
    ]
    note = difference_note(planned, actual)
    if note:
        notes.append(f"note: {note}")
    notes += eval_notes
    return (
        dataclasses.replace(spec, max_hours=max(actual.hours, 1 / 60), eval_every_steps=every),
        notes,
    )


def _load_problem(spec: LaunchSpec) -> str | None:
    """Why the runner cannot load the plan on its GPUs (:func:`planner.explain.load_problem`)."""
    from planner.explain import load_problem

    if spec.offer is None:
        return None
    return load_problem(spec.model, spec.config, get_gpu(spec.offer.gpu))


def _chunked_loss_problem(spec: LaunchSpec) -> str | None:
    """Why the recipe cannot run the plan's chunked cross-entropy (a plan edited by hand: the
    search offers it on one unsharded GPU, for model types it reproduces), or None."""
    config = spec.config
    if not config.chunked_loss:
        return None
    problem = chunked_loss_problem(
        model_type=spec.model.model_type, gpu_count=config.gpu_count, sharding=config.sharding
    )
    if problem is None:
        return None
    return f"{problem}. To fix: re-plan with 'ftplan recommend', or set chunked_loss to false"


def _user_error(exc: Exception) -> click.ClickException:
    return UserInputError(str(exc))


@click.command("launch")
@click.argument("plan_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--target",
    type=click.Choice([t.value for t in Target]),
    help="local GPUs, a SageMaker training job, or SkyPilot (any other cloud). Default: by "
    "the plan's offer (sagemaker offers: sagemaker; local: local; others: skypilot).",
)
@click.option(
    "--data",
    required=True,
    help="Training JSONL (local file; for SageMaker an s3:// file or prefix; for SkyPilot a "
    "local file or an s3:// / gs:// URI).",
)
@click.option(
    "--eval-data",
    help="Held-out JSONL the run evaluates (same forms as --data): the plan's eval passes, "
    "spread over the run, the last after the final step.",
)
@click.option(
    "--eval-every-steps",
    type=click.IntRange(min=1, max=10**9),
    help="Evaluate every N optimizer steps (default: the plan's passes spread evenly; without "
    "them, after the last step only).",
)
@click.option("--dry-run", is_flag=True, help="Print the exact command / request; start nothing.")
@click.option("--role", help="SageMaker execution role ARN (default: $FTPLAN_SAGEMAKER_ROLE).")
@click.option("--region", callback=check_region, help="AWS region (default: the offer's region).")
@click.option(
    "--output-dir",
    help="Local runs folder (default: runs/); for SageMaker an s3:// "
    "prefix for source, output and checkpoints; for SkyPilot the bucket (s3://, gs://) "
    "mounted for output and checkpoints (needed for spot).",
)
@click.option(
    "--max-steps", type=click.IntRange(min=1, max=10**9), help="Stop after N optimizer steps."
)
@click.option(
    "--candidate",
    "rank",
    type=click.IntRange(min=1, max=100_000),
    help="Launch the N-th ranked candidate instead of the chosen one.",
)
@click.option(
    "--weights", help="Hub id or local folder of the weights (default: the plan's model id)."
)
@click.option(
    "--random-init",
    is_flag=True,
    help="Random weights from the model's config (memory/speed check; no download).",
)
@click.option(
    "--device",
    type=click.Choice(["cuda", "cpu"]),
    default="cuda",
    show_default=True,
    help="cpu: a local smoke run only.",
)
@click.option(
    "--grad-accum",
    type=click.IntRange(min=1, max=65_536),
    help="Micro-batches per optimizer step (default: the plan's).",
)
@click.option(
    "--image-uri",
    help="SageMaker training image (default: the Hugging Face PyTorch "
    "training image of the region).",
)
@click.option(
    "--resume",
    "resume_run",
    metavar="RUN_ID",
    callback=check_run_id,
    help="Local: continue that run from its newest checkpoint.",
)
@click.option(
    "--tokens",
    type=click.IntRange(min=1, max=10**15),
    help="Tokens per epoch of s3:// data (default: the plan's figure); a local --data file "
    "is counted with the run's tokenizer.",
)
@click.option(
    "--checkpoint-every",
    metavar="N{steps|m}",
    callback=check_checkpoint_every,
    help="Checkpoint every N optimizer steps (200steps) or minutes (15m); default: the plan's "
    "spot interval, else 30m. Never more often than writing one takes.",
)
@click.option(
    "--hf-token-env",
    metavar="VAR",
    callback=check_env_var,
    help="SageMaker, SkyPilot: pass the token in $VAR to the job as HF_TOKEN (default: "
    "$HF_TOKEN when set), for gated models; never printed (SageMaker: masked; SkyPilot: a "
    "secret).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Follow the run until it ends; exit 0 when it succeeded, 1 when it failed or stopped.",
)
def launch_command(
    plan_file: Path,
    target: str | None,
    data: str,
    eval_data: str | None,
    eval_every_steps: int | None,
    dry_run: bool,
    role: str | None,
    region: str | None,
    output_dir: str | None,
    max_steps: int | None,
    rank: int | None,
    weights: str | None,
    random_init: bool,
    device: str,
    grad_accum: int | None,
    image_uri: str | None,
    resume_run: str | None,
    tokens: int | None,
    checkpoint_every: str | None,
    hf_token_env: str | None,
    wait: bool,
) -> None:
    """Launch the plan's chosen candidate: a real fine-tune whose measured peak memory and
    tokens/s are compared with the plan's prediction (output/summary.json).

    \b
    Examples:
      ftplan launch reports/llama2-7b.json --target local --data train.jsonl --dry-run
      ftplan launch reports/llama2-7b.json --target sagemaker --data s3://b/train/ --role ARN
      ftplan launch reports/llama2-7b.json --target skypilot --data train.jsonl --dry-run
      ftplan launch reports/llama2-7b.json --data train.jsonl --eval-data eval.jsonl --dry-run
    """
    from planner.plan_io import read_plan

    if weights is not None:
        refuse_credentials_in_uri(weights, option="--weights")
    plan = read_plan(plan_file)
    candidate = plan_candidate(plan, rank=rank)
    spec = launch_spec_from_plan(
        plan,
        candidate,
        device=device,
        max_steps=max_steps,
        weights=weights,
        random_init=random_init,
        grad_accum_steps=grad_accum,
        checkpoint_every=checkpoint_every,
    )
    spec, notes = with_real_length(
        plan,
        candidate,
        spec,
        data=data,
        tokens=tokens,
        eval_data=eval_data,
        eval_every_steps=eval_every_steps,
    )
    chosen = Target(target) if target else default_target(spec.offer)
    problem = _chunked_loss_problem(spec)
    if problem is not None:
        raise UserInputError(problem)
    problem = _load_problem(spec)
    if problem is not None:
        if not dry_run:
            raise UserInputError(
                f"{problem}. To fix: re-plan with larger GPUs (e.g. --gpu h100 --gpu h200) or "
                "without --gpu/--gpu-count"
            )
        notes.append(f"warning: {problem}")
    try:
        if chosen is Target.SKYPILOT:
            _launch_skypilot(
                spec,
                data=data,
                eval_data=eval_data,
                dry_run=dry_run,
                bucket=output_dir,
                region=region,
                hf_token_env=hf_token_env,
                notes=notes,
            )
        elif chosen is Target.LOCAL:
            _launch_local(
                spec,
                data=data,
                eval_data=eval_data,
                dry_run=dry_run,
                runs_dir=output_dir,
                wait=wait,
                resume_run=resume_run,
                notes=notes,
            )
        else:
            _launch_sagemaker(
                spec,
                data=data,
                eval_data=eval_data,
                dry_run=dry_run,
                role=role,
                region=region,
                prefix=output_dir,
                image=image_uri,
                hf_token_env=hf_token_env,
                wait=wait,
                resume_job=resume_run,
                notes=notes,
            )
    except RunnerError as exc:
        raise _user_error(exc) from None


def _launch_local(
    spec: LaunchSpec,
    *,
    data: str,
    eval_data: str | None,
    dry_run: bool,
    runs_dir: str | None,
    wait: bool,
    resume_run: str | None,
    notes: list[str],
) -> None:
    if not dry_run:
        require_extra("train", "ftplan launch --target local")
    problem = None if dry_run else launch_problem(spec.config)
    if problem is not None:
        raise UserInputError(problem)
    runner = LocalRunner(runs_dir=runs_dir or DEFAULT_RUNS_DIR, echo=sys.stdout)
    result = runner.launch(
        spec, data=data, eval_data=eval_data, dry_run=dry_run, resume_run_id=resume_run
    )
    _say(notes)
    if dry_run:
        return
    click.echo(
        f"status: ftplan status {result.run_id} --target local"
        + (f" --runs-dir {runs_dir}" if runs_dir else "")
    )
    if wait:
        _finish(runner.wait(result.run_id))


def _say(notes: list[str]) -> None:
    for note in notes:
        click.echo(note, err=True)


def _finish(status: RunStatus) -> None:
    """Print the final status; exit 1 unless the run succeeded (``launch --wait``)."""
    _print_status(status, fmt="table")
    if status.state is not RunState.SUCCEEDED:
        click.echo(f"error: run {status.run_id} {status.state.value}: {status.detail}", err=True)
        raise click.exceptions.Exit(1)


def _launch_skypilot(
    spec: LaunchSpec,
    *,
    data: str,
    eval_data: str | None,
    dry_run: bool,
    bucket: str | None,
    region: str | None,
    hf_token_env: str | None,
    notes: list[str],
) -> None:
    runner = SkyPilotRunner(
        output_uri=bucket, region=region, hf_token_env=hf_token_env, echo=sys.stdout
    )
    result = runner.launch(spec, data=data, eval_data=eval_data, dry_run=dry_run)
    _say(notes)
    if not dry_run:
        click.echo(f"status: ftplan status {result.run_id} --target skypilot")


def _launch_sagemaker(
    spec: LaunchSpec,
    *,
    data: str,
    eval_data: str | None,
    dry_run: bool,
    role: str | None,
    region: str | None,
    prefix: str | None,
    image: str | None,
    hf_token_env: str | None,
    wait: bool,
    resume_job: str | None,
    notes: list[str],
) -> None:
    if prefix is not None and not prefix.startswith("s3://"):
        raise RunnerError(f"--output-dir {prefix!r} must be an s3:// prefix for SageMaker")
    runner = SageMakerRunner(
        role_arn=role,
        region=region,
        s3_prefix=prefix,
        image=image,
        echo=sys.stdout,
        hf_token_env=hf_token_env,
    )
    result = runner.launch(
        spec, data=data, eval_data=eval_data, dry_run=dry_run, resume_job=resume_job
    )
    _say(notes)
    warning = sagemaker_price_warning(spec)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if dry_run:
        return
    click.echo(f"status: ftplan status {result.run_id} --target sagemaker")
    if wait:
        _finish(runner.wait(result.run_id))


def _print_status(status: RunStatus, *, fmt: str) -> None:
    record: dict[str, Any] = {
        "run_id": status.run_id,
        "target": status.target.value,
        "state": status.state.value,
        "detail": status.detail,
        "started_at": status.started_at,
        "ended_at": status.ended_at,
        "log": status.log_path,
        "summary": status.summary_path,
        "cost_usd": None if status.cost_usd is None else round(status.cost_usd, 2),
        "spot_saved": (
            None if status.spot_savings_fraction is None else f"{status.spot_savings_fraction:.0%}"
        ),
    }
    if fmt == "json":
        click.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    for key, value in record.items():
        if value not in ("", None):
            click.echo(f"{key + ':':12}{printable(value)}")


@click.command("status")
@click.argument("run_id", callback=check_run_id)
@click.option(
    "--target",
    type=click.Choice([t.value for t in Target]),
    help="Where the run is (default: local when runs/RUN_ID exists, else sagemaker).",
)
@runs_dir_option
@click.option("--region", callback=check_region, help="AWS region of a SageMaker job.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def status_command(
    run_id: str, target: str | None, runs_dir: str, region: str | None, fmt: str
) -> None:
    """Show where a local run or SageMaker job stands (state, progress, log, summary).

    \b
    Examples:
      ftplan status llama2-7b-lora-20261123-193000-a1b2
      ftplan status ftplan-llama2-7b-lora-20261123-193000 --target sagemaker --region us-east-1
    """
    run_dir = run_dir_for(runs_dir, run_id)
    chosen = (
        Target(target)
        if target
        else Target.SKYPILOT
        if (run_dir / "skypilot.json").is_file()
        else (Target.LOCAL if run_dir.is_dir() else Target.SAGEMAKER)
    )
    try:
        if chosen is Target.LOCAL:
            status = LocalRunner(runs_dir=runs_dir).status(run_id)
        elif chosen is Target.SKYPILOT:
            status = SkyPilotRunner(runs_dir=runs_dir).status(run_id)
        else:
            sagemaker = SageMakerRunner(region=region)
            status = sagemaker.status(run_id)
            fetched = sagemaker.fetch_summary(run_id, dest_dir=runs_dir)
            if fetched is not None:
                status = dataclasses.replace(status, summary_path=str(fetched))
    except RunnerError as exc:
        raise _user_error(exc) from None
    _print_status(status, fmt=fmt)


def sagemaker_price_warning(spec: LaunchSpec) -> str | None:
    """Say so when the plan was priced on an EC2 offer but will run as a SageMaker job.

    SageMaker's ``ml.*`` instances cost more than the same EC2 instance (e.g. ml.g5.xlarge
    1.408 vs g5.xlarge 1.006 USD/h in the shipped catalog), so the plan's dollars do not hold.
    """
    import catalog

    offer = spec.offer
    if offer is None or offer.service == "sagemaker":
        return None
    ml_type = f"ml.{offer.instance_type}"
    priced = [
        o
        for o in catalog.list_offers(providers=[offer.provider])
        if o.service == "sagemaker" and o.instance_type == ml_type and o.spot == offer.spot
    ]
    kind = "spot" if offer.spot else "on-demand"
    planned = (
        f"the plan priced EC2 {offer.instance_type} at {offer.usd_per_hour:.4g} USD/h ({kind})"
    )
    if not priced:
        return (
            f"{planned}; the catalog has no {kind} price for {ml_type}, so the job may cost more "
            f"than planned. To fix: re-plan with --provider aws --service sagemaker"
        )
    usd = priced[0].usd_per_hour
    if usd <= offer.usd_per_hour:
        return None
    # A plan priced at 0 USD/h (a hand edit, a local offer) has no ratio to state.
    ratio = f", {usd / offer.usd_per_hour:.2f}× the planned cost" if offer.usd_per_hour else ""
    return (
        f"{planned}; SageMaker's {ml_type} costs {usd:.4g} USD/h{ratio}. To fix: re-plan with "
        "--provider aws --service sagemaker, or launch on that EC2 instance (--target local "
        "there)"
    )


COMMANDS: list[click.Command] = [launch_command, status_command]
