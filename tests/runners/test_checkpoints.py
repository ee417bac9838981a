"""Checkpoints that survive what clouds do to them: complete only with the marker written last
(files and sizes), the previous one used when the newest is damaged, no unpickling of arbitrary
objects, a checkpoint on SIGTERM, LoRA checkpoints holding adapters and optimizer only (also
under two processes, where rank 1 writes nothing), and the checkpoint interval rules."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from model_specs import TINY_LLAMA
from ports import free_port

from profiler import Method, Sharding, TuningConfig
from runners import LaunchSpec, launch_spec_to_json, parse_checkpoint_every
from runners._checkpoint import (
    MARKER_FILE,
    OPTIMIZER_FILE,
    file_sha256,
    is_complete,
    latest_checkpoint,
    list_checkpoints,
)
from runners._stop import CheckpointClock

ROOT = Path(__file__).resolve().parents[2]
SENTENCE = "the quick brown fox jumps over the lazy dog. "


def tiny_spec(method: Method, **overrides: Any) -> LaunchSpec:
    lora = method is not Method.FULL
    base = LaunchSpec(
        model=TINY_LLAMA,
        config=TuningConfig(
            method=method,
            lora_rank=8 if lora else None,
            lora_targets="all-linear" if lora else None,
            micro_batch_size=2,
            seq_len=32,
        ),
        random_init=True,
        tokenizer="byte",
        device="cpu",
        learning_rate=1e-2 if lora else 3e-3,
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


def _train(spec: LaunchSpec, data: Path, out: Path, *, resume: bool = False) -> dict[str, Any]:
    import torch

    from runners.train import RunPaths, train

    torch.set_num_threads(1)
    paths = RunPaths(
        data=data,
        output_dir=out,
        checkpoint_dir=out / "checkpoints",
        final_model_dir=out / "final",
    )
    return train(spec, paths, resume=resume)


def _events(out: Path, name: str) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == name]


# -- the interval -------------------------------------------------------------------------------
def test_checkpoint_every_parses_steps_and_minutes() -> None:
    assert parse_checkpoint_every("200steps") == (200, None)
    assert parse_checkpoint_every("200") == (200, None)
    assert parse_checkpoint_every("1 step") == (1, None)
    assert parse_checkpoint_every("15m") == (None, 15.0)
    assert parse_checkpoint_every("2h") == (None, 120.0)
    for bad in ("", "0", "-3m", "fast", "1.5steps"):
        with pytest.raises(ValueError, match="--checkpoint-every"):
            parse_checkpoint_every(bad)


def test_interval_is_never_shorter_than_writing_a_checkpoint() -> None:
    clock = CheckpointClock(every_steps=None, every_s=60.0, last_save_s=0.0)
    assert not clock.due(done=1, now_s=59.0) and clock.due(done=1, now_s=60.0)
    assert clock.saved(now_s=200.0, write_s=140.0) is True  # a write took longer than 60 s
    assert clock.saved(now_s=200.0, write_s=140.0) is False  # said once
    assert not clock.due(done=2, now_s=330.0)  # 130 s since the last save < 140 s to write one
    assert clock.due(done=2, now_s=340.0)
    steps = CheckpointClock(every_steps=5, every_s=None, last_save_s=0.0, write_s=10.0)
    assert not steps.due(done=5, now_s=9.0) and steps.due(done=5, now_s=10.0)
    assert not steps.due(done=6, now_s=100.0)


def test_cli_checkpoint_every_reaches_the_spec(tmp_path: Path) -> None:
    from plan_fixtures import make_plan

    from planner.handoff import launch_spec_from_plan, plan_candidate

    plan = make_plan()
    candidate = plan_candidate(plan)
    spec = launch_spec_from_plan(plan, candidate, checkpoint_every="50steps")
    assert (spec.checkpoint_every_steps, spec.checkpoint_every_minutes) == (50, None)
    spec = launch_spec_from_plan(plan, candidate, checkpoint_every="7m")
    assert (spec.checkpoint_every_steps, spec.checkpoint_every_minutes) == (None, 7.0)
    default = launch_spec_from_plan(plan, candidate)
    assert default.checkpoint_every_steps is None and default.checkpoint_every_minutes


# -- completeness, fallback, safe loading -------------------------------------------------------
@pytest.mark.slow
def test_only_checkpoints_with_every_listed_file_count(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _train(tiny_spec(Method.LORA), data, out)
    root = out / "checkpoints"
    assert [c.step for c in list_checkpoints(root)] == [3, 6]
    newest = root / "checkpoint-00000006"
    marker = json.loads((newest / MARKER_FILE).read_text())
    assert {"state.json", "optimizer.pt", "rng.safetensors"} <= set(marker["files"])
    assert set(marker["sha256"]) == set(marker["files"])  # every file's digest, too
    adapters = {name for name in marker["files"] if name.startswith("model/")}
    assert "model/adapter_model.safetensors" in adapters
    assert "model/model.safetensors" not in adapters  # LoRA: adapters, not the base model
    # An S3 sync that uploaded the marker before a file, or stopped half-way through one:
    weights = newest / "model" / "adapter_model.safetensors"
    content = weights.read_bytes()
    weights.write_bytes(content[: len(content) // 2])
    assert not is_complete(newest)
    assert latest_checkpoint(root).step == 3  # type: ignore[union-attr]
    weights.unlink()
    assert not is_complete(newest)
    weights.write_bytes(content)
    assert is_complete(newest)
    (newest / MARKER_FILE).unlink()  # the marker is the last thing written: no marker, no use
    assert [c.step for c in list_checkpoints(root)] == [3]


@pytest.mark.slow
def test_resume_falls_back_to_the_previous_checkpoint_and_never_unpickles_objects(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _train(tiny_spec(Method.FULL), data, out)
    newest = out / "checkpoints" / "checkpoint-00000006"
    # Same size as before, so the marker still matches, but a pickle that would run code.
    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"optimizer": _Evil(tmp_path / "pwned")}, evil)
    marker = json.loads((newest / MARKER_FILE).read_text())
    (newest / OPTIMIZER_FILE).write_bytes(evil.read_bytes())
    # A marker rewritten to match (size and SHA-256): only torch.load(weights_only) stands.
    marker["files"][OPTIMIZER_FILE] = evil.stat().st_size
    marker["sha256"][OPTIMIZER_FILE] = file_sha256(evil)
    (newest / MARKER_FILE).write_text(json.dumps(marker))
    assert is_complete(newest)
    summary = _train(tiny_spec(Method.FULL, max_steps=9), data, out, resume=True)
    assert not (tmp_path / "pwned").exists()
    skipped = _events(out, "checkpoint_skipped")
    assert len(skipped) == 1 and "checkpoint-00000006" in skipped[0]["path"]
    assert summary["resumed_from_step"] == 3 and summary["steps_completed"] == 9


class _Evil:
    """Unpickling it would create a file: proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.target,))


# -- SIGTERM ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_then_resume_continues(data: Path, tmp_path: Path) -> None:
    spec = tiny_spec(Method.LORA, max_steps=100_000, checkpoint_every_steps=None)
    spec_file = tmp_path / "launch.json"
    spec_file.write_text(launch_spec_to_json(spec))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "runners.train", "--spec", str(spec_file)]
    argv += ["--data", str(data), "--output-dir", str(out)]
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if metrics.is_file() and '"event": "step"' in metrics.read_text():
            break
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, stderr.decode()
    stopped = _events(out, "stopped")
    assert len(stopped) == 1
    found = latest_checkpoint(out / "checkpoints")
    assert found is not None and found.step == stopped[0]["step"]
    assert not (out / "summary.json").exists()  # stopped, not finished
    resumed = _train(dataclasses.replace(spec, max_steps=found.step + 2), data, out, resume=True)
    assert resumed["resumed_from_step"] == found.step
    assert resumed["steps_completed"] == found.step + 2


# -- two processes (gloo) ----------------------------------------------------------------------
@pytest.mark.slow
def test_two_process_lora_checkpoint_holds_adapters_and_rank_1_writes_nothing(
    data: Path, tmp_path: Path
) -> None:
    pytest.importorskip("accelerate")
    spec = tiny_spec(Method.LORA, max_steps=4, checkpoint_every_steps=2)
    two = dataclasses.replace(spec.config, gpu_count=2, sharding=Sharding.DDP)
    spec = dataclasses.replace(spec, config=two)
    spec_file = tmp_path / "launch.json"
    spec_file.write_text(launch_spec_to_json(spec))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    argv += ["--master_port", str(free_port()), "-m", "runners.train", "--spec", str(spec_file)]
    argv += ["--data", str(data), "--output-dir", str(out)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    root = out / "checkpoints"
    assert [c.step for c in list_checkpoints(root)] == [2, 4]
    for checkpoint in root.iterdir():
        files = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*")}
        files = {f for f in files if (checkpoint / f).is_file()}
        assert files == {
            "COMPLETE",
            "optimizer.pt",
            "rng.safetensors",
            "state.json",
            "model/README.md",
            "model/adapter_config.json",
            "model/adapter_model.safetensors",
        }, files
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())
