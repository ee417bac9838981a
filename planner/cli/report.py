"""CLI command: ``ftplan report`` re-renders a saved plan as HTML or markdown."""

from __future__ import annotations

from pathlib import Path

import click

from catalog import atomic_write_text, mask_secrets, printable, same_file
from planner.cli.errors import UserInputError

_FORMATS = ("html", "md")


@click.command("report")
@click.argument("plan_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(_FORMATS),
    default="html",
    show_default=True,
    help="html: one self-contained file with charts (opens offline); md: GitHub markdown tables.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="File to write. Default: next to PLAN_FILE with the format's suffix "
    "(.html or .md). Use '-' to print to stdout.",
)
def report(plan_file: Path, fmt: str, out_path: Path | None) -> None:
    """Render a plan written by 'ftplan recommend' (reports/<slug>.json) as HTML or markdown.

    \b
    Examples:
      ftplan report reports/llama2-7b-200usd-3f9a1c2e.json
      ftplan report reports/llama2-7b-200usd-3f9a1c2e.json --format md --out plan.md
      ftplan report reports/llama2-7b-200usd-3f9a1c2e.json --format md --out -
    """
    from planner.plan_io import read_plan

    to_stdout = out_path is not None and str(out_path) == "-"
    target = out_path if out_path is not None else plan_file.with_suffix(f".{fmt}")
    if not to_stdout and same_file(target, plan_file):
        if out_path is None:
            raise UserInputError(
                f"the {fmt} report of {printable(plan_file)!r} would go to the same file and "
                f"replace the plan. To fix: pass --out FILE.{fmt}, or name the plan .json"
            )
        raise UserInputError(
            f"--out {printable(out_path)!r} is the plan file being read; writing the report "
            "there would replace the plan. To fix: choose another --out"
        )
    plan = read_plan(plan_file)
    if fmt == "html":
        from planner.report.html import render_html

        text = render_html(plan)
    else:
        from planner.report.markdown import render_markdown

        text = render_markdown(plan)
    if to_stdout:
        click.echo(text, nl=False)
        return
    # Through a link only when the user named the file (--out); not next to the plan.
    written = atomic_write_text(target, mask_secrets(text), follow_link=out_path is not None)
    click.echo(f"wrote {printable(written)}")


COMMANDS: list[click.Command] = [report]
