"""Training entrypoint: runs one LaunchSpec with the profiler's recipe (what ftplan measured is
what it trains), logs JSON lines, checkpoints atomically, resumes, and compares the measured
throughput and peak memory with the plan's prediction.

Usage::

    python -m runners.train --spec launch.json --data train.jsonl --output-dir runs/x \
        [--eval-data heldout.jsonl] [--resume]

With ``--eval-data`` the run evaluates the held-out set every ``eval_every_steps`` optimizer
steps of the spec and after the last step (one ``"event": "eval"`` metrics line each).

On SageMaker the same module is the entry point: the spec comes from the ``ftplan_spec``
hyperparameter (``SM_HPS``), the data from the ``train`` channel (``SM_CHANNEL_TRAIN``), the
eval data from the ``eval`` channel (``SM_CHANNEL_EVAL``), the final model goes to
``SM_MODEL_DIR`` and checkpoints to ``/opt/ml/checkpoints`` (synced to S3 by SageMaker), and a
restarted spot job resumes from them automatically.

Several GPUs: started by ``accelerate launch`` (see runners/local.py), the model and optimizer
are wrapped by ``Accelerator.prepare`` (DDP or FSDP full-shard, per the accelerate config) and
each process takes a disjoint slice of every batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from catalog import GIB, atomic_write_text, read_text_limited
from runners._checkpoint import (
    check_resumable,
    file_sha256,
    resume_from,
    run_identity,
    save_checkpoint,
)
from runners._eval import EvalResult, evaluate, find_eval_jsonl, load_eval_blocks
from runners._run_files import METRICS_FILE, SUMMARY_FILE
from runners._stop import CheckpointClock, NonFiniteLoss, StopRequest, TrainingStopped
from runners._summary import build_summary
from runners._train_sharded import (
    accelerator_if_distributed,
    is_deepspeed,
    prepare_distributed,
    save_final_model,
    trained_model_config,
)
from runners._types import (
    BYTE_TOKENIZER,
    CUDA_DEVICE,
    DEVICES,
    SAGEMAKER_CHECKPOINT_DIR,
    SAGEMAKER_EVAL_CHANNEL,
    SAGEMAKER_FAILURE_FILE,
    SAGEMAKER_MODEL_CHANNEL,
    SAGEMAKER_SPEC_HYPERPARAMETER,
    SAGEMAKER_TRAIN_CHANNEL,
    LaunchSpec,
    is_eval_step,
    launch_spec_from_json,
)
from runners.data import BlockSchedule, find_jsonl, load_tokenizer, pack, read_texts

FINAL_MODEL_DIR = "final"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunPaths:
    """Where one run reads and writes; ``eval_data`` None: no evaluation."""

    data: Path
    eval_data: Path | None = None
    output_dir: Path
    checkpoint_dir: Path
    final_model_dir: Path


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runners.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--spec", help="launch spec JSON file (ftplan launch writes one)")
    parser.add_argument("--data", help="training JSONL file (or a folder holding one)")
    parser.add_argument(
        "--eval-data",
        help="held-out JSONL file (or a folder holding one), evaluated every eval_every_steps "
        "of the spec and after the last step",
    )
    parser.add_argument("--output-dir", help="folder for metrics, checkpoints and the model")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in the output folder",
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="random weights from the model's config (no download)",
    )
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--device", choices=DEVICES, help="override the spec's device")
    parser.add_argument(
        f"--{SAGEMAKER_SPEC_HYPERPARAMETER}",
        dest="spec_json",
        help="the launch spec as JSON (SageMaker hyperparameter)",
    )
    args, _unknown = parser.parse_known_args(argv)  # SageMaker may pass extra hyperparameters
    return args


def resolve_spec(args: argparse.Namespace, env: dict[str, str]) -> LaunchSpec:
    """The launch spec from ``--spec``, ``--ftplan_spec`` or ``SM_HPS``, with CLI overrides.

    Raises:
        ValueError: If no spec is given or it is invalid.
    """
    if args.spec:
        spec = launch_spec_from_json(
            read_text_limited(args.spec, what="launch spec", max_bytes=16 * 1024 * 1024),
            where=f"launch spec {args.spec!r}",
        )
    elif args.spec_json:
        spec = launch_spec_from_json(args.spec_json, where=f"--{SAGEMAKER_SPEC_HYPERPARAMETER}")
    elif SAGEMAKER_SPEC_HYPERPARAMETER in json.loads(env.get("SM_HPS", "{}")):
        value = json.loads(env["SM_HPS"])[SAGEMAKER_SPEC_HYPERPARAMETER]
        # The SageMaker toolkit JSON-decodes hyperparameter values, so this may be an object.
        spec = launch_spec_from_json(value, where=f"SM_HPS[{SAGEMAKER_SPEC_HYPERPARAMETER!r}]")
    else:
        raise ValueError(
            "no launch spec: pass --spec launch.json (ftplan launch --dry-run "
            f"writes one) or run on SageMaker with the {SAGEMAKER_SPEC_HYPERPARAMETER} "
            "hyperparameter"
        )
    overrides: dict[str, Any] = {}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.random_init:
        overrides["random_init"] = True
    if args.device:
        overrides["device"] = args.device
    if spec.checkpoint is not None and spec.checkpoint.startswith("s3://"):
        # SageMaker copied the weights into the ``model`` channel (runners.sagemaker).
        channel = env.get(f"SM_CHANNEL_{SAGEMAKER_MODEL_CHANNEL.upper()}")
        if not channel:
            raise ValueError(
                f"weights {spec.checkpoint!r} are on S3 but no '{SAGEMAKER_MODEL_CHANNEL}' input "
                "channel delivered them. To fix: launch with 'ftplan launch --target sagemaker', "
                "which adds that channel, or copy them down and pass a local folder"
            )
        overrides["checkpoint"] = channel
    return dataclasses.replace(spec, **overrides) if overrides else spec


def resolve_paths(args: argparse.Namespace, env: dict[str, str]) -> RunPaths:
    """Data and output folders from the flags, else from SageMaker's environment.

    Raises:
        ValueError: If neither says where the data or the output go.
        FileNotFoundError: If the data or eval data file (or folder) is missing.
    """
    data = args.data or env.get(f"SM_CHANNEL_{SAGEMAKER_TRAIN_CHANNEL.upper()}")
    eval_data = args.eval_data or env.get(f"SM_CHANNEL_{SAGEMAKER_EVAL_CHANNEL.upper()}")
    if not data:
        raise ValueError("no training data: pass --data FILE.jsonl")
    model_dir = env.get("SM_MODEL_DIR")
    output = args.output_dir or env.get("SM_OUTPUT_DATA_DIR") or model_dir
    if not output:
        raise ValueError("no output folder: pass --output-dir DIR")
    on_sagemaker = "SM_MODEL_DIR" in env and Path(SAGEMAKER_CHECKPOINT_DIR).parent.is_dir()
    checkpoint_dir = (
        Path(SAGEMAKER_CHECKPOINT_DIR) if on_sagemaker else Path(output) / "checkpoints"
    )
    final_dir = (
        Path(model_dir) if model_dir and not args.output_dir else (Path(output) / FINAL_MODEL_DIR)
    )
    return RunPaths(
        data=find_jsonl(data),
        eval_data=find_eval_jsonl(eval_data) if eval_data else None,
        output_dir=Path(output),
        checkpoint_dir=checkpoint_dir,
        final_model_dir=final_dir,
    )


class _Log:
    """JSON-lines metrics to stdout and ``metrics.jsonl`` (main process only)."""

    def __init__(self, path: Path, *, enabled: bool) -> None:
        self._path = path
        self._enabled = enabled

    def __call__(self, record: dict[str, Any] | str) -> None:
        if not self._enabled:
            return
        line = record if isinstance(record, str) else json.dumps(record, sort_keys=True)
        print(line, flush=True)
        with self._path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def weights_checkpoint(spec: LaunchSpec, *, log: Callable[[dict[str, Any]], None]) -> str | None:
    """Where the recipe loads weights from: None (random weights from the architecture) for
    ``random_init`` or a local folder that holds a config but no weight files (offline checks);
    else the hub id or local path."""
    if spec.random_init:
        return None
    source = Path(spec.weights_source)
    if source.is_dir() and not any(source.glob("*.safetensors")) and not any(source.glob("*.bin")):
        log(
            {
                "event": "random_init",
                "reason": f"{source} holds no weight files; random weights from the architecture",
            }
        )
        return None
    return spec.weights_source


def _batch(blocks: list[list[int]], indices: list[int], device: str) -> Any:
    import torch

    return torch.tensor([blocks[i] for i in indices], dtype=torch.long, device=device)


def _run_step(
    prepared: Any,
    batches: list[Any],
    *,
    accelerator: Any,
    forward_backward: Callable[..., Any],
    optimizer_step: Callable[..., None],
    train_step: Callable[..., float],
) -> float:
    """One optimizer step over ``len(batches)`` micro-batches; returns the mean loss."""
    import contextlib

    if len(batches) == 1 and accelerator is None:
        return train_step(prepared, batches[0], batches[0])
    losses = []
    if is_deepspeed(accelerator):
        # DeepSpeed scales the loss, accumulates (the config's gradient_accumulation_steps is
        # the plan's) and steps its engine inside accelerator.backward.
        for ids in batches:
            losses.append(forward_backward(prepared, ids, ids, backward=accelerator.backward))
        return float(sum(float(loss) for loss in losses) / len(losses))
    for i, ids in enumerate(batches):
        last = i == len(batches) - 1
        sync = (
            contextlib.nullcontext()
            if accelerator is None or last
            else accelerator.no_sync(prepared.model)
        )
        with sync:
            losses.append(forward_backward(prepared, ids, ids))
    if len(batches) > 1:
        # The recipe's loss is a per-micro-batch mean; average the accumulated gradients.
        for param in prepared.model.parameters():
            if param.grad is not None:
                param.grad.div_(len(batches))
    optimizer_step(prepared)
    return float(sum(float(loss) for loss in losses) / len(losses))


@dataclasses.dataclass(frozen=True, slots=True)
class _Session:
    """This process's place in the run: its accelerator (None on one device), rank, world
    size, torch device and metrics log."""

    accelerator: Any
    rank: int
    world: int
    device: str
    log: _Log

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


@dataclasses.dataclass(frozen=True, slots=True)
class _Inputs:
    """What the run trains on, read before any weight loads: the checkpoint and its config,
    the tokenizer, the packed blocks and their schedule, the eval blocks and the run's
    identity (plan, data digest, processes)."""

    checkpoint: str | None
    original_config: dict[str, Any] | None
    tokenizer: Any
    blocks: list[list[int]]
    schedule: BlockSchedule
    total_steps: int
    identity: dict[str, Any]
    eval_blocks: list[list[int]] | None


def _open_session(spec: LaunchSpec, paths: RunPaths) -> _Session:
    """The accelerator, rank and device of this process, and its metrics log.

    Raises:
        RuntimeError: If the spec asks for CUDA and none is available.
    """
    import torch

    if spec.device == CUDA_DEVICE and not torch.cuda.is_available():
        raise RuntimeError(
            "the launch spec asks for CUDA but torch sees no GPU; run on a GPU "
            "machine or pass --device cpu for a smoke run"
        )
    accelerator = accelerator_if_distributed(spec.device)
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    device = (
        str(accelerator.device)
        if accelerator is not None and spec.device == CUDA_DEVICE
        else spec.device
    )
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    log = _Log(paths.output_dir / METRICS_FILE, enabled=rank == 0)
    return _Session(accelerator=accelerator, rank=rank, world=world, device=device, log=log)


def _read_inputs(spec: LaunchSpec, paths: RunPaths, session: _Session, *, resume: bool) -> _Inputs:
    """Tokenizer, data, schedule and eval data; on resume, the checkpoints' identity is checked
    first, so checkpoints of another plan or data are refused before any weight loads."""
    checkpoint = weights_checkpoint(spec, log=session.log)
    original_config = _check_checkpoint(spec, checkpoint)
    # Real weights need their own tokenizer (an error, never a fallback); random weights without
    # a checkpoint use a tokenizer only if it is already on disk, else bytes (logged).
    tokenizer = load_tokenizer(
        spec.weights_source,
        vocab_size=spec.model.vocab_size,
        force_byte=spec.tokenizer == BYTE_TOKENIZER,
        allow_download=not (spec.random_init and spec.checkpoint is None),
        required=checkpoint is not None and spec.tokenizer != BYTE_TOKENIZER,
        log=session.log,
    )
    texts = read_texts(paths.data, tokenizer)
    blocks = pack(
        (tokenizer.encode_text(t) for t in texts),
        seq_len=spec.config.seq_len,
        eos_token_id=tokenizer.eos_token_id,
    )
    schedule = BlockSchedule(
        num_blocks=len(blocks),
        micro_batch_size=spec.config.micro_batch_size,
        grad_accum_steps=spec.grad_accum_steps,
        world_size=session.world,
        seed=spec.seed,
    )
    identity = run_identity(spec, world_size=session.world, data_sha256=file_sha256(paths.data))
    if resume:
        check_resumable(paths.checkpoint_dir, identity)
    # Read before the model loads: a bad eval file fails in seconds, not after setup.
    eval_blocks = (
        None
        if paths.eval_data is None
        else load_eval_blocks(paths.eval_data, tokenizer, seq_len=spec.config.seq_len)
    )
    return _Inputs(
        checkpoint=checkpoint,
        original_config=original_config,
        tokenizer=tokenizer,
        blocks=blocks,
        schedule=schedule,
        total_steps=schedule.total_steps(epochs=spec.epochs, max_steps=spec.max_steps),
        identity=identity,
        eval_blocks=eval_blocks,
    )


def _build_model(spec: LaunchSpec, session: _Session, checkpoint: str | None) -> Any:
    """The recipe's prepared model on this process, wrapped for several processes.

    Raises:
        ValueError: If the weights cannot be loaded (one line: missing files, a gated repo).
    """
    import torch

    from profiler.recipes import SETUP_FUNCTIONS, loads_on_rank0_only

    if session.cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(spec.seed)
    rank0_only = loads_on_rank0_only()
    if rank0_only is not None:
        # One line per rank (stderr, every rank): whether this process reads the weights.
        print(
            json.dumps(
                {"event": "weights_loading", "rank": session.rank, "materialises": rank0_only}
            ),
            file=sys.stderr,
            flush=True,
        )
    try:
        prepared = SETUP_FUNCTIONS[spec.config.method](
            spec.model,
            spec.config,
            device=session.device,
            checkpoint=checkpoint,
            learning_rate=spec.peak_learning_rate,
        )
    except OSError as exc:  # missing weight files, gated repo, no network: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot load the weights {checkpoint!r}: {first}") from None
    if session.accelerator is not None:
        prepare_distributed(
            prepared,
            session.accelerator,
            spec.config,
            learning_rate=spec.peak_learning_rate,
            rank0_only=rank0_only is not None,
        )
    return prepared


@dataclasses.dataclass(slots=True)
class _Run:
    """The training loop's state: where it started, what it has saved and measured."""

    spec: LaunchSpec
    paths: RunPaths
    session: _Session
    inputs: _Inputs
    prepared: Any
    start_step: int
    tokens_per_step: int
    clock: CheckpointClock
    saved_steps: list[int]
    step_times: list[float] = dataclasses.field(default_factory=list)
    evaluations: list[EvalResult] | None = None
    first_loss: float | None = None
    loss: float = math.nan

    def save(self, done: int) -> None:
        """Checkpoint after ``done`` optimizer steps (atomically, with its identity)."""
        began_s = time.monotonic()
        path = save_checkpoint(
            self.paths.checkpoint_dir,
            prepared=self.prepared,
            step=done,
            tokens_seen=done * self.tokens_per_step,
            epoch=done / self.inputs.schedule.steps_per_epoch,
            label=self.spec.config.label(),
            method=self.spec.config.method,
            accelerator=self.session.accelerator,
            identity=self.inputs.identity,
        )
        self.saved_steps.append(done)
        write_s = time.monotonic() - began_s
        raised = self.clock.saved(now_s=time.monotonic(), write_s=write_s)
        self.session.log(
            {"event": "checkpoint", "step": done, "path": str(path), "write_s": write_s}
        )
        if raised:
            self.session.log({"event": "checkpoint_interval_raised", "min_interval_s": write_s})

    def run_eval(self, done: int) -> None:
        """Evaluate the held-out set after ``done`` steps (nothing without one)."""
        from profiler.recipes import eval_loss

        if self.inputs.eval_blocks is None or self.evaluations is None:
            return
        result = evaluate(
            self.prepared,
            self.inputs.eval_blocks,
            step=done,
            micro_batch_size=self.spec.config.micro_batch_size,
            device=self.session.device,
            accelerator=self.session.accelerator,
            eval_loss=eval_loss,
        )
        self.evaluations.append(result)
        self.session.log(
            {
                "event": "eval",
                "step": done,
                "eval_loss": result.loss,
                "eval_tokens": result.tokens,
                "eval_s": result.seconds,
            }
        )

    def step(self, step: int) -> tuple[int, float]:
        """One optimizer step: its micro-batches, the loss, the step's metrics line; returns
        (steps done, seconds)."""
        import torch

        from profiler.recipes import forward_backward, optimizer_step, train_step

        session, inputs = self.session, self.inputs
        batches = [
            _batch(
                inputs.blocks,
                inputs.schedule.blocks_for(step=step, micro=k, rank=session.rank),
                session.device,
            )
            for k in range(self.spec.grad_accum_steps)
        ]
        if session.cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        self.loss = _run_step(
            self.prepared,
            batches,
            accelerator=session.accelerator,
            forward_backward=forward_backward,
            optimizer_step=optimizer_step,
            train_step=train_step,
        )
        if session.cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - began
        self.step_times.append(elapsed)
        finite = math.isfinite(self.loss)
        if self.first_loss is None and finite:
            self.first_loss = self.loss
        done = step + 1
        total = inputs.total_steps
        if done % self.spec.log_every_steps == 0 or done == total or not finite:
            record: dict[str, Any] = {
                "event": "step",
                "step": done,
                "loss": self.loss if finite else None,
                "step_time_s": elapsed,
                "tokens_per_s": self.tokens_per_step / elapsed,
                "epoch": done / inputs.schedule.steps_per_epoch,
            }
            if session.cuda:
                record["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
            session.log(record)
        return done, elapsed

    def loop(self) -> None:
        """Every step from the start step; stops (and saves) on a signal all ranks agree on,
        fails on a non-finite loss, evaluates and checkpoints on schedule.

        Raises:
            NonFiniteLoss: At the step whose loss is NaN or infinite (nothing is saved).
            TrainingStopped: After saving, when a stop signal arrived.
        """
        total = self.inputs.total_steps
        stop = StopRequest.install()
        try:
            for step in range(self.start_step, total):
                done, _ = self.step(step)
                signum, nonfinite = stop.agreed_with(
                    accelerator=self.session.accelerator,
                    device=self.session.device,
                    nonfinite=not math.isfinite(self.loss),
                )
                if nonfinite:
                    self.session.log(
                        {"event": "failed", "reason": "non-finite loss", "step": done}
                    )
                    raise NonFiniteLoss(
                        step=done,
                        loss=self.loss,
                        last_checkpoint_step=self.saved_steps[-1] if self.saved_steps else None,
                    )
                if signum is not None:
                    self.save(done)
                    self.session.log({"event": "stopped", "signal": signum, "step": done})
                    raise TrainingStopped(signum=signum, step=done)
                # After the stop check (a stop request saves at once; that step's eval is
                # skipped) and before the periodic save (a resumed run never repeats a saved
                # step's eval).
                if is_eval_step(
                    done, total_steps=total, eval_every_steps=self.spec.eval_every_steps
                ):
                    self.run_eval(done)
                if done < total and self.clock.due(done=done, now_s=time.monotonic()):
                    self.save(done)
        finally:
            stop.uninstall()


def _start(
    spec: LaunchSpec, paths: RunPaths, session: _Session, inputs: _Inputs, *, resume: bool
) -> _Run:
    """The model (resumed from its last good checkpoint on resume) and the loop's state; logs
    the start line."""
    prepared = _build_model(spec, session, inputs.checkpoint)
    found = (
        resume_from(
            paths.checkpoint_dir,
            prepared=prepared,
            method=spec.config.method,
            accelerator=session.accelerator,
            log=session.log,
        )
        if resume
        else None
    )
    run = _Run(
        spec=spec,
        paths=paths,
        session=session,
        inputs=inputs,
        prepared=prepared,
        start_step=found.step if found is not None else 0,
        tokens_per_step=spec.config.tokens_per_step * spec.grad_accum_steps * session.world,
        clock=CheckpointClock(
            every_steps=spec.checkpoint_every_steps,
            every_s=(
                None
                if spec.checkpoint_every_minutes is None
                else spec.checkpoint_every_minutes * 60
            ),
            last_save_s=time.monotonic(),
        ),
        saved_steps=[] if found is None else [found.step],
        evaluations=None if inputs.eval_blocks is None else [],
    )
    session.log(
        {
            "event": "start",
            "model": spec.model.name,
            "config": spec.config.label(),
            "device": session.device,
            "world_size": session.world,
            "tokenizer": inputs.tokenizer.name,
            "sequences": len(inputs.blocks),
            "eval_sequences": None if inputs.eval_blocks is None else len(inputs.eval_blocks),
            "steps_per_epoch": inputs.schedule.steps_per_epoch,
            "total_steps": inputs.total_steps,
            "start_step": run.start_step,
            "resumed_from": str(found.path) if found else None,
            "trainable_params": prepared.trainable_params,
            "total_params": prepared.total_params,
        }
    )
    return run


def _finish(run: _Run) -> dict[str, Any]:
    """The final checkpoint and eval, the final model, and the summary (written by rank 0)."""
    import torch

    spec, session, inputs = run.spec, run.session, run.inputs
    end_step = max(inputs.total_steps, run.start_step)
    if end_step == run.start_step:
        run.run_eval(end_step)  # resumed after the last step: the final eval is always reported
    if end_step > run.start_step or not run.saved_steps:
        run.save(end_step)
    save_final_model(
        run.prepared,
        run.paths.final_model_dir,
        accelerator=session.accelerator,
        tokenizer=inputs.tokenizer,
        use_cache=None
        if inputs.original_config is None
        else inputs.original_config.get("use_cache"),
    )
    peak_alloc = peak_res = None
    if session.cuda:
        peak_alloc = torch.cuda.max_memory_allocated() / GIB
        peak_res = torch.cuda.max_memory_reserved() / GIB
    summary = build_summary(
        spec,
        step_times_s=run.step_times,
        tokens_per_step=run.tokens_per_step,
        peak_allocated_gib=peak_alloc,
        peak_reserved_gib=peak_res,
        first_loss=run.first_loss,
        last_loss=None if math.isnan(run.loss) else run.loss,
        steps_done=end_step,
        start_step=run.start_step,
        device_name=torch.cuda.get_device_name() if session.cuda else "cpu",
        model_config=trained_model_config(run.prepared, accelerator=session.accelerator),
        evaluations=run.evaluations,
    )
    if session.is_main:
        atomic_write_text(
            run.paths.output_dir / SUMMARY_FILE,
            json.dumps(summary, indent=2, sort_keys=True) + "\n",
        )
        session.log({"event": "summary", **summary["comparison"]})
    return summary


def train(spec: LaunchSpec, paths: RunPaths, *, resume: bool = False) -> dict[str, Any]:
    """Train ``spec`` on ``paths.data`` (evaluating ``paths.eval_data`` when given); returns
    the summary (also written to summary.json). The steps: this process's session, the inputs
    (read and checked before any weight loads), the model and the loop's state, the loop, the
    final checkpoint, model and summary.

    Raises:
        ValueError: On a bad dataset or eval dataset (the message names the file and line), an
            eval set shorter than one sequence, or a mismatched checkpoint.
        RuntimeError: If the spec asks for CUDA and none is available.
        NonFiniteLoss: At a step whose loss is NaN or infinite.
        TrainingStopped: After a stop signal (a checkpoint is saved first).
    """
    session = _open_session(spec, paths)
    inputs = _read_inputs(spec, paths, session, resume=resume)
    run = _start(spec, paths, session, inputs, resume=resume)
    run.loop()
    return _finish(run)


def _check_checkpoint(spec: LaunchSpec, checkpoint: str | None) -> dict[str, Any] | None:
    """Read the checkpoint's config (hub, SageMaker channel or folder) and refuse it when its
    architecture is not the plan's model; returns the config as saved (None: random weights).

    Raises:
        ValueError: Unreadable config (gated, missing) or another architecture (one line).
    """
    if checkpoint is None:
        return None
    from profiler.recipes import checkpoint_config
    from runners._weights import architecture_mismatch

    config = checkpoint_config(checkpoint, for_training=False)
    saved = dict(json.loads(config.to_json_string(use_diff=False)))
    mismatch = architecture_mismatch(spec.model, saved)
    if mismatch is not None:
        raise ValueError(f"weights {checkpoint!r} are not the planned model: {mismatch}")
    return saved


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the process exit code (2 on bad input)."""
    args = _parse_args(argv)
    env = dict(os.environ)
    try:
        spec = resolve_spec(args, env)
        paths = resolve_paths(args, env)
        resume = args.resume or (paths.checkpoint_dir == Path(SAGEMAKER_CHECKPOINT_DIR))
        train(spec, paths, resume=resume)
    except TrainingStopped as stopped:
        print(f"stopped by signal {stopped.signum} after step {stopped.step}", file=sys.stderr)
        return 128 + stopped.signum
    except NonFiniteLoss as failed:
        print(f"error: {failed}", file=sys.stderr, flush=True)
        _record_failure(f"error: {failed}", env)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        _record_failure(f"error: {exc}", env)
        return 2
    return 0


def _record_failure(line: str, env: dict[str, str]) -> None:
    """On SageMaker, the one-line error becomes the job's FailureReason."""
    failure = Path(SAGEMAKER_FAILURE_FILE)
    if "SM_MODEL_DIR" in env and failure.parent.is_dir():
        failure.write_text(line[:1024] + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
