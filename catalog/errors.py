"""ftplan's one error base, and the text hygiene every message goes through.

:class:`FtplanError` is what every package raises for an *expected* failure: bad input from the
user, a file that is not what it claims to be, or an environment that cannot do what was asked.
The CLI turns it into one line and exit code 2; any other exception is a bug (exit code 3 with a
crash log). It lives here, in the lowest layer, so catalog, profiler, runners and planner can all
derive their error types from it.
"""

from __future__ import annotations

import enum
import os
import re

__all__ = [
    "DataError",
    "EnvironmentProblem",
    "ErrorKind",
    "FtplanError",
    "InputError",
    "mask_argv",
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


_MASK = "***"
_SCHEME = (
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*:/{1,3})"  # one slash: a URL that went through a path
)
# scheme://user:PASSWORD@host. Inside quotes (how messages show values) the password runs to the
# last '@' before the closing quote, spaces included; elsewhere to the last '@' before a space.
# Either way it may hold '/', ':' and '@' itself.
_URL_USERINFO_QUOTED = re.compile(
    r"(?P<quote>['\"])(?P<pre>[^'\"\n]*?)"
    + _SCHEME
    + r"(?P<user>[^:/@\s'\"]*):[^'\"\n]*@(?P<rest>[^'\"@\n]*)(?P=quote)"
)
_URL_USERINFO = re.compile(_SCHEME + r"(?P<user>[^:/@\s'\"]*):[^\s'\"]*@")
# scheme://TOKEN@host with no password: only a user part that looks like a credential.
_URL_TOKEN_USER = re.compile(_SCHEME + r"(?P<user>[A-Za-z0-9_\-]{20,})@")
_SECRET_WORDS = (
    r"password|passwd|pwd|secret|token|credential|credentials|signature|sig|auth|"
    r"api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|secret[_\-]?key|account[_\-]?key|"
    r"session[_\-]?token|security[_\-]?token|client[_\-]?secret"
)
# ?password=... &X-Amz-Signature=... ;token=...
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&;](?:[\w.\-]*(?:" + _SECRET_WORDS + r"|key)[\w.\-]*)=)[^&;#\s'\"]*"
)
# password=..., HF_TOKEN=..., "aws_secret_access_key": "...", secret: "..." (the name ends in
# the word, so tokens_per_s, TOKENIZERS_PARALLELISM or max_tokens are left alone; with ':' only
# in JSON/YAML form, a quoted name or value, so prose such as "HF_TOKEN: not set" is kept).
_QUOTED_VALUE = r"\"[^\"\n]*\"|'[^'\n]*'"
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(?P<key>\b[A-Za-z0-9_\-]*(?:" + _SECRET_WORDS + r"))"
    r"(?:(?P<eq>\s*=\s*)(?P<value>" + _QUOTED_VALUE + r"|[^\s\"',;&}\]]+)"
    r"|(?P<colon>[\"']\s*:\s*|\s*:\s*(?=[\"']))(?P<cvalue>" + _QUOTED_VALUE + r"|[^\s\"',;&}\]]+))"
)
_BEARER = re.compile(
    r"(?i)(?P<key>\bbearer\s+|\bauthorization\s*[:=]\s*[A-Za-z]+\s+)"
    r"(?P<value>[^\s'\",;]{8,})"
)


def _assignment(match: re.Match[str]) -> str:
    value = match["value"] if match["value"] is not None else match["cvalue"]
    sep = match["eq"] if match["eq"] is not None else match["colon"]
    bare = value.strip("\"'")
    weak = _WEAK_SECRET_NAME.search(match["key"]) is not None
    if (
        not bare.strip("*")  # already masked
        or bare.lower() in _PLACEHOLDERS
        or bare.endswith("...")  # an example such as hf_...
        or _NUMBER.fullmatch(bare)  # experts_per_token: 2, max_token: 512
        or (weak and not _CREDENTIAL_CHARS.fullmatch(bare))  # bos_token: "<s>"
    ):
        return match.group(0)
    quote = value[0] if value[:1] in ("'", '"') and len(value) > 1 else ""
    return f"{match['key']}{sep}{quote}{_MASK}{quote}"


# Credentials with a recognisable shape, wherever they appear.
_TOKEN_SHAPES = re.compile(
    # AWS access key ids, with a ':secret' after one
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b(?::[^\s'\"@]+)?"
    r"|\bhf_[A-Za-z0-9]{20,}"  # Hugging Face
    r"|\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"  # GitHub
    r"|\bsk-[A-Za-z0-9_\-]{20,}"  # OpenAI, Anthropic
    r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|\bAIza[0-9A-Za-z_\-]{35}"  # Google API keys
    r"|\beyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]*"  # JSON web tokens
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
    re.DOTALL,
)
# An AWS secret access key: 40 characters of base64 with upper, lower and a digit, at most a
# few slashes (a path has more), standing alone. Git hashes are lower-case hex: not matched.
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
# Environment variables whose values are credentials (their values are masked wherever seen):
# not PWD, XAUTHORITY or a *_FILE path, whose values are paths printed everywhere.
_SECRET_ENV_NAME = re.compile(
    r"(?i)(SECRET|TOKEN|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL)"
)
_NOT_SECRET_ENV_NAME = re.compile(r"(?i)(_FILE|_PATH|_DIR|_PARALLELISM)$")
_MIN_SECRET_CHARS = 8
_PLACEHOLDERS = ("null", "none", "true", "false", "")
_NUMBER = re.compile(r"[-+]?[0-9][0-9_.eE+\-]*")
# Names that say "secret" only loosely (a tokenizer's bos_token, a signal's sig): their values
# are masked only when long enough to be a credential.
_WEAK_SECRET_NAME = re.compile(r"(?i)(token|auth|sig|pwd)$")
_CREDENTIAL_CHARS = re.compile(r"[^\s<>|{}\[\]()'\"]{8,}")  # not "<s>" or "<|eot_id|>"


def _aws_secret(match: re.Match[str]) -> str:
    word = match.group(0)
    looks_random = (
        any(c.isupper() for c in word)
        and any(c.islower() for c in word)
        and any(c.isdigit() for c in word)
        and word.count("/") <= 3
        and not word.startswith("/")
    )
    return _MASK if looks_random else word


def _secret_env_values() -> list[str]:
    """Values of this process's credential variables (AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...),
    longest first, so that any echo of them is masked even with no pattern to spot it."""
    values = {
        value
        for name, value in os.environ.items()
        if _SECRET_ENV_NAME.search(name)
        and not _NOT_SECRET_ENV_NAME.search(name)
        and len(value) >= _MIN_SECRET_CHARS
        and not value.startswith(("/", "~", "."))
    }
    return sorted(values, key=len, reverse=True)


def mask_secrets(text: str) -> str:
    """``text`` with every credential replaced by ``***``: URL passwords (``scheme://user:PASS@``,
    the password holding '/', '@' or, inside quotes, spaces), secret query parameters
    (``?password=``, ``X-Amz-Signature=``), ``name=value`` pairs whose name says secret, key or
    token, bearer tokens, AWS access key ids and secret keys, Hugging Face, GitHub, OpenAI,
    Slack and Google tokens, JSON web tokens, private key blocks, and the values of this
    process's credential environment variables.

    The one masking function: error lines, terminal output, crash logs and written reports all
    go through it.
    """
    if not text:
        return text
    for value in _secret_env_values():
        text = text.replace(value, _MASK)
    text = _URL_USERINFO_QUOTED.sub(
        lambda m: (
            f"{m['quote']}{m['pre']}{m['scheme']}{m['user']}:{_MASK}@{m['rest']}{m['quote']}"
        ),
        text,
    )
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{_MASK}@", text)
    text = _URL_TOKEN_USER.sub(lambda m: f"{m['scheme']}{_MASK}@", text)
    text = _SECRET_QUERY.sub(lambda m: f"{m['key']}{_MASK}", text)
    text = _SECRET_ASSIGNMENT.sub(_assignment, text)
    text = _BEARER.sub(lambda m: f"{m['key']}{_MASK}", text)
    text = _TOKEN_SHAPES.sub(_MASK, text)
    return _AWS_SECRET.sub(_aws_secret, text)


def mask_argv(argv: list[str]) -> list[str]:
    """Each command-line argument masked on its own: an argument is one value, so a URL's
    password runs to its last '@' even when it holds spaces."""
    masked = []
    for arg in argv:
        match = re.match(_SCHEME + r"(?P<user>[^:/@\s]*):.*@(?P<rest>[^@]*)$", arg, re.DOTALL)
        if match:
            arg = f"{match['scheme']}{match['user']}:{_MASK}@{match['rest']}"
        masked.append(mask_secrets(arg))
    return masked
