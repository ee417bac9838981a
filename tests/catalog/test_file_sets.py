"""Files written as one unit (the report set) and writes through symbolic links: readers see the
old set or the new one, never a mix, whatever stops the writer between its renames."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from plan_fixtures import make_plan

from catalog import atomic_write_text, write_file_set
from planner.cli import main
from planner.plan_io import write_plan

REPO = Path(__file__).resolve().parents[2]
NAMES = ("r.md", "r.html", "r.json")


def _set(tag: str) -> dict[str, str]:
    return {name: f"{tag} {name}\n" for name in NAMES}


def _tags(folder: Path) -> set[str]:
    return {(folder / name).read_text().split()[0] for name in NAMES if (folder / name).exists()}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@settings(max_examples=30, deadline=None)
@given(fail_at=st.integers(min_value=1, max_value=len(NAMES)), first=st.booleans())
def test_a_failure_between_renames_leaves_the_old_set(fail_at: int, first: bool) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not first:
            write_file_set(folder, _set("old"))
        real = os.replace
        calls = {"n": 0}

        def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
            if Path(dst).name in NAMES:
                calls["n"] += 1
                if calls["n"] == fail_at:
                    raise KeyboardInterrupt
            real(src, dst)

        os.replace = replace  # type: ignore[assignment]
        try:
            with pytest.raises(KeyboardInterrupt):
                write_file_set(folder, _set("new"))
        finally:
            os.replace = real  # type: ignore[assignment]
        assert _tags(folder) == (set() if first else {"old"})
        assert _leftovers(folder) == []


def test_concurrent_writers_of_the_same_names_never_mix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace
    delays = random.Random(0)

    def slow_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        time.sleep(delays.uniform(0, 0.004))  # widen and shuffle the windows between renames
        real(src, dst)

    monkeypatch.setattr(os, "replace", slow_replace)
    for round_ in range(20):
        threads = [
            threading.Thread(target=write_file_set, args=(tmp_path, _set(f"{tag}{round_}")))
            for tag in ("a", "b")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(_tags(tmp_path)) == 1, (round_, _tags(tmp_path))
    assert _leftovers(tmp_path) == []


_KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from catalog import write_file_set
real = os.replace
calls = [0]
def replace(src, dst):
    real(src, dst)
    if Path(dst).name in {names!r}:
        calls[0] += 1
        if calls[0] == {at}:
            os.kill(os.getpid(), {signum})
os.replace = replace
write_file_set(sys.argv[1], {{n: "new " + n + "\\n" for n in {names!r}}})
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL])
@pytest.mark.parametrize("at", [1, 2])
def test_a_signal_between_renames_leaves_one_whole_set(
    tmp_path: Path, signum: int, at: int
) -> None:
    write_file_set(tmp_path, _set("old"))
    script = _KILL_BETWEEN_RENAMES.format(names=NAMES, at=at, signum=int(signum))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler),
        check=False,
    )
    assert proc.returncode != 0
    if signum == signal.SIGKILL:
        # Killed outright between renames: the next write into the folder finishes that set.
        write_file_set(tmp_path, {"other.txt": "x\n"})
        assert _tags(tmp_path) == {"new"}
    else:
        # Held back until the set was in place, then acted on.
        assert _tags(tmp_path) == {"new"}, proc.stderr
        assert "Traceback" not in proc.stderr or signum == signal.SIGINT
    assert _leftovers(tmp_path) == []


def test_writes_through_a_symbolic_link_reach_its_target(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "real.jsonl").write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(store / "real.jsonl")
    written = atomic_write_text(link, "new\n", follow_link=True)
    assert link.is_symlink() and (store / "real.jsonl").read_text() == "new\n"
    assert written == (store / "real.jsonl").resolve()


def test_ftplan_s_own_files_replace_a_planted_link_instead_of_writing_through_it(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "status.json").symlink_to(outside)
    atomic_write_text(run / "status.json", "{}\n")
    assert outside.read_text() == "keep\n" and not (run / "status.json").is_symlink()
    (run / "report.html").symlink_to(outside)
    write_file_set(run, {"report.html": "x", "report.json": "{}"})
    assert outside.read_text() == "keep\n"


def test_a_symbolic_link_loop_is_an_os_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "a", "x", follow_link=True)


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(tmp_path / "cache"))
    write_plan(make_plan(), tmp_path / "plan.json")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("saved.html", ["report", "saved.html"]),
        ("saved.md", ["report", "saved.md", "--format", "md"]),
        ("plan.json", ["report", "plan.json", "--out", "plan.json"]),
        ("plan.json", ["report", "plan.json", "--out", "./sub/../plan.json"]),
        ("plan.json", ["report", "plan.json", "--out", "link.html"]),
        ("plan.json", ["report", "plan.json", "--out", "hard.html"]),
    ],
)
def test_report_never_replaces_the_plan_it_reads(saved: Path, name: str, args: list[str]) -> None:
    (saved / "sub").mkdir()
    for copy in ("saved.html", "saved.md"):
        (saved / copy).write_bytes((saved / "plan.json").read_bytes())
    (saved / "link.html").symlink_to(saved / "plan.json")
    os.link(saved / "plan.json", saved / "hard.html")
    before = (saved / name).read_bytes()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "To fix" in result.stderr
    assert (saved / name).read_bytes() == before


def test_report_out_through_a_symbolic_link_writes_its_target(saved: Path) -> None:
    (saved / "site").mkdir()
    (saved / "site" / "index.html").write_text("old")
    (saved / "out.html").symlink_to(saved / "site" / "index.html")
    result = CliRunner().invoke(main, ["report", "plan.json", "--out", "out.html"])
    assert result.exit_code == 0, result.output
    assert (saved / "out.html").is_symlink()
    assert "<html" in (saved / "site" / "index.html").read_text().lower()


def test_calibrate_never_writes_over_the_measurements_it_reads(saved: Path) -> None:
    reference = REPO / "profiler" / "data" / "reference-h100.jsonl"
    (saved / "ref.jsonl").write_bytes(reference.read_bytes())
    before = (saved / "ref.jsonl").read_bytes()
    result = CliRunner().invoke(
        main, ["calibrate", "--gpu", "h100", "--from", "ref.jsonl", "--out", "ref.jsonl"]
    )
    assert result.exit_code == 2 and "--out" in result.stderr, result.output
    assert (saved / "ref.jsonl").read_bytes() == before
