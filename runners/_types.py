"""Runner records: what to launch (LaunchSpec), what a launch returned, and a run's status.

A LaunchSpec is everything the training entrypoint needs, so one JSON file (or one SageMaker
hyperparameter) fully describes a run. The planner converts its chosen Candidate into one; the
runners never import the planner.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from catalog import (
    ErrorKind,
    FtplanError,
    ModelSpec,
    Offer,
    from_tagged_json,
    mask_secrets,
    printable,
    tagged_json,
)
from catalog.errors import CONTROL_CHARS_OR_NEWLINES
from profiler import TuningConfig
from profiler._types import MAX_EPOCHS, MAX_GRAD_ACCUM_STEPS
from profiler.recipes import DEFAULT_LEARNING_RATE

LAUNCH_SPEC_FORMAT = "ftplan-launch/1"
# SageMaker's training-container paths, shared by the job request (runners/sagemaker.py) and the
# entry point that runs in the container (runners/train.py).
SAGEMAKER_CHECKPOINT_DIR = "/opt/ml/checkpoints"  # CheckpointConfig.LocalPath, synced to S3
SAGEMAKER_TRAIN_CHANNEL = "train"  # input channel; the container sets SM_CHANNEL_TRAIN
SAGEMAKER_EVAL_CHANNEL = "eval"  # held-out data (--eval-data); the container sets SM_CHANNEL_EVAL
SAGEMAKER_MODEL_CHANNEL = "model"  # --weights s3://... arrives as /opt/ml/input/data/model
SAGEMAKER_FAILURE_FILE = "/opt/ml/output/failure"  # first 1024 chars: the job's FailureReason
# The hyperparameter carrying the launch spec as compact JSON: written into the job request
# (runners/_sagemaker_request.py), read back from a job (runners/_sagemaker_ops.py) and by the
# entry point in the container (runners/train.py, as --ftplan_spec or SM_HPS).
SAGEMAKER_SPEC_HYPERPARAMETER = "ftplan_spec"

# Default accuracy the summary judges a run against. Peak memory: the 2/4-layer extrapolation
# came within 0.2% on the H100 in 22 of 24 configs, and the analytic estimator is looser, so 10%
# is the stated band for "as planned". Throughput: step time extrapolated within ~4% for 4k+
# token steps but -10%..+46% for short steps (DESIGN.md, "Facts established on real hardware"),
# so 15%.
DEFAULT_MEMORY_TOLERANCE_FRACTION = 0.10
DEFAULT_THROUGHPUT_TOLERANCE_FRACTION = 0.15

BYTE_TOKENIZER = "byte"
#: Where a run trains: the GPUs, or the CPU (tests and smoke checks; ``launch --device cpu``).
CUDA_DEVICE = "cuda"
CPU_DEVICE = "cpu"
DEVICES = (CUDA_DEVICE, CPU_DEVICE)
#: Most epochs a launch spec may ask for: a plan's budget allows MAX_EPOCHS; smoke runs that
#: are stopped by hand ask for more, and past this the step count stops being a plain float.
MAX_SPEC_EPOCHS = 1000 * MAX_EPOCHS


class RunnerError(FtplanError, RuntimeError):
    """A launch that cannot go ahead (missing GPUs, no role, unknown region, ...).

    The message says what is wrong, why, and how to fix it. Nothing was started or sent.
    """

    kind = ErrorKind.ENVIRONMENT


# scheme://user:password@ (the password may hold '/' and '@') or scheme://token@host.
_URL_CREDENTIALS = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^/@:]*:[^@]*@|[^/@:]+@)")


def refuse_credentials_in_uri(uri: str, *, option: str) -> None:
    """Refuse a storage URI that carries credentials (``s3://KEY:SECRET@bucket/...``): no
    storage service reads them from the URI, and they would be printed, logged and written
    into the run's files.

    Raises:
        RunnerError: The URI has a ``user:password@`` or ``token@`` part, or control
            characters (a newline would end a line of the task or request it goes into).
    """
    shown = mask_secrets(printable(uri))[:200]
    if CONTROL_CHARS_OR_NEWLINES.search(uri):
        raise RunnerError(
            f"{option} {shown!r} holds a newline or control characters. To fix: rename the file "
            "(or object) to a plain name and pass that"
        )
    if _URL_CREDENTIALS.match(uri):
        raise RunnerError(
            f"{option} {shown!r} holds credentials; storage URIs take none. To fix: give the "
            "plain URI (s3://BUCKET/PREFIX) and set credentials with 'aws configure', "
            "environment variables or a profile"
        )


class RunState(enum.StrEnum):
    """Life cycle of a run, common to local processes and SageMaker jobs."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    # Over, but how it ended was never seen (a SkyPilot cluster torn down while nothing of
    # ftplan's was following it).
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.STOPPED, RunState.UNKNOWN)


class Target(enum.StrEnum):
    """Where a run goes."""

    LOCAL = "local"
    SAGEMAKER = "sagemaker"
    SKYPILOT = "skypilot"


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchSpec:
    """One training run, fully specified.

    Attributes:
        model: Architecture of the model (builds the random-init model and names the hub id).
        config: Per-GPU tuning config (method, rank, precision, micro-batch, seq_len, ...).
        checkpoint: Hub id or local folder with the weights (and tokenizer) to fine-tune; None
            uses ``model.hf_id``.
        random_init: Build the model from its config with random weights (tests, dry runs of
            memory and speed); the weights' values do not change memory or time.
        tokenizer: None uses the model's tokenizer (falls back to bytes when it cannot be loaded
            offline); ``"byte"`` forces the byte-level tokenizer.
        offer: The priced offer the plan chose (instance type, GPUs per node, spot); None for a
            plain local run.
        nodes: Number of machines; ``config.gpu_count`` = nodes × GPUs per node.
        device: ``"cuda"`` or ``"cpu"`` (CPU runs are for tests and smoke checks).
        grad_accum_steps: Micro-batches accumulated per optimizer step.
        learning_rate: Peak learning rate (constant schedule); None: the recipe's starting rate
            for the method (``profiler.recipes.DEFAULT_LEARNING_RATE``: 2e-5 for full
            fine-tuning, 2e-4 for LoRA/QLoRA), read through :attr:`peak_learning_rate`.
        epochs: Passes over the dataset (may be fractional).
        max_steps: Stop after this many optimizer steps (None: run all epochs).
        checkpoint_every_steps: Save a checkpoint every N optimizer steps (None: off).
        checkpoint_every_minutes: Save a checkpoint when this many minutes passed since the last.
        expected_peak_allocated_gib: The plan's per-GPU peak allocated memory, GiB.
        expected_tokens_per_s: The plan's throughput over all GPUs, tokens/s.
        expected_source: Where the expectation came from (measured / extrapolated / estimated).
        memory_tolerance_fraction: Relative band within which peak memory counts as planned.
        throughput_tolerance_fraction: Relative band within which tokens/s counts as planned.
        max_hours: Wall-clock limit of the run in hours (SageMaker stopping condition).
        seed: Seed for weights (random init), data order and dropout.
        log_every_steps: Emit a metrics line every N optimizer steps.
        eval_every_steps: Evaluate the eval data every N optimizer steps and after the last
            step; None: after the last step only. Ignored without eval data.
    """

    model: ModelSpec
    config: TuningConfig
    checkpoint: str | None = None
    random_init: bool = False
    tokenizer: str | None = None
    offer: Offer | None = None
    nodes: int = 1
    device: str = CUDA_DEVICE
    grad_accum_steps: int = 1
    learning_rate: float | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 30.0
    expected_peak_allocated_gib: float | None = None
    expected_tokens_per_s: float | None = None
    expected_source: str = ""
    memory_tolerance_fraction: float = DEFAULT_MEMORY_TOLERANCE_FRACTION
    throughput_tolerance_fraction: float = DEFAULT_THROUGHPUT_TOLERANCE_FRACTION
    max_hours: float = 24.0
    seed: int = 0
    log_every_steps: int = 1
    eval_every_steps: int | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            allowed = " or ".join(repr(device) for device in DEVICES)
            raise ValueError(f"device must be {allowed}, got {self.device!r}")
        for name in ("grad_accum_steps", "nodes", "log_every_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        # Finite and positive only: a plan's rate is held to MAX_LEARNING_RATE when the plan is
        # read (planner._types.Candidate); a spec may ask for more (a divergence test does).
        if self.learning_rate is not None and not (
            math.isfinite(self.learning_rate) and self.learning_rate > 0
        ):
            raise ValueError(f"learning_rate must be > 0 and finite, got {self.learning_rate}")
        if not 0 < self.epochs <= MAX_SPEC_EPOCHS:
            raise ValueError(
                f"epochs must be > 0 and at most {MAX_SPEC_EPOCHS:g}, got {self.epochs:g}"
            )
        if self.grad_accum_steps > MAX_GRAD_ACCUM_STEPS:
            raise ValueError(
                f"grad_accum_steps must be at most {MAX_GRAD_ACCUM_STEPS:,}, got "
                f"{self.grad_accum_steps:,}"
            )
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, got {self.max_steps}")
        if self.eval_every_steps is not None and self.eval_every_steps <= 0:
            raise ValueError(f"eval_every_steps must be > 0, got {self.eval_every_steps}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps <= 0:
            raise ValueError(
                f"checkpoint_every_steps must be > 0, got {self.checkpoint_every_steps}"
            )
        if self.checkpoint_every_minutes is not None and not self.checkpoint_every_minutes > 0:
            raise ValueError(
                f"checkpoint_every_minutes must be > 0, got {self.checkpoint_every_minutes}"
            )
        if not self.max_hours > 0:
            raise ValueError(f"max_hours must be > 0, got {self.max_hours}")
        if self.checkpoint is not None and (
            _URL_CREDENTIALS.match(self.checkpoint)
            or CONTROL_CHARS_OR_NEWLINES.search(self.checkpoint)
        ):
            # It travels in the spec to the run, its files and SageMaker's hyperparameters.
            raise ValueError(
                "checkpoint (--weights) holds credentials or control characters; give a plain "
                "hub id, folder or s3:// URI and set credentials in the environment"
            )
        if self.tokenizer not in (None, BYTE_TOKENIZER):
            raise ValueError(
                f"tokenizer must be None (the model's) or 'byte', got {self.tokenizer!r}"
            )
        if self.config.gpu_count % self.nodes:
            raise ValueError(
                f"config.gpu_count={self.config.gpu_count} is not a multiple of nodes={self.nodes}"
            )
        if self.offer is not None and self.offer.gpu_count * self.nodes != self.config.gpu_count:
            raise ValueError(
                f"offer {self.offer.instance_type} has {self.offer.gpu_count} GPUs × {self.nodes} "
                f"nodes, but config.gpu_count={self.config.gpu_count}"
            )

    @property
    def peak_learning_rate(self) -> float:
        """The learning rate the run trains with: the spec's, else the method's default."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LEARNING_RATE[self.config.method]

    @property
    def gpus_per_node(self) -> int:
        """GPUs (processes) per machine."""
        return self.config.gpu_count // self.nodes

    @property
    def weights_source(self) -> str:
        """Hub id or local folder the weights and tokenizer come from."""
        return self.checkpoint or self.model.hf_id


def is_eval_step(done_steps: int, *, total_steps: int, eval_every_steps: int | None) -> bool:
    """Whether the run evaluates after optimizer step ``done_steps`` (1-based): at N, 2N, ...
    and after the last step."""
    if done_steps <= 0 or done_steps > total_steps:
        return False
    if done_steps == total_steps:
        return True
    return eval_every_steps is not None and done_steps % eval_every_steps == 0


def evaluations_in_run(total_steps: int, eval_every_steps: int | None) -> int:
    """Eval passes of a run of ``total_steps`` optimizer steps: one at steps N, 2N, ... and one
    after the last step (no second one when the last step is a multiple of N).

    Args:
        total_steps: Optimizer steps of the run.
        eval_every_steps: N; None evaluates after the last step only.

    Returns:
        The number of eval passes (0 when ``total_steps <= 0``).
    """
    if total_steps <= 0:
        return 0
    if eval_every_steps is None:
        return 1
    if eval_every_steps <= 0:
        raise ValueError(f"eval_every_steps must be > 0, got {eval_every_steps}")
    return total_steps // eval_every_steps + (1 if total_steps % eval_every_steps else 0)


def launch_spec_to_json(spec: LaunchSpec, *, indent: int | None = 2) -> str:
    """The spec as stable JSON (sorted keys), wrapped with its format tag."""
    return tagged_json(LAUNCH_SPEC_FORMAT, "spec", spec, indent=indent)


def launch_spec_from_json(
    text: str | dict[str, object], *, where: str = "launch spec"
) -> LaunchSpec:
    """Parse :func:`launch_spec_to_json` output (a string, or the already-decoded object).

    Raises:
        DataError: If the text is not JSON, not a launch spec, or holds invalid fields.
    """
    return from_tagged_json(
        LaunchSpec,
        text,
        tag=LAUNCH_SPEC_FORMAT,
        key="spec",
        where=where,
        kind="launch spec",
        fix="write it with 'ftplan launch --dry-run'",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchResult:
    """What a launch did (or, for a dry run, would do).

    ``command`` is the local argv; ``request`` the SageMaker CreateTrainingJob request as JSON;
    ``env`` the extra environment variables the local command runs with.
    """

    run_id: str
    target: Target
    dry_run: bool
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    request_json: str = ""
    run_dir: str = ""
    log_path: str = ""
    spec_json: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStatus:
    """Where a run stands. ``detail`` is a one-line human explanation (failure reason, phase);
    ``cost_usd`` the cost so far (SageMaker: billable seconds × instances × the instance type's
    on-demand price, USD; managed spot's discount is in the billable seconds)."""

    run_id: str
    target: Target
    state: RunState
    detail: str = ""
    started_at: str = ""
    ended_at: str = ""
    log_path: str = ""
    pid: int | None = None
    summary_path: str = ""
    cost_usd: float | None = None
    spot_savings_fraction: float | None = None


@runtime_checkable
class Runner(Protocol):
    """Launches a LaunchSpec somewhere and reports on it. Implemented by LocalRunner and
    SageMakerRunner; tests/runners/test_runner_contract.py holds both to the same contract."""

    target: Target

    def launch(
        self,
        spec: LaunchSpec,
        *,
        data: str,
        eval_data: str | None = None,
        dry_run: bool = False,
    ) -> LaunchResult:
        """Start the run (or, with ``dry_run``, only describe it: nothing started or sent).

        Args:
            spec: The run.
            data: Training data: a local JSONL file, or (SageMaker) an ``s3://`` prefix.
            eval_data: Held-out data in the same form as ``data``, evaluated per
                ``spec.eval_every_steps`` and after the last step; None: no evaluation.
            dry_run: Describe the exact command/request without starting anything.

        Raises:
            RunnerError: If the run cannot go ahead; nothing was started or sent.
        """
        ...

    def status(self, run_id: str) -> RunStatus:
        """The run's current state.

        Raises:
            RunnerError: If no such run exists.
        """
        ...


@runtime_checkable
class WaitingRunner(Protocol):
    """A runner that can follow a run until it ends (``ftplan launch --wait``)."""

    def wait(self, run_id: str) -> RunStatus:
        """Block until the run has finished; its final status."""
        ...


@runtime_checkable
class SummaryFetchingRunner(Protocol):
    """A runner whose runs write their summary elsewhere (SageMaker: into the job's output on
    S3), so ``ftplan status`` copies it next to the local runs."""

    def fetch_summary(self, run_id: str, *, dest_dir: str | Path) -> Path | None:
        """Copy the finished run's summary.json under ``dest_dir``; None while it runs."""
        ...
