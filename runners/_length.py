"""How long a run will take and cost, from the data it really gets: the local dataset's tokens
counted with the run's own tokenizer, else ``--tokens``, else the plan's assumption (and which
one it was). Pure arithmetic here; counting lives in runners.data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from catalog import DataError
from runners._types import BYTE_TOKENIZER, LaunchSpec

# Above this relative difference from the plan's figures, launch says so.
NOTE_FRACTION = 0.10


@dataclass(frozen=True, slots=True, kw_only=True)
class RunLength:
    """Tokens, optimizer steps, hours and USD of one run.

    Attributes:
        dataset_tokens: Tokens per epoch.
        source: Where ``dataset_tokens`` came from, in words.
        steps: Optimizer steps the run takes.
        train_hours: Training time, h.
        hours: Wall-clock time including start-up and spot overhead, h.
        usd: ``hours`` × the offer's USD/h.
    """

    dataset_tokens: int
    source: str
    steps: int
    train_hours: float
    hours: float
    usd: float


def run_length(
    *,
    dataset_tokens: int,
    source: str,
    epochs: float,
    tokens_per_step: int,
    tokens_per_s: float,
    max_steps: int | None,
    startup_hours: float,
    overhead_fraction: float,
    usd_per_hour: float,
    eval_hours: float = 0.0,
) -> RunLength:
    """Steps = ⌈tokens × epochs ÷ tokens per step⌉ (capped by ``max_steps``); train hours =
    steps × tokens per step ÷ tokens/s ÷ 3600; hours = train × (1 + overhead) + eval passes +
    start-up.

    Raises:
        DataError: If a rate or size is not positive (a plan edited by hand).
    """
    if tokens_per_step <= 0 or not tokens_per_s > 0:
        raise DataError(
            f"tokens_per_step ({tokens_per_step}) and tokens_per_s ({tokens_per_s}) must be > 0"
        )
    steps = max(1, math.ceil(dataset_tokens * epochs / tokens_per_step))
    if max_steps is not None:
        steps = min(steps, max_steps)
    train_hours = steps * tokens_per_step / tokens_per_s / 3600
    hours = train_hours * (1 + overhead_fraction) + eval_hours + startup_hours
    return RunLength(
        dataset_tokens=dataset_tokens,
        source=source,
        steps=steps,
        train_hours=train_hours,
        hours=hours,
        usd=hours * usd_per_hour,
    )


def difference_note(planned: RunLength, actual: RunLength) -> str | None:
    """One line when the real run length differs from the plan's by more than
    :data:`NOTE_FRACTION`; None otherwise."""
    if planned.dataset_tokens <= 0:
        return None
    ratio = actual.dataset_tokens / planned.dataset_tokens
    if abs(ratio - 1) <= NOTE_FRACTION:
        return None
    return (
        f"the data holds {actual.dataset_tokens:,} tokens per epoch ({actual.source}), "
        f"{ratio:.2f}× the plan's {planned.dataset_tokens:,}: {actual.steps:,} steps, "
        f"{actual.hours:.2f} h, {actual.usd:.2f} USD instead of {planned.steps:,} steps, "
        f"{planned.hours:.2f} h, {planned.usd:.2f} USD"
    )


def dataset_tokens(spec: LaunchSpec, *, data: str, tokens: int | None) -> tuple[int, str] | None:
    """Tokens per epoch of the run's data and where the figure comes from: ``tokens`` when
    given, else a local file counted with the run's own tokenizer (local files only, no
    download); None when neither applies (``s3://`` data, or a tokenizer not on this machine).

    Raises:
        DataFormatError: On a malformed line of a local file.
    """
    if tokens is not None:
        return tokens, "given with --tokens"
    if data.startswith("s3://") or not Path(data).is_file():
        return None
    from runners.data import ByteTokenizer, count_tokens, load_tokenizer

    forced = spec.tokenizer == BYTE_TOKENIZER
    tokenizer = load_tokenizer(
        spec.weights_source,
        vocab_size=spec.model.vocab_size,
        force_byte=forced,
        allow_download=False,
        log=lambda _record: None,
    )
    if isinstance(tokenizer, ByteTokenizer) and not (forced or spec.random_init):
        return None  # the real tokenizer is not here; the run will load it
    return count_tokens(data, tokenizer), f"counted in {data} with the {tokenizer.name} tokenizer"
