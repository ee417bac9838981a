"""The ``ftplan`` command line: parse flags, build typed values, call the library, render.

Each command lives in its own module of this package; this module owns the group and the one place
where expected errors become a one-line message and exit code 2 (never a traceback).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from catalog import CatalogError
from planner.cli.errors import EXIT_USAGE, UserInputError

__all__ = ["EXIT_USAGE", "UserInputError", "main"]


class _FtplanGroup(click.Group):
    """Turns the library's expected errors into :class:`UserInputError`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (
            CatalogError,
            ValueError,
            FileNotFoundError,
            PermissionError,
            IsADirectoryError,
        ) as exc:
            raise UserInputError(str(exc)) from None


@click.group(cls=_FtplanGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ftplan")
def main() -> None:
    """ftplan: plan, price and launch LLM fine-tuning (full, LoRA, QLoRA).

    \b
    Examples:
      ftplan recommend --model llama2-7b --budget 200
      ftplan estimate --model llama3.1-8b --method qlora --gpu l4 --format json
      ftplan catalog offers --gpu h100
    """


def _register() -> None:
    from planner.cli import catalog, estimate, launch, merge, profile, recommend, report

    for module in (recommend, estimate, catalog, profile, report, launch, merge):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
