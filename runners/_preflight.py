"""SageMaker preflight, before anything is uploaded or billed: the account's quota for the
instance type (Service Quotas; the spot training quota for spot), the execution role, and the
bucket. A quota below the planned count, a missing role or bucket are errors; a missing
permission to read a quota or the role is a warning, and the launch goes on.

Quota names are Service Quotas' own for SageMaker, e.g. ``ml.p5.48xlarge for training job
usage`` and ``ml.p5.48xlarge for spot training job usage``.
"""

from __future__ import annotations

from typing import Any

from runners._types import RunnerError


def quota_name(instance_type: str, *, spot: bool) -> str:
    """Service Quotas' name of SageMaker's training quota for ``instance_type``."""
    return f"{instance_type} for {'spot training' if spot else 'training'} job usage"


def _code(exc: Any) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def check_quota(
    quotas: Any, *, instance_type: str, count: int, spot: bool, warnings: list[str]
) -> None:
    """Compare the applied quota (else the default) with the planned instance count.

    Raises:
        RunnerError: If the quota is below ``count``.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    name = quota_name(instance_type, spot=spot)
    value: float | None = None
    try:
        for lister in ("list_service_quotas", "list_aws_default_service_quotas"):
            token: str | None = None
            while value is None:
                kwargs: dict[str, Any] = {"ServiceCode": "sagemaker"}
                if token:
                    kwargs["NextToken"] = token
                page = getattr(quotas, lister)(**kwargs)
                value = next(
                    (float(q["Value"]) for q in page.get("Quotas", []) if q["QuotaName"] == name),
                    None,
                )
                token = page.get("NextToken")
                if not token:
                    break
            if value is not None:
                break
    except (ClientError, BotoCoreError) as exc:
        warnings.append(
            f"could not read the quota {name!r} ({_code(exc) or exc}); launching anyway. To "
            "check it yourself: Service Quotas console, Amazon SageMaker"
        )
        return
    if value is None:
        warnings.append(f"Service Quotas lists no quota named {name!r}; launching anyway")
        return
    if value < count:
        raise RunnerError(
            f"the account's quota {name!r} is {value:g}, the plan needs {count}. To fix: request "
            "an increase (Service Quotas console, Amazon SageMaker), or re-plan with fewer or "
            "other instances; nothing was uploaded or started"
        )


def check_role(iam: Any, *, role_arn: str, warnings: list[str]) -> None:
    """The execution role exists (``iam:GetRole``); no permission to read it is a warning.

    Raises:
        RunnerError: If the role does not exist or the ARN is not a role ARN.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    if ":role/" not in role_arn:
        raise RunnerError(
            f"--role {role_arn!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
        )
    name = role_arn.rsplit("/", 1)[-1]
    try:
        iam.get_role(RoleName=name)
    except ClientError as exc:
        if _code(exc) == "NoSuchEntity":
            raise RunnerError(
                f"the execution role {role_arn!r} does not exist. To fix: create it (with "
                "AmazonSageMakerFullAccess and access to your bucket) or pass another --role"
            ) from None
        warnings.append(f"could not read the role {name!r} ({_code(exc) or exc}); going on")
    except BotoCoreError as exc:
        warnings.append(f"could not read the role {name!r} ({exc}); going on")


def check_bucket(s3: Any, *, bucket: str) -> None:
    """The bucket exists and these credentials can reach it (``HeadBucket``).

    Raises:
        RunnerError: If it does not exist or access is denied.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = _code(exc)
        why = "does not exist" if code in ("404", "NoSuchBucket") else f"is not reachable ({code})"
        raise RunnerError(
            f"bucket {bucket!r} {why}. To fix: create it in the job's region or pass "
            "--output-dir s3://A-BUCKET-YOU-OWN/prefix; nothing was uploaded or started"
        ) from None
    except BotoCoreError as exc:
        raise RunnerError(f"bucket {bucket!r} is not reachable ({exc})") from None
