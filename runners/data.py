"""Training data: read a JSONL dataset, tokenize it, pack it into fixed-length blocks, and order
the blocks deterministically so that a resumed run sees exactly the batches it has not seen.

Accepted line shapes (one JSON object per line; blank lines are skipped):

* ``{"text": "..."}``
* ``{"prompt": "...", "completion": "..."}``: the two strings are concatenated as they are
  (put any separator, e.g. a leading space or newline, in your data).
* ``{"messages": [{"role": "user", "content": "..."}, ...]}``: rendered with the tokenizer's chat
  template when it has one, else as ``role: content`` lines.

The loss covers the whole packed sequence (DESIGN.md: causal LM cross-entropy over the full
sequence), which is what ftplan's memory and time figures assume.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from catalog import DataError, iter_lines, loads_json


class DataFormatError(DataError):
    """A dataset line that is not JSON or not one of the accepted shapes (names file and line)."""


class Tokenizer(Protocol):
    """The little ftplan needs from a tokenizer."""

    @property
    def name(self) -> str: ...

    @property
    def eos_token_id(self) -> int: ...

    def encode_text(self, text: str) -> list[int]: ...

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str: ...


def _plain_chat(messages: Sequence[dict[str, str]]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


@dataclass(frozen=True, slots=True)
class ByteTokenizer:
    """Offline fallback: token id = UTF-8 byte value modulo ``vocab_size``; end of text = id 0.

    It lets a run work with no tokenizer files (tiny random-init models, air-gapped smoke runs).
    Its ids are valid for any vocabulary of 1+ tokens but mean nothing to a pretrained model, so
    real fine-tunes should load the model's tokenizer.
    """

    vocab_size: int
    name: str = "byte"
    eos_token_id: int = 0

    def encode_text(self, text: str) -> list[int]:
        return [b % self.vocab_size for b in text.encode("utf-8")]

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return _plain_chat(messages)


class HFTokenizer:
    """Adapter over a Hugging Face tokenizer."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self._tok = tokenizer
        self.name = name
        eos = tokenizer.eos_token_id
        self.eos_token_id: int = int(eos) if eos is not None else 0

    def encode_text(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=True)["input_ids"])

    def save_pretrained(self, folder: str) -> None:
        """Write the tokenizer's files next to a saved model (``final/``)."""
        self._tok.save_pretrained(folder)

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        if getattr(self._tok, "chat_template", None):
            return str(self._tok.apply_chat_template(list(messages), tokenize=False))
        return _plain_chat(messages)


def load_tokenizer(
    source: str,
    *,
    vocab_size: int,
    force_byte: bool = False,
    allow_download: bool = True,
    required: bool = False,
    log: Any = print,
) -> Tokenizer:
    """The model's tokenizer from a hub id or local folder, else (random weights only) the
    byte-level fallback.

    Looks in the local files first (works offline); goes to the hub only when
    ``allow_download`` and ``HF_HUB_OFFLINE`` is not set. A local folder is never followed by a
    hub lookup (its name is not a hub id).

    Args:
        source: Hub id or local folder.
        vocab_size: The model's vocabulary size (tokens).
        force_byte: Skip the model's tokenizer and use :class:`ByteTokenizer`.
        allow_download: Whether the hub may be asked when no local copy exists.
        required: Real weights are being trained: a tokenizer that does not load is an error,
            never replaced by another one.
        log: Where to report the fallback.

    Raises:
        ValueError: If ``required`` and the tokenizer does not load (one line: source, reason).
    """
    if force_byte:
        return ByteTokenizer(vocab_size=vocab_size)
    local = Path(source).is_absolute() or Path(source).exists()
    if local and Path(source).is_dir():
        from runners._weights import CONFIG_FILE, check_weights_folder, read_local_config

        # Before transformers opens the folder's files: a FIFO or /dev/zero there would hang
        # it, and a config.json that is not a JSON object would crash it.
        check_weights_folder(source)
        if (Path(source) / CONFIG_FILE).exists():
            read_local_config(source)
    from transformers import AutoTokenizer  # deferred: heavy

    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not allow_download or local
    attempts = [True] if offline else [True, False]
    last_error: Exception | None = None
    for local_only in attempts:
        try:
            tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            return HFTokenizer(tok, name=source)
        except Exception as exc:  # noqa: BLE001 - transformers raises TypeError, KeyError, its
            # own validation errors ... for a malformed folder: all mean "does not load"
            last_error = exc
    reason = str(last_error).strip().splitlines()[0] if last_error and str(last_error) else ""
    if required:
        raise ValueError(
            f"the tokenizer of {source!r} does not load ({reason or 'no tokenizer files'}). To "
            "fix: save it next to the weights (tokenizer.save_pretrained(DIR)); ftplan never "
            "trains real weights with another tokenizer"
        )
    log(
        json.dumps(
            {
                "event": "tokenizer_fallback",
                "source": source,
                "reason": reason,
            }
        )
    )
    return ByteTokenizer(vocab_size=vocab_size)


def sample_problem(record: Any) -> str | None:
    """Why a parsed dataset line is not a sample a run can train on (one of the shapes in the
    module docstring), or None. Pure: ``ftplan recommend`` checks a dataset with it too, so a
    file it plans for is one ``ftplan launch`` takes."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if isinstance(record.get("text"), str):
        return None
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return None
    messages = record.get("messages")
    if isinstance(messages, list) and messages:
        for i, m in enumerate(messages):
            if not (
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
            ):
                return f"messages[{i}] must be an object with string 'role' and 'content'"
        return None
    keys = sorted(str(k) for k in record)[:10]
    return (
        "no usable field; expected 'text', 'prompt'+'completion' or 'messages' (strings), got "
        f"keys {keys}"
    )


def _record_text(record: Any, tokenizer: Tokenizer, where: str) -> str:
    problem = sample_problem(record)
    if problem is not None:
        raise DataFormatError(f"{where}: {problem}")
    if isinstance(record.get("text"), str):
        return str(record["text"])
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return str(record["prompt"]) + str(record["completion"])
    return tokenizer.render_chat(record["messages"])


def iter_texts(path: str | Path, tokenizer: Tokenizer) -> Iterator[str]:
    """Every sample of a JSONL file as one training string, one line at a time (bounded
    memory: lines of at most :data:`catalog.MAX_JSONL_LINE_BYTES`, read through ftplan's
    bounded reader, so a FIFO, ``/dev/zero`` or a one-line 1 GB file is refused, not read).

    Raises:
        FileNotFoundError: If the file does not exist.
        DataFormatError: On the first malformed line (message names file and line): not UTF-8,
            not JSON (NaN, a 5000-digit number, a lone surrogate, deep nesting included), or
            not one of the accepted shapes.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"dataset {str(source)!r} does not exist")
    lines = iter_lines(source, what="dataset")
    while True:
        try:
            item = next(lines, None)
        except DataError as exc:  # not UTF-8, a line too long
            raise DataFormatError(str(exc)) from None
        if item is None:
            return
        number, line = item
        where = f"{source}:{number}"
        try:
            record = loads_json(line, what=where)
        except DataError as exc:
            raise DataFormatError(f"{exc}; each line must be one JSON object") from None
        yield _record_text(record, tokenizer, where)


def read_texts(path: str | Path, tokenizer: Tokenizer) -> list[str]:
    """Every sample of a JSONL file as one training string.

    Raises:
        FileNotFoundError: If the file does not exist.
        DataFormatError: On the first malformed line, or when the file holds no samples.
    """
    texts = list(iter_texts(path, tokenizer))
    if not texts:
        raise DataFormatError(f"{Path(path)}: no samples (the file is empty)")
    return texts


def count_tokens(path: str | Path, tokenizer: Tokenizer) -> int:
    """Tokens the run will train on per epoch: every sample's tokens plus its EOS, counted one
    line at a time.

    Raises:
        FileNotFoundError, DataFormatError: As :func:`iter_texts`, or no samples at all.
    """
    total = sum(len(tokenizer.encode_text(text)) + 1 for text in iter_texts(path, tokenizer))
    if not total:
        raise DataFormatError(f"{Path(path)}: no samples (the file is empty)")
    return total


def find_jsonl(path: str | Path) -> Path:
    """The dataset file: ``path`` itself, or the single ``*.jsonl`` inside a folder (SageMaker
    copies the ``train`` channel into a folder).

    Raises:
        FileNotFoundError: If nothing or more than one candidate is found.
    """
    source = Path(path)
    if source.is_file():
        return source
    if source.is_dir():
        files = sorted(source.rglob("*.jsonl"))
        if len(files) == 1:
            return files[0]
        raise FileNotFoundError(
            f"data folder {str(source)!r} holds {len(files)} .jsonl files; expected exactly one"
        )
    raise FileNotFoundError(f"dataset {str(source)!r} does not exist")


def pack(token_lists: Iterable[list[int]], *, seq_len: int, eos_token_id: int) -> list[list[int]]:
    """Concatenate samples (each followed by EOS) and cut into ``seq_len``-token blocks.

    The incomplete last block is dropped so every step has the planned shape (micro_batch ×
    seq_len tokens), which is what was measured.

    Raises:
        DataFormatError: If the data holds fewer than ``seq_len`` tokens.
    """
    stream: list[int] = []
    for ids in token_lists:
        stream.extend(ids)
        if not stream or stream[-1] != eos_token_id:
            stream.append(eos_token_id)
    blocks = [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    if not blocks:
        raise DataFormatError(
            f"the dataset holds {len(stream)} tokens, fewer than one sequence of seq_len="
            f"{seq_len}; add data or plan a shorter --seq-len"
        )
    return blocks


@dataclass(frozen=True, slots=True)
class BlockSchedule:
    """Which blocks each micro-batch uses: a pure function of (step, micro index, rank).

    Each epoch visits the blocks in a fresh permutation seeded by (seed, epoch); the ranks of a
    data-parallel run take disjoint slices. Because the schedule needs no state, resuming at step
    N replays nothing and skips nothing.
    """

    num_blocks: int
    micro_batch_size: int
    grad_accum_steps: int
    world_size: int
    seed: int

    @property
    def micro_batches_per_epoch(self) -> int:
        """Micro-batches each rank takes per epoch."""
        return self.num_blocks // (self.micro_batch_size * self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch."""
        return self.micro_batches_per_epoch // self.grad_accum_steps

    def total_steps(self, *, epochs: float, max_steps: int | None) -> int:
        """Optimizer steps of the run.

        Raises:
            DataFormatError: If the data is too small for even one optimizer step.
        """
        if self.steps_per_epoch == 0:
            needed = self.micro_batch_size * self.world_size * self.grad_accum_steps
            raise DataFormatError(
                f"the dataset packs into {self.num_blocks} sequences, fewer than the {needed} "
                "one optimizer step needs (micro_batch × GPUs × grad accumulation); add data"
            )
        steps = max(1, round(epochs * self.steps_per_epoch))
        return min(steps, max_steps) if max_steps is not None else steps

    def blocks_for(self, *, step: int, micro: int, rank: int) -> list[int]:
        """Block indices of one micro-batch."""
        global_micro = step * self.grad_accum_steps + micro
        per_epoch = self.steps_per_epoch * self.grad_accum_steps
        epoch, within = divmod(global_micro, per_epoch)
        order = list(range(self.num_blocks))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        start = (within * self.world_size + rank) * self.micro_batch_size
        return order[start : start + self.micro_batch_size]
