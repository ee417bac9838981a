"""SageMaker runner: one ``CreateTrainingJob`` request per LaunchSpec, on the Hugging Face PyTorch
training container, with ftplan's own entrypoint (runners.train) shipped as a source tarball.

The dry run builds the exact request without credentials or network; a real launch uploads the
tarball with ``put_object`` and calls ``create_training_job``. boto3 is imported only when a
client is needed. The request's spec-only pieces live in :mod:`runners._sagemaker_request`, the
calls on existing jobs in :mod:`runners._sagemaker_ops`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from catalog import Provider, mask_secrets
from runners._distributed import deepspeed_config_json, uses_accelerate
from runners._sagemaker_ops import fetch_summary, ftplan_jobs, job_cost, log_lines, stop_job
from runners._sagemaker_request import (
    ENTRY_POINT,
    HYPERPARAMETER_MAX_CHARS,
    IMAGE_REGISTRIES,
    SOURCE_PACKAGES,
    check_eval_uri,
    check_remote_weights,
    distribution_environment,
    image_uri,
    input_channels,
    job_name,
    sagemaker_instance_type,
    sanitize_job_name,
    source_tarball,
    split_s3,
    stopping_condition,
)
from runners._sizing import SAGEMAKER_VOLUME, node_disk_gib
from runners._types import (
    SAGEMAKER_CHECKPOINT_DIR,
    SAGEMAKER_SPEC_HYPERPARAMETER,
    LaunchResult,
    LaunchSpec,
    RunnerError,
    RunState,
    RunStatus,
    Target,
    launch_spec_to_json,
)
from runners._weights import HF_TOKEN_ENV, gated_token_problem, read_hf_token

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

ROLE_ENV_VARS = ("FTPLAN_SAGEMAKER_ROLE", "SAGEMAKER_ROLE_ARN")
#: botocore's RoleArn pattern for CreateTrainingJob (partitions aws, aws-cn, aws-us-gov, ...).
#: A container image reference: [registry/]name[:tag][@digest], no scheme, no credentials.
_IMAGE = re.compile(
    r"^[a-z0-9][a-z0-9._\-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._\-]*)*(:[\w.\-]{1,128})?(@sha256:[0-9a-f]{64})?$"
)
ROLE_ARN_PATTERN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")

# What ftplan prints or writes instead of the job's Hugging Face token.
MASK = "********"

__all__ = [
    "IMAGE_REGISTRIES",
    "MASK",
    "SOURCE_PACKAGES",
    "SageMakerRunner",
    "distribution_environment",
    "image_uri",
    "sanitize_job_name",
    "source_tarball",
]

_STATES = {
    "InProgress": RunState.RUNNING,
    "Completed": RunState.SUCCEEDED,
    "Failed": RunState.FAILED,
    "Stopping": RunState.STOPPED,
    "Stopped": RunState.STOPPED,
}


def boto_client(service: str, *, region: str) -> Any:
    """A boto3 client, or one line saying what is wrong with this machine's AWS set-up: a
    mistyped ``AWS_PROFILE``, a malformed ``~/.aws/config`` or credentials file (botocore
    raises those while it builds the client).

    Raises:
        RunnerError: botocore could not build the client.
    """
    import boto3  # deferred: only SageMaker users need boto3
    from botocore.exceptions import BotoCoreError

    try:
        return boto3.client(service, region_name=region)
    except BotoCoreError as exc:
        raise RunnerError(aws_setup_problem(exc)) from None


def aws_setup_problem(exc: Exception) -> str:
    """One line for a botocore error about this machine's AWS set-up, with what to check."""
    return (
        f"AWS is not set up on this machine: {mask_secrets(str(exc))[:300]}. To fix: check "
        "AWS_PROFILE and AWS_CONFIG_FILE, ~/.aws/config and ~/.aws/credentials ('aws "
        "configure list' shows what is used)"
    )


class SageMakerRunner:
    """Launch and follow SageMaker training jobs.

    Args:
        client: A boto3 SageMaker client (None: created on first real use).
        s3_client: A boto3 S3 client for the source upload (None: created on first real use).
        region: AWS region; default: the offer's region, else $AWS_REGION /
            $AWS_DEFAULT_REGION, else us-east-1.
        role_arn: Execution role; default: $FTPLAN_SAGEMAKER_ROLE, else $SAGEMAKER_ROLE_ARN.
        s3_prefix: Where the source, output and checkpoints go, an ``s3://`` prefix (default:
            the data's bucket, ``s3://<bucket>/ftplan/<job>``).
        image: Training image URI override (default: the Hugging Face DLC for the region).
        echo: Where dry runs and progress are printed (None: silent).
        env: Environment to read defaults from (default: os.environ).
        instance_types: Valid ml.* training types (default: from botocore's service model).
        hf_token_env: The caller's variable holding a Hugging Face token; its value goes into
            the job's ``HF_TOKEN`` and is masked everywhere ftplan prints or writes. None:
            ``HF_TOKEN`` when set.
        clients: Other boto3 clients by service name (``service-quotas``, ``iam``, ``logs``),
            for tests; missing ones are created on first use.
    """

    target = Target.SAGEMAKER

    def __init__(
        self,
        *,
        client: Any = None,
        s3_client: Any = None,
        region: str | None = None,
        role_arn: str | None = None,
        s3_prefix: str | None = None,
        image: str | None = None,
        echo: TextIO | None = None,
        env: Mapping[str, str] | None = None,
        instance_types: Iterable[str] | None = None,
        hf_token_env: str | None = None,
        clients: Mapping[str, Any] | None = None,
    ) -> None:
        if s3_prefix is not None and not s3_prefix.startswith("s3://"):
            raise RunnerError(f"--output-dir {s3_prefix!r} must be an s3:// prefix for SageMaker")
        self._env = dict(os.environ if env is None else env)
        self._clients: dict[str, Any] = dict(clients or {})
        self._hf_token = read_hf_token(self._env, hf_token_env)
        self._client = client
        self._s3 = s3_client
        self._region = region
        self._role = role_arn or next(
            (self._env[v] for v in ROLE_ENV_VARS if self._env.get(v)), None
        )
        self._prefix = s3_prefix.rstrip("/") if s3_prefix else None
        self._image = image
        self._echo = echo
        self._instance_types = frozenset(instance_types) if instance_types is not None else None

    def region_for(self, spec: LaunchSpec) -> str:
        """The region the job runs in (see the class docstring for the order)."""
        if self._region:
            return self._region
        if spec.offer is not None and spec.offer.provider is Provider.AWS and spec.offer.region:
            return spec.offer.region
        return self._env.get("AWS_REGION") or self._env.get("AWS_DEFAULT_REGION") or "us-east-1"

    def build_request(
        self, spec: LaunchSpec, *, data: str, name: str, eval_data: str | None = None
    ) -> dict[str, Any]:
        """The exact CreateTrainingJob request. Pure: no credentials, no network.

        Raises:
            RunnerError: Data or eval data not on S3 (or overlapping prefixes), unknown
                region, no SageMaker instance for the offer, or no execution role.
        """
        bucket, _key = split_s3(data)
        if self._prefix is not None:
            split_s3(self._prefix, option="--output-dir", example="DIR")
        if self._image is not None and not _IMAGE.match(self._image):
            raise RunnerError(
                f"--image-uri {mask_secrets(self._image[:200])!r} is not a container image "
                "reference (ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME:TAG). To fix: pass the "
                "image's URI as 'docker images' or ECR shows it; nothing was sent"
            )
        if eval_data is not None:
            check_eval_uri(eval_data, data=data)
        if spec.checkpoint is not None and not spec.random_init:
            check_remote_weights(spec.checkpoint)
        region = self.region_for(spec)
        image = self._image or image_uri(region)
        instance = sagemaker_instance_type(spec, known=self._instance_types)
        if not self._role:
            raise RunnerError(
                "no SageMaker execution role. To fix: pass --role arn:aws:iam::ACCOUNT:role/NAME "
                f"or set ${ROLE_ENV_VARS[0]} (or ${ROLE_ENV_VARS[1]}); nothing was sent"
            )
        if not ROLE_ARN_PATTERN.match(self._role):
            raise RunnerError(
                # Not echoed: what was given instead of an ARN may well be a key.
                "the execution role (--role or $FTPLAN_SAGEMAKER_ROLE) is not an IAM role ARN. "
                "To fix: pass --role arn:aws:iam::ACCOUNT:role/NAME (the role's ARN, not a key "
                "or a name); nothing was sent"
            )
        prefix = self._prefix or f"s3://{bucket}/ftplan/{name}"
        spec_compact = launch_spec_to_json(spec, indent=None)
        hyperparameters = {
            "sagemaker_program": ENTRY_POINT,
            "sagemaker_submit_directory": f"{prefix}/source/sourcedir.tar.gz",
            "sagemaker_region": region,
            "sagemaker_container_log_level": "20",
        }
        if len(spec_compact) <= HYPERPARAMETER_MAX_CHARS:
            hyperparameters[SAGEMAKER_SPEC_HYPERPARAMETER] = spec_compact
        if uses_accelerate(spec.config):
            # torchrun on every node (the SDK's distribution={"torch_distributed": ...}).
            hyperparameters["sagemaker_torch_distributed_enabled"] = "true"
        spot = spec.offer is not None and spec.offer.spot
        request: dict[str, Any] = {
            "TrainingJobName": name,
            "RoleArn": self._role,
            "AlgorithmSpecification": {
                "TrainingImage": image,
                "TrainingInputMode": "File",
                "MetricDefinitions": [
                    {"Name": "train:loss", "Regex": r'"loss": ([0-9.eE+-]+)'},
                    {"Name": "train:tokens_per_s", "Regex": r'"tokens_per_s": ([0-9.eE+-]+)'},
                    {"Name": "eval:loss", "Regex": r'"eval_loss": ([0-9.eE+-]+)'},
                    {
                        "Name": "train:peak_allocated_gib",
                        "Regex": r'"peak_allocated_gib": ([0-9.eE+-]+)',
                    },
                ],
            },
            "HyperParameters": hyperparameters,
            "InputDataConfig": input_channels(spec, data=data, eval_data=eval_data),
            "OutputDataConfig": {"S3OutputPath": f"{prefix}/output"},
            "ResourceConfig": {
                "InstanceType": instance,
                "InstanceCount": spec.nodes,
                "VolumeSizeInGB": node_disk_gib(spec, SAGEMAKER_VOLUME),
            },
            "StoppingCondition": stopping_condition(spec),
            "EnableManagedSpotTraining": spot,
            "CheckpointConfig": {
                "S3Uri": f"{prefix}/checkpoints",
                "LocalPath": SAGEMAKER_CHECKPOINT_DIR,
            },
            "Environment": {
                "PYTHONUNBUFFERED": "1",
                "TOKENIZERS_PARALLELISM": "false",
                **distribution_environment(spec),
                **({HF_TOKEN_ENV: self._hf_token} if self._hf_token else {}),
            },
            "Tags": [
                {"Key": "ftplan:model", "Value": spec.model.name},
                {"Key": "ftplan:config", "Value": spec.config.label()[:256]},
            ],
        }
        return request

    def masked(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request with the token's value replaced by :data:`MASK` (for printing)."""
        environment = dict(request.get("Environment", {}))
        if HF_TOKEN_ENV in environment:
            environment[HF_TOKEN_ENV] = MASK
        return {**request, "Environment": environment}

    # -- Runner protocol ------------------------------------------------------------------
    def launch(
        self,
        spec: LaunchSpec,
        *,
        data: str,
        eval_data: str | None = None,
        dry_run: bool = False,
        name: str | None = None,
        resume_job: str | None = None,
    ) -> LaunchResult:
        """Create the training job (or, with ``dry_run``, only return the request).

        ``eval_data`` (an ``s3://`` prefix, like ``data``) becomes the ``eval`` input channel,
        evaluated every ``spec.eval_every_steps`` and after the last step.

        A real launch first runs the preflight (quota, role, bucket; runners._preflight).
        ``resume_job`` starts a new job on that job's checkpoint prefix, so it resumes from the
        newest complete checkpoint there.

        Raises:
            RunnerError: Bad input or a failed preflight (nothing sent), or the upload / API
                call failed.
        """
        job = sanitize_job_name(name) if name else job_name(spec)
        request = self.build_request(spec, data=data, name=job, eval_data=eval_data)
        if resume_job is not None:
            request["CheckpointConfig"]["S3Uri"] = self._checkpoint_uri_of(resume_job)
        spec_json = launch_spec_to_json(spec)
        result = LaunchResult(
            run_id=job,
            target=Target.SAGEMAKER,
            dry_run=dry_run,
            request_json=json.dumps(self.masked(request), indent=2, sort_keys=True),
            spec_json=spec_json,
        )
        token_problem = gated_token_problem(
            spec.model,
            weights=spec.checkpoint,
            random_init=spec.random_init,
            has_token=self._hf_token is not None,
            where=f"export {HF_TOKEN_ENV}=hf_... (or --hf-token-env VAR)",
        )
        if dry_run:
            if token_problem is not None:
                sys.stderr.write(f"warning: {token_problem}\n")  # stdout: the request only
            self._say(result.request_json)
            return result
        if token_problem is not None:
            raise RunnerError(token_problem)
        source_uri = request["HyperParameters"]["sagemaker_submit_directory"]
        bucket, key = split_s3(source_uri)
        self.preflight(spec, request)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3_client(request).put_object(
                Bucket=bucket,
                Key=key,
                Body=source_tarball(
                    spec_json,
                    deepspeed_json=deepspeed_config_json(
                        spec.config,
                        grad_accum_steps=spec.grad_accum_steps,
                        learning_rate=spec.peak_learning_rate,
                    ),
                ),
            )
            self._sagemaker_client(request).create_training_job(**request)
        except (BotoCoreError, ClientError) as exc:
            message = str(exc).replace(self._hf_token, MASK) if self._hf_token else str(exc)
            raise RunnerError(f"SageMaker launch of {job!r} failed: {message}") from None
        self._say(f"created SageMaker training job {job} in {self.region_for(spec)}")
        return result

    def preflight(self, spec: LaunchSpec, request: dict[str, Any]) -> None:
        """Quota for the instance type (spot quota for spot), role and buckets; warnings are
        printed and the launch goes on.

        Raises:
            RunnerError: Quota below the planned count, no such role, unreachable bucket.
        """
        from runners._preflight import check_bucket, check_quota, check_role

        warnings: list[str] = []
        resources = request["ResourceConfig"]
        check_quota(
            self._client_for("service-quotas", request),
            instance_type=resources["InstanceType"],
            count=int(resources["InstanceCount"]),
            spot=bool(request["EnableManagedSpotTraining"]),
            warnings=warnings,
        )
        check_role(
            self._client_for("iam", request), role_arn=request["RoleArn"], warnings=warnings
        )
        buckets = {
            split_s3(request["HyperParameters"]["sagemaker_submit_directory"])[0],
            *(
                split_s3(c["DataSource"]["S3DataSource"]["S3Uri"])[0]
                for c in request["InputDataConfig"]
            ),
        }
        for bucket in sorted(buckets):
            check_bucket(self._s3_client(request), bucket=bucket)
        for warning in warnings:
            self._say(f"warning: {warning}")

    def _checkpoint_uri_of(self, job: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            described = self._sagemaker_client(None).describe_training_job(TrainingJobName=job)
        except (BotoCoreError, ClientError) as exc:
            raise RunnerError(f"cannot read SageMaker job {job!r} to resume it: {exc}") from None
        uri = described.get("CheckpointConfig", {}).get("S3Uri")
        if not uri:
            raise RunnerError(f"SageMaker job {job!r} has no checkpoint prefix to resume from")
        return str(uri)

    def status(self, run_id: str) -> RunStatus:
        """``describe_training_job`` as a RunStatus.

        Raises:
            RunnerError: If the job does not exist or the call fails.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            job = self._sagemaker_client(None).describe_training_job(TrainingJobName=run_id)
        except (BotoCoreError, ClientError) as exc:
            raise RunnerError(f"cannot read SageMaker job {run_id!r}: {exc}") from None
        state = _STATES.get(job.get("TrainingJobStatus", ""), RunState.PENDING)
        cost = job_cost(job)
        parts = [job.get("SecondaryStatus", "")]
        if job.get("FailureReason"):
            parts.append(job["FailureReason"])
        if job.get("BillableTimeInSeconds"):
            parts.append(f"billable {job['BillableTimeInSeconds']} s")
        if cost is not None and cost.billable_s:
            if cost.usd is not None and cost.usd_per_hour is not None:
                per = f" × {cost.instances}" if cost.instances > 1 else ""
                parts.append(
                    f"{cost.usd:.2f} USD so far at {cost.usd_per_hour:.4g} USD/h{per} "
                    f"({cost.instance_type} on-demand)"
                )
            else:
                parts.append(
                    f"cost unknown: the catalog has no on-demand price for {cost.instance_type}"
                )
        if cost is not None and cost.spot_savings_fraction is not None:
            parts.append(f"spot saved {cost.spot_savings_fraction:.0%}")
        started, ended = job.get("TrainingStartTime"), job.get("TrainingEndTime")
        return RunStatus(
            run_id=run_id,
            target=Target.SAGEMAKER,
            state=state,
            detail="; ".join(p for p in parts if p),
            started_at=started.isoformat() if started else "",
            ended_at=ended.isoformat() if ended else "",
            summary_path=job.get("ModelArtifacts", {}).get("S3ModelArtifacts", ""),
            cost_usd=cost.usd if cost is not None else None,
            spot_savings_fraction=cost.spot_savings_fraction if cost is not None else None,
        )

    def fetch_summary(self, run_id: str, *, dest_dir: str | Path) -> Path | None:
        """Copy a finished job's ``summary.json`` to ``dest_dir/<job>/summary.json`` (None
        while it runs, or when it ended without one).

        Raises:
            RunnerError: If the job or its output cannot be read.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            job = self._sagemaker_client(None).describe_training_job(TrainingJobName=run_id)
        except (BotoCoreError, ClientError) as exc:
            raise RunnerError(f"cannot read SageMaker job {run_id!r}: {exc}") from None
        if not _STATES.get(job.get("TrainingJobStatus", ""), RunState.PENDING).finished:
            return None
        return fetch_summary(self._s3_client(None), job, dest_dir=Path(dest_dir))

    def logs(self, run_id: str, *, follow: bool = False, poll_s: float = 10.0) -> Iterator[str]:
        """The job's CloudWatch log lines; ``follow`` polls until the job has finished."""
        return log_lines(
            self._client_for("logs", None),
            run_id,
            finished=lambda: self.status(run_id).state.finished,
            follow=follow,
            poll_s=poll_s,
        )

    def stop(self, run_id: str) -> None:
        """Stop the job (SIGTERM in the container: the run checkpoints, then ends).

        Raises:
            RunnerError: If the job cannot be stopped.
        """
        stop_job(self._sagemaker_client(None), run_id)

    def list_runs(self) -> list[dict[str, Any]]:
        """ftplan's jobs in this region, newest first."""
        return ftplan_jobs(self._sagemaker_client(None))

    def wait(
        self, run_id: str, *, poll_s: float = 30.0, sleep: Callable[[float], None] = time.sleep
    ) -> RunStatus:
        """Poll until the job finishes, echoing each change of its status."""
        last = ""
        while True:
            status = self.status(run_id)
            line = f"{status.state.value}: {status.detail}"
            if line != last:
                self._say(line)
                last = line
            if status.state.finished:
                return status
            sleep(poll_s)

    # -- clients --------------------------------------------------------------------------
    def _sagemaker_client(self, request: dict[str, Any] | None) -> Any:
        if self._client is None:
            self._client = boto_client("sagemaker", region=self._region_hint(request))
        return self._client

    def _client_for(self, service: str, request: dict[str, Any] | None) -> Any:
        """An injected client (``clients`` argument) or a new boto3 one for ``service``."""
        if service not in self._clients:
            self._clients[service] = boto_client(service, region=self._region_hint(request))
        return self._clients[service]

    def _s3_client(self, request: dict[str, Any] | None) -> Any:
        if self._s3 is None:
            self._s3 = boto_client("s3", region=self._region_hint(request))
        return self._s3

    def _region_hint(self, request: dict[str, Any] | None) -> str:
        if request is not None:
            return str(request["HyperParameters"]["sagemaker_region"])
        return (
            self._region
            or self._env.get("AWS_REGION")
            or self._env.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )

    def _say(self, text: str) -> None:
        if self._echo is not None:
            print(text, file=self._echo, flush=True)
