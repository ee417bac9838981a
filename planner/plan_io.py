"""Plan files: ``reports/<slug>.json`` is the contract between ``recommend``, ``report`` and
``launch``. Written atomically with sorted keys; read back into a typed :class:`Plan`."""

from __future__ import annotations

import json
from pathlib import Path

from catalog import atomic_write_text, from_jsonable, to_jsonable
from planner._types import Plan

PLAN_FORMAT = "ftplan-plan/1"


def plan_to_json(plan: Plan) -> str:
    """The plan as stable, pretty JSON (sorted keys), wrapped with its format tag."""
    return (
        json.dumps({"format": PLAN_FORMAT, "plan": to_jsonable(plan)}, indent=2, sort_keys=True)
        + "\n"
    )


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
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"plan file {str(source)!r} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise ValueError(
            f"plan file {str(source)!r} is not an ftplan plan (expected format "
            f"{PLAN_FORMAT!r}); regenerate it with 'ftplan recommend'"
        )
    try:
        return from_jsonable(Plan, data.get("plan"))
    except ValueError as exc:
        raise ValueError(f"plan file {str(source)!r} is invalid: {exc}") from None
