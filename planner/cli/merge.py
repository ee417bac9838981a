"""CLI command ``merge``: a LoRA/QLoRA run's adapters merged into its base weights."""

from __future__ import annotations

from pathlib import Path

import click

from catalog import printable
from planner.cli.errors import UserInputError
from planner.cli.runs import runs_dir_option
from runners import RunnerError
from runners.merge import merge_run, run_folder


@click.command("merge")
@click.argument("run")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the merged model (default: RUN/output/merged).",
)
@runs_dir_option
def merge_command(run: str, out: Path | None, runs_dir: str) -> None:
    """Merge a finished LoRA/QLoRA run's adapters into its base weights (bf16), saved with the
    tokenizer, ready to serve.

    \b
    Examples:
      ftplan merge llama2-7b-lora-20261123-193000-a1b2
      ftplan merge runs/llama2-7b-lora-20261123-193000-a1b2 --out models/llama2-7b-chat
    """
    try:
        folder = merge_run(run_folder(run, runs_dir=runs_dir), out=out)
    except RunnerError as exc:
        raise UserInputError(str(exc)) from None
    click.echo(f"merged model and tokenizer: {printable(folder)}")


COMMANDS: list[click.Command] = [merge_command]
