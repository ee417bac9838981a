"""The pieces of a SageMaker ``CreateTrainingJob`` request that depend only on the launch
spec: the training image, the ``ml.*`` instance type, the job name, the stopping condition and
volume, accelerate's environment, the source tarball with ftplan's entry point, the input
channels and the checks on S3 URIs. Pure except for reading ftplan's own source files and
botocore's bundled service model."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import math
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog import Provider, expand_user
from runners._distributed import DEEPSPEED_CONFIG_FILE
from runners._distributed import (
    distribution_environment as _distribution_environment,
)
from runners._types import (
    SAGEMAKER_EVAL_CHANNEL,
    SAGEMAKER_MODEL_CHANNEL,
    SAGEMAKER_TRAIN_CHANNEL,
    LaunchSpec,
    RunnerError,
    refuse_credentials_in_uri,
)
from runners.local import model_slug

if TYPE_CHECKING:
    from collections.abc import Iterable

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
HYPERPARAMETER_MAX_CHARS = 2500  # botocore sagemaker service model: HyperParameterValue max
JOB_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # botocore TrainingJobName
# Stopping condition = planned hours × (1 + margin) + start-up allowance. The margin covers
# the prediction's error band (step time within ~4-15%, DESIGN.md) plus checkpoint writes; the
# allowance covers instance start, image pull and weight download, which the plan does not time.
RUNTIME_MARGIN_FRACTION = 0.25
STARTUP_ALLOWANCE_S = 20 * 60
# Managed spot: time allowed for waiting on capacity and interruptions, as a multiple of the
# runtime (MaxWaitTimeInSeconds must be >= MaxRuntimeInSeconds).
SPOT_WAIT_FACTOR = 2.0
MAX_RUNTIME_S = 28 * 24 * 3600  # SageMaker's limit on a training job's runtime: 28 days


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


#: The model's share of a job name: with "ftplan-", the method and the time stamp, the name
#: fits SageMaker's 63 characters without cutting the method off.
MAX_JOB_MODEL_CHARS = 30


def job_name(spec: LaunchSpec, *, now: dt.datetime | None = None) -> str:
    """``ftplan-<model>-<method>-<UTC time>``, cut to SageMaker's 63-character pattern."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d-%H%M%S")
    model = model_slug(spec.model.name)[:MAX_JOB_MODEL_CHARS].strip("-")
    return sanitize_job_name(f"ftplan-{model}-{spec.config.method.value}", stamp)


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


def input_channels(spec: LaunchSpec, *, data: str, eval_data: str | None) -> list[dict[str, Any]]:
    """``train`` (the data), ``eval`` (the held-out data, ``SM_CHANNEL_EVAL``) when given and,
    for ``--weights s3://...``, ``model`` (the weights folder, which the entry point loads from
    ``SM_CHANNEL_MODEL``)."""
    channels = [_channel(SAGEMAKER_TRAIN_CHANNEL, data)]
    if eval_data is not None:
        channels.append(_channel(SAGEMAKER_EVAL_CHANNEL, eval_data))
    if spec.checkpoint is not None and spec.checkpoint.startswith("s3://"):
        channels.append(_channel(SAGEMAKER_MODEL_CHANNEL, spec.checkpoint.rstrip("/") + "/"))
    return channels


def check_remote_weights(weights: str) -> None:
    """A SageMaker job reads weights from the hub or S3, never from this machine's disk."""
    if weights.startswith("s3://"):
        split_s3(weights)
        return
    if expand_user(weights).exists() or weights.startswith((".", "/", "~")):
        raise RunnerError(
            f"--weights {weights!r} is a local folder; a SageMaker job cannot read it. To fix: "
            f"upload it (aws s3 sync {weights} s3://BUCKET/models/NAME/) and pass --weights "
            "s3://BUCKET/models/NAME/, or pass a hub id"
        )


#: S3 bucket names: up to 63 lower-case letters, digits, dots and hyphens (AWS's naming rules;
#: S3 itself refuses names shorter than 3).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{0,62}$")


def split_s3(uri: str, *, option: str = "--data", example: str = "train.jsonl") -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://BUCKET/KEY`` URI.

    Raises:
        RunnerError: Not an s3:// URI, credentials in it, or a bucket name S3 does not allow.
    """
    refuse_credentials_in_uri(uri, option=option)
    match = re.match(r"^s3://([^/]+)/?(.*)$", uri)
    if match and not _BUCKET.match(match.group(1)):
        raise RunnerError(
            f"{option} {uri[:120]!r}: {match.group(1)[:70]!r} is not an S3 bucket name (up to 63 "
            "lower-case letters, digits, dots and hyphens). To fix: pass s3://BUCKET/PREFIX"
        )
    if not match:
        raise RunnerError(
            f"{uri!r} is not an s3:// URI. To fix: upload the data first "
            f"(aws s3 cp {example} s3://BUCKET/PREFIX/) and pass {option} "
            "s3://BUCKET/PREFIX/"
        )
    return match.group(1), match.group(2).rstrip("/")


def check_eval_uri(eval_data: str, *, data: str) -> None:
    """The eval prefix is an S3 URI whose objects the train channel does not also copy."""
    split_s3(eval_data, option="--eval-data", example="eval.jsonl")
    # An S3Prefix channel copies every key that starts with its URI, folder or not.
    if eval_data.startswith(data) or data.startswith(eval_data):
        raise RunnerError(
            f"--eval-data {eval_data!r} and --data {data!r} overlap: SageMaker copies every "
            "object whose key starts with a channel's prefix, so one channel would also hold "
            "the other's files. To fix: put them under separate prefixes, e.g. "
            "s3://BUCKET/PREFIX/train/ and s3://BUCKET/PREFIX/eval/"
        )
