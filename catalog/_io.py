"""File effects shared by every package: atomic writes, so a crash never leaves half a file, and
bounded reads of regular files only, so /dev/zero, a FIFO or a 1 GB "plan" cannot hang ftplan."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import math
import os
import re
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
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


def write_target(path: str | os.PathLike[str]) -> Path:
    """Where writing ``path`` lands: the file a symbolic link at ``path`` points to (followed to
    the end), so that replacing it updates what the link names instead of swapping the link for
    a plain file; ``path`` itself otherwise.

    Raises:
        OSError: ELOOP when the links go round in a circle.
    """
    target = Path(path)
    if not target.is_symlink():
        return target
    resolved = Path(os.path.realpath(target, strict=False))
    if resolved.is_symlink():  # realpath gives up on a loop and returns a link
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fspath(path))
    return resolved


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether writing ``a`` would replace ``b``: the same file by inode (through a symbolic or
    a hard link), or the same path once resolved."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.realpath(a) == os.path.realpath(b)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, follow_link: bool = False
) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    The folder is created if needed. Readers see either the old file or the whole new one.

    Args:
        follow_link: For a file the user named (``--out``): a symbolic link there is followed,
            the file it names is replaced and the link stays. Otherwise (ftplan's own files in
            a runs or cache folder) a link is replaced like a file, so a link planted there
            never sends a write outside the folder.

    Returns:
        The path written (the link's target when a link was followed).
    """
    target = write_target(path) if follow_link else Path(path)
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


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (no lock file left behind), so that writers in
    several processes take turns on the files inside it."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


#: Signals a terminal or a scheduler sends to stop a process; held back while a set of files
#: is moved into place, so a stop lands before the first rename or after the last.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_JOURNAL_SUFFIX = ".set"


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Record stop signals instead of acting on them, then act on them once the block is done
    (their own handlers, or the default: the process ends). Handlers rather than a signal mask:
    a mask holds only this thread, and the kernel hands a process signal to any thread that
    does not block it (OpenBLAS's, for one). Only the main thread can set handlers; elsewhere
    the block runs unguarded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}

    def hold(signum: int, _frame: Any) -> None:
        caught.append(signum)

    try:
        for sig in _STOP_SIGNALS:
            previous[sig] = signal.signal(sig, hold)
        yield
    finally:
        for held, handler in previous.items():
            signal.signal(held, signal.SIG_DFL if handler is None else handler)
        for number in dict.fromkeys(caught):
            signal.raise_signal(number)


def _journal_path(folder: Path, name: str) -> Path:
    return folder / f".{name}.{os.getpid()}-{os.urandom(4).hex()}{_JOURNAL_SUFFIX}"


def _finish_interrupted_sets(folder: Path) -> None:
    """Complete the renames of a set whose writer died between them (SIGKILL, power loss): its
    journal names each staged file and its target, and every staged file was whole on disk
    before the first rename, so moving the rest into place finishes the set. Called with the
    folder locked, so every journal found is an orphan."""
    try:
        journals = [e.path for e in os.scandir(folder) if e.name.endswith(_JOURNAL_SUFFIX)]
    except OSError:
        return
    for journal in journals:
        try:
            moves = json.loads(read_text_limited(journal, what="set journal", max_bytes=1 << 20))
            for staged, name in moves:
                staged_path, target = folder / str(staged), folder / str(name)
                if Path(str(staged)).name != staged or Path(str(name)).name != name:
                    continue  # only plain names inside this folder
                if staged_path.is_file() and not staged_path.is_symlink():
                    os.replace(staged_path, target)
        except (OSError, ValueError, TypeError, DataError):
            pass  # a journal that cannot be used is dropped; the files stay as they are
        with contextlib.suppress(OSError):
            os.unlink(journal)


def write_file_set(folder: str | os.PathLike[str], files: Mapping[str, str]) -> list[Path]:
    """Write several files of ``folder`` as one unit: readers see the old set or the new set,
    never a mix.

    All files are staged (written and synced) first; then, under an exclusive lock on the
    folder (two writers of the same names take turns) and with stop signals held back, they are
    moved into place in order, the last name last. A failure between the renames puts the
    earlier files back as they were; a writer killed outright (SIGKILL) leaves a journal that
    the next write into the folder uses to finish the set.

    Args:
        folder: Created if missing.
        files: Plain file name (no folder part) -> text, in the order to move them.

    Returns:
        The paths written, in order.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for name in files:
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a plain file name")
    with locked_folder(root):
        _finish_interrupted_sets(root)
        clean_stale_temp_files(root)
        staged: list[tuple[Path, Path]] = []
        try:
            for name, text in files.items():
                staged.append((stage_text(root / name, text), root / name))
            _commit(root, staged)
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise
    return [target for _, target in staged]


def _commit(root: Path, staged: list[tuple[Path, Path]]) -> None:
    """Move the staged files into place as one unit (see :func:`write_file_set`)."""
    # (target, hard link to what it was; None: there was nothing; the target itself: it could
    # not be linked (a file system without hard links), so it is left as it ends up)
    backups: list[tuple[Path, Path | None]] = []
    journal = _journal_path(root, staged[-1][1].name)
    with _signals_held():
        atomic_write_text(journal, json.dumps([[t.name, target.name] for t, target in staged]))
        try:
            for tmp, target in staged:
                backup: Path | None = None
                if os.path.lexists(target) and not target.is_dir():
                    # A temporary-file name, so a killed run's leftover is cleaned later.
                    backup = root / f".{target.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
                    try:
                        os.link(target, backup, follow_symlinks=False)
                    except OSError:
                        backup = target
                backups.append((target, backup))
                os.replace(tmp, target)
        except BaseException:
            for target, backup in reversed(backups):
                if backup is None:
                    target.unlink(missing_ok=True)
                elif backup != target:
                    os.replace(backup, target)
            raise
        finally:
            for target, backup in backups:
                if backup is not None and backup != target:
                    backup.unlink(missing_ok=True)
            journal.unlink(missing_ok=True)


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


#: Most digits of an integer in a JSON file: Python's own limit (CVE-2020-10735), checked here
#: so the message names the file instead of advising sys.set_int_max_str_digits().
MAX_JSON_INT_DIGITS = 4300
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: object) -> bool:
    """Whether a string (key or value) inside parsed JSON holds half of a UTF-16 pair."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads_json(text: str, *, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for files a user can hand ftplan: no NaN/Infinity, no integer longer than
    :data:`MAX_JSON_INT_DIGITS` digits, no lone UTF-16 surrogate (``"\\ud800"``: not text, and
    it cannot be written back as UTF-8), bounded nesting.

    Raises:
        DataError: Not JSON, a NaN/Infinity literal, a huge integer, a lone surrogate, or nested
            deeper than ``max_depth``.
    """

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON allows")

    def finite(literal: str) -> float:
        number = float(literal)
        if not math.isfinite(number):
            raise ValueError(f"{literal[:20]} overflows a float")
        return number

    def bounded_int(literal: str) -> int:
        if len(literal.lstrip("-")) > MAX_JSON_INT_DIGITS:
            raise ValueError(f"a number of {len(literal.lstrip('-'))} digits")
        return int(literal)

    try:
        value = json.loads(
            text, parse_constant=refuse_constant, parse_float=finite, parse_int=bounded_int
        )
    except RecursionError:
        raise DataError(f"{what} nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError included
        raise DataError(f"{what} is not valid JSON ({str(exc)[:200]})") from None
    if not json_depth_ok(value, max_depth=max_depth):
        raise DataError(f"{what} nests deeper than {max_depth} levels")
    if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(value):
        raise DataError(
            f"{what} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), "
            "which is not text; fix the file's encoding"
        )
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


#: Longest line of a JSONL file ftplan reads (a dataset sample, a metrics or profile record):
#: 16 MiB is ~4M tokens, four times the longest context ftplan plans for.
MAX_JSONL_LINE_BYTES = 16 * 1024 * 1024


def iter_lines(
    path: str | os.PathLike[str],
    *,
    what: str,
    max_line_bytes: int = MAX_JSONL_LINE_BYTES,
    on_bytes: Any = None,
) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line of a regular UTF-8 file, read one line at
    a time: memory is bounded by ``max_line_bytes``, whatever the file's size.

    Args:
        on_bytes: Called with the bytes read so far after each line (for progress bars).

    Raises:
        DataError: Not a regular file, a line over ``max_line_bytes`` or not UTF-8 (the message
            names the file and line).
        OSError: It cannot be opened.
    """
    shown = f"{what} {os.fspath(path)!r}"
    done = 0
    with open_regular(path, what=what) as handle:
        number = 0
        while raw := handle.readline(max_line_bytes + 1):
            number += 1
            done += len(raw)
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise DataError(
                    f"{shown} line {number} is longer than {max_line_bytes >> 20} MiB; is it "
                    "JSONL (one record per line)?"
                )
            if on_bytes is not None:
                on_bytes(done)
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{shown} line {number} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
                ) from None
            if line:
                yield number, line


def iter_jsonl(
    path: str | os.PathLike[str],
    *,
    what: str,
    max_line_bytes: int = MAX_JSONL_LINE_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` of each non-blank line of a JSONL file, through
    :func:`iter_lines` and :func:`loads_json`.

    Raises:
        DataError: As :func:`iter_lines`, or a line that :func:`loads_json` refuses.
    """
    for number, line in iter_lines(path, what=what, max_line_bytes=max_line_bytes):
        yield (
            number,
            loads_json(
                line, what=f"{what} {os.fspath(path)!r} line {number}", max_depth=max_depth
            ),
        )


#: Longest CSV field: a source citation is < 1 kB; csv's own limit is 128 kB.
MAX_CSV_FIELD_CHARS = 64 * 1024


def csv_rows(text: str, *, where: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and ``(line number, row)`` pairs of CSV ``text``.

    Refused (:class:`DataError`, naming ``where`` and the line): a header naming a column twice
    (``csv.DictReader`` would keep the last one silently, e.g. every price from a second
    ``usd_per_hour`` column), a blank column name, a row with more fields than the header, a
    field over :data:`MAX_CSV_FIELD_CHARS` characters, and text that is not CSV.
    """
    reader = csv.reader(io.StringIO(text))
    line = 0
    try:
        header = next(reader, [])
        line = reader.line_num
        names = [name.strip() for name in header]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise DataError(
                    f"{where}, line 1: column {name!r} appears twice in the header; a CSV file "
                    "names each column once. To fix: delete or rename the second one"
                )
            seen.add(name)
        if header and not all(names):
            raise DataError(f"{where}, line 1: a column has no name; name every column")
        rows: list[tuple[int, dict[str, str]]] = []
        for values in reader:
            line = reader.line_num
            if not values:
                continue
            if len(values) > len(header):
                raise DataError(
                    f"{where}, line {line}: more fields than the {len(header)} columns of the "
                    "header (is a value with a comma missing its quotes?)"
                )
            if any(len(v) > MAX_CSV_FIELD_CHARS for v in values):
                raise DataError(
                    f"{where}, line {line}: a field is longer than {MAX_CSV_FIELD_CHARS} "
                    "characters"
                )
            rows.append((line, dict(zip(header, values, strict=False))))
    except csv.Error as exc:
        raise DataError(f"{where}, line {line + 1}: not valid CSV ({exc})") from None
    return header, rows


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
