"""SageMaker preflight through botocore's Stubber: the instance quota (spot quota for spot) below
the planned count refuses the launch before anything is uploaded; no permission to read quotas
warns and goes on; a missing role or bucket refuses; ``resume_job`` reuses a job's checkpoint
prefix."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
from botocore.session import get_session
from botocore.stub import ANY, Stubber
from plan_fixtures import SAGEMAKER_GET_ROLE, sagemaker_qlora_spec
from plan_fixtures import SAGEMAKER_ROLE as ROLE

from runners import RunnerError, SageMakerRunner
from runners._preflight import quota_name

DATA = "s3://my-bucket/datasets/chat/"
INSTANCE = "ml.g5.xlarge"


class _Setup:
    def __init__(self) -> None:
        session = get_session()
        kw = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
        self.sm = session.create_client("sagemaker", **kw)
        self.s3 = session.create_client("s3", **kw)
        self.quotas = session.create_client("service-quotas", **kw)
        self.iam = session.create_client("iam", **kw)
        self.echo = io.StringIO()
        self.runner = SageMakerRunner(
            client=self.sm,
            s3_client=self.s3,
            role_arn=ROLE,
            env={},
            echo=self.echo,
            instance_types=[INSTANCE],
            clients={"service-quotas": self.quotas, "iam": self.iam},
        )
        self.stubs = [Stubber(c) for c in (self.sm, self.s3, self.quotas, self.iam)]
        self.sm_stub, self.s3_stub, self.quota_stub, self.iam_stub = self.stubs

    def __enter__(self) -> _Setup:
        for stub in self.stubs:
            stub.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        for stub in self.stubs:
            stub.deactivate()

    def quota(self, value: float, *, spot: bool = False) -> None:
        name = quota_name(INSTANCE, spot=spot)
        self.quota_stub.add_response(
            "list_service_quotas",
            {"Quotas": [{"QuotaName": "ml.p5.48xlarge for training job usage", "Value": 4.0}]},
            {"ServiceCode": "sagemaker"},
        )
        self.quota_stub.add_response(
            "list_aws_default_service_quotas",
            {"Quotas": [{"QuotaName": name, "Value": value}]},
            {"ServiceCode": "sagemaker"},
        )

    def upload_and_create(self) -> None:
        upload = {"Bucket": "my-bucket", "Key": ANY, "Body": ANY}
        self.s3_stub.add_response("put_object", {}, upload)
        self.sm_stub.add_response(
            "create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:job/j"}, None
        )


def test_quota_below_the_planned_count_refuses_before_any_upload() -> None:
    with _Setup() as setup:
        setup.quota(0.0)
        with pytest.raises(RunnerError, match="quota 'ml.g5.xlarge for training job usage' is 0"):
            setup.runner.launch(sagemaker_qlora_spec(), data=DATA, name="j")
        for stub in setup.stubs:
            stub.assert_no_pending_responses()  # nothing uploaded, no job created


def test_spot_uses_the_spot_training_quota_and_a_good_launch_goes_through() -> None:
    with _Setup() as setup:
        setup.quota(1.0, spot=True)
        setup.iam_stub.add_response(
            "get_role", SAGEMAKER_GET_ROLE, {"RoleName": "ftplan-sagemaker"}
        )
        setup.s3_stub.add_response("head_bucket", {}, {"Bucket": "my-bucket"})
        setup.upload_and_create()
        result = setup.runner.launch(sagemaker_qlora_spec(spot=True), data=DATA, name="j")
        for stub in setup.stubs:
            stub.assert_no_pending_responses()
    assert result.run_id == "j" and "warning" not in setup.echo.getvalue()


def test_no_permission_to_read_quotas_or_the_role_warns_and_goes_on() -> None:
    with _Setup() as setup:
        setup.quota_stub.add_client_error("list_service_quotas", "AccessDeniedException")
        setup.iam_stub.add_client_error("get_role", "AccessDenied")
        setup.s3_stub.add_response("head_bucket", {}, {"Bucket": "my-bucket"})
        setup.upload_and_create()
        setup.runner.launch(sagemaker_qlora_spec(), data=DATA, name="j")
        setup.sm_stub.assert_no_pending_responses()
    said = setup.echo.getvalue()
    assert "warning: could not read the quota 'ml.g5.xlarge for training job usage'" in said
    assert "warning: could not read the role 'ftplan-sagemaker' (AccessDenied)" in said


@pytest.mark.parametrize(
    ("role_error", "bucket_error", "message"),
    [
        ("NoSuchEntity", None, "execution role .* does not exist"),
        (None, "404", "bucket 'my-bucket' does not exist"),
        (None, "403", r"bucket 'my-bucket' is not reachable \(403\)"),
    ],
)
def test_missing_role_or_bucket_refuses(
    role_error: str | None, bucket_error: str | None, message: str
) -> None:
    with _Setup() as setup:
        setup.quota(2.0)
        if role_error:
            setup.iam_stub.add_client_error("get_role", role_error, http_status_code=404)
        else:
            setup.iam_stub.add_response(
                "get_role", SAGEMAKER_GET_ROLE, {"RoleName": "ftplan-sagemaker"}
            )
            assert bucket_error is not None
            setup.s3_stub.add_client_error(
                "head_bucket", bucket_error, http_status_code=int(bucket_error)
            )
        with pytest.raises(RunnerError, match=message):
            setup.runner.launch(sagemaker_qlora_spec(), data=DATA, name="j")
        for stub in setup.stubs:
            stub.assert_no_pending_responses()


def test_resume_job_starts_a_new_job_on_the_old_checkpoint_prefix() -> None:
    old = "s3://my-bucket/ftplan/old-job/checkpoints"
    with _Setup() as setup:
        setup.sm_stub.add_response(
            "describe_training_job",
            {
                "TrainingJobName": "old-job",
                "TrainingJobArn": "arn:aws:sagemaker:job/old-job",
                "ModelArtifacts": {"S3ModelArtifacts": ""},
                "TrainingJobStatus": "Stopped",
                "SecondaryStatus": "Stopped",
                "AlgorithmSpecification": {"TrainingInputMode": "File"},
                "ResourceConfig": {"InstanceCount": 1, "VolumeSizeInGB": 50},
                "StoppingCondition": {},
                "CreationTime": dt.datetime(2026, 11, 30),
                "CheckpointConfig": {"S3Uri": old, "LocalPath": "/opt/ml/checkpoints"},
            },
            {"TrainingJobName": "old-job"},
        )
        result = setup.runner.launch(
            sagemaker_qlora_spec(), data=DATA, name="new-job", resume_job="old-job", dry_run=True
        )
    assert f'"S3Uri": "{old}"' in result.request_json
