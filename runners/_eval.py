"""Held-out evaluation inside a training run: read and pack the eval JSONL like the training data,
split its blocks over the processes, and compute the token-weighted mean cross-entropy.

Every process runs the same number of forward calls (FSDP and ZeRO-3 gather parameters
collectively in each forward), so a process with fewer blocks repeats one with weight 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.data import DataFormatError, Tokenizer, find_jsonl, pack, read_texts


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalMicroBatch:
    """Block indices of one eval forward call; ``weight`` 0 marks a repeat that only keeps the
    processes in step (its loss and tokens are not counted)."""

    indices: tuple[int, ...]
    weight: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalResult:
    """One eval pass, summed over all processes."""

    step: int
    loss: float  # token-weighted mean cross-entropy, nats per token
    tokens: int  # predicted tokens over all eval blocks
    seconds: float  # wall time of the pass (forward calls and the reduction)


def find_eval_jsonl(path: str | Path) -> Path:
    """The eval file: ``path`` itself or the one ``*.jsonl`` in a folder (SageMaker's channel).

    Raises:
        FileNotFoundError: If nothing or more than one candidate is found (names --eval-data).
    """
    try:
        return find_jsonl(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"--eval-data: {exc}. To fix: pass --eval-data with a held-out JSONL file of "
            "'text', 'prompt'/'completion' or 'messages' lines, or leave it out"
        ) from None


def load_eval_blocks(path: Path, tokenizer: Tokenizer, *, seq_len: int) -> list[list[int]]:
    """The eval file read and packed exactly like the training data.

    Raises:
        FileNotFoundError: If the file does not exist.
        DataFormatError: On a malformed line (names file and line), an empty file, or fewer
            tokens than one ``seq_len`` block.
    """
    token_lists = [tokenizer.encode_text(text) for text in read_texts(path, tokenizer)]
    try:
        return pack(token_lists, seq_len=seq_len, eos_token_id=tokenizer.eos_token_id)
    except DataFormatError:
        tokens = sum(len(ids) for ids in token_lists)
        raise DataFormatError(
            f"eval data {str(path)!r} packs into zero blocks: its {tokens} tokens are fewer "
            f"than one sequence of seq_len={seq_len}, so there is nothing to evaluate. To fix: "
            f"add held-out samples (at least {seq_len} tokens in all) or leave out --eval-data"
        ) from None


def eval_micro_batches(
    num_blocks: int, *, rank: int, world_size: int, micro_batch_size: int
) -> list[EvalMicroBatch]:
    """This process's share of the eval blocks (blocks rank, rank + W, ...), in micro-batches.

    Every process gets the same number of micro-batches: the ones past a process's share
    repeat block 0 with weight 0.
    """
    if num_blocks <= 0:
        return []
    own = list(range(rank, num_blocks, world_size))
    most = -(-num_blocks // world_size)  # the largest share, blocks
    calls = -(-most // micro_batch_size)
    batches = [
        EvalMicroBatch(indices=tuple(own[i : i + micro_batch_size]), weight=1)
        for i in range(0, len(own), micro_batch_size)
    ]
    padding = EvalMicroBatch(indices=(0,), weight=0)
    return batches + [padding] * (calls - len(batches))


def evaluate(
    prepared: Any,
    blocks: list[list[int]],
    *,
    step: int,
    micro_batch_size: int,
    device: str,
    accelerator: Any,
    eval_loss: Callable[[Any, Any], tuple[float, int]],
) -> EvalResult:
    """One eval pass over all ``blocks``; every process returns the same result.

    The model is put in eval mode (no dropout) for the pass and back in training mode after.
    """
    import torch

    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    began = time.perf_counter()
    loss_sum = 0.0
    tokens = 0
    prepared.model.eval()
    try:
        for batch in eval_micro_batches(
            len(blocks), rank=rank, world_size=world, micro_batch_size=micro_batch_size
        ):
            ids = torch.tensor([blocks[i] for i in batch.indices], dtype=torch.long, device=device)
            batch_loss, batch_tokens = eval_loss(prepared, ids)
            loss_sum += batch.weight * batch_loss
            tokens += batch.weight * batch_tokens
    finally:
        prepared.model.train()
    totals = torch.tensor([loss_sum, float(tokens)], dtype=torch.float64, device=device)
    if accelerator is not None:
        totals = accelerator.reduce(totals, reduction="sum")
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    total_loss, total_tokens = (float(v) for v in totals.tolist())
    return EvalResult(
        step=step,
        loss=total_loss / total_tokens,
        tokens=round(total_tokens),
        seconds=seconds,
    )


def eval_summary(results: list[EvalResult] | None) -> dict[str, Any] | None:
    """The summary's ``eval`` entry: None without eval data."""
    if results is None:
        return None
    return {
        "evaluations": len(results),
        "first_loss": results[0].loss if results else None,
        "last_loss": results[-1].loss if results else None,
        "tokens_per_eval": results[-1].tokens if results else None,
        "eval_s_total": sum(r.seconds for r in results),
    }
