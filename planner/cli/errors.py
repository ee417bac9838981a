"""The CLI's error types and exit codes: expected errors become one line on stderr, never a
traceback."""

from __future__ import annotations

from typing import Any

import click

EXIT_USAGE = 2


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
