"""Exit codes of the CLI: Ctrl-C is 130 with no traceback and no half-written report; a bug is 3
with a crash log holding the (secret-masked) traceback, never passed off as bad input (2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import planner.cli.recommend as recommend_cli
from planner.cli import EXIT_INTERNAL, EXIT_INTERRUPTED, main

REPO = Path(__file__).resolve().parents[2]
ARGS = ["recommend", "--model", "llama2-7b", "--budget", "200", "--out", "r", "--quiet"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder; ``home / "cache"`` is the test's ftplan cache (crash logs go there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _raise(exc: BaseException) -> object:
    def fail(*_args: object, **_kwargs: object) -> object:
        raise exc

    return fail


def test_ctrl_c_exits_130_without_traceback_or_report(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recommend_cli, "_plan", _raise(KeyboardInterrupt()))
    result = CliRunner().invoke(main, ARGS)
    assert result.exit_code == EXIT_INTERRUPTED
    assert "Traceback" not in result.output and "interrupted" in result.stderr
    assert not (home / "r").exists()


@pytest.mark.parametrize(
    "bug", [ZeroDivisionError("float division by zero"), ValueError("an internal invariant")]
)
def test_a_bug_is_exit_3_with_a_crash_log(
    home: Path, monkeypatch: pytest.MonkeyPatch, bug: Exception
) -> None:
    monkeypatch.setattr(recommend_cli, "_plan", _raise(bug))
    result = CliRunner().invoke(main, [*ARGS, "--storage", "sqlite:///s.db"])
    assert result.exit_code == EXIT_INTERNAL, result.output
    assert result.stderr.startswith("internal error: ") and "Traceback" not in result.stderr
    logs = list((home / "cache" / "crashes").glob("ftplan-crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in result.stderr
    text = logs[0].read_text()
    assert "Traceback" in text and type(bug).__name__ in text


def test_crash_logs_mask_credentials(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        recommend_cli, "_plan", _raise(RuntimeError("postgresql://me:hunter2@db/x?token=abc"))
    )
    result = CliRunner().invoke(main, ARGS)
    assert result.exit_code == EXIT_INTERNAL
    log = next((home / "cache" / "crashes").glob("*.log")).read_text()
    assert "hunter2" not in log + result.stderr and "token=abc" not in log + result.stderr


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_real_sigint_exits_130(home: Path) -> None:
    """SIGINT delivered to a running process (as Ctrl-C does), not a simulated exception."""
    script = (
        "import sys, time\n"
        "import planner.cli.recommend as r\n"
        "def slow(*a, **k):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(120)\n"
        "r._plan = slow\n"
        "from planner.cli import main\n"
        f"sys.argv = ['ftplan', *{ARGS!r}]\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A test run started in the background ('pytest &') hands its children an ignored
        # SIGINT, and Python keeps it ignored: give the child the terminal's default.
        preexec_fn=_default_sigint,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert not (home / "r").exists()


_CTRL_C_WHILE_LOADING = """
import os, signal, sys
from importlib.abc import MetaPathFinder


class CtrlC(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the CLI is still loading
        return None


sys.meta_path.insert(0, CtrlC())
sys.argv = ["ftplan", "catalog", "gpus"]
from planner._entry import main

main()
"""


@pytest.mark.parametrize("module", ["planner.cli", "click", "planner.cli.recommend", "optuna"])
def test_ctrl_c_while_the_cli_loads_exits_130_without_traceback(home: Path, module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_LOADING.format(module=module)],
        cwd=home,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        preexec_fn=_default_sigint,
        timeout=120,
        check=False,
    )
    if module == "optuna" and proc.returncode == 0:
        return  # 'catalog gpus' never loads optuna: nothing was interrupted
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted" in proc.stderr


def test_the_ftplan_command_starts_in_the_entry_that_catches_ctrl_c() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ftplan"] == "planner._entry:main"
    # And loading that entry loads nothing of the CLI yet (so it is running within moments).
    code = (
        "import sys, planner._entry\n"
        "print(sorted(m for m in sys.modules if m.startswith(('planner.', 'click', 'catalog'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "['planner._entry']"
