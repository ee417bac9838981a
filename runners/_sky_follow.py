"""Follower of one on-demand SkyPilot run: streams the job's log into ``runs/<name>/train.log``
until the job ends, records how it ended in the run's record (so ``ftplan status`` can say
after the cluster is gone), copies the output back when no bucket holds it, then takes the
cluster down. Started detached by :class:`runners.skypilot.SkyPilotRunner`, like the local
runs' supervisor; SkyPilot's autodown (``idle_minutes_to_autostop`` with ``down``) tears the
cluster down even when the follower is gone.

Usage: ``python -m runners._sky_follow RUN_DIR``
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from catalog import atomic_write_text, read_json_file
from runners._run_files import LOG_FILE, OUTPUT_DIR
from runners._types import RunState

RECORD_FILE = "skypilot.json"  # the run's record in runs/RUN_ID
# Where the task keeps its files on the node (runners.skypilot lays out the rest under the root).
REMOTE_ROOT = "/ftplan"
REMOTE_OUTPUT_DIR = f"{REMOTE_ROOT}/output"
POLL_S = 30.0
COPY_ATTEMPTS = 3

#: SkyPilot job states (sky.JobStatus) -> ftplan's, for a job that has ended.
ENDED_STATES: dict[str, RunState] = {
    "SUCCEEDED": RunState.SUCCEEDED,
    "CANCELLED": RunState.STOPPED,
    "FAILED": RunState.FAILED,
    "FAILED_SETUP": RunState.FAILED,
    "FAILED_DRIVER": RunState.FAILED,
}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def read_record(run_dir: Path) -> dict[str, Any]:
    """The run's record (``skypilot.json``), a JSON object ftplan wrote."""
    record = read_json_file(run_dir / RECORD_FILE, what="SkyPilot run record", max_bytes=1024**2)
    return dict(record) if isinstance(record, dict) else {}


def update_record(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the run's record (atomically) and return it."""
    record = read_record(run_dir)
    record.update(fields)
    atomic_write_text(run_dir / RECORD_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def field_of(record: Any, key: str) -> Any:
    """A field of a SkyPilot response (a dict in older releases, a model in newer ones)."""
    if isinstance(record, Mapping):
        return record.get(key)
    return getattr(record, key, None)


def status_name(status: Any) -> str:
    """``SUCCEEDED`` from ``sky.JobStatus.SUCCEEDED``, a string, or None (``""``)."""
    return str(getattr(status, "value", status or "")).upper()


def job_state(sky: Any, name: str) -> str | None:
    """The newest job's SkyPilot state on cluster ``name``; None when the cluster is gone."""
    clusters = sky.get(sky.status(cluster_names=[name]))
    if not clusters:
        return None
    jobs = sky.get(sky.queue(name, skip_finished=False))
    if not jobs:
        return "INIT"
    job = max(jobs, key=lambda j: field_of(j, "job_id") or 0)
    return status_name(field_of(job, "status"))


def copy_output(name: str, dest: Path, *, run: Callable[..., Any] = subprocess.run) -> str | None:
    """rsync the head node's output folder to ``dest`` over the SSH alias SkyPilot writes for
    every cluster (``ssh NAME``); None when it worked, else the last error line."""
    rsync = shutil.which("rsync")
    if rsync is None:
        return "rsync is not installed on this machine"
    dest.mkdir(parents=True, exist_ok=True)
    error = ""
    for attempt in range(COPY_ATTEMPTS):
        done = run(
            [rsync, "-a", "--partial", "-e", "ssh", f"{name}:{REMOTE_OUTPUT_DIR}/", f"{dest}/"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return None
        lines = (done.stderr or "").strip().splitlines()
        error = lines[-1] if lines else f"rsync exit code {done.returncode}"
        time.sleep(5 * (attempt + 1))
    return error


def follow(
    run_dir: Path,
    *,
    sky: Any,
    copy: Callable[[str, Path], str | None] = copy_output,
    poll_s: float = POLL_S,
) -> dict[str, Any]:
    """Follow the run in ``run_dir`` to its end; returns the outcome it recorded.

    The log streams into ``train.log`` (SkyPilot's ``tail_logs`` with ``follow``); then the
    job's final state is read from the cluster's queue (polled while the job runs, when the
    stream broke off). Without a bucket the output is copied back; the cluster goes down
    unless that copy failed (then SkyPilot's autodown takes it, and the outcome says how to
    copy by hand).
    """
    record = read_record(run_dir)
    name = str(record["run_id"])
    with (run_dir / LOG_FILE).open("a", encoding="utf-8") as log:
        try:
            sky.tail_logs(name, job_id=None, follow=True, output_stream=log)
        except Exception as exc:  # the stream is a convenience: the queue decides
            log.write(f"[ftplan] the log stream ended: {type(exc).__name__}: {exc}\n")
    state = None
    while True:
        try:
            state = job_state(sky, name)
        except Exception as exc:  # API server or cluster briefly unreachable: try again
            state = f"unreachable ({type(exc).__name__})"
        if state is None or state in ENDED_STATES:
            break
        time.sleep(poll_s)
    outcome = ENDED_STATES.get(state or "", RunState.UNKNOWN)
    detail = f"cluster {name}: job {state}" if state else f"cluster {name} went down early"
    output = record.get("output") or ""
    if not record.get("bucket") and state is not None:
        dest = run_dir / OUTPUT_DIR
        problem = copy(name, dest)
        if problem is None:
            output = str(dest)
            detail += f"; output copied to {dest}"
        else:
            detail += (
                f"; copying the output back failed ({problem}): copy it with 'rsync -a "
                f"{name}:{REMOTE_OUTPUT_DIR}/ {dest}/' before SkyPilot's autodown takes the "
                "cluster"
            )
            return update_record(
                run_dir, final={"state": outcome.value, "detail": detail, "ended_at": _now()}
            )["final"]
    if state is not None:
        try:
            sky.stream_and_get(sky.down(name))
        except Exception as exc:  # autodown still takes it
            detail += f"; taking the cluster down failed ({type(exc).__name__}), autodown will"
    final = {"state": outcome.value, "detail": detail, "ended_at": _now(), "output": output}
    return update_record(run_dir, final=final)["final"]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m runners._sky_follow RUN_DIR", file=sys.stderr)
        return 2
    import sky  # deferred: the skypilot extra

    follow(Path(argv[0]), sky=sky)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
