"""CLI commands that operate runs: ``status``, ``logs`` (train.log locally, CloudWatch for
SageMaker, SkyPilot's log tail), ``stop`` and ``runs`` (local runs and ftplan's SageMaker jobs).
Which runner a run id goes to is :func:`runners.target_of_run` (unless ``--target`` says)."""

from __future__ import annotations

import json
from typing import Any

import click

from catalog import printable
from planner.cli.errors import UserInputError
from planner.cli.params import check_region, check_run_id
from runners import (
    LocalRunner,
    RunnerError,
    RunnerOptions,
    RunStatus,
    SageMakerRunner,
    SkyPilotRunner,
    Target,
    run_status,
    runner_for,
    target_of_run,
)
from runners.local import DEFAULT_RUNS_DIR

_TARGETS = [t.value for t in Target]


def _runner(run_id: str, *, target: str | None, runs_dir: str, region: str | None) -> Any:
    """The runner of the run: ``--target``, else where :func:`runners.target_of_run` finds it."""
    chosen = Target(target) if target else target_of_run(run_id, runs_dir=runs_dir)
    return runner_for(chosen, RunnerOptions(runs_dir=runs_dir, region=region))


# The local runs folder, for every command that finds or writes runs (launch, status, logs,
# stop, runs, merge).
runs_dir_option = click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default=str(DEFAULT_RUNS_DIR),
    show_default=True,
    help="Local runs folder.",
)


def _where(func: Any) -> Any:
    for option in (
        click.option("--region", callback=check_region, help="AWS region of a SageMaker job."),
        runs_dir_option,
        click.option(
            "--target",
            type=click.Choice(_TARGETS),
            help="Where the run is (default: local when runs/RUN_ID exists, else sagemaker).",
        ),
    ):
        func = option(func)
    return func


def print_status(status: RunStatus, *, fmt: str) -> None:
    """A run's status as ``key: value`` lines (empty fields left out), or JSON."""
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
@_where
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
    runner = _runner(run_id, target=target, runs_dir=runs_dir, region=region)
    print_status(run_status(runner, run_id, runs_dir=runs_dir), fmt=fmt)


@click.command("logs")
@click.argument("run_id", callback=check_run_id)
@_where
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run ends.")
def logs_command(
    run_id: str, target: str | None, runs_dir: str, region: str | None, follow: bool
) -> None:
    """Print a run's log: train.log of a local run, CloudWatch for a SageMaker job, SkyPilot's
    log tail for a SkyPilot run.

    \b
    Examples:
      ftplan logs llama2-7b-lora-20261123-193000-a1b2 --follow
      ftplan logs ftplan-llama2-7b-lora-20261123-193000 --target sagemaker
    """
    runner = _runner(run_id, target=target, runs_dir=runs_dir, region=region)
    try:
        if isinstance(runner, SkyPilotRunner):
            runner.logs(run_id, follow=follow)  # SkyPilot prints the lines itself
            return
        for line in runner.logs(run_id, follow=follow):
            click.echo(line)
    except RunnerError as exc:
        raise UserInputError(str(exc)) from None


@click.command("stop")
@click.argument("run_id", callback=check_run_id)
@_where
def stop_command(run_id: str, target: str | None, runs_dir: str, region: str | None) -> None:
    """Stop a run. Local and SageMaker: it finishes its step, writes a checkpoint and ends
    (resume with 'ftplan launch PLAN --resume RUN_ID'). SkyPilot: cancel its managed job
    (gracefully: bucket uploads finish), or its cluster's job, after which ftplan copies the
    output back and takes the cluster down (billing stops).

    \b
    Examples:
      ftplan stop llama2-7b-lora-20261123-193000-a1b2
      ftplan stop ftplan-llama2-7b-lora-20261130-183710
    """
    runner = _runner(run_id, target=target, runs_dir=runs_dir, region=region)
    try:
        runner.stop(run_id)
    except RunnerError as exc:
        raise UserInputError(str(exc)) from None
    if isinstance(runner, SkyPilotRunner):
        click.echo(
            f"cancelled {run_id}: a managed job ends once its bucket uploads finish; a cluster's "
            "output is copied back before it goes down (ftplan status shows how it ended)"
        )
    else:
        click.echo(f"stopping {run_id}: it writes a checkpoint, then ends")


@click.command("runs")
@runs_dir_option
@click.option("--sagemaker", is_flag=True, help="Also list ftplan's SageMaker jobs.")
@click.option("--region", callback=check_region, help="AWS region of the SageMaker jobs.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def runs_command(runs_dir: str, sagemaker: bool, region: str | None, fmt: str) -> None:
    """List local runs (newest first) and, with --sagemaker, ftplan-tagged SageMaker jobs."""
    rows: list[dict[str, Any]] = [
        {
            "run_id": status.run_id,
            "target": Target.LOCAL.value,
            "state": status.state.value,
            "started": status.started_at,
        }
        for status in LocalRunner(runs_dir=runs_dir).list_runs()
    ]
    if sagemaker:
        try:
            jobs = SageMakerRunner(region=region).list_runs()
        except RunnerError as exc:
            raise UserInputError(str(exc)) from None
        rows += [
            {
                "run_id": job["run_id"],
                "target": Target.SAGEMAKER.value,
                "state": job["state"],
                "started": job["created"],
            }
            for job in jobs
        ]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    for row in rows:
        click.echo(f"{row['run_id']:<52} {row['target']:<10} {row['state']:<10} {row['started']}")


COMMANDS: list[click.Command] = [status_command, logs_command, stop_command, runs_command]
