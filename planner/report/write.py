"""Reports a person reads: ``<slug>.md``, a self-contained ``<slug>.html`` and the ``<slug>.json``
plan they were made from.

:func:`write_reports` is called at the end of ``ftplan recommend``; ``ftplan report`` re-renders
one format from a plan file. Rendering imports jinja2 only when it runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from catalog import mask_secrets, write_file_set
from planner._types import Plan
from planner.plan_io import plan_to_json
from planner.report.html import render_html
from planner.report.markdown import render_markdown

_SLUG_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_SLUG_MAX_CHARS = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportPaths:
    """Where :func:`write_reports` put the three files of one plan."""

    markdown: Path
    html: Path
    json: Path


def _sanitize(text: str) -> str:
    """Lower-case ``text`` and keep only ``[a-z0-9._-]``; no leading dots, no ``..``."""
    cleaned = _SLUG_UNSAFE.sub("-", text.strip().lower())
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    return cleaned.strip(".-_")


def report_slug(model: str, budget_usd: float, inputs_hash: str) -> str:
    """File-name stem for a plan's reports, e.g. ``llama2-7b-200usd-3f9a1c2e``.

    Only ``[a-z0-9._-]`` survive, so any model name (``../x``, ``<script>``) gives a plain file
    name inside the reports folder, never a path.

    Args:
        model: The model's name (the catalog's, or a config's).
        budget_usd: The budget in USD.
        inputs_hash: A hash of the recommend inputs (first 8 safe characters are used).
    """
    budget = f"{budget_usd:.2f}".rstrip("0").rstrip(".")
    model_part = _sanitize(model)[:_SLUG_MAX_CHARS].strip(".-_") or "model"
    hash_part = _sanitize(inputs_hash)[:8].strip(".-_")
    parts = [model_part, f"{_sanitize(budget) or '0'}usd"] + ([hash_part] if hash_part else [])
    return "-".join(parts)


def write_reports(plan: Plan, out_dir: Path, *, slug: str) -> ReportPaths:
    """Write ``<out_dir>/<slug>.md``, ``.html`` and ``.json`` as one set
    (:func:`catalog.write_file_set`): all three rendered and staged before the first appears,
    moved into place under a lock on the folder with stop signals held back, so two runs with
    the same slug never leave the markdown of one beside the JSON of the other, and a Ctrl-C or
    a kill between the renames leaves the old set or the new one, never a mix.

    Args:
        plan: The plan to report.
        out_dir: Folder for the reports (created if missing).
        slug: File-name stem, normally from :func:`report_slug`.

    Raises:
        ValueError: If ``slug`` is not a plain ``[a-z0-9._-]`` file-name stem.
    """
    if not slug or _sanitize(slug) != slug:
        raise ValueError(
            f"report slug {slug!r} is not a safe file name: use report_slug(...) to build one "
            "(only a-z, 0-9, '.', '_' and '-')"
        )
    folder = Path(out_dir)
    # Render everything before writing anything: a rendering error leaves old files untouched.
    # A credential the plan's inputs carried (a path, a storage URL) never reaches a file.
    markdown, page, plan_json = (
        mask_secrets(text)
        for text in (render_markdown(plan), render_html(plan), plan_to_json(plan))
    )
    # The plan JSON last: 'report' and 'launch' read it, so it never precedes its pages.
    md, html, js = write_file_set(
        folder, {f"{slug}.md": markdown, f"{slug}.html": page, f"{slug}.json": plan_json}
    )
    return ReportPaths(markdown=md, html=html, json=js)
