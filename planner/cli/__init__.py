"""The ``ftplan`` command line: parse flags, build typed values, call the library, render.

Each command lives in its own module of this package; this module owns the group and the one place
where expected errors become a one-line message and exit code 2 (never a traceback).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import click

from planner.cli.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NO_PLAN,
    EXIT_USAGE,
    MaskedStream,
    UserInputError,
    clean_message,
    to_click_exception,
)

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NO_PLAN",
    "EXIT_USAGE",
    "UserInputError",
    "main",
]


class _FtplanGroup(click.Group):
    """The one place where exceptions become exit codes.

    :class:`catalog.FtplanError` and ``OSError`` are expected (bad input, a malformed file, a
    folder that cannot be written): one line and exit code 2. Ctrl-C: exit code 130, no
    traceback. Anything else is a bug: exit code 3 and a crash log with the traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            _interrupted()
        except Exception as exc:
            raise to_click_exception(exc) from None

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Like click's, but a usage error is one line too, Ctrl-C exits 130, and every line on
        stdout and stderr goes through :func:`catalog.mask_secrets`."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = MaskedStream(sys.stdout), MaskedStream(sys.stderr)
        try:
            return self._main(args, prog_name, complete_var, **extra)
        finally:
            for masked in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to say
                    masked.flush()
            sys.stdout, sys.stderr = streams

    def _main(
        self,
        args: Sequence[str] | None,
        prog_name: str | None,
        complete_var: str | None,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # the help text itself, as click prints it
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "ftplan"
            click.echo(
                f"error: {clean_message(exc.format_message())} (see '{where} --help')", err=True
            )
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, click.Abort):  # outside invoke, or click's own prompts
            _interrupted()
        sys.exit(result if isinstance(result, int) else 0)


def _interrupted() -> None:
    click.echo("\ninterrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)


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
    from planner.cli import (
        calibrate,
        catalog,
        estimate,
        launch,
        merge,
        profile,
        recommend,
        report,
        runs,
    )
    from planner.cli.params import harden

    for module in (recommend, estimate, calibrate, catalog, profile, report, launch, merge, runs):
        for command in module.COMMANDS:
            main.add_command(command)
    harden(main.commands.values())


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
