"""The profile store under concurrent writers: every appended record survives (the folder lock),
and a hostile store file is one DataError, never a traceback or a hang."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from test_store import _record

from catalog import DataError
from profiler.store import ProfileStore, read_records

WRITERS = 3
APPENDS_PER_WRITER = 40


def _writer(path: str, writer: int) -> None:
    store = ProfileStore([])
    for i in range(APPENDS_PER_WRITER):
        store.append(Path(path), [_record(peak=float(writer * 1000 + i))])


def test_three_writers_lose_no_record(tmp_path: Path) -> None:
    path = tmp_path / "profiles.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(path), w)) for w in range(WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    records = read_records(path)
    assert len(records) == WRITERS * APPENDS_PER_WRITER
    peaks = sorted(r.peak_allocated_gib or 0.0 for r in records)
    assert peaks == sorted(float(w * 1000 + i) for w in range(WRITERS) for i in range(40))
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 5000 + "]" * 5000 + "\n", "nests deeper"),
        ('{"model": NaN}\n', "not valid JSON"),
        ("not json\n", "not valid JSON"),
        ("\xff\n", "profile record"),
        ("{}\n", "profile record"),
    ],
)
def test_a_broken_store_line_is_a_data_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "profiles.jsonl"
    path.write_bytes(content.encode("latin-1") if "\xff" in content else content.encode())
    with pytest.raises(DataError, match=message):
        read_records(path)


def test_a_fifo_store_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "profiles.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        read_records(fifo)
