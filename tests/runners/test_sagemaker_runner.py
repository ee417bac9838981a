"""The SageMaker runner: the full CreateTrainingJob request for several plans (on-demand vs spot,
1 vs 2 instances, LoRA vs full), checked field by field and against botocore's service model
through Stubber; bad input sends nothing; status and wait; the source tarball; the CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from botocore.session import get_session
from botocore.stub import ANY, Stubber
from click.testing import CliRunner
from model_specs import LLAMA2_7B
from plan_fixtures import SAGEMAKER_GET_ROLE, make_plan
from plan_fixtures import SAGEMAKER_ROLE as ROLE

from catalog import Offer, Provider
from planner.cli import main as cli
from planner.plan_io import write_plan
from profiler import Method, Precision, Sharding, TuningConfig
from runners import LaunchSpec, RunnerError, RunState, SageMakerRunner, launch_spec_from_json
from runners.sagemaker import (
    IMAGE_REGISTRIES,
    image_uri,
    sanitize_job_name,
    source_tarball,
)

DATA = "s3://my-bucket/datasets/chat/"
JOB = "ftplan-test-job"
MODEL = LLAMA2_7B


def _offer(
    instance: str,
    gpus: int,
    *,
    spot: bool = False,
    service: str = "sagemaker",
    provider: Provider = Provider.AWS,
    region: str = "us-west-2",
) -> Offer:
    return Offer(
        provider=provider,
        service=service,
        instance_type=instance,
        region=region,
        gpu="X",
        gpu_count=gpus,
        usd_per_hour=1.0,
        spot=spot,
        as_of="2025-05-01",
        source="test",
    )


def _spec(method: Method, offer: Offer, *, nodes: int = 1, hours: float = 3.0) -> LaunchSpec:
    gpus = offer.gpu_count * nodes
    lora = method is not Method.FULL
    sharding = Sharding.NONE if gpus == 1 else (Sharding.DDP if lora else Sharding.FSDP)
    config = TuningConfig(
        method=method,
        precision=Precision.BF16_MIXED if lora else Precision.BF16,
        lora_rank=16 if lora else None,
        lora_targets="all-linear" if lora else None,
        micro_batch_size=4,
        seq_len=1024,
        grad_checkpointing=True,
        gpu_count=gpus,
        sharding=sharding,
    )
    return LaunchSpec(
        model=MODEL,
        config=config,
        offer=offer,
        nodes=nodes,
        random_init=True,  # Llama 2 is gated: real weights need a token (tested on its own)
        max_hours=hours,
        expected_peak_allocated_gib=15.6,
        expected_tokens_per_s=7277.6,
    )


def _clients() -> tuple[Any, Any]:
    session = get_session()
    kw = {"region_name": "us-west-2", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    return session.create_client("sagemaker", **kw), session.create_client("s3", **kw)


def _preflight_clients() -> tuple[Any, Any]:
    session = get_session()
    kw = {"region_name": "us-west-2", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    return session.create_client("service-quotas", **kw), session.create_client("iam", **kw)


def _quota_page(instance: str, value: float, *, spot: bool = False) -> dict[str, Any]:
    kind = "spot training" if spot else "training"
    return {
        "Quotas": [
            {
                "ServiceCode": "sagemaker",
                "QuotaName": f"{instance} for {kind} job usage",
                "QuotaCode": "L-1",
                "Value": value,
            }
        ]
    }


def _request(spec: LaunchSpec, **runner_kw: Any) -> dict[str, Any]:
    runner = SageMakerRunner(role_arn=ROLE, env={}, **runner_kw)
    result = runner.launch(spec, data=DATA, dry_run=True, name=JOB)
    assert result.dry_run and result.run_id == JOB
    return dict(json.loads(result.request_json))


PLANS = {
    "lora-1x-on-demand": (
        _spec(Method.LORA, _offer("ml.g5.2xlarge", 1)),
        "ml.g5.2xlarge",
        1,
        False,
    ),
    "qlora-ec2-spot": (
        _spec(Method.QLORA, _offer("g6.xlarge", 1, spot=True, service="ec2")),
        "ml.g6.xlarge",
        1,
        True,
    ),
    "full-2-nodes-fsdp": (
        _spec(Method.FULL, _offer("ml.p4d.24xlarge", 8), nodes=2),
        "ml.p4d.24xlarge",
        2,
        False,
    ),
    "lora-2-nodes-spot": (
        _spec(Method.LORA, _offer("ml.g5.12xlarge", 4, spot=True), nodes=2),
        "ml.g5.12xlarge",
        2,
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_request_for_each_plan(name: str) -> None:
    spec, instance, count, spot = PLANS[name]
    request = _request(spec)
    prefix = f"s3://my-bucket/ftplan/{JOB}"
    assert request["TrainingJobName"] == JOB and request["RoleArn"] == ROLE
    assert request["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.us-west-2.amazonaws.com/huggingface-pytorch-training:"
        "2.8.0-transformers4.56.2-gpu-py312-cu129-ubuntu22.04"
    )
    assert request["ResourceConfig"]["InstanceType"] == instance
    assert request["ResourceConfig"]["InstanceCount"] == count
    assert request["EnableManagedSpotTraining"] is spot
    # 3 h planned × 1.25 margin + 20 min start-up = 14,700 s; spot may wait twice that.
    expected_stop = {"MaxRuntimeInSeconds": 14_700}
    if spot:
        expected_stop["MaxWaitTimeInSeconds"] = 29_400
    assert request["StoppingCondition"] == expected_stop
    assert request["CheckpointConfig"] == {
        "S3Uri": f"{prefix}/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["OutputDataConfig"] == {"S3OutputPath": f"{prefix}/output"}
    channel = request["InputDataConfig"][0]
    assert channel["ChannelName"] == "train"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == DATA
    hp = request["HyperParameters"]
    assert hp["sagemaker_program"] == "ftplan_entry.py"
    assert hp["sagemaker_submit_directory"] == f"{prefix}/source/sourcedir.tar.gz"
    assert hp["sagemaker_region"] == "us-west-2"
    assert launch_spec_from_json(hp["ftplan_spec"]) == spec
    assert all(isinstance(v, str) and len(v) <= 2500 for v in hp.values())
    distributed = spec.config.gpu_count > 1
    assert (hp.get("sagemaker_torch_distributed_enabled") == "true") is distributed
    env = request["Environment"]
    assert (env.get("ACCELERATE_USE_FSDP") == "true") is (
        spec.config.method is Method.FULL and distributed
    )
    if spec.config.method is Method.FULL:
        assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
        # Pure-bf16 full FT keeps 2 checkpoints of bf16 weights + bf16 AdamW states
        # (6 B/param × 2 = 75.3 GiB), the 16-bit weights twice (25.1 GiB) and 30 GiB.
        assert request["ResourceConfig"]["VolumeSizeInGB"] == 131


def _launch_stubbed(spec: LaunchSpec, expected: dict[str, Any], **launch: Any) -> Any:
    """A real (not dry-run) launch against stubbed clients: the pre-flight checks, the source
    upload, then exactly ``expected`` sent as the CreateTrainingJob request (Stubber also
    validates it against botocore's SageMaker service model)."""
    sm, s3 = _clients()
    quotas, iam = _preflight_clients()
    resources = expected["ResourceConfig"]
    with (
        Stubber(sm) as sm_stub,
        Stubber(s3) as s3_stub,
        Stubber(quotas) as quota_stub,
        Stubber(iam) as iam_stub,
    ):
        quota_stub.add_response(
            "list_service_quotas",
            _quota_page(
                resources["InstanceType"],
                resources["InstanceCount"],
                spot=expected["EnableManagedSpotTraining"],
            ),
            {"ServiceCode": "sagemaker"},
        )
        iam_stub.add_response("get_role", SAGEMAKER_GET_ROLE, {"RoleName": "ftplan-sagemaker"})
        s3_stub.add_response("head_bucket", {}, {"Bucket": "my-bucket"})
        s3_stub.add_response(
            "put_object",
            {},
            {"Bucket": "my-bucket", "Key": f"ftplan/{JOB}/source/sourcedir.tar.gz", "Body": ANY},
        )
        sm_stub.add_response(
            "create_training_job",
            {"TrainingJobArn": f"arn:aws:sagemaker:us-west-2:1:job/{JOB}"},
            expected,
        )
        result = SageMakerRunner(
            client=sm,
            s3_client=s3,
            role_arn=ROLE,
            env={},
            clients={"service-quotas": quotas, "iam": iam},
        ).launch(spec, data=DATA, name=JOB, **launch)
        for stub in (sm_stub, s3_stub, quota_stub, iam_stub):
            stub.assert_no_pending_responses()
    return result


@pytest.mark.parametrize("name", sorted(PLANS))
def test_launch_uploads_source_then_creates_exactly_that_request(name: str) -> None:
    spec = PLANS[name][0]
    result = _launch_stubbed(spec, _request(spec))
    assert not result.dry_run and result.run_id == JOB


@pytest.mark.parametrize(
    ("kwargs", "spec", "data", "message"),
    [
        (
            {"role_arn": None},
            PLANS["lora-1x-on-demand"][0],
            DATA,
            r"no SageMaker execution role.*--role.*FTPLAN_SAGEMAKER_ROLE.*nothing was sent",
        ),
        (
            {"region": "mars-north-1"},
            PLANS["lora-1x-on-demand"][0],
            DATA,
            r"region 'mars-north-1'. Known regions: af-south-1, .*us-west-2",
        ),
        (
            {},
            PLANS["lora-1x-on-demand"][0],
            "/home/me/train.jsonl",
            r"'/home/me/train.jsonl' is not an s3:// URI. To fix: upload",
        ),
        (
            {},
            _spec(Method.LORA, _offer("gpu_1x_h100", 1, provider=Provider.LAMBDA)),
            DATA,
            r"the plan chose a lambda offer; SageMaker runs AWS instances only",
        ),
        (
            {},
            _spec(Method.LORA, _offer("x9.xlarge", 1, service="ec2")),
            DATA,
            r"SageMaker has no training instance 'ml.x9.xlarge'",
        ),
    ],
)
def test_bad_input_sends_nothing(
    kwargs: dict[str, Any], spec: LaunchSpec, data: str, message: str
) -> None:
    sm, s3 = _clients()
    options = {"role_arn": ROLE, **kwargs}
    with Stubber(sm) as sm_stub, Stubber(s3) as s3_stub:  # no responses: any call would fail
        runner = SageMakerRunner(client=sm, s3_client=s3, env={}, **options)
        for dry_run in (True, False):
            with pytest.raises(RunnerError, match=message):
                runner.launch(spec, data=data, dry_run=dry_run)
        sm_stub.assert_no_pending_responses()
        s3_stub.assert_no_pending_responses()


def test_role_and_region_come_from_the_environment() -> None:
    spec = PLANS["lora-1x-on-demand"][0]
    runner = SageMakerRunner(env={"SAGEMAKER_ROLE_ARN": ROLE}, region="eu-south-1")
    request = json.loads(runner.launch(spec, data=DATA, dry_run=True, name=JOB).request_json)
    assert request["RoleArn"] == ROLE
    assert request["AlgorithmSpecification"]["TrainingImage"].startswith(
        "692866216735.dkr.ecr.eu-south-1.amazonaws.com/huggingface-pytorch-training:"
    )
    assert image_uri("cn-north-1").startswith("727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/")
    assert len(IMAGE_REGISTRIES) == 24


def test_job_names_fit_sagemakers_pattern() -> None:
    assert sanitize_job_name("ftplan-Qwen2.5_7B/instruct-lora", "20261123-101500") == (
        "ftplan-Qwen2-5-7B-instruct-lora-20261123-101500"
    )
    long = sanitize_job_name("ftplan-" + "x" * 100 + "-full", "20261123-101500")
    assert len(long) == 63 and long.endswith("-20261123-101500")
    assert sanitize_job_name("--__--") == "ftplan"


def _describe(status: str, secondary: str, **extra: Any) -> dict[str, Any]:
    when = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    return {
        "TrainingJobName": JOB,
        "TrainingJobArn": f"arn:aws:sagemaker:us-west-2:1:job/{JOB}",
        "ModelArtifacts": {"S3ModelArtifacts": "s3://my-bucket/out/model.tar.gz"},
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "img"},
        "ResourceConfig": {
            "InstanceType": "ml.g5.2xlarge",
            "InstanceCount": 1,
            "VolumeSizeInGB": 50,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 100},
        "CreationTime": when,
        "TrainingStartTime": when,
        **extra,
    }


def test_status_and_wait_follow_describe_training_job() -> None:
    sm, _ = _clients()
    echo = io.StringIO()
    naps: list[float] = []
    with Stubber(sm) as stub:
        for status, secondary in (
            ("InProgress", "Starting"),
            ("InProgress", "Training"),
            ("InProgress", "Training"),
        ):
            stub.add_response(
                "describe_training_job", _describe(status, secondary), {"TrainingJobName": JOB}
            )
        stub.add_response(
            "describe_training_job",
            _describe(
                "Failed", "Failed", FailureReason="CUDA out of memory", BillableTimeInSeconds=321
            ),
            {"TrainingJobName": JOB},
        )
        runner = SageMakerRunner(client=sm, env={}, echo=echo)
        final = runner.wait(JOB, poll_s=7.0, sleep=naps.append)
        stub.assert_no_pending_responses()
    assert final.state is RunState.FAILED
    assert final.detail == "Failed; CUDA out of memory; billable 321 s"
    assert naps == [7.0, 7.0, 7.0]
    assert echo.getvalue().splitlines() == [
        "running: Starting",
        "running: Training",
        "failed: Failed; CUDA out of memory; billable 321 s",
    ]
    sm2, _ = _clients()
    with Stubber(sm2) as stub:
        stub.add_client_error(
            "describe_training_job", "ValidationException", "Requested resource not found."
        )
        with pytest.raises(RunnerError, match="cannot read SageMaker job 'nope'"):
            SageMakerRunner(client=sm2, env={}).status("nope")


def test_source_tarball_ships_the_packages_and_an_entry_point(tmp_path: Path) -> None:
    spec = PLANS["lora-1x-on-demand"][0]
    from runners import launch_spec_to_json

    blob = source_tarball(launch_spec_to_json(spec))
    assert blob == source_tarball(launch_spec_to_json(spec))  # deterministic
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path, filter="data")
    assert {
        "runners/train.py",
        "runners/sagemaker.py",
        "profiler/recipes/methods.py",
        "catalog/data/models.csv",
        "ftplan_entry.py",
        "ftplan_launch.json",
        "requirements.txt",
    } <= names
    assert not any("__pycache__" in n for n in names)
    assert launch_spec_from_json((tmp_path / "ftplan_launch.json").read_text()) == spec
    # The entry point imports runners from the unpacked source, as SageMaker runs it.
    where = subprocess.run(
        [sys.executable, "-c", "import runners.train as t; print(t.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert where.stdout.strip() == str(tmp_path / "runners" / "train.py")
    helped = subprocess.run(
        [sys.executable, "ftplan_entry.py", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert helped.returncode == 0 and "--ftplan_spec" in helped.stdout


# -- CLI --------------------------------------------------------------------------------------
@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    from plan_fixtures import OFFER_L4_SPOT

    plan = make_plan()
    spot = next(c for c in plan.ranked if c.offer == OFFER_L4_SPOT)
    return write_plan(make_plan(chosen=spot), tmp_path / "plan.json")


def test_cli_sagemaker_dry_run_prints_the_request(
    plan_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTPLAN_SAGEMAKER_ROLE", ROLE)
    out = CliRunner().invoke(
        cli,
        [
            "launch",
            str(plan_file),
            "--target",
            "sagemaker",
            "--data",
            DATA,
            "--dry-run",
            "--max-steps",
            "100",
            "--image-uri",
            "1.dkr.ecr.us-east-1.amazonaws.com/mine:1",
        ],
    )
    assert out.exit_code == 0, out.output
    request = json.loads(out.stdout)  # the request alone on stdout; warnings go to stderr
    assert "no spot price for ml.g6.xlarge" in out.stderr
    assert request["AlgorithmSpecification"]["TrainingImage"] == (
        "1.dkr.ecr.us-east-1.amazonaws.com/mine:1"
    )
    assert request["ResourceConfig"]["InstanceType"] == "ml.g6.xlarge"  # EC2 g6.xlarge, mapped
    assert request["EnableManagedSpotTraining"] is True
    assert (
        request["StoppingCondition"]["MaxWaitTimeInSeconds"]
        >= (request["StoppingCondition"]["MaxRuntimeInSeconds"])
    )
    spec = launch_spec_from_json(request["HyperParameters"]["ftplan_spec"])
    assert spec.config.method is Method.QLORA and spec.max_steps == 100
    assert spec.expected_tokens_per_s == 690.0 and spec.expected_source == "extrapolated"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: no SageMaker execution role"),
        (
            ["--role", ROLE, "--region", "xx-1"],
            "error: no Hugging Face training image is known for region 'xx-1'",
        ),
        (
            ["--role", ROLE, "--output-dir", "/tmp/x"],
            "error: --output-dir '/tmp/x' must be an s3://",
        ),
    ],
)
def test_cli_sagemaker_bad_input_exit_2(
    plan_file: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    for var in ("FTPLAN_SAGEMAKER_ROLE", "SAGEMAKER_ROLE_ARN"):
        monkeypatch.delenv(var, raising=False)
    out = CliRunner().invoke(
        cli, ["launch", str(plan_file), "--target", "sagemaker", "--data", DATA, *args]
    )
    assert out.exit_code == 2
    assert out.output.strip().splitlines() == [out.output.strip()]
    assert out.output.startswith(message), out.output


def test_ec2_priced_plan_warns_about_the_sagemaker_price() -> None:
    from planner.handoff import sagemaker_price_warning

    # The shipped catalog prices ml.g5.xlarge above g5.xlarge (on demand): the plan's dollars
    # would not hold on SageMaker, and the user is told by how much.
    ec2 = dataclasses.replace(_offer("g5.xlarge", 1, service="ec2"), usd_per_hour=1.006)
    warning = sagemaker_price_warning(_spec(Method.LORA, ec2))
    assert warning is not None and "ml.g5.xlarge" in warning and "1.40×" in warning
    assert sagemaker_price_warning(_spec(Method.LORA, _offer("ml.g5.xlarge", 1))) is None
    spot = dataclasses.replace(ec2, spot=True)
    assert "no spot price for ml.g5.xlarge" in str(
        sagemaker_price_warning(_spec(Method.LORA, spot))
    )


EVAL_DATA = "s3://my-bucket/datasets/heldout/"


def test_eval_data_is_an_eval_channel_in_the_request_sent() -> None:
    spec = PLANS["lora-1x-on-demand"][0]
    dry = SageMakerRunner(role_arn=ROLE, env={}).launch(
        spec, data=DATA, eval_data=EVAL_DATA, dry_run=True, name=JOB
    )
    expected = json.loads(dry.request_json)
    channels = {c["ChannelName"]: c for c in expected["InputDataConfig"]}
    assert sorted(channels) == ["eval", "train"]  # the container sees SM_CHANNEL_EVAL
    assert channels["eval"]["DataSource"]["S3DataSource"]["S3Uri"] == EVAL_DATA
    assert channels["eval"]["InputMode"] == "File"
    metrics = {
        m["Name"]: m["Regex"] for m in expected["AlgorithmSpecification"]["MetricDefinitions"]
    }
    eval_line = '{"eval_loss": 2.5, "eval_s": 0.1, "eval_tokens": 93, "event": "eval", "step": 2}'
    found = re.search(metrics["eval:loss"], eval_line)
    assert found is not None and found.group(1) == "2.5"
    assert re.search(metrics["train:loss"], eval_line) is None  # an eval line is not a step
    without = _request(spec)
    assert [c["ChannelName"] for c in without["InputDataConfig"]] == ["train"]
    # Stubber checks the request with the eval channel against SageMaker's service model.
    _launch_stubbed(spec, expected, eval_data=EVAL_DATA)


@pytest.mark.parametrize(
    ("eval_data", "message"),
    [
        ("/home/me/eval.jsonl", r"'/home/me/eval.jsonl' is not an s3:// URI.*--eval-data s3://"),
        (DATA + "eval/", r"--eval-data .* and --data .* overlap.*separate prefixes"),
        (DATA.rstrip("/"), r"overlap"),  # an S3 prefix without '/' also matches the train keys
    ],
)
def test_bad_eval_data_sends_nothing(eval_data: str, message: str) -> None:
    sm, s3 = _clients()
    with Stubber(sm) as sm_stub, Stubber(s3) as s3_stub:  # no responses: any call would fail
        runner = SageMakerRunner(client=sm, s3_client=s3, role_arn=ROLE, env={})
        for dry_run in (True, False):
            with pytest.raises(RunnerError, match=message):
                runner.launch(
                    PLANS["lora-1x-on-demand"][0], data=DATA, eval_data=eval_data, dry_run=dry_run
                )
        sm_stub.assert_no_pending_responses()
        s3_stub.assert_no_pending_responses()
