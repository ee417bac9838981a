"""Which process a pid is, before ftplan signals it.

A pid in a run's ``status.json`` is a claim, not a fact: after a reboot or a long time the
number belongs to another process, and a runs folder can be edited by hand. So before
``ftplan stop`` sends a signal (and before ``ftplan status`` calls a run alive) the process is
checked to be the run's own supervisor (or, when that was killed, its training process): its
command line names this run's folder (the supervisor runs ``runners._supervise`` on it, the
trainer reads its ``launch.json``), it started when the status file says (kernel start time,
which a reused pid cannot repeat), and its environment holds the run's random token, which no
other process has. On Linux the signal goes through a pidfd opened before the checks, so the
pid cannot be reused between the check and the signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Environment variable holding a run's token in its supervisor (and the training process).
RUN_TOKEN_ENV = "FTPLAN_RUN_TOKEN"
SUPERVISOR_MODULE = "runners._supervise"
_PROC = Path("/proc")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunProcess:
    """What a run's status file says one of its processes is: the supervisor, or the
    training process it started (``trainer``)."""

    pid: int
    run_dir: Path
    token: str | None = None
    start_ticks: int | None = None
    trainer: bool = False


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (``/proc/PID/stat`` field 22);
    None where there is no ``/proc`` or no such process."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 counted from 1, after pid and comm
    except (IndexError, ValueError):
        return None


def command_line(pid: int) -> list[str] | None:
    """The process's arguments, or None when it is gone (or cannot be read)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        raw = b""
    if raw:
        return [os.fsdecode(part) for part in raw.rstrip(b"\0").split(b"\0")]
    if _PROC.is_dir() and sys.platform.startswith("linux"):
        return None if not (_PROC / str(pid)).exists() else []  # a kernel thread, a zombie
    try:  # no /proc (macOS, BSD): ask ps
        out = subprocess.run(
            ["ps", "-p", str(pid), "-o", "command="],  # noqa: S607 - ps is a system tool
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.split() if out else None


def has_token(pid: int, token: str) -> bool | None:
    """Whether the process's environment holds ``FTPLAN_RUN_TOKEN=token``; None when the
    environment cannot be read here (no ``/proc``)."""
    try:
        environ = (_PROC / str(pid) / "environ").read_bytes()
    except FileNotFoundError:
        return False if _PROC.is_dir() else None
    except OSError:
        return False  # another user's process: not this user's run
    return f"{RUN_TOKEN_ENV}={token}".encode() in environ.split(b"\0")


def process_problem(process: RunProcess) -> str | None:
    """Why ``process.pid`` is not the run's process it is said to be (gone, another program,
    another run, a reused pid, a missing token); None when it is."""
    argv = command_line(process.pid)
    if argv is None:
        return f"process {process.pid} is gone"
    folder = str(process.run_dir)
    names_run = any(arg == folder or arg.startswith(folder + os.sep) for arg in argv)
    role_ok = process.trainer or SUPERVISOR_MODULE in argv
    if not (names_run and role_ok):
        what = "training process" if process.trainer else "supervisor"
        return (
            f"process {process.pid} is not ftplan's {what} of this run (its command line is "
            f"{' '.join(argv)[:120]!r})"
        )
    if process.start_ticks is not None:
        ticks = start_ticks(process.pid)
        if ticks is not None and ticks != process.start_ticks:
            return f"process {process.pid} started after the run did (its pid was reused)"
    if process.token is not None and has_token(process.pid, process.token) is False:
        return f"process {process.pid} does not hold the run's token"
    return None


@contextlib.contextmanager
def _pidfd(pid: int) -> Iterator[int | None]:
    """A pidfd for ``pid`` (Linux 5.3+), or None where there is none."""
    opener = getattr(os, "pidfd_open", None)
    fd: int | None = None
    if opener is not None:
        try:
            fd = opener(pid)
        except ProcessLookupError:
            raise
        except OSError:
            fd = None  # an older kernel: fall back to the pid
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def signal_run_process(process: RunProcess, signum: int = signal.SIGTERM) -> str | None:
    """Send ``signum`` to the run's process after :func:`process_problem` found it to be that
    process; the reason it was not sent otherwise (None: sent).

    Raises:
        ProcessLookupError: The process ended before the signal.
    """
    with _pidfd(process.pid) as fd:
        problem = process_problem(process)
        if problem is not None:
            return problem
        if fd is not None and hasattr(signal, "pidfd_send_signal"):
            signal.pidfd_send_signal(fd, signum)
        else:
            os.kill(process.pid, signum)
    return None
