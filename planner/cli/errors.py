"""The CLI's error types and exit codes: expected errors become one line on stderr, never a
traceback."""

from __future__ import annotations

import importlib.util
from typing import Any

import click

EXIT_USAGE = 2

# Optional parts of ftplan (pyproject.toml's extras) and the modules each one brings.
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "transformers", "peft", "bitsandbytes", "accelerate"),
    "deepspeed": ("deepspeed",),
    "skypilot": ("sky",),
}


class UserInputError(click.ClickException):
    """Bad input from the user: what is wrong, why, how to fix. Exit code 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class NothingFitsError(click.ClickException):
    """A what-if query with no answer (nothing fits at batch 1): a result, not bad input.
    Exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_extra(extra: str, what: str) -> None:
    """Raise :class:`UserInputError` (one line, exit 2) naming the extra to install when any of
    its modules is missing. Looks the modules up without importing them."""
    missing = [m for m in EXTRAS[extra] if not _installed(m)]
    if missing:
        raise UserInputError(
            f"{what} needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"pip install 'ftplan[{extra}]'"
        )
