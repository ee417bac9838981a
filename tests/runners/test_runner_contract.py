"""One contract, two runners: LocalRunner (a real CPU training run of a tiny Llama) and
SageMakerRunner (moto's SageMaker and S3) launch, dry-run and report status the same way."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber
from model_specs import TINY_LLAMA

from catalog import Offer, Provider, get_model
from profiler import Method, TuningConfig
from runners import (
    TARGETS,
    LaunchResult,
    LaunchSpec,
    LocalRunner,
    Runner,
    RunnerError,
    RunnerOptions,
    RunState,
    SageMakerRunner,
    SkyPilotRunner,
    SummaryFetchingRunner,
    Target,
    WaitingRunner,
    launch_on,
    runner_for,
    target_of_run,
)
from runners._sizing import SAGEMAKER_VOLUME, SKYPILOT_DISK, node_disk_gib

TINY = TINY_LLAMA
CONFIG = TuningConfig(
    method=Method.LORA, lora_rank=4, lora_targets="all-linear", micro_batch_size=2, seq_len=32
)
SAGEMAKER_OFFER = Offer(
    provider=Provider.AWS,
    service="sagemaker",
    instance_type="ml.g5.xlarge",
    region="us-east-1",
    gpu="A10G",
    gpu_count=1,
    usd_per_hour=1.4084,
    spot=False,
    as_of="2025-05-01",
    source="test",
)
BUCKET = "ftplan-contract"


@dataclass
class Harness:
    """A runner, a spec it can run, its data, and a way to see what it created."""

    runner: Runner
    spec: LaunchSpec
    data: str
    missing_data: str
    eval_data: str
    missing_eval_data: str
    created: Callable[[], list[str]]


def _local(tmp_path: Path) -> Iterator[Harness]:
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": "abc " * 40}) for _ in range(20)) + "\n")
    spec = LaunchSpec(
        model=TINY,
        config=CONFIG,
        random_init=True,
        tokenizer="byte",
        device="cpu",
        max_steps=3,
        checkpoint_every_minutes=None,
    )
    runs = tmp_path / "runs"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")  # a tiny model; spare the shared CPU cores
        yield Harness(
            runner=LocalRunner(runs_dir=runs),
            spec=spec,
            data=str(data),
            missing_data=str(tmp_path / "missing.jsonl"),
            eval_data=str(data),
            missing_eval_data=str(tmp_path / "missing-eval.jsonl"),
            created=lambda: sorted(p.name for p in runs.iterdir()) if runs.exists() else [],
        )


def _sagemaker(tmp_path: Path) -> Iterator[Harness]:
    moto = pytest.importorskip("moto")
    import boto3

    with pytest.MonkeyPatch.context() as env, moto.mock_aws():
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            env.setenv(key, value)
        s3 = boto3.client("s3", region_name="us-east-1")
        sm = boto3.client("sagemaker", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="data/train.jsonl", Body=b'{"text": "abc"}\n')

        def created() -> list[str]:
            jobs = [j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"]]
            keys = [
                o["Key"]
                for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
                if not o["Key"].startswith("data/")
            ]
            return sorted(jobs + keys)

        iam = boto3.client("iam", region_name="us-east-1")
        role = iam.create_role(RoleName="ftplan", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        # moto does not implement Service Quotas; botocore's Stubber answers for it.
        quotas = boto3.client("service-quotas", region_name="us-east-1")
        quota_stub = Stubber(quotas)
        quota_stub.add_response(
            "list_service_quotas",
            {
                "Quotas": [
                    {
                        "QuotaName": f"{SAGEMAKER_OFFER.instance_type} for training job usage",
                        "Value": 2.0,
                    }
                ]
            },
            {"ServiceCode": "sagemaker"},
        )
        quota_stub.activate()
        runner = SageMakerRunner(
            client=sm,
            s3_client=s3,
            role_arn=role,
            env={},
            clients={"service-quotas": quotas, "iam": iam},
        )
        spec = LaunchSpec(model=TINY, config=CONFIG, offer=SAGEMAKER_OFFER, max_hours=0.5)
        yield Harness(
            runner=runner,
            spec=spec,
            data=f"s3://{BUCKET}/data/",
            missing_data="/not/on/s3.jsonl",
            eval_data=f"s3://{BUCKET}/eval/",
            missing_eval_data="/not/on/s3-eval.jsonl",
            created=created,
        )


@pytest.fixture(params=["local", "sagemaker"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    factory = {"local": _local, "sagemaker": _sagemaker}[request.param]
    yield from factory(tmp_path)


def _wait(harness: Harness, run_id: str) -> Any:
    runner = harness.runner
    if isinstance(runner, LocalRunner):
        return runner.wait(run_id, poll_s=0.5, follow=False)
    assert isinstance(runner, SageMakerRunner)
    return runner.wait(run_id, poll_s=0.0, sleep=lambda _s: None)


def test_is_a_runner(harness: Harness) -> None:
    assert isinstance(harness.runner, Runner)
    assert harness.runner.target in (Target.LOCAL, Target.SAGEMAKER)


def test_dry_run_describes_and_creates_nothing(harness: Harness) -> None:
    result = harness.runner.launch(harness.spec, data=harness.data, dry_run=True)
    assert isinstance(result, LaunchResult)
    assert result.dry_run and result.run_id and result.target is harness.runner.target
    assert result.command or result.request_json
    assert json.loads(result.spec_json)["spec"]["config"]["lora_rank"] == 4
    assert harness.created() == []


def test_missing_data_is_refused_before_anything_is_created(harness: Harness) -> None:
    with pytest.raises(RunnerError, match="To fix"):
        harness.runner.launch(harness.spec, data=harness.missing_data)
    assert harness.created() == []


def test_eval_data_is_optional_and_checked_like_data(harness: Harness) -> None:
    result = harness.runner.launch(
        harness.spec, data=harness.data, eval_data=harness.eval_data, dry_run=True
    )
    described = " ".join(result.command) + result.request_json
    assert "--eval-data" in described or '"ChannelName": "eval"' in described
    with pytest.raises(RunnerError, match="To fix"):
        harness.runner.launch(harness.spec, data=harness.data, eval_data=harness.missing_eval_data)
    assert harness.created() == []


@pytest.mark.parametrize("runner", [Runner, LocalRunner, SageMakerRunner, SkyPilotRunner])
def test_every_runner_takes_eval_data_as_an_optional_keyword(runner: type) -> None:
    parameter = inspect.signature(runner.launch).parameters["eval_data"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is None


def test_unknown_run_is_an_error(harness: Harness) -> None:
    with pytest.raises(RunnerError):
        harness.runner.status("ftplan-no-such-run-000")


@pytest.mark.slow
def test_launch_then_status_until_it_succeeds(harness: Harness) -> None:
    result = harness.runner.launch(harness.spec, data=harness.data)
    assert not result.dry_run and result.run_id in "".join(harness.created())
    first = harness.runner.status(result.run_id)
    assert first.run_id == result.run_id and first.target is harness.runner.target
    final = _wait(harness, result.run_id)
    assert final.state is RunState.SUCCEEDED, final.detail
    assert final.ended_at and final.summary_path
    if isinstance(harness.runner, LocalRunner):
        # A real training run happened: 3 steps, a checkpoint, a summary with throughput.
        assert final.detail.startswith("step 3/3")
        summary = json.loads(Path(final.summary_path).read_text())
        assert summary["steps_completed"] == 3 and summary["measured"]["tokens_per_s"] > 0
        assert (Path(result.run_dir) / "output/checkpoints/checkpoint-00000003").is_dir()


# -- the registry of targets ------------------------------------------------------------------
def test_every_target_has_one_registry_row_that_builds_its_runner(tmp_path: Path) -> None:
    assert set(TARGETS) == set(Target)
    for target in Target:
        runner = runner_for(target, RunnerOptions(runs_dir=tmp_path, region="us-east-1"))
        assert isinstance(runner, Runner) and runner.target is target


def test_output_dir_means_what_each_target_says(tmp_path: Path) -> None:
    local = runner_for(
        Target.LOCAL, RunnerOptions(runs_dir=tmp_path / "a", output_dir=str(tmp_path / "b"))
    )
    assert isinstance(local, LocalRunner) and local.runs_dir == tmp_path / "b"
    assert TARGETS[Target.LOCAL].output_dir_is_runs_dir
    with pytest.raises(RunnerError, match="must be an s3:// prefix for SageMaker"):
        runner_for(Target.SAGEMAKER, RunnerOptions(output_dir=str(tmp_path)))
    with pytest.raises(RunnerError, match="must be a bucket URI for SkyPilot"):
        runner_for(Target.SKYPILOT, RunnerOptions(output_dir=str(tmp_path)))


def test_launch_wait_follows_local_runs_and_sagemaker_jobs_only() -> None:
    assert issubclass(LocalRunner, WaitingRunner) and issubclass(SageMakerRunner, WaitingRunner)
    assert not issubclass(SkyPilotRunner, WaitingRunner)
    summaries = [
        r
        for r in (LocalRunner, SageMakerRunner, SkyPilotRunner)
        if issubclass(r, SummaryFetchingRunner)
    ]
    assert summaries == [SageMakerRunner]


def test_a_run_id_finds_its_target(tmp_path: Path) -> None:
    assert target_of_run("run-1", runs_dir=tmp_path) is Target.SAGEMAKER  # a job name
    (tmp_path / "run-1").mkdir()
    assert target_of_run("run-1", runs_dir=tmp_path) is Target.LOCAL
    (tmp_path / "run-1" / "skypilot.json").write_text("{}")
    assert target_of_run("run-1", runs_dir=tmp_path) is Target.SKYPILOT


def test_launch_on_a_target_dry_runs_with_its_own_runner(tmp_path: Path) -> None:
    gen = _local(tmp_path)
    harness = next(gen)
    options = RunnerOptions(runs_dir=tmp_path / "runs", resume="no-such-run")
    with pytest.raises(RunnerError, match="no local run 'no-such-run' to resume"):
        launch_on(Target.LOCAL, harness.spec, options, data=harness.data, dry_run=True)
    options = RunnerOptions(runs_dir=tmp_path / "runs")
    runner, result = launch_on(
        Target.LOCAL, harness.spec, options, data=harness.data, dry_run=True
    )
    assert isinstance(runner, LocalRunner) and result.target is Target.LOCAL and result.dry_run
    assert harness.created() == []
    gen.close()


def test_node_disks_of_every_target_share_one_formula() -> None:
    big = LaunchSpec(
        model=get_model("llama2-70b"),
        config=TuningConfig(method=Method.FULL, micro_batch_size=1, seq_len=2048),
    )
    # Same weights and checkpoints; SkyPilot allows 100 GiB for the system, SageMaker 30.
    assert node_disk_gib(big, SKYPILOT_DISK) - node_disk_gib(big, SAGEMAKER_VOLUME) == 70
    tiny = LaunchSpec(model=TINY, config=CONFIG)
    assert node_disk_gib(tiny, SKYPILOT_DISK) == SKYPILOT_DISK.floor_gib == 256
    assert node_disk_gib(tiny, SAGEMAKER_VOLUME) == SAGEMAKER_VOLUME.floor_gib == 50
