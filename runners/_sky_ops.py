"""SkyPilot runs after launch: the follower started for an on-demand run, and what ``status``
reads when SkyPilot answers (a managed job's queue, a cluster's job queue), when ftplan's
follower recorded how the run ended (the cluster may be gone), and when SkyPilot cannot answer
(its jobs controller or API server down): the last state ftplan saw, said so. ``sky`` is passed
in by the runner (runners/skypilot.py).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from runners._run_files import LOG_FILE, OUTPUT_DIR, SUMMARY_FILE, process_running
from runners._sky_follow import field_of, job_state, status_name
from runners._types import RunState, RunStatus, Target

#: SkyPilot managed-job and job states (sky.jobs.ManagedJobStatus, sky.JobStatus) -> ftplan's.
STATES: dict[str, RunState] = {
    "PENDING": RunState.PENDING,
    "SUBMITTED": RunState.PENDING,
    "STARTING": RunState.PENDING,
    "INIT": RunState.PENDING,
    "SETTING_UP": RunState.PENDING,
    "RUNNING": RunState.RUNNING,
    "RECOVERING": RunState.RUNNING,
    "CANCELLING": RunState.RUNNING,
    "SUCCEEDED": RunState.SUCCEEDED,
    "CANCELLED": RunState.STOPPED,
    "FAILED": RunState.FAILED,
    "FAILED_SETUP": RunState.FAILED,
    "FAILED_PRECHECKS": RunState.FAILED,
    "FAILED_NO_RESOURCE": RunState.FAILED,
    "FAILED_CONTROLLER": RunState.FAILED,
    "FAILED_DRIVER": RunState.FAILED,
}

# Minutes an on-demand cluster may sit idle after its job before SkyPilot tears it down even
# without ftplan's follower (which takes it down as soon as the output is safe).
AUTODOWN_IDLE_MINUTES = 15


def spawn_follower(run_dir: Path) -> int:
    """Start ``python -m runners._sky_follow RUN_DIR`` detached (it survives the launching
    terminal), its own output in ``follower.log``; returns its pid."""
    code_root = str(Path(__file__).resolve().parent.parent)
    with (run_dir / "follower.log").open("ab") as log:
        child = subprocess.Popen(  # noqa: S603 - argv built here, no shell
            [sys.executable, "-m", "runners._sky_follow", str(run_dir)],
            cwd=str(run_dir),
            env={**os.environ, "PYTHONPATH": code_root},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return child.pid


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def recorded_outcome(record: dict[str, Any], run_id: str, run_dir: Path) -> RunStatus | None:
    """How the run ended, as the follower recorded it (None: not recorded yet)."""
    final = record.get("final")
    if not isinstance(final, dict):
        return None
    try:
        state = RunState(str(final.get("state")))
    except ValueError:
        state = RunState.UNKNOWN
    summary = run_dir / OUTPUT_DIR / SUMMARY_FILE
    return RunStatus(
        run_id=run_id,
        target=Target.SKYPILOT,
        state=state,
        detail=str(final.get("detail", ""))[:2000],
        ended_at=str(final.get("ended_at", "")),
        log_path=str(run_dir / LOG_FILE),
        summary_path=str(summary) if summary.is_file() else "",
    )


def managed_job_state(sky: Any, run_id: str) -> tuple[RunState, str]:
    jobs = sky.get(sky.jobs.queue(refresh=False, skip_finished=False))
    mine = [j for j in jobs if field_of(j, "job_name") == run_id]
    if not mine:
        return RunState.PENDING, "not in the managed-job queue yet"
    job = max(mine, key=lambda j: field_of(j, "job_id") or 0)
    state = status_name(field_of(job, "status"))
    reason = field_of(job, "failure_reason")
    detail = f"managed job {field_of(job, 'job_id')}: {state}" + (f" ({reason})" if reason else "")
    return STATES.get(state, RunState.RUNNING), detail


def cluster_state(sky: Any, run_id: str, record: dict[str, Any]) -> tuple[RunState, str]:
    state = job_state(sky, run_id)
    if state is None:
        pid = record.get("follower_pid")
        following = isinstance(pid, int) and process_running(pid)
        return RunState.UNKNOWN, (
            f"cluster {run_id} is down and no outcome was recorded"
            + (
                " yet (ftplan's follower is finishing)"
                if following
                else " (ftplan's follower was not running when the job ended)"
            )
        )
    detail = f"cluster {run_id}: job {state}"
    if not record.get("bucket"):
        detail += "; the output is copied back to this machine when the job ends"
    return STATES.get(state, RunState.RUNNING), detail


def last_seen(record: dict[str, Any], run_id: str, *, why: str) -> RunStatus:
    """The last state ftplan saw, when SkyPilot cannot answer now."""
    seen = record.get("last_seen")
    fix = (
        "'sky jobs queue --refresh' starts the jobs controller again"
        if record.get("kind") == "managed-job"
        else "'sky status' says whether the cluster is up"
    )
    if isinstance(seen, dict):
        try:
            state = RunState(str(seen.get("state")))
        except ValueError:
            state = RunState.UNKNOWN
        detail = (
            f"SkyPilot cannot answer ({why}); as last seen at {seen.get('at')}: "
            f"{seen.get('detail')}"
        )
    else:
        state, detail = RunState.UNKNOWN, f"SkyPilot cannot answer ({why})"
    return RunStatus(run_id=run_id, target=Target.SKYPILOT, state=state, detail=f"{detail}; {fix}")
