"""Hostile and careless input, command by command: each bad input is one line on stderr and exit
code 2 (never a traceback, never exit 1 or 3), nothing is written outside the folders named,
and secrets never reach a file. One table per subcommand."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from plan_fixtures import make_plan

from planner.cli import main
from planner.plan_io import plan_to_json, write_plan

LLAMA_CONFIG = {
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with a valid plan, dataset, a regular file 'f', a FIFO, bad configs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(tmp_path / "cache"))
    write_plan(make_plan(), tmp_path / "plan.json")
    (tmp_path / "train.jsonl").write_text('{"text": "hello world"}\n')
    (tmp_path / "f").write_text("a regular file\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    configs = {
        "list": [1, 2],
        "zero-heads": {**LLAMA_CONFIG, "num_attention_heads": 0},
        "list-hidden": {**LLAMA_CONFIG, "hidden_size": [2048]},
        "huge-vocab": {**LLAMA_CONFIG, "vocab_size": 10**12},
        "bool-layers": {**LLAMA_CONFIG, "num_hidden_layers": True},
        "kv-mismatch": {**LLAMA_CONFIG, "num_key_value_heads": 7},
    }
    for name, config in configs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    plan = json.loads(plan_to_json(make_plan()))
    bad_plans = {
        "negative.json": _edit(plan, ["chosen", "cost", "usd"], -50.0),
        "gpus.json": _edit(plan, ["chosen", "config", "gpu_count"], 2),  # the offer has 1
        "no-hours.json": _edit(plan, ["chosen", "cost", "hours"], 0.0),
        "nan.json": plan_to_json(make_plan()).replace('"seed": 0', '"seed": NaN'),
        "infinity.json": plan_to_json(make_plan()).replace('"seed": 0', '"seed": Infinity'),
        "overflow.json": plan_to_json(make_plan()).replace('"seed": 0', '"seed": 1e999'),
        "deep.json": '{"format": "ftplan-plan/1", "plan": ' + "[" * 5000 + "]" * 5000 + "}",
        "list.json": "[]",
        "format.json": json.dumps({"format": "ftplan-plan/9", "plan": plan["plan"]}),
        "escape.json": _edit(plan, ["model"], "llama\x1b[31m"),
        "empty.json": "",
        "binary.json": "\udcff",
    }
    for name, text in bad_plans.items():
        (tmp_path / name).write_bytes(text.encode("utf-8", errors="surrogateescape"))
    datasets = {
        "notjson.jsonl": '{"text": "ok"}\nnot json\n',
        "deep.jsonl": "[" * 100_000 + "]" * 100_000 + "\n",
        "empty.jsonl": "\n\n",
        "nan.jsonl": '{"text": NaN}\n',
    }
    for name, text in datasets.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    return tmp_path


def _edit(document: dict[str, object], keys: list[str], value: object) -> str:
    data = json.loads(json.dumps(document))
    node = data["plan"]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return json.dumps(data)


def _run(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stdout, result.stderr


def _assert_bad_input(args: list[str], world: Path) -> None:
    before = {p for p in world.rglob("*") if ".hypothesis" not in p.parts}
    code, _, stderr = _run(args)
    assert code == 2, (args, code, stderr)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, stderr)
    assert "\x1b" not in stderr
    after = {p for p in world.rglob("*") if ".hypothesis" not in p.parts}
    assert after == before, (args, sorted(map(str, after - before)))  # nothing written


RECOMMEND = ["recommend", "--model", "llama2-7b", "--out", "r", "--quiet"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--budget", "nan"],
        ["--budget", "inf"],
        ["--budget", "-inf"],
        ["--budget", "-1"],
        ["--budget", "0"],
        ["--budget", "1e308"],
        ["--budget", "abc"],
        ["--budget", ""],
        ["--budget", "200", "--epochs", "inf"],
        ["--budget", "200", "--epochs", "nan"],
        ["--budget", "200", "--epochs", "0"],
        ["--budget", "200", "--epochs", "1e300"],
        ["--budget", "200", "--tokens", "0"],
        ["--budget", "200", "--tokens", "1e3"],
        ["--budget", "200", "--tokens", "99999999999999999999999"],
        ["--budget", "200", "--seq-len", "0"],
        ["--budget", "200", "--seq-len", "100000000"],
        ["--budget", "200", "--gpu-count", "0"],
        ["--budget", "200", "--gpu-count", "1000000"],
        ["--budget", "200", "--max-hours", "0"],
        ["--budget", "200", "--max-hours", "nan"],
        ["--budget", "200", "--usd-per-hour", "-1"],
        ["--budget", "200", "--usd-per-hour", "2"],  # without --provider local
        ["--budget", "200", "--spot-interruptions-per-hour", "nan"],
        ["--budget", "200", "--spot-interruptions-per-hour", "1e9"],
        ["--budget", "200", "--spot-restart-minutes", "-5"],
        ["--budget", "200", "--trials", "0"],
        ["--budget", "200", "--seed", "-1"],
        ["--budget", "200", "--seed", "99999999999999999999"],
        ["--budget", "200", "--storage", "notaurl"],
        ["--budget", "200", "--storage", "sqlite:///nodir/x.db"],
        ["--budget", "200", "--storage", "sqlite:///dir"],
        ["--budget", "200", "--storage", "sqlite:///"],
        ["--budget", "200", "--storage", "postgresql://user:hunter2@"],
        ["--budget", "200", "--gpu", "h1000"],
        ["--budget", "200", "--gpu", ""],
        ["--budget", "200", "--provider", "mars"],
        ["--budget", "200", "--service", "lambda-labs"],
        ["--budget", "200", "--task", "chat"],
        ["--budget", "200", "--quality", "perfect"],
        ["--budget", "200", "--format", "xml"],
        ["--budget", "200", "--tokens", "5", "--dataset", "train.jsonl"],
        ["--budget", "200", "--dataset", "/dev/zero"],
        ["--budget", "200", "--dataset", "fifo"],
        ["--budget", "200", "--dataset", "missing.jsonl"],
        ["--budget", "200", "--dataset", "dir"],
        ["--budget", "200", "--dataset", ""],
        ["--budget", "200", "--dataset", "notjson.jsonl"],
        ["--budget", "200", "--dataset", "deep.jsonl"],
        ["--budget", "200", "--dataset", "empty.jsonl"],
        ["--budget", "200", "--dataset", "nan.jsonl"],
        ["--budget", "200", "--dataset", "latin1.jsonl"],
        ["--budget", "200", "--eval-dataset", "fifo"],
        ["--budget", "200", "--eval-dataset", "missing.jsonl"],
        ["--budget", "200", "--eval-dataset", "notjson.jsonl"],
        ["--budget", "200", "--eval-dataset", "empty.jsonl"],
        ["--budget", "200", "--eval-tokens", "0"],
        ["--budget", "200", "--eval-tokens", "5", "--eval-dataset", "train.jsonl"],
        ["--budget", "200", "--evaluations", "3"],
        ["--budget", "200", "--eval-tokens", "5", "--evaluations", "0"],
        ["--budget", "200", "--out", "f/x"],
        ["--budget", "200", "--out", "f"],
        ["--budget", "200", "--bogus"],
    ],
)
def test_recommend_bad_input(world: Path, extra: list[str]) -> None:
    _assert_bad_input([*RECOMMEND, *extra], world)


@pytest.mark.parametrize(
    "model",
    [
        "",
        "lama2-7b",
        "list",
        "zero-heads",
        "list-hidden",
        "huge-vocab",
        "bool-layers",
        "kv-mismatch",
        "/dev/zero",
        "fifo",
        "f",
        "missing/config.json",
        "x\x00y",
    ],
)
def test_every_command_refuses_a_bad_model(world: Path, model: str) -> None:
    _assert_bad_input(["recommend", "--model", model, "--budget", "200", "--out", "r"], world)
    _assert_bad_input(["estimate", "--model", model, "--method", "lora"], world)


ESTIMATE = ["estimate", "--model", "llama2-7b"]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--method", "dora"],
        ["--method", "lora", "--rank", "0"],
        ["--method", "lora", "--rank", "-1"],
        ["--method", "lora", "--rank", "1e9"],
        ["--method", "lora", "--rank", "1000000000"],
        ["--method", "lora", "--alpha", "-1"],
        ["--method", "lora", "--alpha", "0"],
        ["--method", "lora", "--targets", "mlp_proj"],
        ["--method", "lora", "--targets", ""],
        ["--method", "lora", "--targets", ",,,"],
        ["--method", "lora", "--batch", "0"],
        ["--method", "lora", "--batch", "100000000"],
        ["--method", "lora", "--seq-len", "-1"],
        ["--method", "lora", "--gpu", "tpu-v5"],
        ["--method", "lora", "--gpu-count", "0"],
        ["--method", "lora", "--gpu-count", "4096"],
        ["--method", "lora", "--precision", "bf16"],
        ["--method", "lora", "--precision", "fp8"],
        ["--method", "lora", "--gpu", "t4", "--precision", "bf16-mixed"],
        ["--method", "full", "--rank", "8"],
        ["--method", "lora", "--optimizer", "sgd"],
        ["--method", "lora", "--format", "yaml"],
        ["--method", "lora", "--eval-dataset", "empty.jsonl"],
        ["--method", "lora", "--eval-dataset", "fifo"],
        ["--method", "lora", "--eval-tokens", "0"],
        ["--method", "lora", "--eval-tokens", "5", "--eval-dataset", "train.jsonl"],
    ],
)
def test_estimate_bad_input(world: Path, extra: list[str]) -> None:
    _assert_bad_input([*ESTIMATE, *extra], world)


PROFILE = ["profile", "--model", "llama2-7b", "--method", "lora"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--device", "tpu"],
        ["--device", "cuda:x"],
        ["--device", ""],
        ["--timeout-s", "-1"],
        ["--timeout-s", "0"],
        ["--timeout-s", "nan"],
        ["--timeout-s", "inf"],
        ["--warmup-steps", "-3"],
        ["--timed-steps", "0"],
        ["--layers", "x"],
        ["--layers", "4"],
        ["--layers", "0,2"],
        ["--layers", "2,99999"],
        ["--batch", "0"],
        ["--seq-len", "0"],
        ["--rank", "0"],
        ["--alpha", "-2"],
        ["--targets", "nope"],
        ["--gpu", "h1000"],
        ["--out", "f/x.jsonl"],
        ["--out", "dir"],
    ],
)
def test_profile_bad_input(world: Path, extra: list[str]) -> None:
    _assert_bad_input([*PROFILE, *extra], world)


@pytest.mark.parametrize(
    "args",
    [
        ["--gpu", "h1000"],
        ["--gpu", "h100", "--from", "missing.jsonl"],
        ["--gpu", "h100", "--from", "dir"],
        ["--gpu", "h100", "--from", "fifo"],
        ["--gpu", "h100", "--from", "/dev/zero"],
        ["--gpu", "h100", "--from", "notjson.jsonl"],
        ["--gpu", "h100", "--from", "deep.jsonl"],
        ["--gpu", "h100", "--from", "train.jsonl"],
        ["--gpu", "h100", "--from", "empty.jsonl"],
        ["--gpu", "h100", "--out", "f/x.json"],
    ],
)
def test_calibrate_bad_input(world: Path, args: list[str]) -> None:
    _assert_bad_input(["calibrate", *args], world)


@pytest.mark.parametrize(
    "args",
    [
        ["offers", "--gpu", "h1000"],
        ["offers", "--provider", "mars"],
        ["offers", "--format", "xml"],
        ["models", "--format", "xml"],
        ["gpus", "--bogus"],
        ["refresh", "--provider", "mars"],
        ["refresh", "--from", "nowhere"],
        ["refresh", "--region", ""],
        ["nothing"],
    ],
)
def test_catalog_bad_input(world: Path, args: list[str]) -> None:
    _assert_bad_input(["catalog", *args], world)


@pytest.mark.parametrize(
    "args",
    [
        ["missing.json"],
        ["dir"],
        ["fifo"],
        ["/dev/zero"],
        ["f"],
        ["negative.json"],
        ["nan.json"],
        ["infinity.json"],
        ["overflow.json"],
        ["deep.json"],
        ["list.json"],
        ["format.json"],
        ["escape.json"],
        ["empty.json"],
        ["binary.json"],
        ["plan.json", "--out", "f/x.html"],
        ["plan.json", "--out", "dir"],
        ["plan.json", "--format", "pdf"],
    ],
)
def test_report_bad_input(world: Path, args: list[str]) -> None:
    _assert_bad_input(["report", *args], world)


LAUNCH = ["launch", "plan.json", "--target", "local", "--data", "train.jsonl", "--device", "cpu"]


@pytest.mark.parametrize(
    "args",
    [
        ["launch", "missing.json", "--target", "local", "--data", "train.jsonl"],
        ["launch", "negative.json", "--target", "local", "--data", "train.jsonl"],
        ["launch", "gpus.json", "--target", "local", "--data", "train.jsonl", "--dry-run"],
        ["launch", "no-hours.json", "--target", "local", "--data", "train.jsonl", "--dry-run"],
        ["launch", "plan.json", "--target", "moon", "--data", "train.jsonl"],
        ["launch", "plan.json", "--target", "local", "--data", ""],
        ["launch", "plan.json", "--target", "local", "--data", "missing.jsonl"],
        ["launch", "plan.json", "--target", "local", "--data", "fifo"],
        ["launch", "plan.json", "--target", "local", "--data", "dir"],
        [*LAUNCH, "--resume", "../victim", "--output-dir", "runs"],
        [*LAUNCH, "--resume", "/etc", "--output-dir", "runs"],
        [*LAUNCH, "--resume", "a/b", "--output-dir", "runs"],
        [*LAUNCH, "--resume", "..", "--output-dir", "runs"],
        [*LAUNCH, "--resume", "no-such-run", "--output-dir", "runs"],
        [*LAUNCH, "--max-steps", "0"],
        [*LAUNCH, "--candidate", "0"],
        [*LAUNCH, "--candidate", "999"],
        [*LAUNCH, "--grad-accum", "0"],
        [*LAUNCH, "--eval-data", "missing.jsonl", "--dry-run"],
        [*LAUNCH, "--eval-data", "fifo", "--dry-run"],
        [*LAUNCH, "--eval-data", "dir", "--dry-run"],
        [*LAUNCH, "--eval-every-steps", "0", "--eval-data", "train.jsonl", "--dry-run"],
        [*LAUNCH, "--eval-every-steps", "5", "--dry-run"],
        [
            "launch",
            "plan.json",
            "--target",
            "sagemaker",
            "--data",
            "s3://b/x",
            "--output-dir",
            "local-folder",
            "--dry-run",
            "--role",
            "arn:aws:iam::123456789012:role/x",
        ],
        ["launch", "plan.json", "--target", "sagemaker", "--data", "s3://b/x", "--resume", "x"],
    ],
)
def test_launch_bad_input(world: Path, args: list[str]) -> None:
    _assert_bad_input(args, world)


def test_launch_resume_cannot_reach_outside_the_runs_folder(world: Path) -> None:
    victim = world / "victim"
    victim.mkdir()
    (victim / "launch.json").write_text("{}")
    (victim / "status.json").write_text('{"state": "succeeded"}')
    _assert_bad_input([*LAUNCH, "--resume", "../victim", "--output-dir", "runs"], world)
    assert (victim / "status.json").read_text() == '{"state": "succeeded"}'
    assert sorted(p.name for p in victim.iterdir()) == ["launch.json", "status.json"]


@pytest.mark.parametrize(
    ("run_id", "status"),
    [
        ("../victim", None),
        ("/etc", None),
        ("a/b", None),
        ("", None),
        ("empty", ""),
        ("truncated", '{"state": "runn'),
        ("list", "[]"),
        ("nostate", "{}"),
        ("badstate", '{"state": "exploded"}'),
        ("badpid", '{"state": "running", "supervisor_pid": "x"}'),
        ("deep", "[" * 5000 + "]" * 5000),
    ],
)
def test_status_bad_input(world: Path, run_id: str, status: str | None) -> None:
    if status is not None:
        (world / "runs" / run_id).mkdir(parents=True)
        (world / "runs" / run_id / "status.json").write_text(status)
    _assert_bad_input(["status", run_id, "--target", "local", "--runs-dir", "runs"], world)
    if status is None:
        _assert_bad_input(["status", run_id, "--runs-dir", "runs"], world)


def test_status_survives_metrics_without_loss(world: Path) -> None:
    run = world / "runs" / "r1"
    (run / "output").mkdir(parents=True)
    (run / "status.json").write_text('{"state": "succeeded", "detail": "done \\u001b[31m"}')
    (run / "output" / "metrics.jsonl").write_text(
        '{"event": "start", "total_steps": 10}\n{"event": "step", "step": 3}\n[1]\nnot json\n'
        '{"event": "step", "step": "x", "loss": 1}\n{"event": "step", "step": 4, "loss": NaN}\n'
    )
    code, stdout, stderr = _run(["status", "r1", "--runs-dir", "runs"])
    assert code == 0, stderr
    assert "step 3/10, loss n/a" in stdout and "\x1b" not in stdout  # NaN line skipped


@pytest.mark.parametrize("command", ["logs", "stop"])
@pytest.mark.parametrize("run_id", ["../victim", "/etc/passwd", "a/b", "missing-run"])
def test_skypilot_commands_bad_run_id(world: Path, command: str, run_id: str) -> None:
    _assert_bad_input([command, run_id, "--runs-dir", "runs"], world)


@pytest.mark.parametrize("run", ["missing-run", "../victim", "f"])
def test_merge_bad_input(world: Path, run: str) -> None:
    _assert_bad_input(["merge", run, "--runs-dir", "runs"], world)


@pytest.mark.parametrize(
    "args", [["runs"], ["status", "r1"], ["logs", "r1"], ["stop", "r1"], ["merge", "r1"]]
)
def test_runs_dir_that_is_a_regular_file_is_exit_2(world: Path, args: list[str]) -> None:
    _assert_bad_input([*args, "--runs-dir", "f"], world)


def test_cache_dir_under_a_regular_file_is_exit_2(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(world / "f"))
    _assert_bad_input(["calibrate", "--gpu", "h100"], world)
    code, _, stderr = _run(["catalog", "offers", "--gpu", "h100"])
    assert code == 0 and "Traceback" not in stderr


def test_storage_credentials_never_reach_a_file(world: Path) -> None:
    code, _, stderr = _run(
        [*RECOMMEND, "--budget", "200", "--storage", "postgresql://me:hunter2@127.0.0.1:1/db"]
    )
    assert code == 2 and "hunter2" not in stderr
    assert "Traceback" not in stderr
    files = [path for path in world.rglob("*") if path.is_file() and path.name != "fifo"]
    assert files  # the plan, the dataset and the configs at least
    for path in files:
        assert b"hunter2" not in path.read_bytes()


def test_valid_plan_with_a_folder_name_holding_escapes_prints_them_escaped(world: Path) -> None:
    folder = world / "evil\x1b[31mmodel"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    code, stdout, stderr = _run(
        ["estimate", "--model", str(folder), "--method", "lora", "--format", "json"]
    )
    assert code == 0, stderr
    assert "\x1b" not in stdout and "\\x1b" in stdout


def test_budget_slug_has_no_long_digits(world: Path) -> None:
    code, _, stderr = _run([*RECOMMEND, "--budget", "1e9"])
    assert code in (0, 1), stderr
    names = [p.name for p in (world / "r").iterdir()]
    assert names and all(len(n) < 160 for n in names)
    assert all(re.fullmatch(r"[a-z0-9._-]+", n) for n in names)


def test_a_plan_from_a_config_json_launches_that_file_from_anywhere(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (world / "a" / "mymodel").mkdir(parents=True)
    (world / "a" / "mymodel" / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    monkeypatch.chdir(world / "a")
    code, _, stderr = _run(
        ["recommend", "--model", "mymodel", "--budget", "200", "--out", "r", "--quiet"]
    )
    assert code == 0, stderr
    plan_file = next((world / "a" / "r").glob("*.json"))
    plan = json.loads(plan_file.read_text())["plan"]
    assert plan["model_config_path"] == str((world / "a" / "mymodel" / "config.json").resolve())
    # Elsewhere, beside another ./mymodel/config.json: the plan's own file is launched.
    (world / "b" / "mymodel").mkdir(parents=True)
    (world / "b" / "mymodel" / "config.json").write_text(
        json.dumps({**LLAMA_CONFIG, "num_hidden_layers": 2})
    )
    monkeypatch.chdir(world / "b")
    launch = ["launch", str(plan_file), "--target", "local", "--data", str(world / "train.jsonl")]
    code, stdout, stderr = _run([*launch, "--device", "cpu", "--dry-run", "--random-init"])
    assert code == 0, stderr
    assert '"num_layers": 16' in stdout and '"num_layers": 2' not in stdout
    # The config changed since the plan: refused.
    (world / "a" / "mymodel" / "config.json").write_text(
        json.dumps({**LLAMA_CONFIG, "num_hidden_layers": 8})
    )
    _assert_bad_input([*launch, "--device", "cpu", "--dry-run", "--random-init"], world)


def test_runs_lists_good_runs_beside_damaged_ones(world: Path) -> None:
    for name, status in (("good", '{"state": "succeeded"}'), ("bad", "{"), (".hidden", "{}")):
        (world / "runs" / name).mkdir(parents=True)
        (world / "runs" / name / "status.json").write_text(status)
    code, stdout, stderr = _run(["runs", "--runs-dir", "runs"])
    assert code == 0, stderr
    assert "good" in stdout and "Traceback" not in stderr
    _assert_bad_input(["runs", "--runs-dir", "runs", "--region", "x y"], world)


HOSTILE_DATA = {
    "latin1.jsonl": b'{"text": "caf\xe9"}\n',
    "surrogate.jsonl": b'{"text": "bad \\ud800 here"}\n',
    "digits.jsonl": b'{"text": "x", "n": ' + b"1" * 5000 + b"}\n",
    "only-digits.jsonl": b"1" * 5000 + b"\n",
    "deep.jsonl": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "nan.jsonl": b'{"text": NaN}\n',
    "overflow.jsonl": b'{"text": "x", "n": 1e999}\n',
    "empty.jsonl": b"",
    "list.jsonl": b"[1, 2]\n",
    "alpaca.jsonl": b'{"instruction": "x", "output": "y"}\n',
    "bad-messages.jsonl": b'{"messages": [{"role": 1, "content": "x"}]}\n',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_DATA))
@pytest.mark.parametrize("option", ["--data", "--eval-data"])
def test_launch_refuses_hostile_datasets_as_recommend_does(
    world: Path, name: str, option: str
) -> None:
    (world / "d").mkdir()
    (world / "d" / name).write_bytes(HOSTILE_DATA[name])
    data = ["--data", f"d/{name}"] if option == "--data" else ["--eval-data", f"d/{name}"]
    args = ["--data", "train.jsonl", *data] if option == "--eval-data" else data
    _assert_bad_input(
        [
            "launch",
            "plan.json",
            "--target",
            "local",
            "--device",
            "cpu",
            "--random-init",
            "--dry-run",
            *args,
        ],
        world,
    )
    _assert_bad_input([*RECOMMEND, "--budget", "200", "--dataset", f"d/{name}"], world)


def test_a_dataset_line_longer_than_16_mib_is_refused(world: Path) -> None:
    (world / "big.jsonl").write_bytes(b'{"text": "' + b"a" * (17 << 20) + b'"}\n')
    _assert_bad_input([*LAUNCH, "--random-init", "--dry-run", "--data", "big.jsonl"], world)


WEIGHT_CONFIGS: dict[str, Any] = {
    "fifo": None,
    "zero": None,
    "latin1": b'{"model_type": "llama", "name": "caf\xe9"}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "list": b"[1, 2, 3]",
    "digits": b'{"num_hidden_layers": ' + b"9" * 5000 + b"}",
    "float-layers": json.dumps({**LLAMA_CONFIG, "num_hidden_layers": 1e300}).encode(),
    "text-layers": json.dumps({**LLAMA_CONFIG, "num_hidden_layers": "32x"}).encode(),
    "nan": b'{"num_hidden_layers": NaN}',
    "utf16": '{"model_type": "llama"}'.encode("utf-16"),
}


@pytest.mark.parametrize("kind", sorted(WEIGHT_CONFIGS))
def test_launch_weights_with_a_hostile_config_json(world: Path, kind: str) -> None:
    folder = world / "weights"
    folder.mkdir()
    config = folder / "config.json"
    if kind == "fifo":
        os.mkfifo(config)
    elif kind == "zero":
        config.symlink_to("/dev/zero")
    else:
        config.write_bytes(WEIGHT_CONFIGS[kind])
    _assert_bad_input([*LAUNCH, "--dry-run", "--weights", "weights"], world)


@pytest.mark.parametrize("kind", ["fifo", "zero", "dup-price", "huge-number"])
def test_catalog_refresh_from_a_hostile_vms_csv(world: Path, kind: str) -> None:
    folder = world / "sky" / "aws"
    folder.mkdir(parents=True)
    vms = folder / "vms.csv"
    header = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,SpotPrice,Region"
    if kind == "fifo":
        os.mkfifo(vms)
    elif kind == "zero":
        vms.symlink_to("/dev/zero")
    elif kind == "dup-price":
        vms.write_text(f"{header},Price\np5.48xlarge,H100,8,192,2048,98.32,40,us-east-1,0.01\n")
    else:
        vms.write_text(f"{header}\np5.48xlarge,H100,{'9' * 5000},192,2048,98.32,40,us-east-1\n")
    _assert_bad_input(["catalog", "refresh", "--from", "skypilot", "--catalog-dir", "sky"], world)


def test_a_cached_offers_file_naming_a_column_twice_is_refused(world: Path) -> None:
    from catalog._load import DATA_DIR

    lines = (DATA_DIR / "offers.csv").read_text().splitlines()
    (world / "cache").mkdir(exist_ok=True)
    (world / "cache" / "offers.csv").write_text(
        "\n".join([lines[0] + ",usd_per_hour", *(line + ",0.01" for line in lines[1:])]) + "\n"
    )
    code, _, stderr = _run([*RECOMMEND, "--budget", "200"])
    assert code == 2 and "appears twice" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize(
    ("env", "files"),
    [
        ({"AWS_PROFILE": "no-such-profile"}, {}),
        ({}, {"home/.aws/config": "[default\nregion = us-east-1\n[[[\n"}),
    ],
)
@pytest.mark.parametrize(
    "args", [["runs", "--sagemaker"], ["status", "ftplan-x-1", "--target", "sagemaker"]]
)
def test_a_broken_aws_setup_is_exit_2(
    world: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    files: dict[str, str],
    args: list[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name, text in files.items():
        (world / name).parent.mkdir(parents=True, exist_ok=True)
        (world / name).write_text(text)
    code, _, stderr = _run(args)
    assert code == 2 and stderr.startswith("error: AWS is not set up"), stderr
    assert "To fix" in stderr and len(stderr.splitlines()) == 1


def _aws_plan() -> dict[str, Any]:
    from plan_fixtures import OFFER_L4_SPOT

    plan = make_plan()
    spot = next(c for c in plan.ranked if c.offer == OFFER_L4_SPOT)
    return json.loads(plan_to_json(make_plan(chosen=spot)))


def test_a_plan_priced_at_zero_dollars_dry_runs_on_sagemaker(world: Path) -> None:
    plan = _aws_plan()
    (world / "zero.json").write_text(_edit(plan, ["chosen", "offer", "usd_per_hour"], 0.0))
    code, _, stderr = _run(
        [
            "launch",
            "zero.json",
            "--target",
            "sagemaker",
            "--data",
            "s3://b/t.jsonl",
            "--dry-run",
            "--role",
            "arn:aws:iam::123456789012:role/x",
        ]
    )
    assert code == 0 and "Traceback" not in stderr, stderr


@pytest.mark.parametrize(
    ("error", "hint"),
    [(MemoryError(), "ran out of memory"), (OSError(24, "Too many open files"), "ulimit -n")],
)
def test_running_out_of_memory_or_files_is_exit_2(
    world: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, hint: str
) -> None:
    import planner.cli.recommend as recommend_cli

    def fail(*_args: object, **_kwargs: object) -> object:
        raise error

    monkeypatch.setattr(recommend_cli, "_plan", fail)
    code, _, stderr = _run([*RECOMMEND, "--budget", "200"])
    assert code == 2 and hint in stderr and "Traceback" not in stderr, stderr
    assert not (world / "cache" / "crashes").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["report", os.fsdecode(b"plan\xff.json")],
        ["launch", os.fsdecode(b"plan\xff.json"), "--data", "train.jsonl"],
        [*LAUNCH, "--dry-run", "--data", os.fsdecode(b"d\xff.jsonl")],
        ["estimate", "--model", os.fsdecode(b"m\xff"), "--method", "lora"],
    ],
)
def test_a_path_with_bytes_that_are_not_utf8_is_exit_2(world: Path, args: list[str]) -> None:
    _assert_bad_input(args, world)


@pytest.mark.parametrize(
    "extra",
    [
        ["--data", "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCY@bucket/t.jsonl"],
        ["--data", "s3://user:s3cr3t/with@chars@bucket/t.jsonl"],
        ["--data", "s3://b/t.jsonl", "--output-dir", "s3://me:pa ss@wd@b/out"],
        ["--data", "s3://b/t.jsonl", "--role", "AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG"],
        ["--data", "s3://b/t.jsonl", "--image-uri", "https://me:s3cr3t/x@registry/img"],
    ],
)
def test_credentials_in_sagemaker_arguments_are_refused_and_never_shown(
    world: Path, extra: list[str]
) -> None:
    (world / "aws.json").write_text(json.dumps(_aws_plan()))
    code, stdout, stderr = _run(
        [
            "launch",
            "aws.json",
            "--target",
            "sagemaker",
            "--dry-run",
            "--role",
            "arn:aws:iam::123456789012:role/x",
            *extra,
        ]
    )
    assert code == 2 and stderr.startswith("error: "), stderr
    assert "SageMaker runs AWS instances only" not in stderr  # refused for the argument
    for secret in ("wJalrXUtnFEMI", "s3cr3t", "pa ss@wd"):
        assert secret not in stdout + stderr
