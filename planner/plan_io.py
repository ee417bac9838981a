"""Plan files: ``reports/<slug>.json`` is the contract between ``recommend``, ``report`` and
``launch``. Written atomically with sorted keys; read back into a typed :class:`Plan`."""

from __future__ import annotations

from pathlib import Path

from catalog import atomic_write_text, from_tagged_json, tagged_json
from planner._types import Plan

PLAN_FORMAT = "ftplan-plan/1"


def plan_to_json(plan: Plan) -> str:
    """The plan as stable, pretty JSON (sorted keys), wrapped with its format tag."""
    return tagged_json(PLAN_FORMAT, "plan", plan) + "\n"


def write_plan(plan: Plan, path: str | Path) -> Path:
    """Write the plan JSON atomically and return its path."""
    return atomic_write_text(path, plan_to_json(plan))


def read_plan(path: str | Path) -> Plan:
    """Read a plan file written by :func:`write_plan`.

    Raises:
        ValueError: If the file is not JSON, not a plan, or was edited into something invalid;
            the message names the file and the offending field.
        FileNotFoundError: If the file does not exist.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(
            f"plan file {str(source)!r} does not exist: run 'ftplan recommend ...' first, which "
            "writes reports/<slug>.json"
        )
    where = f"plan file {str(source)!r}"
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON ({exc})") from None
    return from_tagged_json(
        Plan,
        text,
        tag=PLAN_FORMAT,
        key="plan",
        where=where,
        kind="plan",
        fix="regenerate it with 'ftplan recommend'",
    )
