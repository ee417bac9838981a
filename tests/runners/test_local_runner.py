"""The local runner: exact commands for one and several GPUs (FSDP vs DDP accelerate configs),
refusals when the host lacks the planned GPUs or memory, the supervisor's status records, and
``ftplan launch --target local`` / ``ftplan status`` from a plan file. The real CPU training
launch through the runner is in tests/runners/test_runner_contract.py."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from model_specs import TINY_LLAMA
from plan_fixtures import make_no_feasible_plan, make_plan

from catalog import Offer, Provider
from planner.cli import main as cli
from planner.plan_io import write_plan
from profiler import Method, Precision, Sharding, TuningConfig
from runners import HostGPUs, LaunchSpec, LocalRunner, RunnerError, RunState
from runners._run_files import write_status
from runners.local import accelerate_config_yaml

H100 = ("NVIDIA H100 80GB HBM3", 79.6)
TINY = TINY_LLAMA


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def _offer(count: int) -> Offer:
    return Offer(
        provider=Provider.AWS,
        service="ec2",
        instance_type="p5.48xlarge",
        region="us-east-1",
        gpu="H100 SXM 80GB",
        gpu_count=count,
        usd_per_hour=98.32,
        spot=False,
        as_of="2025-05-01",
        source="test",
    )


def _spec(method: Method, gpus: int, *, peak_gib: float | None = 20.0) -> LaunchSpec:
    lora = method is not Method.FULL
    sharding = Sharding.NONE if gpus == 1 else (Sharding.DDP if lora else Sharding.FSDP)
    config = TuningConfig(
        method=method,
        precision=Precision.BF16_MIXED,
        lora_rank=16 if lora else None,
        lora_targets="all-linear" if lora else None,
        micro_batch_size=4,
        seq_len=1024,
        gpu_count=gpus,
        sharding=sharding,
    )
    return LaunchSpec(
        model=TINY,
        config=config,
        offer=_offer(gpus),
        checkpoint="/models/tiny",
        expected_peak_allocated_gib=peak_gib,
        expected_tokens_per_s=7000.0,
    )


def _runner(tmp_path: Path, devices: tuple[tuple[str, float], ...] = (H100,) * 8) -> LocalRunner:
    return LocalRunner(
        runs_dir=tmp_path / "runs",
        python="/usr/bin/python3",
        gpu_probe=lambda: HostGPUs(devices=devices),
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", [{"text": "hello"}])


def test_one_gpu_dry_run_is_a_plain_python_command(tmp_path: Path, data: Path) -> None:
    runner = _runner(tmp_path)
    result = runner.launch(_spec(Method.LORA, 1), data=str(data), dry_run=True)
    run_dir = Path(result.run_dir)
    assert result.dry_run and result.command == (
        "/usr/bin/python3",
        "-m",
        "runners.train",
        "--spec",
        str(run_dir / "launch.json"),
        "--data",
        str(data.resolve()),
        "--output-dir",
        str(run_dir / "output"),
    )
    env = dict(result.env)
    assert Path(env["PYTHONPATH"], "runners", "train.py").is_file()
    assert json.loads(result.spec_json)["spec"]["config"]["method"] == "lora"
    assert not (tmp_path / "runs").exists()  # a dry run starts and writes nothing


@pytest.mark.parametrize(
    ("method", "gpus", "distributed", "fsdp"),
    [
        (Method.FULL, 8, "FSDP", True),
        (Method.LORA, 2, "MULTI_GPU", False),
        (Method.QLORA, 4, "MULTI_GPU", False),
    ],
)
def test_several_gpus_use_accelerate_fsdp_for_full_ddp_for_lora(
    tmp_path: Path, data: Path, method: Method, gpus: int, distributed: str, fsdp: bool
) -> None:
    spec = _spec(method, gpus)
    result = _runner(tmp_path).launch(spec, data=str(data), dry_run=True)
    run_dir = Path(result.run_dir)
    assert result.command[:5] == (
        "/usr/bin/python3",
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(run_dir / "accelerate_config.yaml"),
    )
    assert result.command[5:7] == ("-m", "runners.train")
    config = yaml.safe_load(accelerate_config_yaml(spec))
    assert config["distributed_type"] == distributed
    assert config["num_processes"] == gpus and config["num_machines"] == 1
    assert config["mixed_precision"] == "no"  # the recipe's own autocast, as measured
    if fsdp:
        assert config["fsdp_config"]["fsdp_reshard_after_forward"] == "FULL_SHARD"
        assert config["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert config["fsdp_config"]["fsdp_use_orig_params"] is True
    else:
        assert "fsdp_config" not in config


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ((), r"needs 4 × H100 SXM 80GB but this machine has 0 GPU"),
        ((H100,) * 2, r"needs 4 × H100 SXM 80GB but this machine has 2 GPU\(s\) \(NVIDIA H100"),
        (
            (("NVIDIA L4", 22.0),) * 4,
            r"GPU 0 \(NVIDIA L4\) has 22.0 GiB but the plan's peak is 30.0",
        ),
    ],
)
def test_refuses_when_the_host_lacks_gpus_or_memory(
    tmp_path: Path, data: Path, devices: Any, message: str
) -> None:
    spec = _spec(Method.LORA, 4, peak_gib=30.0)
    with pytest.raises(RunnerError, match=message):
        _runner(tmp_path, devices).launch(spec, data=str(data))
    assert not (tmp_path / "runs").exists()
    # The dry run still shows the command, with the refusal as a warning.
    assert _runner(tmp_path, devices).launch(spec, data=str(data), dry_run=True).command


def test_refuses_several_nodes_and_missing_data(tmp_path: Path, data: Path) -> None:
    spec = dataclasses.replace(_spec(Method.LORA, 2), offer=_offer(1), nodes=2)
    with pytest.raises(RunnerError, match="2 nodes; the local runner drives one machine"):
        _runner(tmp_path).launch(spec, data=str(data))
    with pytest.raises(RunnerError, match="data file .*nope.jsonl' does not exist"):
        _runner(tmp_path).launch(_spec(Method.LORA, 1), data=str(tmp_path / "nope.jsonl"))


def test_eval_data_is_passed_as_an_absolute_path_and_must_exist(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [{"text": "held out"}])
    monkeypatch.chdir(tmp_path)
    runner = _runner(tmp_path)
    result = runner.launch(
        _spec(Method.LORA, 1), data=str(data), eval_data="heldout.jsonl", dry_run=True
    )
    argv = list(result.command)
    assert argv[argv.index("--data") + 2 : argv.index("--output-dir")] == [
        "--eval-data",
        str(heldout.resolve()),
    ]
    plain = runner.launch(_spec(Method.LORA, 1), data=str(data), dry_run=True).command
    assert "--eval-data" not in plain
    for bad in (tmp_path / "nope.jsonl", tmp_path):  # missing, and a folder
        with pytest.raises(RunnerError, match=r"eval data file .* To fix: pass --eval-data"):
            runner.launch(_spec(Method.LORA, 1), data=str(data), eval_data=str(bad))
    assert not (tmp_path / "runs").exists()


def test_different_gpu_with_enough_memory_warns(tmp_path: Path) -> None:
    runner = _runner(tmp_path, (("NVIDIA A100-SXM4-80GB", 79.2),))
    assert runner.check_host(_spec(Method.LORA, 1)) == [
        "GPU 0 is NVIDIA A100-SXM4-80GB, the plan priced H100 SXM 80GB: expect different speed"
    ]


def _supervised(run_dir: Path, code: str) -> int:
    run_dir.mkdir(parents=True)
    write_status(
        run_dir,
        {"run_id": run_dir.name, "state": "pending", "log_path": str(run_dir / "train.log")},
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "runners._supervise",
            str(run_dir),
            "--",
            sys.executable,
            "-c",
            code,
        ],
        check=False,
    ).returncode


@pytest.mark.parametrize(
    ("code", "state", "detail"),
    [
        ("print('ok')", RunState.SUCCEEDED, ""),
        ("import sys; print('boom'); sys.exit(3)", RunState.FAILED, "exit code 3"),
        # SIGKILL is the out-of-memory killer's signal: a failure, never "stopped".
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            RunState.FAILED,
            "killed by signal 9 (SIGKILL: the out-of-memory killer",
        ),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
            RunState.STOPPED,
            "stopped by signal 15 before its first checkpoint",
        ),
    ],
)
def test_supervisor_records_the_exit(
    tmp_path: Path, code: str, state: RunState, detail: str
) -> None:
    run_dir = tmp_path / "runs" / "r1"
    _supervised(run_dir, code)
    status = LocalRunner(runs_dir=tmp_path / "runs").status("r1")
    assert status.state is state and status.detail.startswith(detail)
    assert status.pid is not None and status.ended_at
    if state is RunState.SUCCEEDED:
        assert (run_dir / "train.log").read_text() == "ok\n"


def test_status_of_a_vanished_run_is_failed(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "gone"
    run_dir.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    write_status(
        run_dir,
        {
            "run_id": "gone",
            "state": "running",
            "log_path": "x/train.log",
            "supervisor_pid": int(dead.stdout),
            "pid": int(dead.stdout),
        },
    )
    status = LocalRunner(runs_dir=tmp_path / "runs").status("gone")
    assert status.state is RunState.FAILED and "gone" in status.detail
    with pytest.raises(RunnerError, match="no local run 'other'"):
        LocalRunner(runs_dir=tmp_path / "runs").status("other")


# -- CLI --------------------------------------------------------------------------------------
def test_cli_local_dry_run_prints_command_and_spec(tmp_path: Path, data: Path) -> None:
    plan = write_plan(make_plan(), tmp_path / "plan.json")
    out = CliRunner().invoke(
        cli,
        [
            "launch",
            str(plan),
            "--target",
            "local",
            "--data",
            str(data),
            "--dry-run",
            "--output-dir",
            str(tmp_path / "r"),
            "--max-steps",
            "50",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "-m runners.train --spec" in out.output
    spec = json.loads(out.stdout[out.stdout.index("{") :])["spec"]
    # The plan's chosen candidate: LoRA r16 on one H100, measured 15.588 GiB / 7277.6 tokens/s.
    assert spec["config"]["method"] == "lora" and spec["config"]["lora_rank"] == 16
    assert spec["expected_peak_allocated_gib"] == 15.588
    assert spec["expected_tokens_per_s"] == 7277.6 and spec["expected_source"] == "measured"
    assert spec["max_steps"] == 50 and spec["learning_rate"] == 2e-4
    assert spec["model"]["hf_id"] == "meta-llama/Llama-2-7b-hf"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("plan_name", "args", "message"),
    [
        ("missing.json", [], "error: plan file .*missing.json' does not exist"),
        ("broken.json", [], "error: plan file .*broken.json' is not valid JSON"),
        ("none.json", [], "error: the plan has no chosen candidate"),
        ("plan.json", ["--candidate", "9"], "error: --candidate 9 is out of range"),
        ("plan.json", ["--data", "/no/such.jsonl"], "error: data file '/no/such.jsonl' does not"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    tmp_path: Path, data: Path, plan_name: str, args: list[str], message: str
) -> None:
    write_plan(make_plan(), tmp_path / "plan.json")
    write_plan(make_no_feasible_plan(), tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{")
    argv = [
        "launch",
        str(tmp_path / plan_name),
        "--target",
        "local",
        "--data",
        str(data),
        "--output-dir",
        str(tmp_path / "r"),
        *args,
    ]
    if "--data" in args:
        argv = [a for a in argv if a != str(data)]
        argv.remove("--data")
    out = CliRunner().invoke(cli, argv)
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and re.match(message, lines[0]), lines
    assert not (tmp_path / "r").exists()


def test_cli_status_of_a_local_run(tmp_path: Path) -> None:
    _supervised(tmp_path / "runs" / "r2", "print('hi')")
    out = CliRunner().invoke(
        cli, ["status", "r2", "--runs-dir", str(tmp_path / "runs"), "--format", "json"]
    )
    assert out.exit_code == 0, out.output
    record = json.loads(out.output)
    assert record["state"] == "succeeded" and record["target"] == "local"
    missing = CliRunner().invoke(
        cli, ["status", "zz", "--target", "local", "--runs-dir", str(tmp_path / "runs")]
    )
    assert missing.exit_code == 2 and "error: no local run 'zz'" in missing.output


# -- GPU check (not run without CUDA) ---------------------------------------------------------
@pytest.mark.gpu
def test_gpu_launch_from_a_plan_matches_the_prediction(tmp_path: Path) -> None:
    """``ftplan launch --target local`` runs a real short fine-tune from a plan, and the measured
    peak memory and tokens/s are compared with the prediction.

    The fixture plan's chosen candidate is llama2-7b LoRA r16 all-linear, micro-batch 4, seq 1024,
    gradient checkpointing on one H100, measured at 15.588 GiB peak allocated and 7277.6
    tokens/s. Random weights from the catalog's architecture (no download needed).

    Run on a GPU machine: ``python -m pytest tests/runners/test_local_runner.py -m gpu -q``
    """
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    plan = write_plan(make_plan(), tmp_path / "plan.json")
    text = " ".join(f"sample {i} of a synthetic fine-tuning corpus." for i in range(60))
    data = write_jsonl(tmp_path / "train.jsonl", [{"text": text}] * 120)  # ~330k byte tokens
    runs = tmp_path / "runs"
    out = CliRunner().invoke(
        cli,
        [
            "launch",
            str(plan),
            "--target",
            "local",
            "--data",
            str(data),
            "--random-init",
            "--max-steps",
            "30",
            "--grad-accum",
            "1",
            "--output-dir",
            str(runs),
            "--wait",
        ],
    )
    assert out.exit_code == 0, out.output
    summary = json.loads(next(runs.glob("*/output/summary.json")).read_text())
    print(json.dumps(summary, indent=2))  # the numbers, for the record (-s)
    memory = summary["comparison"]["peak_allocated_gib"]
    speed = summary["comparison"]["tokens_per_s"]
    assert summary["steps_completed"] == 30
    assert memory["within"] is True, memory
    assert speed["within"] is True, speed


def test_cli_resume_reuses_the_run_folder(tmp_path: Path, data: Path) -> None:
    plan = write_plan(make_plan(), tmp_path / "plan.json")
    (tmp_path / "r" / "old-run").mkdir(parents=True)
    (tmp_path / "r" / "old-run" / "launch.json").write_text("{}")  # a folder ftplan launched
    base = [
        "launch",
        str(plan),
        "--target",
        "local",
        "--data",
        str(data),
        "--output-dir",
        str(tmp_path / "r"),
    ]
    out = CliRunner().invoke(cli, [*base, "--dry-run", "--resume", "old-run"])
    assert out.exit_code == 0, out.output
    assert f"run dir: {(tmp_path / 'r' / 'old-run').resolve()}" in out.output
    assert (
        "--output-dir " + str((tmp_path / "r" / "old-run" / "output").resolve()) + " --resume"
        in out.output
    )
    missing = CliRunner().invoke(cli, [*base, "--resume", "nope"])
    assert missing.exit_code == 2 and "error: no local run 'nope' to resume" in missing.output


def test_launch_spec_takes_accumulation_and_learning_rate_from_the_candidate() -> None:
    from planner.handoff import launch_spec_from_plan

    plan = make_plan()
    assert plan.chosen is not None
    candidate = dataclasses.replace(plan.chosen, grad_accum_steps=16, suggested_learning_rate=3e-4)
    spec = launch_spec_from_plan(plan, candidate)
    assert (spec.grad_accum_steps, spec.learning_rate) == (16, 3e-4)
    assert spec.config == candidate.config and spec.offer == candidate.offer
    assert spec.max_hours == pytest.approx(candidate.cost.hours)
    assert spec.checkpoint is None and spec.weights_source == "meta-llama/Llama-2-7b-hf"
    overridden = launch_spec_from_plan(
        plan, candidate, grad_accum_steps=2, learning_rate=1e-4, weights="/models/llama"
    )
    assert (overridden.grad_accum_steps, overridden.learning_rate) == (2, 1e-4)
    assert overridden.weights_source == "/models/llama"
