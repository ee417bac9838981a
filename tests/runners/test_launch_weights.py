"""Launching real weights faithfully, end to end through the CLI: a tiny random Llama-style
checkpoint with non-default rope_theta and rms_norm_eps, tied embeddings and its own tokenizer
is planned with ``ftplan recommend --model DIR/config.json --provider local`` and trained with
``ftplan launch ... --weights DIR --wait`` (full fine-tuning and LoRA from a relative path); the
run carries the checkpoint's config and tokenizer; weights of another architecture are refused
before anything starts; a Hugging Face token reaches SageMaker's request masked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from plan_fixtures import SAGEMAKER_ROLE as ROLE

from planner.cli import main as cli

ROPE_THETA = 500_000.0  # Llama 3's; transformers' LlamaConfig default is 10,000
RMS_NORM_EPS = 1e-5  # transformers' LlamaConfig default is 1e-6
SEQ_LEN = 16
WORDS = "the quick brown fox jumps over the lazy dog while tiny models learn to count words"


def make_checkpoint(folder: Path, *, layers: int = 2) -> Path:
    """save_pretrained of a tiny random Llama and of a WordLevel tokenizer trained offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(
        [WORDS, WORDS.upper()],
        trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(str(folder))
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=ROPE_THETA,
        rms_norm_eps=RMS_NORM_EPS,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


def rope_theta(config: dict[str, Any]) -> float:
    """transformers 5 keeps rope_theta in ``rope_parameters``; 4.x at the top level."""
    return float(config.get("rope_theta") or config["rope_parameters"]["rope_theta"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``ckpt/`` (the planned model), ``ckpt3/`` (3 layers), data and a plan."""
    root = tmp_path_factory.mktemp("weights")
    make_checkpoint(root / "ckpt")
    make_checkpoint(root / "ckpt3", layers=3)
    lines = [json.dumps({"text": WORDS}) for _ in range(500)]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = CliRunner().invoke(
        cli,
        [
            "recommend",
            "--model",
            str(root / "ckpt" / "config.json"),
            "--budget",
            "10",
            "--tokens",
            "4000",
            "--epochs",
            "1",
            "--seq-len",
            str(SEQ_LEN),
            "--provider",
            "local",
            "--gpu",
            "l4",
            "--gpu-count",
            "1",
            "--out",
            str(root / "reports"),
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    (plan,) = (root / "reports").glob("*.json")
    plan.rename(root / "plan.json")
    return root


def candidate_rank(plan: Path, method: str) -> int:
    """1-based rank of the plan's first candidate of ``method`` with a CPU-capable optimizer."""
    ranked = json.loads(plan.read_text())["plan"]["ranked"]
    return next(
        i
        for i, c in enumerate(ranked, start=1)
        if c["config"]["method"] == method and c["config"]["optimizer"] == "adamw"
    )


def launch(workdir: Path, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        [
            "launch",
            str(workdir / "plan.json"),
            "--target",
            "local",
            "--device",
            "cpu",
            "--data",
            str(workdir / "train.jsonl"),
            "--max-steps",
            "3",
            "--grad-accum",
            "1",
            *args,
        ],
    )


def only_run(runs: Path) -> Path:
    (run,) = runs.iterdir()
    return run


def assert_checkpoint_config(config: dict[str, Any]) -> None:
    assert rope_theta(config) == ROPE_THETA
    assert config["rms_norm_eps"] == RMS_NORM_EPS
    assert config["tie_word_embeddings"] is True
    assert config["num_hidden_layers"] == 2


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The training subprocess gains nothing from threads on a tiny model."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_full_fine_tuning_trains_and_saves_the_checkpoints_own_config(
    workdir: Path, one_thread: None
) -> None:
    runs = workdir / "runs-full"
    rank = candidate_rank(workdir / "plan.json", "full")
    out = launch(
        workdir,
        "--weights",
        str(workdir / "ckpt"),
        "--candidate",
        str(rank),
        "--wait",
        "--output-dir",
        str(runs),
    )
    assert out.exit_code == 0, out.output
    output = only_run(runs) / "output"
    summary = json.loads((output / "summary.json").read_text())
    assert summary["steps_completed"] == 3
    assert_checkpoint_config(summary["model_config"])
    final = json.loads((output / "final" / "config.json").read_text())
    assert_checkpoint_config(final)
    assert final["use_cache"] is True  # as the checkpoint saved it; off only while training
    assert (output / "final" / "tokenizer.json").is_file()
    assert (output / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_lora_from_a_relative_path_then_merge(
    workdir: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)  # --weights ckpt and --output-dir runs-lora are relative
    rank = candidate_rank(workdir / "plan.json", "lora")
    out = launch(workdir, "--weights", "ckpt", "--candidate", str(rank), "--wait")
    assert out.exit_code == 0, out.output
    run = only_run(workdir / "runs")
    summary = json.loads((run / "output" / "summary.json").read_text())
    assert summary["steps_completed"] == 3
    assert_checkpoint_config(summary["model_config"])
    final = run / "output" / "final"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in final.iterdir()
    }
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((workdir / "ckpt").resolve())

    merged = CliRunner().invoke(cli, ["merge", run.name, "--out", "merged"])
    assert merged.exit_code == 0, merged.output
    config = json.loads((workdir / "merged" / "config.json").read_text())
    assert_checkpoint_config(config)
    assert config["dtype"] == "bfloat16"
    assert (workdir / "merged" / "tokenizer.json").is_file()
    again = CliRunner().invoke(cli, ["merge", run.name, "--out", "merged"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_weights_with_another_layer_count_are_refused_and_nothing_trains(
    workdir: Path,
) -> None:
    runs = workdir / "runs-mismatch"
    rank = candidate_rank(workdir / "plan.json", "lora")
    out = launch(
        workdir,
        "--weights",
        str(workdir / "ckpt3"),
        "--candidate",
        str(rank),
        "--wait",
        "--output-dir",
        str(runs),
    )
    assert out.exit_code == 2, out.output
    assert out.output.strip().count("\n") == 0  # one line
    assert "layers (num_hidden_layers): the checkpoint has 3" in out.output
    assert "has 2" in out.output
    assert not runs.exists()


def test_missing_weights_or_tokenizer_are_refused_before_the_run(
    workdir: Path, tmp_path: Path
) -> None:
    rank = str(candidate_rank(workdir / "plan.json", "lora"))
    runs = tmp_path / "runs"
    out = launch(workdir, "--weights", "./nope", "--candidate", rank, "--output-dir", str(runs))
    assert out.exit_code == 2 and "no such folder" in out.output
    no_tokenizer = tmp_path / "bare"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((workdir / "ckpt" / name).read_bytes())
    out = launch(
        workdir, "--weights", str(no_tokenizer), "--candidate", rank, "--output-dir", str(runs)
    )
    assert out.exit_code == 2 and "holds no tokenizer" in out.output
    assert not runs.exists()


def test_architecture_mismatch_names_the_field_and_both_values() -> None:
    from model_specs import TINY_LLAMA

    from runners._weights import architecture_mismatch

    config = {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 256,
    }
    assert architecture_mismatch(TINY_LLAMA, config) is None
    assert architecture_mismatch(TINY_LLAMA, {"text_config": config}) is None
    kv = architecture_mismatch(TINY_LLAMA, {**config, "num_key_value_heads": 4})
    assert kv is not None and kv.startswith("KV heads (num_key_value_heads): the checkpoint has 4")
    moe = architecture_mismatch(TINY_LLAMA, {**config, "num_local_experts": 8})
    assert moe is not None and "experts" in moe and "has 8" in moe
    missing = architecture_mismatch(
        TINY_LLAMA, {k: v for k, v in config.items() if k != "vocab_size"}
    )
    assert missing is not None and "vocab_size" in missing
    # The head dimension (explicit, else hidden size / heads) and the model type count too:
    # same sizes with other heads, or another architecture, are other models.
    head = architecture_mismatch(TINY_LLAMA, {**config, "head_dim": 32})
    assert head is not None and head.startswith("head dimension (head_dim): the checkpoint has 32")
    assert architecture_mismatch(TINY_LLAMA, {**config, "head_dim": 16}) is None
    kind = architecture_mismatch(TINY_LLAMA, {**config, "model_type": "mistral"})
    assert kind is not None and kind.startswith("model type (model_type): the checkpoint has")
    assert architecture_mismatch(TINY_LLAMA, {**config, "model_type": "llama"}) is None


def test_a_gated_model_without_a_token_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Llama 2's hub repository is gated: with no token where the run starts, the download
    would fail after the job was billed. Every target refuses a real launch (a dry run warns);
    a token, --random-init, or weights of one's own lift it."""
    import dataclasses

    from plan_fixtures import sagemaker_qlora_spec

    from runners import RunnerError, SageMakerRunner, SkyPilotRunner, gated_token_problem

    monkeypatch.delenv("HF_TOKEN", raising=False)
    real = dataclasses.replace(sagemaker_qlora_spec(), random_init=False)
    assert real.model.hf_id == "meta-llama/Llama-2-7b-hf"
    with pytest.raises(RunnerError, match="is a gated model on the Hugging Face Hub"):
        SageMakerRunner(role_arn=ROLE, env={}).launch(real, data="s3://b/d.jsonl", name="j")
    dry = SageMakerRunner(role_arn=ROLE, env={}).launch(
        real, data="s3://b/d.jsonl", name="j", dry_run=True
    )
    assert dry.dry_run
    sky_spec = dataclasses.replace(real, offer=dataclasses.replace(real.offer, service="ec2"))
    with pytest.raises(RunnerError, match="gated model"):
        SkyPilotRunner(runs_dir=tmp_path, env={}).launch(sky_spec, data="s3://b/d.jsonl")
    assert not any(tmp_path.iterdir())  # nothing staged

    def problem(**kw: Any) -> str | None:
        args = {"weights": None, "random_init": False, "has_token": False, "where": "x"} | kw
        return gated_token_problem(real.model, **args)

    assert problem() is not None
    assert problem(has_token=True) is None
    assert problem(random_init=True) is None
    assert problem(weights="s3://b/models/llama/") is None
    assert problem(weights=str(tmp_path)) is None  # weights on this machine
    assert problem(weights="Qwen/Qwen2.5-7B") is None  # not gated


def test_relative_weights_resolve_against_the_callers_folder(tmp_path: Path) -> None:
    from runners import RunnerError
    from runners._weights import resolve_weights

    (tmp_path / "models" / "x").mkdir(parents=True)
    assert resolve_weights("models/x", cwd=tmp_path) == str((tmp_path / "models/x").resolve())
    assert resolve_weights("meta-llama/Llama-2-7b-hf", cwd=tmp_path) == (
        "meta-llama/Llama-2-7b-hf"
    )
    assert resolve_weights("s3://b/models/x/", cwd=tmp_path) == "s3://b/models/x"
    for missing in ("./models/y", "models/x/y", "/nowhere/at/all"):
        with pytest.raises(RunnerError, match="no such folder"):
            resolve_weights(missing, cwd=tmp_path)


# -- SageMaker: the token and the weights channel -----------------------------------------------
SECRET = "hf_ThisIsASecretTokenValue1234567890"


@pytest.fixture
def aws_plan(tmp_path: Path) -> Path:
    from plan_fixtures import OFFER_L4_SPOT, make_plan

    from planner.plan_io import write_plan

    plan = make_plan()
    spot = next(c for c in plan.ranked if c.offer == OFFER_L4_SPOT)
    return write_plan(make_plan(chosen=spot), tmp_path / "plan.json")


def _sagemaker_dry_run(plan: Path, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        [
            "launch",
            str(plan),
            "--target",
            "sagemaker",
            "--dry-run",
            "--role",
            ROLE,
            "--data",
            "s3://b/d.jsonl",
            *args,
        ],
    )


def test_hf_token_reaches_the_request_masked(
    aws_plan: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runners.sagemaker import MASK

    monkeypatch.setenv("HF_TOKEN", SECRET)
    out = _sagemaker_dry_run(aws_plan)
    assert out.exit_code == 0, out.output
    assert SECRET not in out.output
    request = json.loads(out.stdout)
    assert request["Environment"]["HF_TOKEN"] == MASK

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("MY_HUB_TOKEN", SECRET)
    named = _sagemaker_dry_run(aws_plan, "--hf-token-env", "MY_HUB_TOKEN")
    assert named.exit_code == 0 and SECRET not in named.output
    assert json.loads(named.stdout)["Environment"]["HF_TOKEN"] == MASK
    unset = _sagemaker_dry_run(aws_plan, "--hf-token-env", "NOT_SET_ANYWHERE")
    assert unset.exit_code == 2 and "NOT_SET_ANYWHERE" in unset.output
    none = _sagemaker_dry_run(aws_plan)
    assert "HF_TOKEN" not in json.loads(none.stdout)["Environment"]


def test_s3_weights_arrive_as_a_model_channel(aws_plan: Path) -> None:
    out = _sagemaker_dry_run(aws_plan, "--weights", "s3://b/models/llama2-7b/")
    assert out.exit_code == 0, out.output
    channels = {c["ChannelName"]: c for c in json.loads(out.stdout)["InputDataConfig"]}
    assert set(channels) == {"train", "model"}
    assert channels["model"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/models/llama2-7b/"
    local = _sagemaker_dry_run(aws_plan, "--weights", ".")
    assert local.exit_code == 2 and "cannot read it" in local.output


def test_the_real_request_carries_the_token_and_nothing_else_shows_it(tmp_path: Path) -> None:
    from botocore.session import get_session
    from botocore.stub import ANY, Stubber
    from plan_fixtures import sagemaker_qlora_spec

    from runners import SageMakerRunner

    spec = sagemaker_qlora_spec()
    session = get_session()
    sagemaker = session.create_client("sagemaker", region_name="us-east-1")
    s3 = session.create_client("s3", region_name="us-east-1")
    quotas = session.create_client("service-quotas", region_name="us-east-1")
    iam = session.create_client("iam", region_name="us-east-1")
    runner = SageMakerRunner(
        client=sagemaker,
        s3_client=s3,
        role_arn=ROLE,
        env={"HF_TOKEN": SECRET},
        instance_types=["ml.g5.xlarge"],
        clients={"service-quotas": quotas, "iam": iam},
    )
    request = runner.build_request(spec, data="s3://b/d.jsonl", name="job-1")
    assert request["Environment"]["HF_TOKEN"] == SECRET
    with (
        Stubber(s3) as s3_stub,
        Stubber(sagemaker) as sm_stub,
        Stubber(quotas) as quota_stub,
        Stubber(iam) as iam_stub,
    ):
        quota = {"QuotaName": "ml.g5.xlarge for training job usage", "Value": 1.0}
        quota_stub.add_response("list_service_quotas", {"Quotas": [quota]}, None)
        iam_stub.add_client_error("get_role", "AccessDenied")
        s3_stub.add_response("head_bucket", {}, {"Bucket": "b"})
        s3_stub.add_response("put_object", {}, {"Bucket": "b", "Key": ANY, "Body": ANY})
        sm_stub.add_response(
            "create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:job/job-1"}, request
        )
        result = runner.launch(spec, data="s3://b/d.jsonl", name="job-1")
        sm_stub.assert_no_pending_responses()
    assert SECRET not in result.request_json and SECRET not in result.spec_json


@pytest.mark.slow
def test_wait_exits_1_with_the_failures_last_line(
    workdir: Path, tmp_path: Path, one_thread: None
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "the fox"}) + "\n", encoding="utf-8")  # < one sequence
    runs = tmp_path / "runs"
    rank = str(candidate_rank(workdir / "plan.json", "lora"))
    out = CliRunner().invoke(
        cli,
        [
            "launch",
            str(workdir / "plan.json"),
            "--target",
            "local",
            "--device",
            "cpu",
            "--data",
            str(bad),
            "--weights",
            str(workdir / "ckpt"),
            "--candidate",
            rank,
            "--wait",
            "--output-dir",
            str(runs),
        ],
    )
    assert out.exit_code == 1, out.output
    assert "failed: exit code 2: error: the dataset holds 3 tokens" in out.stderr
    run = only_run(runs)
    status = CliRunner().invoke(cli, ["status", run.name, "--runs-dir", str(runs)])
    assert "error: the dataset holds 3 tokens" in status.output


# -- the real data size ---------------------------------------------------------------------------
def test_run_length_counts_the_local_data_with_the_checkpoints_tokenizer(workdir: Path) -> None:
    rank = str(candidate_rank(workdir / "plan.json", "lora"))
    out = CliRunner().invoke(
        cli,
        [
            "launch",
            str(workdir / "plan.json"),
            "--target",
            "local",
            "--device",
            "cpu",
            "--dry-run",
            "--data",
            str(workdir / "train.jsonl"),
            "--weights",
            str(workdir / "ckpt"),
            "--candidate",
            rank,
        ],
    )
    assert out.exit_code == 0, out.output
    # 500 lines × (16 words + EOS) with the checkpoint's WordLevel tokenizer; the plan assumed
    # 4,000 tokens.
    assert "run length: 8,500 tokens per epoch (counted in" in out.stderr
    assert "note: the data holds 8,500 tokens per epoch" in out.stderr
    assert "2.12× the plan's 4,000" in out.stderr


def test_sagemaker_runtime_follows_tokens_and_says_which_figure(aws_plan: Path) -> None:
    plan_figure = _sagemaker_dry_run(aws_plan)
    assert "(the plan's assumption)" in plan_figure.stderr
    given = _sagemaker_dry_run(aws_plan, "--tokens", "5000000")
    assert given.exit_code == 0, given.output
    assert "run length: 5,000,000 tokens per epoch (given with --tokens)" in given.stderr
    assert "note: the data holds 5,000,000 tokens per epoch" in given.stderr
    runtime = {
        name: json.loads(out.stdout)["StoppingCondition"]["MaxRuntimeInSeconds"]
        for name, out in (("plan", plan_figure), ("given", given))
    }
    assert runtime["given"] < runtime["plan"] / 5


def test_run_length_arithmetic() -> None:
    from runners._length import difference_note, run_length

    common = {
        "epochs": 2.0,
        "tokens_per_step": 1000,
        "tokens_per_s": 500.0,
        "max_steps": None,
        "startup_hours": 0.25,
        "overhead_fraction": 0.1,
        "usd_per_hour": 4.0,
    }
    planned = run_length(dataset_tokens=900_000, source="plan", **common)  # type: ignore[arg-type]
    assert planned.steps == 1800
    assert planned.train_hours == pytest.approx(1800 * 1000 / 500 / 3600)
    assert planned.hours == pytest.approx(1.0 * 1.1 + 0.25)
    assert planned.usd == pytest.approx(planned.hours * 4.0)
    near = run_length(dataset_tokens=980_000, source="counted", **common)  # type: ignore[arg-type]
    assert difference_note(planned, near) is None  # within 10%
    far = run_length(dataset_tokens=450_000, source="counted", **common)  # type: ignore[arg-type]
    note = difference_note(planned, far)
    assert note is not None and "0.50× the plan's 900,000" in note and "900 steps" in note
