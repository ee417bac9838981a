"""Operating runs: ``ftplan logs`` / ``stop`` / ``runs`` and status with the cost so far, for
local runs (a real stopped CPU run) and SageMaker jobs (botocore's Stubber)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.session import get_session
from botocore.stub import Stubber
from click.testing import CliRunner
from model_specs import TINY_LLAMA
from plan_fixtures import sagemaker_qlora_spec

from planner.cli import main as cli
from profiler import Method, TuningConfig
from runners import LaunchSpec, LocalRunner, RunState, SageMakerRunner, launch_spec_to_json
from runners._checkpoint import latest_checkpoint
from runners._sagemaker_ops import LOG_GROUP

JOB = "ftplan-llama2-7b-qlora-20261130-120000"


def _described(**extra: Any) -> dict[str, Any]:
    return {
        "TrainingJobName": JOB,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:1:training-job/{JOB}",
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed",
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceCount": 1, "VolumeSizeInGB": 50},
        "StoppingCondition": {},
        "CreationTime": dt.datetime(2026, 11, 30, 12),
        "HyperParameters": {
            "ftplan_spec": launch_spec_to_json(sagemaker_qlora_spec(spot=True), indent=None)
        },
        **extra,
    }


def _clients() -> tuple[Any, Any]:
    session = get_session()
    kw = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    return session.create_client("sagemaker", **kw), session.create_client("logs", **kw)


def test_status_shows_the_cost_so_far_and_spot_savings() -> None:
    sm, logs = _clients()
    runner = SageMakerRunner(client=sm, env={}, clients={"logs": logs})
    with Stubber(sm) as stub:
        stub.add_response(
            "describe_training_job",
            _described(
                BillableTimeInSeconds=1800,
                TrainingTimeInSeconds=3600,
                EnableManagedSpotTraining=True,
            ),
            {"TrainingJobName": JOB},
        )
        status = runner.status(JOB)
    assert status.state is RunState.SUCCEEDED
    # Managed spot bills the billable seconds (already discounted: 1,800 of 3,600) at the
    # on-demand ml.g5.xlarge price (the shipped catalog's 1.4084 USD/h in us-east-1), not at the
    # plan's spot price: that would count the discount twice.
    assert status.cost_usd == pytest.approx(0.5 * 1.4084)
    assert status.spot_savings_fraction == pytest.approx(0.5)
    assert "0.70 USD so far at 1.408 USD/h (ml.g5.xlarge on-demand)" in status.detail
    assert "spot saved 50%" in status.detail


@pytest.mark.parametrize(
    ("resources", "usd", "detail"),
    [
        # Two instances bill twice; the plan's own on-demand SageMaker price is the rate.
        ({"InstanceType": "ml.g5.xlarge", "InstanceCount": 2}, 2 * 1.4, "at 1.4 USD/h × 2"),
        # Another instance type than planned: its catalog price.
        ({"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1}, 1.515, "ml.g5.2xlarge"),
        # Not in the catalog: no figure rather than a wrong one.
        ({"InstanceType": "ml.zz.9xlarge", "InstanceCount": 1}, None, "cost unknown"),
    ],
)
def test_status_cost_is_billable_time_times_instances_at_the_on_demand_price(
    resources: dict[str, Any], usd: float | None, detail: str
) -> None:
    sm, logs = _clients()
    runner = SageMakerRunner(client=sm, env={}, clients={"logs": logs})
    described = _described(BillableTimeInSeconds=3600, TrainingTimeInSeconds=3600)
    described["HyperParameters"]["ftplan_spec"] = launch_spec_to_json(
        sagemaker_qlora_spec(spot=False), indent=None
    )
    described["ResourceConfig"] = {**resources, "VolumeSizeInGB": 50}
    with Stubber(sm) as stub:
        stub.add_response("describe_training_job", described, {"TrainingJobName": JOB})
        status = runner.status(JOB)
    assert status.cost_usd == (None if usd is None else pytest.approx(usd))
    assert detail in status.detail
    assert status.spot_savings_fraction is None


def test_logs_come_from_cloudwatch_and_follow_until_the_job_ends() -> None:
    sm, logs = _clients()
    runner = SageMakerRunner(client=sm, env={}, clients={"logs": logs})
    stream = f"{JOB}/algo-1-1700000000"
    with Stubber(logs) as log_stub, Stubber(sm) as sm_stub:
        log_stub.add_response(
            "describe_log_streams",
            {"logStreams": [{"logStreamName": stream}]},
            {"logGroupName": LOG_GROUP, "logStreamNamePrefix": f"{JOB}/"},
        )
        log_stub.add_response(
            "get_log_events",
            {
                "events": [{"message": '{"event": "start"}\n'}, {"message": "step 1"}],
                "nextForwardToken": "f/1",
            },
            {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True},
        )
        log_stub.add_response(
            "get_log_events",
            {"events": [], "nextForwardToken": "f/1"},
            {
                "logGroupName": LOG_GROUP,
                "logStreamName": stream,
                "startFromHead": True,
                "nextToken": "f/1",
            },
        )
        lines = list(runner.logs(JOB))
        log_stub.assert_no_pending_responses()
        sm_stub.assert_no_pending_responses()
    assert lines == ['{"event": "start"}', "step 1"]


def test_stop_and_runs_call_sagemaker() -> None:
    sm, _logs = _clients()
    runner = SageMakerRunner(client=sm, env={})
    with Stubber(sm) as stub:
        stub.add_response("stop_training_job", {}, {"TrainingJobName": JOB})
        stub.add_response(
            "search",
            {
                "Results": [
                    {
                        "TrainingJob": {
                            "TrainingJobName": JOB,
                            "TrainingJobStatus": "InProgress",
                            "CreationTime": dt.datetime(2026, 11, 30, 12),
                            "Tags": [{"Key": "ftplan:model", "Value": "llama2-7b"}],
                        }
                    }
                ]
            },
            {
                "Resource": "TrainingJob",
                "SearchExpression": {
                    "Filters": [{"Name": "Tags.ftplan:model", "Operator": "Exists"}]
                },
                "SortBy": "CreationTime",
                "SortOrder": "Descending",
                "MaxResults": 50,
            },
        )
        runner.stop(JOB)
        jobs = runner.list_runs()
        stub.assert_no_pending_responses()
    assert jobs == [
        {
            "run_id": JOB,
            "state": "InProgress",
            "created": "2026-11-30T12:00:00",
            "model": "llama2-7b",
        }
    ]


@pytest.mark.slow
def test_local_stop_checkpoints_then_logs_and_runs_show_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text((json.dumps({"text": "abc " * 40}) + "\n") * 20, encoding="utf-8")
    config = TuningConfig(method=Method.LORA, lora_rank=4, lora_targets="all-linear", seq_len=32)
    spec = LaunchSpec(
        model=TINY_LLAMA,
        config=config,
        random_init=True,
        tokenizer="byte",
        device="cpu",
        epochs=10_000.0,
        checkpoint_every_minutes=None,
    )
    runs = tmp_path / "runs"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = LocalRunner(runs_dir=runs)
    run_id = runner.launch(spec, data=str(data)).run_id
    metrics = runs / run_id / "output" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and '"event": "step"' in metrics.read_text()):
        assert time.monotonic() < deadline, (runs / run_id / "train.log").read_text()
        time.sleep(0.5)
    stopped = CliRunner().invoke(cli, ["stop", run_id, "--runs-dir", str(runs)])
    assert stopped.exit_code == 0, stopped.output
    status = runner.wait(run_id, poll_s=0.5, follow=False)
    assert status.state is RunState.STOPPED, status.detail
    assert latest_checkpoint(runs / run_id / "output" / "checkpoints") is not None
    logs = CliRunner().invoke(cli, ["logs", run_id, "--runs-dir", str(runs)])
    assert '"event": "stopped"' in logs.output
    listed = CliRunner().invoke(cli, ["runs", "--runs-dir", str(runs), "--format", "json"])
    assert json.loads(listed.output) == [
        {"run_id": run_id, "target": "local", "state": "stopped", "started": status.started_at}
    ]
    again = CliRunner().invoke(cli, ["stop", run_id, "--runs-dir", str(runs)])
    assert again.exit_code == 2 and "nothing to stop" in again.output


def test_a_finished_jobs_summary_is_fetched_from_its_output(tmp_path: Path) -> None:
    import gzip
    import io
    import tarfile

    from botocore.response import StreamingBody

    summary = {"format": "ftplan-run-summary/1", "steps_completed": 30}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = json.dumps(summary).encode()
        info = tarfile.TarInfo("summary.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    body = gzip.compress(raw.getvalue())
    session = get_session()
    kw = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    sm, s3 = session.create_client("sagemaker", **kw), session.create_client("s3", **kw)
    runner = SageMakerRunner(client=sm, s3_client=s3, env={})
    described = _described(OutputDataConfig={"S3OutputPath": "s3://b/ftplan/x/output"})
    with Stubber(sm) as sm_stub, Stubber(s3) as s3_stub:
        sm_stub.add_response("describe_training_job", described, {"TrainingJobName": JOB})
        s3_stub.add_response(
            "get_object",
            {"Body": StreamingBody(io.BytesIO(body), len(body))},
            {"Bucket": "b", "Key": f"ftplan/x/output/{JOB}/output/output.tar.gz"},
        )
        path = runner.fetch_summary(JOB, dest_dir=tmp_path)
        s3_stub.assert_no_pending_responses()
    assert path == tmp_path / JOB / "summary.json"
    assert json.loads(path.read_text()) == summary
    running = _described(TrainingJobStatus="InProgress")
    with Stubber(sm) as sm_stub:
        sm_stub.add_response("describe_training_job", running, {"TrainingJobName": JOB})
        assert runner.fetch_summary(JOB, dest_dir=tmp_path / "none") is None
