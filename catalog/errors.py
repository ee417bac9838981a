"""ftplan's one error base, and the text hygiene every message goes through.

:class:`FtplanError` is what every package raises for an *expected* failure: bad input from the
user, a file that is not what it claims to be, or an environment that cannot do what was asked.
The CLI turns it into one line and exit code 2; any other exception is a bug (exit code 3 with a
crash log). It lives here, in the lowest layer, so catalog, profiler, runners and planner can all
derive their error types from it.
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "DataError",
    "EnvironmentProblem",
    "ErrorKind",
    "FtplanError",
    "InputError",
    "mask_secrets",
    "printable",
]


class ErrorKind(enum.StrEnum):
    """What kind of expected failure an :class:`FtplanError` is."""

    USER_INPUT = "user input"  # a flag or argument out of range, an unknown name
    DATA = "data"  # a file ftplan reads (plan, dataset, store, config.json) is malformed
    ENVIRONMENT = "environment"  # a missing GPU, package, credential or unwritable folder


class FtplanError(Exception):
    """An expected failure: the message says what is wrong, why, and how to fix it.

    Args:
        message: One line (control characters are escaped when printed).
        kind: Defaults to the class's ``kind``.
    """

    kind: ErrorKind = ErrorKind.USER_INPUT

    def __init__(self, message: str = "", *, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class InputError(FtplanError, ValueError):
    """A flag, argument or name the user gave is invalid."""

    kind = ErrorKind.USER_INPUT


class DataError(FtplanError, ValueError):
    """A file ftplan reads is malformed, truncated or out of range."""

    kind = ErrorKind.DATA


class EnvironmentProblem(FtplanError, RuntimeError):
    """This machine cannot do what was asked (no GPU, missing package, unwritable folder)."""

    kind = ErrorKind.ENVIRONMENT


# Characters a terminal or an editor acts on: C0 controls but tab and newline, DEL, C1
# controls, and the Unicode line separators and bidi overrides (CVE-2021-42574 "Trojan
# Source"). The one definition: printing escapes them, readers refuse them in data.
_UNSAFE = r"\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
CONTROL_CHARS = re.compile(f"[{_UNSAFE}]")
"""Terminal-unsafe characters; tab and newline allowed (multi-line text)."""
CONTROL_CHARS_OR_NEWLINES = re.compile(f"[\t\n{_UNSAFE}]")
"""Terminal-unsafe characters, tab and newline included (one-line values)."""


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters escaped (``\\x1b`` ...), safe to echo to a terminal.

    Args:
        text: Anything; ``str()`` of it is escaped.
        keep_newlines: Keep ``\\n`` and ``\\t`` (multi-line output); else they are escaped too.
    """
    pattern = CONTROL_CHARS if keep_newlines else CONTROL_CHARS_OR_NEWLINES
    return pattern.sub(_escape, str(text))


_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&;](?:[\w.\-]*(?:password|passwd|pwd|secret|token|key|credential|"
    r"signature|auth)[\w.\-]*)=)[^&;#\s'\"]*"
)
_MASK = "***"


def mask_secrets(text: str) -> str:
    """``text`` with the passwords of URLs (``scheme://user:PASS@``) and secret query parameters
    (``?password=``, ``&token=``, ``X-Amz-Signature=`` ...) replaced by ``***``."""
    masked = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{_MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}{_MASK}", masked)
