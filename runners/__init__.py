"""Runners: launch a planned fine-tune on local GPUs (accelerate/torchrun), on SageMaker (boto3) or
on any cloud through SkyPilot, each with a dry-run that prints the exact command or request.

:data:`TARGETS` is the one place that knows every target: how its runner is built from the
command line's options, how a launch there resumes an earlier run, what a real launch needs on
this machine. A new target is a runner module, a :class:`Target` value and a row here (and its
flags in ``planner/cli/launch.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from runners._distributed import launch_problem
from runners._sky_follow import RECORD_FILE as SKYPILOT_RECORD_FILE
from runners._stop import parse_checkpoint_every
from runners._types import (
    LaunchResult,
    LaunchSpec,
    Runner,
    RunnerError,
    RunState,
    RunStatus,
    SummaryFetchingRunner,
    Target,
    WaitingRunner,
    evaluations_in_run,
    launch_spec_from_json,
    launch_spec_to_json,
)
from runners._weights import gated_token_problem
from runners.data import DataFormatError
from runners.local import DEFAULT_RUNS_DIR, HostGPUs, LocalRunner, run_dir_for
from runners.sagemaker import SageMakerRunner
from runners.skypilot import SkyPilotRunner, default_target

__all__ = [
    "TARGETS",
    "DataFormatError",
    "HostGPUs",
    "Launch",
    "LaunchResult",
    "LaunchSpec",
    "LocalRunner",
    "RunState",
    "RunStatus",
    "Runner",
    "RunnerError",
    "RunnerOptions",
    "SageMakerRunner",
    "SkyPilotRunner",
    "SummaryFetchingRunner",
    "Target",
    "TargetRunners",
    "WaitingRunner",
    "default_target",
    "evaluations_in_run",
    "gated_token_problem",
    "launch_on",
    "launch_problem",
    "launch_spec_from_json",
    "launch_spec_to_json",
    "parse_checkpoint_every",
    "run_status",
    "runner_for",
    "target_of_run",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerOptions:
    """What the command line says about where and how runs go; each target reads the options
    that apply to it.

    Attributes:
        runs_dir: Local folder of run folders and records (``--runs-dir``).
        output_dir: ``launch --output-dir``: local, the runs folder (instead of ``runs_dir``);
            SageMaker, the ``s3://`` prefix for source, output and checkpoints; SkyPilot, the
            bucket mounted for output and checkpoints.
        region: AWS region of a SageMaker job; the region a SkyPilot task is pinned to.
        role_arn: SageMaker execution role (None: from the environment).
        image: SageMaker training image (None: the Hugging Face image of the region).
        hf_token_env: Variable whose Hugging Face token a cloud run gets (None: ``$HF_TOKEN``).
        resume: Run id (local) or job name (SageMaker) a launch continues from its newest
            checkpoint; SkyPilot runs resume by themselves and take none.
        echo: Where dry runs and progress are printed (None: silent).
    """

    runs_dir: str | Path = DEFAULT_RUNS_DIR
    output_dir: str | None = None
    region: str | None = None
    role_arn: str | None = None
    image: str | None = None
    hf_token_env: str | None = None
    resume: str | None = None
    echo: TextIO | None = None


class Launch(Protocol):
    """Launches ``spec`` on one target with the runner built from ``options``."""

    def __call__(
        self,
        options: RunnerOptions,
        spec: LaunchSpec,
        *,
        data: str,
        eval_data: str | None,
        dry_run: bool,
    ) -> tuple[Runner, LaunchResult]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetRunners:
    """How ftplan reaches one launch target.

    Attributes:
        runner: Builds the target's runner from the options that apply to it (``ftplan
            status``, ``logs``, ``stop``).
        launch: Builds the runner and launches a spec there (``ftplan launch``).
        extra: The optional dependencies (an extra of pyproject.toml) a real launch needs on
            this machine; None: the core install.
        output_dir_is_runs_dir: ``launch --output-dir`` is the local runs folder, so ``ftplan
            status`` needs it back as ``--runs-dir``.
    """

    runner: Callable[[RunnerOptions], Runner]
    launch: Launch
    extra: str | None = None
    output_dir_is_runs_dir: bool = False


def _local(options: RunnerOptions) -> LocalRunner:
    return LocalRunner(runs_dir=options.output_dir or options.runs_dir, echo=options.echo)


def _launch_local(
    options: RunnerOptions, spec: LaunchSpec, *, data: str, eval_data: str | None, dry_run: bool
) -> tuple[Runner, LaunchResult]:
    """Refuses a plan this machine cannot shard (DeepSpeed missing) before a real launch."""
    problem = None if dry_run else launch_problem(spec.config)
    if problem is not None:
        raise RunnerError(problem)
    runner = _local(options)
    result = runner.launch(
        spec, data=data, eval_data=eval_data, dry_run=dry_run, resume_run_id=options.resume
    )
    return runner, result


def _sagemaker(options: RunnerOptions) -> SageMakerRunner:
    return SageMakerRunner(
        role_arn=options.role_arn,
        region=options.region,
        s3_prefix=options.output_dir,
        image=options.image,
        echo=options.echo,
        hf_token_env=options.hf_token_env,
    )


def _launch_sagemaker(
    options: RunnerOptions, spec: LaunchSpec, *, data: str, eval_data: str | None, dry_run: bool
) -> tuple[Runner, LaunchResult]:
    runner = _sagemaker(options)
    result = runner.launch(
        spec, data=data, eval_data=eval_data, dry_run=dry_run, resume_job=options.resume
    )
    return runner, result


def _skypilot(options: RunnerOptions) -> SkyPilotRunner:
    return SkyPilotRunner(
        runs_dir=options.runs_dir,
        output_uri=options.output_dir,
        region=options.region,
        hf_token_env=options.hf_token_env,
        echo=options.echo,
    )


def _launch_skypilot(
    options: RunnerOptions, spec: LaunchSpec, *, data: str, eval_data: str | None, dry_run: bool
) -> tuple[Runner, LaunchResult]:
    runner = _skypilot(options)
    return runner, runner.launch(spec, data=data, eval_data=eval_data, dry_run=dry_run)


#: Every launch target, and how ftplan reaches it.
TARGETS: dict[Target, TargetRunners] = {
    Target.LOCAL: TargetRunners(
        runner=_local, launch=_launch_local, extra="train", output_dir_is_runs_dir=True
    ),
    Target.SAGEMAKER: TargetRunners(runner=_sagemaker, launch=_launch_sagemaker),
    Target.SKYPILOT: TargetRunners(runner=_skypilot, launch=_launch_skypilot),
}


def runner_for(target: Target, options: RunnerOptions | None = None) -> Runner:
    """The runner of ``target``, set up by ``options``.

    Raises:
        RunnerError: An option the target cannot take (e.g. a SageMaker prefix that is not
            ``s3://``, an unset ``--hf-token-env`` variable).
    """
    return TARGETS[target].runner(options or RunnerOptions())


def launch_on(
    target: Target,
    spec: LaunchSpec,
    options: RunnerOptions,
    *,
    data: str,
    eval_data: str | None = None,
    dry_run: bool = False,
) -> tuple[Runner, LaunchResult]:
    """Launch ``spec`` on ``target`` (or, with ``dry_run``, describe it): the runner that did
    and what it returned.

    Raises:
        RunnerError: The run cannot go ahead; nothing was started or sent.
    """
    return TARGETS[target].launch(options, spec, data=data, eval_data=eval_data, dry_run=dry_run)


def target_of_run(run_id: str, *, runs_dir: str | Path) -> Target:
    """Where a run is: SkyPilot when ``runs_dir/RUN_ID`` holds its record, local when that
    folder exists, else SageMaker (a job name)."""
    run_dir = run_dir_for(runs_dir, run_id)
    if (run_dir / SKYPILOT_RECORD_FILE).is_file():
        return Target.SKYPILOT
    return Target.LOCAL if run_dir.is_dir() else Target.SAGEMAKER


def run_status(runner: Runner, run_id: str, *, runs_dir: str | Path) -> RunStatus:
    """The run's status; a summary written elsewhere (SageMaker) is first copied under
    ``runs_dir`` and named in it."""
    status = runner.status(run_id)
    if isinstance(runner, SummaryFetchingRunner):
        fetched = runner.fetch_summary(run_id, dest_dir=runs_dir)
        if fetched is not None:
            status = dataclasses.replace(status, summary_path=str(fetched))
    return status
