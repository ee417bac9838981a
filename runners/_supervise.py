"""Supervisor of one local run: starts the training command with its output in ``train.log``,
records the pid, and records the exit (succeeded / failed with the return code) in
``status.json``. Started detached by :class:`runners.local.LocalRunner`.

Usage: ``python -m runners._supervise RUN_DIR -- COMMAND...``
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from catalog import DataError, open_regular, read_json_file
from runners._process import start_ticks
from runners._run_files import LOG_FILE, STATUS_FILE, write_status
from runners._types import RunState
from runners.local import _now


def supervise(run_dir: Path, command: list[str]) -> int:
    """Run ``command`` to completion, keeping ``status.json`` current; returns its exit code."""
    status = read_json_file(run_dir / STATUS_FILE, what="run status", max_bytes=1024 * 1024)
    with (run_dir / LOG_FILE).open("ab") as log:
        child = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,  # noqa: S603
            stdin=subprocess.DEVNULL,
        )

        def forward(signum: int, _frame: FrameType | None) -> None:
            child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        status.update(
            {
                "state": RunState.RUNNING.value,
                "pid": child.pid,
                "supervisor_pid": os.getpid(),
                # With the run's token (in this process's environment), what 'ftplan stop'
                # checks before it signals this pid.
                "supervisor_start_ticks": start_ticks(os.getpid()),
                "pid_start_ticks": start_ticks(child.pid),
            }
        )
        write_status(run_dir, status)
        code = child.wait()
    if code == 0:
        state, detail = RunState.SUCCEEDED, ""
    elif code < 0 and -code in (signal.SIGTERM, signal.SIGINT):
        # Ended by a stop request before it could install its handlers (while loading).
        state, detail = RunState.STOPPED, f"stopped by signal {-code} before its first checkpoint"
    elif code < 0:
        # SIGKILL is what the kernel's out-of-memory killer sends: a failure, not a stop.
        why = " (SIGKILL: the out-of-memory killer sends it)" if -code == signal.SIGKILL else ""
        state = RunState.FAILED
        detail = f"killed by signal {-code}{why}; see {run_dir / LOG_FILE}"
    elif code - 128 in (signal.SIGTERM, signal.SIGINT):
        # runners.train saved a checkpoint on the signal and exited 128 + signum.
        state = RunState.STOPPED
        detail = f"stopped by signal {code - 128} after a checkpoint; resume with --resume"
    else:
        last = last_log_line(run_dir / LOG_FILE)
        state = RunState.FAILED
        detail = f"exit code {code}: {last}" if last else f"exit code {code}"
        detail += f"; see {run_dir / LOG_FILE}"
    status.update({"state": state.value, "returncode": code, "ended_at": _now(), "detail": detail})
    write_status(run_dir, status)
    return code


def last_log_line(path: Path, *, tail_bytes: int = 16_384) -> str:
    """The last non-empty line of a log (the error of a failed run), at most 300 characters."""
    try:
        with open_regular(path, what="run log") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - tail_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except (OSError, DataError):
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m runners._supervise RUN_DIR -- COMMAND...", file=sys.stderr)
        return 2
    return supervise(Path(argv[0]), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
