"""Fault injection on real CPU runs of a tiny model, through the local runner (supervisor and
trainer processes) and the training entrypoint: a resume while the run is still going, a
resume with another plan or data, a loss that turns NaN, a checkpoint corrupted without
changing its size, the trainer killed with SIGKILL (what the out-of-memory killer sends), and a
killed supervisor. Each must end in a state that says what happened, never lose checkpoints,
and never start a second trainer in the same folder."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from model_specs import TINY_LLAMA

from profiler import Method, TuningConfig
from runners import LaunchSpec, LocalRunner, RunnerError, RunState
from runners._checkpoint import CheckpointMismatch, list_checkpoints

pytestmark = pytest.mark.slow

SENTENCE = "the quick brown fox jumps over the lazy dog. "


def _spec(**overrides: Any) -> LaunchSpec:
    base = LaunchSpec(
        model=TINY_LLAMA,
        config=TuningConfig(
            method=Method.LORA,
            lora_rank=8,
            lora_targets="all-linear",
            micro_batch_size=2,
            seq_len=32,
        ),
        random_init=True,
        tokenizer="byte",
        device="cpu",
        learning_rate=1e-2,
        max_steps=6,
        checkpoint_every_steps=3,
        checkpoint_every_minutes=None,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text((json.dumps({"text": SENTENCE * 3}) + "\n") * 40, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the machine is shared; tiny models need one


def _wait(check: Callable[[], bool], *, what: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _steps_logged(runner: LocalRunner, run_id: str) -> int:
    metrics = runner.runs_dir / run_id / "output" / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    lines = metrics.read_text(encoding="utf-8").splitlines()
    return sum(1 for line in lines if '"event": "step"' in line)


def _finished(runner: LocalRunner, run_id: str) -> Any:
    _wait(lambda: runner.status(run_id).state.finished, what=f"run {run_id} to end")
    return runner.status(run_id)


def _status_file(runner: LocalRunner, run_id: str) -> dict[str, Any]:
    return dict(json.loads((runner.runs_dir / run_id / "status.json").read_text()))


def test_resume_while_running_is_refused_and_sigkill_is_a_failure(
    tmp_path: Path, data: Path
) -> None:
    runner = LocalRunner(runs_dir=tmp_path / "runs")
    long = _spec(max_steps=100_000, checkpoint_every_steps=2)
    run_id = runner.launch(long, data=str(data)).run_id
    checkpoints = tmp_path / "runs" / run_id / "output" / "checkpoints"
    _wait(lambda: len(list_checkpoints(checkpoints)) >= 1, what="a first checkpoint")
    # A second trainer in the same folder: refused, nothing started.
    with pytest.raises(RunnerError, match="is still running .* a second trainer"):
        runner.launch(long, data=str(data), resume_run_id=run_id)
    trainer = _status_file(runner, run_id)["pid"]
    os.kill(trainer, signal.SIGKILL)  # what the kernel's out-of-memory killer does
    status = _finished(runner, run_id)
    assert status.state is RunState.FAILED
    assert "killed by signal 9" in status.detail and "out-of-memory" in status.detail
    # The same plan and data resume from the newest checkpoint (a new step limit is allowed).
    newest = list_checkpoints(checkpoints)[-1].step
    again = dataclasses.replace(long, max_steps=newest + 2)
    runner.launch(again, data=str(data), resume_run_id=run_id)
    status = _finished(runner, run_id)
    assert status.state is RunState.SUCCEEDED, status.detail
    summary = json.loads((tmp_path / "runs" / run_id / "output" / "summary.json").read_text())
    assert summary["resumed_from_step"] == newest
    assert summary["steps_completed"] == newest + 2


def test_resume_with_another_plan_or_data_is_refused(tmp_path: Path, data: Path) -> None:
    from runners.train import RunPaths, train

    runner = LocalRunner(runs_dir=tmp_path / "runs")
    spec = _spec()
    run_id = runner.launch(spec, data=str(data)).run_id
    assert _finished(runner, run_id).state is RunState.SUCCEEDED
    checkpoints = tmp_path / "runs" / run_id / "output" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()}
    other_rank = dataclasses.replace(spec, config=dataclasses.replace(spec.config, lora_rank=16))
    with pytest.raises(RunnerError, match=r"another plan or data \(config: .*r8.*r16"):
        runner.launch(other_rank, data=str(data), resume_run_id=run_id)
    other_data = tmp_path / "other.jsonl"
    other_data.write_text(json.dumps({"text": SENTENCE * 4}) + "\n", encoding="utf-8")
    with pytest.raises(RunnerError, match=r"another plan or data \(data_sha256"):
        runner.launch(spec, data=str(other_data), resume_run_id=run_id)
    # The training entrypoint refuses too (SageMaker and SkyPilot resume through it), before
    # any weight loads, and the checkpoints stay as they were (no restart at step 0, no prune).
    paths = RunPaths(
        data=data,
        output_dir=tmp_path / "elsewhere",
        checkpoint_dir=checkpoints,
        final_model_dir=tmp_path / "elsewhere" / "final",
    )
    with pytest.raises(CheckpointMismatch, match="belong to another run .*config"):
        train(other_rank, paths, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()} == before


def test_a_nan_loss_fails_the_run_at_its_step_without_saving(tmp_path: Path, data: Path) -> None:
    runner = LocalRunner(runs_dir=tmp_path / "runs")
    # A learning rate of 1e30 sends the weights to ~1e30 after one step: the loss overflows.
    run_id = runner.launch(
        _spec(learning_rate=1e30, checkpoint_every_steps=1), data=str(data)
    ).run_id
    status = _finished(runner, run_id)
    assert status.state is RunState.FAILED
    output = tmp_path / "runs" / run_id / "output"
    failed = [
        json.loads(line)
        for line in (output / "metrics.jsonl").read_text().splitlines()
        if '"event": "failed"' in line
    ]
    assert len(failed) == 1 and failed[0]["reason"] == "non-finite loss"
    step = failed[0]["step"]
    assert f"the loss became nan at step {step}" in status.detail
    assert f"step {step}/6, loss n/a" in status.detail  # not the last finite loss
    assert not (output / "summary.json").exists()
    assert all(c.step < step for c in list_checkpoints(output / "checkpoints"))


def test_same_size_corruption_is_caught_by_the_checksum(tmp_path: Path, data: Path) -> None:
    from runners.train import RunPaths, train

    out = tmp_path / "out"
    paths = RunPaths(
        data=data, output_dir=out, checkpoint_dir=out / "checkpoints", final_model_dir=out / "f"
    )
    import torch

    torch.set_num_threads(1)
    train(_spec(), paths)
    newest = out / "checkpoints" / "checkpoint-00000006" / "model" / "adapter_model.safetensors"
    content = bytearray(newest.read_bytes())
    content[-1] ^= 0xFF  # one flipped bit pattern in a weight: the size is unchanged
    newest.write_bytes(bytes(content))
    assert [c.step for c in list_checkpoints(out / "checkpoints")] == [3, 6]  # sizes agree
    summary = train(_spec(max_steps=8), paths, resume=True)
    skipped = [
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if '"checkpoint_skipped"' in line
    ]
    assert len(skipped) == 1 and "SHA-256" in skipped[0]["reason"]
    assert summary["resumed_from_step"] == 3 and summary["steps_completed"] == 8


def test_a_killed_supervisor_leaves_the_trainer_followed_and_stoppable(
    tmp_path: Path, data: Path
) -> None:
    runner = LocalRunner(runs_dir=tmp_path / "runs")
    run_id = runner.launch(_spec(max_steps=100_000, checkpoint_every_steps=None), data=str(data))
    run_id_text = run_id.run_id
    _wait(lambda: _steps_logged(runner, run_id_text) >= 2, what="two steps")
    record = _status_file(runner, run_id_text)
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    _wait(
        lambda: "supervisor is gone" in runner.status(run_id_text).detail,
        what="status to notice the supervisor is gone",
    )
    status = runner.status(run_id_text)
    assert status.state is RunState.RUNNING  # the trainer still runs: not "failed"
    runner.stop(run_id_text)  # reaches the trainer itself
    status = _finished(runner, run_id_text)
    assert status.state is RunState.STOPPED, status.detail
    checkpoints = tmp_path / "runs" / run_id_text / "output" / "checkpoints"
    assert list_checkpoints(checkpoints)  # it checkpointed on the way out
