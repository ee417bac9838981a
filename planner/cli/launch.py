"""CLI command ``launch``: a plan's chosen candidate, locally, on SageMaker or through SkyPilot.

Flags and printing only: :mod:`planner.handoff` turns the plan into a launch spec and
:data:`runners.TARGETS` launches it where it goes. Bad input (plan file, no chosen candidate, no
role, unknown region, missing data) is a one-line error with exit code 2 and nothing started or
sent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from planner.cli.errors import require_extra
from planner.cli.params import (
    check_checkpoint_every,
    check_env_var,
    check_region,
    check_run_id,
)
from planner.cli.runs import print_status
from planner.handoff import LaunchChoices, prepare_launch, target_warnings
from runners import (
    TARGETS,
    RunnerOptions,
    RunState,
    RunStatus,
    Target,
    WaitingRunner,
    default_target,
    launch_on,
)
from runners._types import CUDA_DEVICE, DEVICES, refuse_credentials_in_uri


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
    type=click.Choice(list(DEVICES)),
    default=CUDA_DEVICE,
    show_default=True,
    help="cpu: a local smoke run only.",
)
@click.option(
    "--grad-accum",
    "grad_accum_steps",
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
    grad_accum_steps: int | None,
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
    choices = LaunchChoices(
        data=data,
        eval_data=eval_data,
        eval_every_steps=eval_every_steps,
        rank=rank,
        device=device,
        max_steps=max_steps,
        weights=weights,
        random_init=random_init,
        grad_accum_steps=grad_accum_steps,
        checkpoint_every=checkpoint_every,
        tokens=tokens,
        dry_run=dry_run,
    )
    options = RunnerOptions(
        output_dir=output_dir,
        region=region,
        role_arn=role,
        image=image_uri,
        hf_token_env=hf_token_env,
        resume=resume_run,
        echo=sys.stdout,
    )
    _launch(plan_file, target, choices, options, wait=wait)


def _launch(
    plan_file: Path,
    target: str | None,
    choices: LaunchChoices,
    options: RunnerOptions,
    *,
    wait: bool,
) -> None:
    """Read the plan, build its spec, launch it where ``--target`` (else its offer) says, and
    print the notes, the status command and (``--wait``) how the run ended."""
    from planner.plan_io import read_plan

    if choices.weights is not None:
        refuse_credentials_in_uri(choices.weights, option="--weights")
    spec, notes = prepare_launch(read_plan(plan_file), choices)
    chosen = Target(target) if target else default_target(spec.offer)
    entry = TARGETS[chosen]
    if not choices.dry_run and entry.extra is not None:
        require_extra(entry.extra, f"ftplan launch --target {chosen.value}")
    runner, result = launch_on(
        chosen,
        spec,
        options,
        data=choices.data,
        eval_data=choices.eval_data,
        dry_run=choices.dry_run,
    )
    _say(notes)
    _say(target_warnings(spec, chosen))
    if choices.dry_run:
        return
    runs_dir = options.output_dir if entry.output_dir_is_runs_dir else None
    click.echo(
        f"status: ftplan status {result.run_id} --target {chosen.value}"
        + (f" --runs-dir {runs_dir}" if runs_dir else "")
    )
    if wait and isinstance(runner, WaitingRunner):
        _finish(runner.wait(result.run_id))


def _say(notes: list[str]) -> None:
    for note in notes:
        click.echo(note, err=True)


def _finish(status: RunStatus) -> None:
    """Print the final status; exit 1 unless the run succeeded (``launch --wait``)."""
    print_status(status, fmt="table")
    if status.state is not RunState.SUCCEEDED:
        click.echo(f"error: run {status.run_id} {status.state.value}: {status.detail}", err=True)
        raise click.exceptions.Exit(1)


COMMANDS: list[click.Command] = [launch_command]
