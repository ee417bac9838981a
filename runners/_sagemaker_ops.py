"""Operating SageMaker training jobs as the SageMaker SDK lets you: logs from CloudWatch, stop,
the list of ftplan's jobs, and the cost so far (billable seconds × instances × the instance
type's on-demand price, with managed spot's savings). Each function takes its boto3 client;
none creates one.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners._run_files import SUMMARY_FILE
from runners._types import SAGEMAKER_SPEC_HYPERPARAMETER, RunnerError, launch_spec_from_json

LOG_GROUP = "/aws/sagemaker/TrainingJobs"  # where SageMaker writes training jobs' stdout/stderr
FTPLAN_TAG = "ftplan:model"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobCost:
    """What a job has cost so far.

    SageMaker bills ``BillableTimeInSeconds`` × ``InstanceCount`` at the instance type's
    on-demand training price; managed spot's discount is already in the billable seconds
    (SageMaker API reference, DescribeTrainingJob: savings = 1 − billable ÷ training). So the
    rate is the ml.* on-demand price even when the plan priced a spot or an EC2 offer.

    Attributes:
        billable_s: Seconds SageMaker bills per instance (``BillableTimeInSeconds``).
        training_s: Seconds the job trained (``TrainingTimeInSeconds``).
        instances: ``InstanceCount``.
        usd_per_hour: On-demand price of one ``instance_type``, USD/h; None when neither the
            plan nor the catalog has it.
        usd: ``billable_s`` / 3600 × ``instances`` × ``usd_per_hour``; None without a price.
        spot_savings_fraction: 1 − billable ÷ training (SageMaker's formula), managed spot only.
        instance_type: The job's ``ml.*`` instance type.
    """

    billable_s: int
    training_s: int
    instances: int
    usd_per_hour: float | None
    usd: float | None
    spot_savings_fraction: float | None
    instance_type: str


def job_cost(job: dict[str, Any]) -> JobCost | None:
    """Cost so far of a ``describe_training_job`` answer; None when the job carries no ftplan
    spec (no planned offer)."""
    raw = job.get("HyperParameters", {}).get(SAGEMAKER_SPEC_HYPERPARAMETER)
    if not raw:
        return None
    try:
        spec = launch_spec_from_json(json.loads(raw) if raw.startswith('"') else raw)
    except ValueError:
        return None
    offer = spec.offer
    if offer is None:
        return None
    resources = job.get("ResourceConfig", {})
    instance_type = resources.get("InstanceType") or offer.instance_type
    instances = int(resources.get("InstanceCount") or spec.nodes)
    billable = int(job.get("BillableTimeInSeconds") or 0)
    training = int(job.get("TrainingTimeInSeconds") or 0)
    savings = None
    if job.get("EnableManagedSpotTraining") and training > 0:
        savings = 1 - billable / training
    planned = (
        offer.service == "sagemaker" and not offer.spot and offer.instance_type == instance_type
    )
    region = _arn_region(job.get("TrainingJobArn", "")) or offer.region
    usd_per_hour = offer.usd_per_hour if planned else on_demand_usd_per_hour(instance_type, region)
    return JobCost(
        billable_s=billable,
        training_s=training,
        instances=instances,
        usd_per_hour=usd_per_hour,
        usd=None if usd_per_hour is None else billable / 3600 * instances * usd_per_hour,
        spot_savings_fraction=savings,
        instance_type=instance_type,
    )


def on_demand_usd_per_hour(instance_type: str, region: str) -> float | None:
    """The catalog's on-demand SageMaker price of ``instance_type``, USD/h: in ``region`` when
    listed there, else the lowest listed anywhere; None when the catalog has none."""
    import catalog

    rows = [
        o
        for o in catalog.list_offers(providers=["aws"], include_spot=False)
        if o.service == "sagemaker" and o.instance_type == instance_type
    ]
    here = [o for o in rows if o.region == region] or rows
    return min((o.usd_per_hour for o in here), default=None)


def _arn_region(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 and parts[3] else None


def log_lines(
    logs: Any,
    job: str,
    *,
    finished: Callable[[], bool],
    follow: bool = False,
    poll_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """The job's CloudWatch log lines (every stream ``<job>/algo-N-...``, in order); with
    ``follow``, keep polling until ``finished()`` and no new line arrives.

    Raises:
        RunnerError: If the logs cannot be read.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    tokens: dict[str, str | None] = {}
    while True:
        done = finished() if follow else True
        new = 0
        try:
            streams = logs.describe_log_streams(
                logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job}/"
            ).get("logStreams", [])
            for stream in sorted(s["logStreamName"] for s in streams):
                while True:
                    kwargs: dict[str, Any] = {
                        "logGroupName": LOG_GROUP,
                        "logStreamName": stream,
                        "startFromHead": True,
                    }
                    if tokens.get(stream):
                        kwargs["nextToken"] = tokens[stream]
                    page = logs.get_log_events(**kwargs)
                    events = page.get("events", [])
                    for event in events:
                        new += 1
                        yield str(event["message"]).rstrip("\n")
                    same = page.get("nextForwardToken") == tokens.get(stream)
                    tokens[stream] = page.get("nextForwardToken")
                    if not events or same:
                        break
        except logs.exceptions.ResourceNotFoundException:
            pass  # no log stream yet: the instance is still starting
        except (BotoCoreError, ClientError) as exc:
            raise RunnerError(f"cannot read the logs of SageMaker job {job!r}: {exc}") from None
        if done and (not follow or new == 0):
            return
        sleep(poll_s)


def stop_job(client: Any, job: str) -> None:
    """``StopTrainingJob``: SageMaker sends SIGTERM, the run writes a checkpoint, and the job
    ends ``Stopped`` (a later ``launch --resume JOB`` continues from it).

    Raises:
        RunnerError: If the job cannot be stopped (unknown, already finished).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.stop_training_job(TrainingJobName=job)
    except (BotoCoreError, ClientError) as exc:
        raise RunnerError(f"cannot stop SageMaker job {job!r}: {exc}") from None


def ftplan_jobs(client: Any, *, max_results: int = 50) -> list[dict[str, Any]]:
    """ftplan's training jobs (tagged ``ftplan:model``), newest first: name, status, creation
    time, model.

    Raises:
        RunnerError: If the search fails.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        found = client.search(
            Resource="TrainingJob",
            SearchExpression={"Filters": [{"Name": f"Tags.{FTPLAN_TAG}", "Operator": "Exists"}]},
            SortBy="CreationTime",
            SortOrder="Descending",
            MaxResults=max_results,
        )
    except (BotoCoreError, ClientError) as exc:
        raise RunnerError(f"cannot list SageMaker jobs: {exc}") from None
    jobs = []
    for result in found.get("Results", []):
        job = result.get("TrainingJob", {})
        tags = {t["Key"]: t["Value"] for t in job.get("Tags", [])}
        created = job.get("CreationTime")
        jobs.append(
            {
                "run_id": job.get("TrainingJobName", ""),
                "state": job.get("TrainingJobStatus", ""),
                "created": created.isoformat() if created else "",
                "model": tags.get(FTPLAN_TAG, ""),
            }
        )
    return jobs


#: Largest job output archive read back (it holds summary.json and a few logs; the model is in
#: model.tar.gz), and largest summary.json in it.
MAX_OUTPUT_ARCHIVE_BYTES = 256 * 1024 * 1024
MAX_SUMMARY_BYTES = 16 * 1024 * 1024


def fetch_summary(s3: Any, job: dict[str, Any], *, dest_dir: Path) -> Path | None:
    """Copy ``summary.json`` out of a finished job's ``output.tar.gz`` (SageMaker packs
    ``/opt/ml/output/data`` there) into ``dest_dir/<job>/summary.json``; None when the job has
    none (it failed before the end, or is still running).

    Raises:
        RunnerError: If the output exists but cannot be read.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from catalog import atomic_write_text, loads_json

    output = job.get("OutputDataConfig", {}).get("S3OutputPath", "")
    name = job.get("TrainingJobName", "")
    match = re.match(r"^s3://([^/]+)/?(.*)$", output)
    if not match or not name:
        return None
    bucket, prefix = match.group(1), match.group(2).strip("/")
    key = "/".join(part for part in (prefix, name, "output", "output.tar.gz") if part)
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
        if int(response.get("ContentLength") or 0) > MAX_OUTPUT_ARCHIVE_BYTES:
            raise RunnerError(
                f"s3://{bucket}/{key} is larger than {MAX_OUTPUT_ARCHIVE_BYTES >> 20} MiB; "
                "ftplan's job output holds a few files. To fix: look at it with 'aws s3 cp'"
            )
        body = response["Body"].read(MAX_OUTPUT_ARCHIVE_BYTES + 1)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404"):
            return None
        raise RunnerError(f"cannot read s3://{bucket}/{key}: {exc}") from None
    except BotoCoreError as exc:
        raise RunnerError(f"cannot read s3://{bucket}/{key}: {exc}") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
            member = next(
                (
                    m
                    for m in archive.getmembers()
                    if Path(m.name).name == SUMMARY_FILE and m.isfile()
                ),
                None,
            )
            handle = archive.extractfile(member) if member is not None else None
            if handle is None:
                return None
            text = handle.read(MAX_SUMMARY_BYTES + 1).decode("utf-8")
        if len(text) > MAX_SUMMARY_BYTES:
            raise ValueError(f"its {SUMMARY_FILE} is larger than {MAX_SUMMARY_BYTES >> 20} MiB")
        loads_json(text, what=SUMMARY_FILE)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # DataError included
        raise RunnerError(
            f"s3://{bucket}/{key} is not the job output ftplan wrote ({str(exc)[:200]}). To fix: "
            "look at it with 'aws s3 cp'; nothing was copied"
        ) from None
    target = dest_dir / name / SUMMARY_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)
    return target
