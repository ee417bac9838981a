"""Plan files: ``reports/<slug>.json`` is the contract between ``recommend``, ``report`` and
``launch``. Written atomically with sorted keys; read back into a typed :class:`Plan`."""

from __future__ import annotations

from pathlib import Path

from catalog import (
    DataError,
    InputError,
    atomic_write_text,
    first_bad_value,
    from_tagged_json,
    read_json_file,
    tagged_json,
)
from planner._types import Plan

PLAN_FORMAT = "ftplan-plan/1"


def plan_to_json(plan: Plan) -> str:
    """The plan as stable, pretty JSON (sorted keys), wrapped with its format tag."""
    return tagged_json(PLAN_FORMAT, "plan", plan) + "\n"


def write_plan(plan: Plan, path: str | Path) -> Path:
    """Write the plan JSON atomically and return its path."""
    return atomic_write_text(path, plan_to_json(plan))


#: Largest figure a plan may hold (USD, hours, tokens, parameters): far above any real job, far
#: below where float arithmetic overflows.
MAX_PLAN_NUMBER = 1e30
#: Largest plan file read (a plan with hundreds of candidates is well under 5 MB).
MAX_PLAN_FILE_BYTES = 32 * 1024 * 1024


def read_plan(path: str | Path) -> Plan:
    """Read and validate a plan file written by :func:`write_plan`.

    The file must be a regular file tagged ``ftplan-plan/1``, hold plain JSON (no NaN or
    Infinity), no negative or absurd figure (> :data:`MAX_PLAN_NUMBER`), no control characters
    in text, and decode into a valid :class:`Plan`.

    Raises:
        DataError: If the file is not JSON, not a plan, or was edited into something invalid;
            the message names the file and the offending field.
        InputError: If the file does not exist.
    """
    source = Path(path)
    name = str(source)
    if not source.exists():
        raise InputError(
            f"plan file {name!r} does not exist: run 'ftplan recommend ...' first, which "
            "writes reports/<slug>.json"
        )
    data = read_json_file(source, what="plan file", max_bytes=MAX_PLAN_FILE_BYTES)
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"format", "plan"})
        if unknown:
            raise DataError(f"plan file {name!r} has unknown top-level fields {unknown}")
        problem = first_bad_value(data.get("plan"), "plan", max_number=MAX_PLAN_NUMBER)
        if problem and data.get("format") == PLAN_FORMAT:
            raise DataError(f"plan file {name!r} is invalid: {problem}; regenerate it")
    return from_tagged_json(
        Plan,
        data,
        tag=PLAN_FORMAT,
        key="plan",
        where=f"plan file {name!r}",
        kind="plan",
        fix="regenerate it with 'ftplan recommend'",
    )
