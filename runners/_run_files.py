"""A local run's files as ``ftplan status`` and ``ftplan logs`` read them: the file names in a
run folder, ``status.json`` (validated, written atomically), the log read a piece at a time, the
progress line from the metrics tail, and the state of a run whose supervisor is gone. Used by
:mod:`runners.local`, its supervisor and the SkyPilot follower.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog import (
    DataError,
    atomic_write_text,
    loads_json,
    open_regular,
    pid_alive,
    printable,
    read_json_file,
)
from runners._process import RunProcess, process_problem
from runners._types import RunState

STATUS_FILE = "status.json"
LOG_FILE = "train.log"
SPEC_FILE = "launch.json"
COMMAND_FILE = "command.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"  # written by runners.train next to metrics.jsonl
ACCELERATE_CONFIG_FILE = "accelerate_config.yaml"
OUTPUT_DIR = "output"
#: Most of a metrics.jsonl read for the progress line (its tail holds the newest step).
MAX_METRICS_TAIL_BYTES = 1024 * 1024


#: Most of a run's log read at once (``ftplan logs``): a log is printed a piece at a time, so a
#: multi-GB log, or one that is a single line, never sits in memory whole.
MAX_LOG_READ_BYTES = 4 * 1024 * 1024


def read_log(path: Path, position: int) -> tuple[list[str], int, bool]:
    """``(lines, next position, more to read)`` of a run's log from byte ``position``, at most
    :data:`MAX_LOG_READ_BYTES` at a time, through the bounded reader: a log that is a FIFO,
    a device or missing reads as empty."""
    try:
        with open_regular(path, what="run log") as handle:
            handle.seek(position)
            chunk = handle.read(MAX_LOG_READ_BYTES)
    except (OSError, DataError):
        return [], position, False
    text = chunk.decode("utf-8", errors="replace")
    return text.splitlines(), position + len(chunk), len(chunk) == MAX_LOG_READ_BYTES


def write_status(run_dir: Path, data: dict[str, Any]) -> None:
    """Atomically write ``status.json`` in ``run_dir``."""
    atomic_write_text(run_dir / STATUS_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusFile:
    """The fields of a run's ``status.json`` that ``ftplan status`` shows, validated."""

    state: RunState
    detail: str = ""
    started_at: str = ""
    ended_at: str = ""
    pid: int | None = None
    supervisor_pid: int | None = None
    supervisor_start_ticks: int | None = None
    pid_start_ticks: int | None = None
    run_token: str | None = None

    def supervisor(self, run_dir: Path) -> RunProcess | None:
        """What the file says the run's supervisor is (to check before believing it)."""
        if self.supervisor_pid is None:
            return None
        return RunProcess(
            pid=self.supervisor_pid,
            run_dir=run_dir,
            token=self.run_token,
            start_ticks=self.supervisor_start_ticks,
        )

    def trainer(self, run_dir: Path) -> RunProcess | None:
        """What the file says the run's training process is (to check before believing it)."""
        if self.pid is None:
            return None
        return RunProcess(
            pid=self.pid,
            run_dir=run_dir,
            token=self.run_token,
            start_ticks=self.pid_start_ticks,
            trainer=True,
        )


def is_run_process(process: RunProcess | None) -> bool:
    """Whether ``process`` runs and is the run's own (not a pid reused since, or edited in)."""
    return (
        process is not None and process_running(process.pid) and process_problem(process) is None
    )


def read_status(path: Path) -> StatusFile:
    """Read and validate a ``status.json`` (bounded, regular file, plain JSON).

    Raises:
        DataError: The file is empty, truncated, not JSON, or its fields have the wrong shape.
    """
    fix = "the run's supervisor writes it; a hand-edited or truncated file cannot be read"
    data = read_json_file(path, what="run status", max_bytes=1024 * 1024)
    if not isinstance(data, dict):
        raise DataError(f"run status {str(path)!r} is not a JSON object; {fix}")
    try:
        state = RunState(str(data.get("state")))
    except ValueError:
        allowed = ", ".join(s.value for s in RunState)
        raise DataError(
            f"run status {str(path)!r}: state {data.get('state')!r} is not one of {allowed}; {fix}"
        ) from None

    def text(key: str) -> str:
        value = data.get(key, "")
        if value is None:
            return ""
        if not isinstance(value, str):
            raise DataError(f"run status {str(path)!r}: {key} must be text, got {value!r}")
        return printable(value[:2000])

    def pid(key: str) -> int | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise DataError(f"run status {str(path)!r}: {key} must be a process id, got {value!r}")
        return value

    def ticks(key: str) -> int | None:
        value = data.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise DataError(f"run status {str(path)!r}: {key} must be a count")
        return value

    token = data.get("run_token")
    if token is not None and not (isinstance(token, str) and _TOKEN.fullmatch(token)):
        raise DataError(f"run status {str(path)!r}: run_token is not a token ftplan writes")
    return StatusFile(
        state=state,
        detail=text("detail"),
        started_at=text("started_at"),
        ended_at=text("ended_at"),
        pid=pid("pid"),
        supervisor_pid=pid("supervisor_pid"),
        supervisor_start_ticks=ticks("supervisor_start_ticks"),
        pid_start_ticks=ticks("pid_start_ticks"),
        run_token=token,
    )


_TOKEN = re.compile(r"[0-9a-f]{16,64}")


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie waiting to be reaped has)."""
    if not pid_alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True  # no /proc (macOS): existing is all we can tell
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def recorded_data_digest(run_dir: Path) -> str | None:
    """The SHA-256 of the data a run was launched with (``command.json``), if recorded."""
    try:
        record = read_json_file(run_dir / COMMAND_FILE, what="run command", max_bytes=1024**2)
    except (OSError, DataError):
        return None
    digest = record.get("data_sha256") if isinstance(record, dict) else None
    return digest if isinstance(digest, str) else None


def run_state_without_supervisor(
    data: StatusFile, metrics: Path, *, run_dir: Path
) -> tuple[RunState, str]:
    """State of a run whose supervisor is gone before it recorded an exit: the training
    process may still run (it is followed, and ``stop`` signals it directly), else its own
    metrics tell how it ended."""
    if is_run_process(data.trainer(run_dir)):
        return RunState.RUNNING, (
            f"its supervisor is gone; the training process (pid {data.pid}) still runs"
        )
    last = _last_event(metrics)
    if last is not None and last.get("event") == "summary":
        return RunState.SUCCEEDED, "finished (its supervisor was gone: no exit code recorded)"
    if last is not None and last.get("event") == "stopped":
        return RunState.STOPPED, f"stopped after step {last.get('step')}; resume with --resume"
    if last is not None and last.get("event") == "failed":
        return RunState.FAILED, f"{last.get('reason')} at step {last.get('step')}"
    return RunState.FAILED, "the training process is gone (no exit recorded)"


def _tail_records(metrics: Path) -> list[dict[str, Any]]:
    """The JSON objects among the last :data:`MAX_METRICS_TAIL_BYTES` of a metrics file."""
    try:
        with open_regular(metrics, what="metrics file") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - MAX_METRICS_TAIL_BYTES))
            tail = handle.read(MAX_METRICS_TAIL_BYTES).decode("utf-8", errors="replace")
    except (OSError, DataError):
        return []
    records = []
    for line in tail.splitlines():
        try:
            record = loads_json(line, what="metrics line")
        except DataError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _last_event(metrics: Path) -> dict[str, Any] | None:
    records = _tail_records(metrics)
    return records[-1] if records else None


def progress_line(metrics: Path) -> str:
    """``step N/M, loss L`` from the newest metrics lines, or ``""``.

    Only the file's last :data:`MAX_METRICS_TAIL_BYTES` are read; lines that are not JSON
    objects, or lack a step, are skipped (the trainer may be mid-write); a step whose loss was
    not finite shows as ``n/a``.
    """
    total: object = None
    last: tuple[int, float | None] | None = None
    for record in _tail_records(metrics):
        if record.get("event") == "start":
            total = record.get("total_steps")
        elif record.get("event") == "step":
            step, loss = record.get("step"), record.get("loss")
            if isinstance(step, int) and not isinstance(step, bool):
                finite = isinstance(loss, int | float) and math.isfinite(loss)
                last = (step, float(loss) if finite else None)  # type: ignore[arg-type]
    if last is None:
        return ""
    of = f"/{total}" if isinstance(total, int) and not isinstance(total, bool) else ""
    loss_text = "n/a" if last[1] is None else f"{last[1]:.4f}"
    return f"step {last[0]}{of}, loss {loss_text}"
