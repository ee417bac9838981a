"""Wall-clock time of a whole ``ftplan recommend`` process, Python start-up and imports included.

Runs the command ``--repeat`` times in fresh processes (reports written to a temporary folder)
and prints the minimum and median wall and CPU (user + sys) seconds, next to a bare Python
start-up and ``import optuna`` for scale, and the 1-minute load average (wall time on a shared,
busy machine is inflated by other processes; CPU time is not).

Run: ``.venv/bin/python benchmarks/recommend_time.py [--repeat 5] [-- extra recommend flags]``.
Exits 1 when the median wall time is 2 s or more.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_S = 2.0


def _time(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU (children's user + sys) seconds of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _series(cmd: list[str], repeat: int) -> tuple[list[float], list[float]]:
    runs = [_time(cmd) for _ in range(repeat)]
    return [w for w, _ in runs], [c for _, c in runs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("extra", nargs="*", help="extra flags for ftplan recommend")
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as out:
        command = [
            python,
            "-m",
            "planner",
            "recommend",
            "--model",
            "llama2-7b",
            "--budget",
            "200",
            "--out",
            str(Path(out)),
            *args.extra,
        ]
        _time(command)  # warm the file cache and .pyc files
        rows = {
            "python -c pass": _series([python, "-c", "pass"], args.repeat),
            "python -c 'import optuna'": _series([python, "-c", "import optuna"], args.repeat),
            "ftplan recommend --model llama2-7b --budget 200": _series(command, args.repeat),
        }
    print(f"load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for name, (walls, cpus) in rows.items():
        print(
            f"{name:<52} wall min {min(walls):.3f} s, median {statistics.median(walls):.3f} s"
            f"; CPU min {min(cpus):.3f} s, median {statistics.median(cpus):.3f} s"
        )
    walls = rows["ftplan recommend --model llama2-7b --budget 200"][0]
    median = statistics.median(walls)
    print(
        f"{'PASS' if median < LIMIT_S else 'FAIL'}: median wall {median:.3f} s (limit {LIMIT_S} s)"
    )
    return 0 if median < LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
