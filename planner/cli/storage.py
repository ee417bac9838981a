"""``recommend --storage``: check an optuna storage URL before the search, so a typo is one line
and exit code 2 rather than a SQLAlchemy traceback. Credentials in the URL never reach a report
(:func:`catalog.mask_secrets`)."""

from __future__ import annotations

import re
import stat

import click

from catalog import expand_user, mask_secrets, printable

_URL = re.compile(r"^(?P<dialect>sqlite|postgresql|postgres|mysql|mariadb)(\+[a-z0-9_]+)?://")
_EXAMPLE = "e.g. sqlite:///study.db or postgresql://user@host/db"


def check_storage_url(url: str) -> str:
    """Return ``url`` when it is an optuna storage URL ftplan can use; else raise BadParameter.

    A SQLite file must be a regular file or not exist yet, in an existing folder: ftplan does not
    create folders for it.
    """
    shown = printable(mask_secrets(url))
    match = _URL.match(url)
    if match is None:
        raise click.BadParameter(
            f"{shown!r} is not a database URL optuna can store a study in ({_EXAMPLE})"
        )
    if match["dialect"] != "sqlite":
        if not re.match(r"^[^:]+://[^/\s]+/[^\s]+$", url):
            raise click.BadParameter(f"{shown!r} names no host and database ({_EXAMPLE})")
        return url
    path_text = url[match.end() :]
    if not path_text.startswith("/"):
        raise click.BadParameter(
            f"{shown!r}: a SQLite URL has three slashes before a relative path "
            "(sqlite:///study.db) or four before an absolute one (sqlite:////tmp/study.db)"
        )
    path_text = path_text[1:]
    if "?" in path_text:
        raise click.BadParameter(
            f"{shown!r}: a SQLite study URL takes no query parameters; drop the '?...' part"
        )
    if path_text in ("", ":memory:"):
        raise click.BadParameter(
            f"{shown!r} stores nothing (an in-memory database); name a file, {_EXAMPLE}"
        )
    path = expand_user(path_text)
    try:
        mode: int | None = path.stat().st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise click.BadParameter(f"{shown!r}: {printable(path)} is not a regular file")
    parent = path.parent
    if not parent.is_dir():
        raise click.BadParameter(
            f"{shown!r}: the folder {printable(parent)} does not exist; create it first"
        )
    return url
