"""The ``ftplan`` command's entry point: Ctrl-C at any moment, even while the CLI is still
loading (the first few hundred milliseconds), ends with "interrupted" and exit code 130, never a
traceback. Kept to the standard library, so it is running before anything heavy loads."""

from __future__ import annotations

import os
import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as planner.cli.errors


def _interrupted() -> None:
    try:
        sys.stderr.write("\ninterrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError, KeyboardInterrupt):  # a closed terminal, a second Ctrl-C
        pass
    # Not sys.exit: a second Ctrl-C during the interpreter's clean-up would print a traceback.
    # Files are already safe: every write is staged and renamed, and was undone on the way here.
    os._exit(EXIT_INTERRUPTED)


def main() -> None:
    """Load the CLI and run it, treating Ctrl-C during either as an interrupt."""
    try:
        from planner.cli import main as cli

        cli()
    except KeyboardInterrupt:
        _interrupted()


if __name__ == "__main__":  # pragma: no cover
    main()
