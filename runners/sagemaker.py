"""SageMaker runner: one ``CreateTrainingJob`` request per LaunchSpec, on the Hugging Face PyTorch
training container, with ftplan's own entrypoint (runners.train) shipped as a source tarball.

The dry run builds the exact request without credentials or network; a real launch uploads the
tarball with ``put_object`` and calls ``create_training_job``. boto3 is imported only when a
client is needed.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import math
import os
import re
import tarfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from catalog import GIB, Provider, expand_user
from profiler.estimator import checkpoint_bytes, download_bytes
from runners._distributed import (
    DEEPSPEED_CONFIG_FILE,
    deepspeed_config_json,
    uses_accelerate,
)
from runners._distributed import (
    distribution_environment as _distribution_environment,
)
from runners._sagemaker_ops import fetch_summary, ftplan_jobs, job_cost, log_lines, stop_job
from runners._types import (
    SAGEMAKER_CHECKPOINT_DIR,
    SAGEMAKER_EVAL_CHANNEL,
    SAGEMAKER_MODEL_CHANNEL,
    SAGEMAKER_TRAIN_CHANNEL,
    LaunchResult,
    LaunchSpec,
    RunnerError,
    RunState,
    RunStatus,
    Target,
    launch_spec_to_json,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

# Account of the huggingface-pytorch-training image per region. Source: sagemaker-python-sdk,
# src/sagemaker/image_uri_config/huggingface.json ("training" -> "registries"), read 2026-11.
IMAGE_REGISTRIES: dict[str, str] = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-northeast-1": "763104351884",
    "ap-northeast-2": "763104351884",
    "ap-northeast-3": "364406365360",
    "ap-south-1": "763104351884",
    "ap-southeast-1": "763104351884",
    "ap-southeast-2": "763104351884",
    "ca-central-1": "763104351884",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-central-1": "763104351884",
    "eu-north-1": "763104351884",
    "eu-south-1": "692866216735",
    "eu-west-1": "763104351884",
    "eu-west-2": "763104351884",
    "eu-west-3": "763104351884",
    "me-south-1": "217643126080",
    "sa-east-1": "763104351884",
    "us-east-1": "763104351884",
    "us-east-2": "763104351884",
    "us-gov-west-1": "442386744353",
    "us-west-1": "763104351884",
    "us-west-2": "763104351884",
}
IMAGE_REPOSITORY = "huggingface-pytorch-training"
# <torch>-transformers<version>-gpu-<py>-<cuda>-<os>: a Hugging Face DLC with torch 2.8 and
# transformers 4.56.2 (the first transformers with the ``dtype=`` argument the recipes use), as
# used in public SageMaker launch scripts in 2025. Not verified against AWS from here: check
# github.com/aws/deep-learning-containers available_images.md and override with --image-uri.
DEFAULT_IMAGE_TAG = "2.8.0-transformers4.56.2-gpu-py312-cu129-ubuntu22.04"
# Installed by the SageMaker toolkit before the entry point runs; already satisfied in the image
# except bitsandbytes (QLoRA) where the image lacks it.
SOURCE_REQUIREMENTS = (
    "transformers>=4.56",
    "peft>=0.13",
    "accelerate>=1.0",
    "bitsandbytes>=0.45",
    "safetensors>=0.4",
)
ENTRY_POINT = "ftplan_entry.py"
SPEC_FILE_IN_SOURCE = "ftplan_launch.json"
SOURCE_PACKAGES = ("runners", "profiler", "catalog")
SPEC_HYPERPARAMETER = "ftplan_spec"
HYPERPARAMETER_MAX_CHARS = 2500  # botocore sagemaker service model: HyperParameterValue max
JOB_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # botocore TrainingJobName
ROLE_ENV_VARS = ("FTPLAN_SAGEMAKER_ROLE", "SAGEMAKER_ROLE_ARN")
# Stopping condition = planned hours × (1 + margin) + start-up allowance. The margin covers
# the prediction's error band (step time within ~4-15%, DESIGN.md) plus checkpoint writes; the
# allowance covers instance start, image pull and weight download, which the plan does not time.
RUNTIME_MARGIN_FRACTION = 0.25
STARTUP_ALLOWANCE_S = 20 * 60
# Managed spot: time allowed for waiting on capacity and interruptions, as a multiple of the
# runtime (MaxWaitTimeInSeconds must be >= MaxRuntimeInSeconds).
SPOT_WAIT_FACTOR = 2.0
MAX_RUNTIME_S = 28 * 24 * 3600  # SageMaker's limit on a training job's runtime: 28 days
# The variable huggingface_hub reads a token from (gated models such as Llama 2); the job gets
# the caller's token under this key. What ftplan prints or writes shows MASK instead.
HF_TOKEN_KEY = "HF_TOKEN"
MASK = "********"

_STATES = {
    "InProgress": RunState.RUNNING,
    "Completed": RunState.SUCCEEDED,
    "Failed": RunState.FAILED,
    "Stopping": RunState.STOPPED,
    "Stopped": RunState.STOPPED,
}


def image_uri(region: str, *, tag: str = DEFAULT_IMAGE_TAG) -> str:
    """The Hugging Face PyTorch training image for ``region``.

    Raises:
        RunnerError: If the region is not in :data:`IMAGE_REGISTRIES`.
    """
    account = IMAGE_REGISTRIES.get(region)
    if account is None:
        raise RunnerError(
            f"no Hugging Face training image is known for region {region!r}. Known regions: "
            f"{', '.join(sorted(IMAGE_REGISTRIES))}. To fix: pass --region with one of them"
        )
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/{IMAGE_REPOSITORY}:{tag}"


def sagemaker_training_instance_types() -> frozenset[str]:
    """SageMaker's TrainingInstanceType values, from botocore's bundled service model."""
    import botocore.loaders  # deferred: only SageMaker users need botocore

    model = botocore.loaders.Loader().load_service_model("sagemaker", "service-2")
    return frozenset(model["shapes"]["TrainingInstanceType"]["enum"])


def sagemaker_instance_type(spec: LaunchSpec, *, known: Iterable[str] | None = None) -> str:
    """The ``ml.*`` instance type of the plan's offer (EC2 offers map to ``ml.<type>``).

    Raises:
        RunnerError: No offer, a non-AWS offer, or an EC2 type SageMaker does not train on.
    """
    offer = spec.offer
    if offer is None or offer.provider is not Provider.AWS:
        where = "no offer" if offer is None else f"a {offer.provider.value} offer"
        raise RunnerError(
            f"the plan chose {where}; SageMaker runs AWS instances only. To fix: re-plan with "
            "--provider aws, or launch with --target local"
        )
    instance = (
        offer.instance_type
        if offer.instance_type.startswith("ml.")
        else (f"ml.{offer.instance_type}")
    )
    types = frozenset(known) if known is not None else sagemaker_training_instance_types()
    if instance not in types:
        close = sorted(t for t in types if t.split(".")[1] == instance.split(".")[1])
        raise RunnerError(
            f"SageMaker has no training instance {instance!r} (the plan's {offer.service} offer "
            f"{offer.instance_type}). Same family: {', '.join(close) or 'none'}. To fix: "
            "re-plan with SageMaker offers, or launch with --target local on that machine"
        )
    return instance


def job_name(spec: LaunchSpec, *, now: dt.datetime | None = None) -> str:
    """``ftplan-<model>-<method>-<UTC time>``, cut to SageMaker's 63-character pattern."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d-%H%M%S")
    return sanitize_job_name(f"ftplan-{spec.model.name}-{spec.config.method.value}", stamp)


def sanitize_job_name(base: str, suffix: str = "") -> str:
    """Letters, digits and single hyphens, starting/ending alphanumeric, at most 63 chars."""
    tail = re.sub(r"[^A-Za-z0-9]+", "-", suffix).strip("-")
    room = 63 - (len(tail) + 1 if tail else 0)
    head = re.sub(r"[^A-Za-z0-9]+", "-", base).strip("-")[:room].strip("-") or "ftplan"
    name = f"{head}-{tail}" if tail else head
    if not JOB_NAME_PATTERN.match(name):  # internal invariant of the rules above
        raise RunnerError(f"could not form a valid SageMaker job name from {base!r}")
    return name


def stopping_condition(spec: LaunchSpec) -> dict[str, int]:
    """MaxRuntimeInSeconds (and MaxWaitTimeInSeconds for spot) from the plan's hours."""
    runtime = (
        math.ceil(spec.max_hours * 3600 * (1 + RUNTIME_MARGIN_FRACTION)) + STARTUP_ALLOWANCE_S
    )
    runtime = min(runtime, MAX_RUNTIME_S)
    condition = {"MaxRuntimeInSeconds": runtime}
    if spec.offer is not None and spec.offer.spot:
        condition["MaxWaitTimeInSeconds"] = max(
            runtime, min(math.ceil(runtime * SPOT_WAIT_FACTOR), MAX_RUNTIME_S)
        )
    return condition


def volume_size_gib(spec: LaunchSpec) -> int:
    """EBS volume per instance: the 16-bit weights twice (download + cache), two kept
    checkpoints (:func:`profiler.estimator.checkpoint_bytes`, at least 1 GiB), and 30 GiB for
    the image."""
    weights = download_bytes(spec.model) / GIB
    checkpoints = max(1.0, 2 * checkpoint_bytes(spec.model, spec.config) / GIB)
    return max(50, math.ceil(2 * weights + checkpoints + 30))


def distribution_environment(spec: LaunchSpec) -> dict[str, str]:
    """accelerate settings read from the environment under SageMaker's torchrun launcher, the
    same choices as the local accelerate config (:mod:`runners._distributed`); a DeepSpeed
    config travels in the source archive."""
    return _distribution_environment(
        spec.config, deepspeed_config_path=f"/opt/ml/code/{DEEPSPEED_CONFIG_FILE}"
    )


def _entry_script() -> str:
    return (
        '"""SageMaker entry point written by ftplan: runs runners.train with its spec."""\n'
        "import os\nimport sys\n\nfrom runners.train import main\n\n"
        "here = os.path.dirname(os.path.abspath(__file__))\n"
        f"spec = os.path.join(here, {SPEC_FILE_IN_SOURCE!r})\n"
        "args = sys.argv[1:]\n"
        "if os.path.exists(spec) and '--spec' not in args:\n"
        "    args = ['--spec', spec, *args]\n"
        "sys.exit(main(args))\n"
    )


def source_tarball(
    spec_json: str, *, code_root: Path | None = None, deepspeed_json: str = ""
) -> bytes:
    """``sourcedir.tar.gz``: the runners, profiler and catalog packages (code and data), the
    entry script, the launch spec and requirements.txt. Deterministic (fixed mtimes, order)."""
    root = code_root or Path(__file__).resolve().parent.parent
    buffer = io.BytesIO()

    def add(name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for package in SOURCE_PACKAGES:
            for path in sorted((root / package).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    add(path.relative_to(root).as_posix(), path.read_bytes())
        add(ENTRY_POINT, _entry_script().encode())
        add(SPEC_FILE_IN_SOURCE, spec_json.encode())
        if deepspeed_json:
            add(DEEPSPEED_CONFIG_FILE, deepspeed_json.encode())
        add("requirements.txt", ("\n".join(SOURCE_REQUIREMENTS) + "\n").encode())
    return gzip.compress(buffer.getvalue(), mtime=0)  # mtime=0: same bytes for the same input


def _channel(name: str, uri: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "InputMode": "File",
    }


def _channels(spec: LaunchSpec, *, data: str, eval_data: str | None) -> list[dict[str, Any]]:
    """``train`` (the data), ``eval`` (the held-out data, ``SM_CHANNEL_EVAL``) when given and,
    for ``--weights s3://...``, ``model`` (the weights folder, which the entry point loads from
    ``SM_CHANNEL_MODEL``)."""
    channels = [_channel(SAGEMAKER_TRAIN_CHANNEL, data)]
    if eval_data is not None:
        channels.append(_channel(SAGEMAKER_EVAL_CHANNEL, eval_data))
    if spec.checkpoint is not None and spec.checkpoint.startswith("s3://"):
        channels.append(_channel(SAGEMAKER_MODEL_CHANNEL, spec.checkpoint.rstrip("/") + "/"))
    return channels


def _check_remote_weights(weights: str) -> None:
    """A SageMaker job reads weights from the hub or S3, never from this machine's disk."""
    if weights.startswith("s3://"):
        _split_s3(weights)
        return
    if expand_user(weights).exists() or weights.startswith((".", "/", "~")):
        raise RunnerError(
            f"--weights {weights!r} is a local folder; a SageMaker job cannot read it. To fix: "
            f"upload it (aws s3 sync {weights} s3://BUCKET/models/NAME/) and pass --weights "
            "s3://BUCKET/models/NAME/, or pass a hub id"
        )


def _split_s3(
    uri: str, *, option: str = "--data", example: str = "train.jsonl"
) -> tuple[str, str]:
    match = re.match(r"^s3://([^/]+)/?(.*)$", uri)
    if not match:
        raise RunnerError(
            f"{uri!r} is not an s3:// URI. To fix: upload the data first "
            f"(aws s3 cp {example} s3://BUCKET/PREFIX/) and pass {option} "
            "s3://BUCKET/PREFIX/"
        )
    return match.group(1), match.group(2).rstrip("/")


def _check_eval_uri(eval_data: str, *, data: str) -> None:
    """The eval prefix is an S3 URI whose objects the train channel does not also copy."""
    _split_s3(eval_data, option="--eval-data", example="eval.jsonl")
    # An S3Prefix channel copies every key that starts with its URI, folder or not.
    if eval_data.startswith(data) or data.startswith(eval_data):
        raise RunnerError(
            f"--eval-data {eval_data!r} and --data {data!r} overlap: SageMaker copies every "
            "object whose key starts with a channel's prefix, so one channel would also hold "
            "the other's files. To fix: put them under separate prefixes, e.g. "
            "s3://BUCKET/PREFIX/train/ and s3://BUCKET/PREFIX/eval/"
        )


class SageMakerRunner:
    """Launch and follow SageMaker training jobs.

    Args:
        client: A boto3 SageMaker client (None: created on first real use).
        s3_client: A boto3 S3 client for the source upload (None: created on first real use).
        region: AWS region; default: the offer's region, else $AWS_REGION /
            $AWS_DEFAULT_REGION, else us-east-1.
        role_arn: Execution role; default: $FTPLAN_SAGEMAKER_ROLE, else $SAGEMAKER_ROLE_ARN.
        s3_prefix: Where the source, output and checkpoints go (default: the data's bucket,
            ``s3://<bucket>/ftplan/<job>``).
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
        self._env = dict(os.environ if env is None else env)
        self._clients: dict[str, Any] = dict(clients or {})
        self._hf_token = self._read_token(hf_token_env)
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

    def _read_token(self, variable: str | None) -> str | None:
        if variable is None:
            return self._env.get(HF_TOKEN_KEY) or None
        token = self._env.get(variable)
        if not token:
            raise RunnerError(
                f"--hf-token-env {variable}: the variable is not set (or empty). To fix: export "
                f"{variable}=hf_... (a token that can read the model), or leave the option out"
            )
        return token

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
        bucket, _key = _split_s3(data)
        if eval_data is not None:
            _check_eval_uri(eval_data, data=data)
        if spec.checkpoint is not None and not spec.random_init:
            _check_remote_weights(spec.checkpoint)
        region = self.region_for(spec)
        image = self._image or image_uri(region)
        instance = sagemaker_instance_type(spec, known=self._instance_types)
        if not self._role:
            raise RunnerError(
                "no SageMaker execution role. To fix: pass --role arn:aws:iam::ACCOUNT:role/NAME "
                f"or set ${ROLE_ENV_VARS[0]} (or ${ROLE_ENV_VARS[1]}); nothing was sent"
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
            hyperparameters[SPEC_HYPERPARAMETER] = spec_compact
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
            "InputDataConfig": _channels(spec, data=data, eval_data=eval_data),
            "OutputDataConfig": {"S3OutputPath": f"{prefix}/output"},
            "ResourceConfig": {
                "InstanceType": instance,
                "InstanceCount": spec.nodes,
                "VolumeSizeInGB": volume_size_gib(spec),
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
                **({HF_TOKEN_KEY: self._hf_token} if self._hf_token else {}),
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
        if HF_TOKEN_KEY in environment:
            environment[HF_TOKEN_KEY] = MASK
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
        if dry_run:
            self._say(result.request_json)
            return result
        source_uri = request["HyperParameters"]["sagemaker_submit_directory"]
        bucket, key = _split_s3(source_uri)
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
                        learning_rate=spec.learning_rate,
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
            _split_s3(request["HyperParameters"]["sagemaker_submit_directory"])[0],
            *(
                _split_s3(c["DataSource"]["S3DataSource"]["S3Uri"])[0]
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
            import boto3  # deferred: only SageMaker users need boto3

            self._client = boto3.client("sagemaker", region_name=self._region_hint(request))
        return self._client

    def _client_for(self, service: str, request: dict[str, Any] | None) -> Any:
        """An injected client (``clients`` argument) or a new boto3 one for ``service``."""
        if service not in self._clients:
            import boto3  # deferred: only SageMaker users need boto3

            self._clients[service] = boto3.client(service, region_name=self._region_hint(request))
        return self._clients[service]

    def _s3_client(self, request: dict[str, Any] | None) -> Any:
        if self._s3 is None:
            import boto3  # deferred: only SageMaker users need boto3

            self._s3 = boto3.client("s3", region_name=self._region_hint(request))
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
