"""The CLI's error types and exit codes: expected errors become one line on stderr, never a
traceback; bugs become a short "internal error" line and a crash log holding the traceback.

Exit codes: 0 done, 1 no feasible plan (or a run that failed), 2 bad input (any
:class:`catalog.FtplanError` or ``OSError``), 3 internal error (a bug), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import datetime as dt
import errno
import importlib.util
import io
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import click

from catalog import FtplanError, mask_secrets, printable
from catalog.errors import mask_argv

EXIT_OK = 0
EXIT_NO_PLAN = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NO_PLAN",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXTRAS",
    "InternalError",
    "NothingFitsError",
    "UserInputError",
    "clean_message",
    "describe_os_error",
    "require_extra",
    "write_crash_log",
]


def clean_message(text: object) -> str:
    """One printable line: secrets masked, control characters (newlines too) escaped."""
    return printable(mask_secrets(str(text)).strip())


# Optional parts of ftplan (pyproject.toml's extras) and the modules each one brings.
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "transformers", "peft", "bitsandbytes", "accelerate"),
    "deepspeed": ("deepspeed",),
    "skypilot": ("sky",),
}


_SURROGATE = re.compile("[\udc80-\udcff]")


class MaskedStream(io.TextIOBase):
    """A terminal stream (stdout, stderr) that writes every line through
    :func:`catalog.mask_secrets`, whoever prints it (click, rich, a runner's dry run).

    Text is held until a newline or a flush, so a credential printed in pieces is still seen
    whole. Bytes a file name carried that are not UTF-8 (surrogate escapes) print as ``\\xff``,
    and characters the terminal's encoding lacks (``×`` on an ASCII terminal) as ``\\xd7``,
    instead of failing the write.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self._stream = stream
        self._pending = ""

    @property
    def wrapped(self) -> Any:
        return self._stream

    @property
    def encoding(self) -> Any:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")

    @property
    def errors(self) -> Any:  # type: ignore[override]
        return getattr(self._stream, "errors", "strict")

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return bool(getattr(self._stream, "isatty", lambda: False)())

    def fileno(self) -> int:
        return int(self._stream.fileno())

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self._emit(done + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = ""
        self._stream.flush()

    def _emit(self, text: str) -> None:
        text = _SURROGATE.sub(lambda m: f"\\x{ord(m.group(0)) - 0xDC00:02x}", mask_secrets(text))
        encoding = getattr(self._stream, "encoding", None) or "utf-8"
        try:
            text.encode(encoding)
        except UnicodeEncodeError:  # an ASCII terminal (PYTHONIOENCODING=ascii, LANG=C ...)
            text = text.encode(encoding, "backslashreplace").decode(encoding)
        except LookupError:
            pass
        self._stream.write(text)


class UserInputError(click.ClickException):
    """Bad input from the user: what is wrong, why, how to fix. Exit code 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {clean_message(self.format_message())}", err=True)


class InternalError(click.ClickException):
    """A bug in ftplan: a short line and where the traceback was saved. Exit code 3."""

    exit_code = EXIT_INTERNAL

    def show(self, file: Any = None) -> None:
        click.echo(f"internal error: {clean_message(self.format_message())}", err=True)


class NothingFitsError(click.ClickException):
    """A what-if query with no answer (nothing fits at batch 1): a result, not bad input.
    Exit code 1."""

    exit_code = EXIT_NO_PLAN

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {clean_message(self.format_message())}", err=True)


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


_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "give a file, not a folder",
    errno.EEXIST: "a file of that name is in the way; choose another path",
    errno.EACCES: "check the permissions, or choose a folder you can write",
    errno.EPERM: "check the permissions, or choose a folder you can write",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.ENOSPC: "free some disk space",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ELOOP: "the path loops through symbolic links",
    errno.EMFILE: "raise this shell's limit ('ulimit -n 4096') and run it again",
    errno.ENFILE: "the system has too many files open: close other programs and run it again",
    errno.ENOMEM: "close other programs or use a machine with more memory",
    errno.EILSEQ: "the name is not valid in this file system's encoding; rename it",
}


def describe_os_error(exc: OSError) -> str:
    """``exc`` as one line: what failed on which path, and what to do."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" {exc.filename!s}" if exc.filename else ""
    if exc.filename2:
        where += f" -> {exc.filename2!s}"
    hint = _OS_HINTS.get(exc.errno or -1)
    text = f"{reason}:{where}" if where else reason
    return text + (f". To fix: {hint}" if hint else "")


def _crash_dir() -> Path:
    from catalog import cache_dir

    return cache_dir() / "crashes"


def write_crash_log(exc: BaseException, *, argv: list[str] | None = None) -> Path | None:
    """Save the traceback of a bug (secrets masked) and return where; None if nowhere writable.

    The log goes to ``$FTPLAN_CACHE_DIR/crashes`` (default ``~/.cache/ftplan/crashes``), or the
    system temp folder when that cannot be written.
    """
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    text = "".join(
        [
            f"ftplan internal error at {stamp} UTC\n",
            f"argv: {' '.join(mask_argv(list(argv if argv is not None else sys.argv)))}\n",
            f"python: {sys.version.split()[0]}\n\n",
            *traceback.format_exception(exc),
        ]
    )
    text = mask_secrets(text)
    for folder in (lambda: _crash_dir(), lambda: Path(tempfile.gettempdir())):
        try:
            directory = folder()
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                prefix=f"ftplan-crash-{stamp}-", suffix=".log", dir=directory
            )
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            return Path(name)
        except Exception:  # noqa: S112 - a crash log must never hide the crash itself
            continue
    return None


def environment_problem(exc: BaseException) -> str | None:
    """The one line for an exception that says this machine cannot go on (out of memory, the
    AWS set-up broken) rather than that ftplan has a bug; None for anything else."""
    if isinstance(exc, MemoryError):
        return (
            "ran out of memory. To fix: close other programs or use a machine with more memory; "
            "if an input file is huge, check it is the one you meant"
        )
    botocore = sys.modules.get("botocore.exceptions")  # only when botocore was in use
    if botocore is not None and isinstance(exc, botocore.BotoCoreError):
        if isinstance(exc, botocore.ParamValidationError):
            return None  # a request ftplan built wrong: a bug
        from runners.sagemaker import aws_setup_problem

        return aws_setup_problem(exc)
    return None


def to_click_exception(exc: Exception) -> click.ClickException:
    """The one-line error a caught exception becomes (exit 2 for expected, 3 for bugs)."""
    if isinstance(exc, FtplanError):
        return UserInputError(str(exc))
    if isinstance(exc, OSError):
        return UserInputError(describe_os_error(exc))
    problem = environment_problem(exc)
    if problem is not None:
        return UserInputError(problem)
    path = write_crash_log(exc)
    where = f"the traceback is in {path}" if path else "no crash log could be written"
    return InternalError(
        f"{type(exc).__name__}: {exc}. This is a bug in ftplan, not in your input; {where}. "
        "Please report it with that file."
    )
