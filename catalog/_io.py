"""File effects shared by every package: atomic writes, so a crash never leaves half a file, and
bounded reads of regular files only, so /dev/zero, a FIFO or a 1 GB "plan" cannot hang ftplan."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from catalog.errors import CONTROL_CHARS, DataError


def expand_user(path: str | os.PathLike[str]) -> Path:
    """``Path(path).expanduser()``, or the path unchanged when ``~user`` names no user (where
    ``expanduser`` raises RuntimeError)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


def stage_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a hidden temporary file next to ``path`` (synced to disk) and return it.

    The name, ``.<name>.<pid>-<random>.tmp``, carries the writer's process id so that
    :func:`clean_stale_temp_files` can tell an orphan (its writer is gone) from a live write.
    Move it into place with ``os.replace(staged, path)``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent
    )
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 less umask),
        # so reports and catalogs stay readable by the team and by web servers.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    The folder is created if needed. Readers see either the old file or the whole new one.

    Returns:
        The path written.
    """
    target = Path(path)
    tmp = stage_text(target, text)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>[0-9]+)-[A-Za-z0-9_]+\.tmp$")
#: A temporary file older than this is stale even if its process id was reused since.
STALE_TEMP_AGE_S = 3600.0


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files :func:`stage_text` left in ``folder`` when its writer was
    killed (the process is gone, or the file is over an hour old). Live writes are left alone.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            age_s = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() and age_s < STALE_TEMP_AGE_S:
            continue
        if pid_alive(pid) and age_s < STALE_TEMP_AGE_S:
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


#: Default ceilings for files ftplan reads whole: a plan, a config.json, a status or calibration
#: file is a few kB to a few MB; more is a mistake (or /dev/zero) and is refused, not read.
MAX_JSON_FILE_BYTES = 64 * 1024 * 1024
#: Deepest JSON nesting accepted: ftplan's own files nest < 10 deep; chat datasets < 6.
MAX_JSON_DEPTH = 64


def open_regular(path: str | os.PathLike[str], *, what: str) -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file.

    The file is opened non-blocking first so a FIFO cannot hang the open, then checked with
    ``fstat`` (no race between the check and the read).

    Raises:
        DataError: The path is a folder, device, FIFO or socket.
        OSError: It cannot be opened (missing, no permission, ...).
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (device, FIFO, ...)"
            raise DataError(f"{what} {os.fspath(path)!r} is {kind}; give a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text_limited(
    path: str | os.PathLike[str], *, what: str, max_bytes: int = MAX_JSON_FILE_BYTES
) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes.

    Raises:
        DataError: Not a regular file, larger than ``max_bytes``, or not UTF-8.
        OSError: It cannot be opened.
    """
    with open_regular(path, what=what) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DataError(
            f"{what} {os.fspath(path)!r} is larger than {max_bytes // (1024 * 1024)} MiB; "
            "that is not a file ftplan wrote"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{what} {os.fspath(path)!r} is not UTF-8 text (byte {exc.start})"
        ) from None


def json_depth_ok(value: object, *, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """True when ``value`` (parsed JSON) nests at most ``max_depth`` containers deep."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def loads_json(text: str, *, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for files a user can hand ftplan: no NaN/Infinity, bounded nesting.

    Raises:
        DataError: Not JSON, a NaN/Infinity literal, or nested deeper than ``max_depth``.
    """

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON allows")

    def finite(literal: str) -> float:
        number = float(literal)
        if not math.isfinite(number):
            raise ValueError(f"{literal[:20]} overflows a float")
        return number

    try:
        value = json.loads(text, parse_constant=refuse_constant, parse_float=finite)
    except RecursionError:
        raise DataError(f"{what} nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError included
        raise DataError(f"{what} is not valid JSON ({exc})") from None
    if not json_depth_ok(value, max_depth=max_depth):
        raise DataError(f"{what} nests deeper than {max_depth} levels")
    return value


def read_json_file(
    path: str | os.PathLike[str],
    *,
    what: str,
    max_bytes: int = MAX_JSON_FILE_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse a JSON file with :func:`read_text_limited` and :func:`loads_json`."""
    text = read_text_limited(path, what=what, max_bytes=max_bytes)
    return loads_json(text, what=f"{what} {os.fspath(path)!r}", max_depth=max_depth)


def first_bad_value(value: object, where: str, *, max_number: float) -> str | None:
    """The first negative, non-finite or absurd (> ``max_number``) number, or text holding
    control characters, in parsed JSON ``value``; None when there is none.

    ftplan's records (plans, measurements, status) hold no negative figure, so one is a sign of
    a hand edit that would otherwise print as "$-50.00 ... feasible".
    """
    stack: list[tuple[object, str]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, f"{at}.{k}") for k, v in item.items())
            stack.extend((k, f"{at} (a key)") for k in item)
        elif isinstance(item, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int | float):
            if not math.isfinite(item) or item < 0 or item > max_number:
                return f"{at} is {item!r}, not a figure between 0 and {max_number:g}"
        elif isinstance(item, str) and CONTROL_CHARS.search(item):
            return f"{at} holds control characters"
    return None
