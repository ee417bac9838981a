"""Dataset size and sample-length distribution of a JSONL file, streamed without a tokenizer.

The one file reader of the planner (used by the CLI). Reads line by line, so memory is bounded by
the number of distinct sample lengths (a histogram), not the file size; an optional callback
reports the bytes read (for a progress bar).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from catalog import MAX_JSONL_LINE_BYTES, DataError, iter_lines, loads_json
from runners.data import sample_problem

# ~4 characters per token for English text with BPE tokenizers (OpenAI's tokenizer guidance;
# Llama/Mistral tokenizers land between 3.5 and 4.5). No tokenizer is loaded.
CHARS_PER_TOKEN = 4.0
#: Longest single dataset line read (one sample); a longer "line" is not a JSONL sample.
MAX_DATASET_LINE_BYTES = MAX_JSONL_LINE_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetStats:
    """Approximate size of a JSONL dataset (chars ÷ 4 tokens) and its sample-length
    distribution: median, 95th percentile and longest sample, tokens (nearest-rank)."""

    path: str
    samples: int
    tokens: int
    longest_sample_tokens: int
    p50_sample_tokens: int = 0
    p95_sample_tokens: int = 0
    histogram: tuple[tuple[int, int], ...] = ()

    def share_longer_than(self, tokens: int) -> float:
        """Fraction of samples with more than ``tokens`` tokens."""
        longer = sum(count for length, count in self.histogram if length > tokens)
        return longer / self.samples if self.samples else 0.0


def percentile(histogram: tuple[tuple[int, int], ...], fraction: float) -> int:
    """Nearest-rank percentile of a sorted (value, count) histogram."""
    total = sum(count for _, count in histogram)
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for value, count in histogram:
        seen += count
        if seen >= rank:
            return value
    return histogram[-1][0] if histogram else 0


def count_dataset(
    path: str | Path,
    *,
    on_progress: Callable[[int], None] | None = None,
    what: str = "dataset",
    size_flag: str = "--tokens",
) -> DatasetStats:
    """Approximate tokens and sample-length distribution of a JSONL dataset (characters ÷ 4).

    Each line is one sample; the characters of every string value in it (any nesting, e.g.
    chat ``messages``) are counted.

    Args:
        path: The ``.jsonl`` file.
        on_progress: Called with the bytes read so far, about every 4 MiB and at the end.
        what: What the file is, for messages (``dataset``, ``eval dataset``).
        size_flag: The flag that gives the size without a file, for messages.

    The file must be a regular file (not a FIFO or ``/dev/zero``); each line is at most
    :data:`MAX_DATASET_LINE_BYTES` and nests at most :data:`catalog.MAX_JSON_DEPTH` deep.

    Raises:
        DataError: If the file is not a regular file, has no text, or a line is not UTF-8 JSON
            (line number given).
        OSError: If the file cannot be opened.
    """
    source = Path(path)
    lengths: Counter[int] = Counter()
    done = reported = 0

    def read(total: int) -> None:
        nonlocal done, reported
        done = total
        if on_progress is not None and done - reported >= 4 << 20:
            on_progress(done)
            reported = done

    lines = iter_lines(source, what=what, max_line_bytes=MAX_DATASET_LINE_BYTES, on_bytes=read)
    for number, line in lines:
        where = f"{what} {str(source)!r} line {number}"
        try:
            record = loads_json(line, what=where)
        except DataError as exc:
            raise DataError(f"{exc}; each line must be one JSON object") from None
        problem = sample_problem(record)  # what 'ftplan launch' refuses, refused here too
        if problem is not None:
            raise DataError(f"{where}: {problem}")
        lengths[math.ceil(_chars(record) / CHARS_PER_TOKEN)] += 1
    if on_progress is not None:
        on_progress(done)
    histogram = tuple(sorted(lengths.items()))
    samples = sum(lengths.values())
    tokens = sum(length * count for length, count in histogram)
    if not samples or not tokens:
        raise DataError(f"{what} {str(source)!r} has no text samples; pass {size_flag} N instead")
    return DatasetStats(
        path=str(source),
        samples=samples,
        tokens=tokens,
        longest_sample_tokens=histogram[-1][0],
        p50_sample_tokens=percentile(histogram, 0.50),
        p95_sample_tokens=percentile(histogram, 0.95),
        histogram=histogram,
    )


def _chars(value: object) -> int:
    """Characters of every string inside ``value`` (iterative: no recursion limit to hit)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total
