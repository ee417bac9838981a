"""Figures other people measured and published, as a reference set ftplan fits on and is judged by.

``profiler/data/published-measurements.jsonl`` (one row per figure; its README says where each
came from) holds peak memory, throughput and maximum-context figures from litgpt, Answer.AI's
fsdp_qlora, torchtune and Unsloth on GPUs other than the H100: A10G, RTX 3090/4090, RTX 6000 Ada,
A100. Each row names its source, the full config in words, the statistic it reports and the
closest ``ftplan estimate`` command, which this module parses into a :class:`TuningConfig`.
Pure: the file is read by :func:`published_measurements`, nothing else touches disk.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler._types import (
    DEFAULT_LORA_RANK,
    DEFAULT_LORA_TARGETS,
    Method,
    OptimizerKind,
    Precision,
    Sharding,
    TuningConfig,
    default_sharding,
)

PUBLISHED_FILE = Path(__file__).resolve().parent / "data" / "published-measurements.jsonl"


class Statistic(enum.Enum):
    """What a published figure is."""

    PEAK_ALLOCATED = "peak_allocated_gib"  # torch.cuda.max_memory_allocated-style
    PEAK_RESERVED = "peak_reserved_gib"  # torch.cuda.max_memory_reserved-style
    TOKENS_PER_S = "tokens_per_s"  # throughput only, no memory figure
    MAX_SEQ_LEN = "max_seq_len"  # the longest sequence a real run reached on the card


class Comparable(enum.Enum):
    """How close the closest ``ftplan estimate`` command is to the published config."""

    YES = "yes"
    ROUGHLY = "roughly"
    NO = "no"


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedMeasurement:
    """One published figure, with the ftplan config that comes closest to it.

    Attributes:
        id: Row id, unique in the file.
        source: Citation (repository and file, or page), with its date.
        source_key: The publisher (``litgpt``, ``answerai``, ``torchtune``, ``unsloth``): the
            unit of leave-one-source-out validation.
        model: Catalog model name.
        gpu: Catalog GPU name (alias resolved by the caller's catalog).
        config: The closest config (micro-batch and sequence per GPU, GPU count, sharding).
        statistic: What ``memory_gib`` is, or a throughput-only or max-context row.
        memory_gib: The published peak memory per GPU, GiB (``None`` where not given).
        tokens_per_s: Published training throughput over all GPUs, tokens/s, where given.
        max_seq_len: For :attr:`Statistic.MAX_SEQ_LEN` rows, the longest sequence reached.
        comparable: How close ``config`` is (``unexpressed_differences`` says which way).
        unexpressed_differences: What the config cannot express and which way it pushes.
        largest_that_fit: ``micro_batch`` or ``seq_len`` where the publisher says the config's
            micro-batch (sequence length) was the largest that fit the card (Answer.AI's 4090
            table "fills up" each card; Unsloth searched the longest context), else None.
    """

    id: str
    source: str
    source_key: str
    model: str
    gpu: str
    config: TuningConfig
    statistic: Statistic
    memory_gib: float | None
    tokens_per_s: float | None
    max_seq_len: int | None
    comparable: Comparable
    unexpressed_differences: str
    largest_that_fit: str | None = None


# The estimate flags a published row's command may use, and how each maps onto a config field.
_VALUE_FLAGS = frozenset(
    {
        "--model",
        "--method",
        "--precision",
        "--rank",
        "--alpha",
        "--targets",
        "--batch",
        "--seq-len",
        "--optimizer",
        "--gpu",
        "--gpu-count",
        "--sharding",
        "--format",
    }
)
_SWITCHES = frozenset({"--grad-checkpointing", "--chunked-loss", "--max-seq-len", "--max-batch"})
# Publishers by the repository their citation starts with.
_SOURCE_KEYS = {
    "Lightning-AI/litgpt": "litgpt",
    "AnswerDotAI/fsdp_qlora": "answerai",
    "pytorch/torchtune": "torchtune",
    "unslothai/unsloth": "unsloth",
}


def parse_estimate_command(command: str) -> tuple[dict[str, str], frozenset[str]]:
    """The flags of an ``ftplan estimate ...`` command line: (values, switches).

    Raises:
        ValueError: If it is not an estimate command or has a flag this parser does not know.
    """
    words = shlex.split(command)
    if words[:2] != ["ftplan", "estimate"]:
        raise ValueError(f"not an 'ftplan estimate' command: {command!r}")
    values: dict[str, str] = {}
    switches: set[str] = set()
    rest = iter(words[2:])
    for word in rest:
        if word in _SWITCHES:
            switches.add(word)
        elif word in _VALUE_FLAGS:
            value = next(rest, None)
            if value is None:
                raise ValueError(f"{word} has no value in {command!r}")
            values[word] = value
        else:
            raise ValueError(f"unknown flag {word!r} in {command!r}")
    return values, frozenset(switches)


def config_of_command(command: str) -> tuple[str, str, TuningConfig]:
    """(model, GPU name as written, config) of an ``ftplan estimate`` command, with the
    command's own defaults: rank 16, alpha 2 × rank, all-linear, batch 1, 2,048 tokens, AdamW,
    one GPU, no sharding on one GPU and DDP (LoRA/QLoRA) or FSDP (full) on several."""
    values, switches = parse_estimate_command(command)
    method = Method(values["--method"])
    gpu_count = int(values.get("--gpu-count", "1"))
    if "--sharding" in values:
        sharding = Sharding(values["--sharding"])
    else:
        sharding = default_sharding(method, gpu_count)
    lora = method.traits.adapters
    rank = int(values.get("--rank", DEFAULT_LORA_RANK)) if lora else None
    config = TuningConfig(
        method=method,
        precision=Precision(values.get("--precision", Precision.BF16_MIXED.value)),
        lora_rank=rank,
        lora_alpha=int(values["--alpha"]) if lora and "--alpha" in values else None,
        lora_targets=values.get("--targets", DEFAULT_LORA_TARGETS) if lora else None,
        micro_batch_size=int(values.get("--batch", "1")),
        seq_len=int(values.get("--seq-len", "2048")),
        grad_checkpointing="--grad-checkpointing" in switches,
        optimizer=OptimizerKind(values.get("--optimizer", OptimizerKind.ADAMW.value)),
        gpu_count=gpu_count,
        sharding=sharding,
        chunked_loss="--chunked-loss" in switches,
    )
    return values["--model"], values.get("--gpu", "h100"), config


def _source_key(source: str) -> str:
    for prefix, key in _SOURCE_KEYS.items():
        if source.startswith(prefix):
            return key
    raise ValueError(
        f"unknown publisher in source {source[:60]!r}; expected one of {sorted(_SOURCE_KEYS)}"
    )


def _row(row: Any, *, resolve_gpu: Any) -> PublishedMeasurement:
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    model, gpu_name, config = config_of_command(row["closest_ftplan_command"])
    if model != row["model"]:
        raise ValueError(f"model {row['model']!r} but the command estimates {model!r}")
    statistic = Statistic(row["statistic"])
    memory = row.get("published_memory_gib")
    tokens_per_s = row.get("published_tokens_per_s")
    max_seq = row.get("published_max_seq_len")
    if statistic is Statistic.MAX_SEQ_LEN:
        if not isinstance(max_seq, int) or max_seq <= 0:
            raise ValueError("a max_seq_len row needs published_max_seq_len > 0")
    elif statistic is Statistic.TOKENS_PER_S:
        if tokens_per_s is None:
            raise ValueError("a tokens_per_s row needs published_tokens_per_s")
    elif not isinstance(memory, int | float) or memory <= 0:
        raise ValueError("published_memory_gib must be > 0")
    if tokens_per_s is not None and not (
        isinstance(tokens_per_s, int | float) and tokens_per_s > 0
    ):
        raise ValueError("published_tokens_per_s must be > 0 or null")
    largest = row.get("largest_that_fit")
    if largest not in (None, "micro_batch", "seq_len"):
        raise ValueError(f"largest_that_fit must be micro_batch, seq_len or null, got {largest!r}")
    return PublishedMeasurement(
        id=str(row["id"]),
        source=str(row["source"]),
        source_key=_source_key(str(row["source"])),
        model=model,
        gpu=resolve_gpu(gpu_name),
        config=config,
        statistic=statistic,
        memory_gib=float(memory) if memory is not None else None,
        tokens_per_s=float(tokens_per_s) if tokens_per_s is not None else None,
        max_seq_len=max_seq,
        comparable=Comparable(row["comparable"]),
        unexpressed_differences=str(row.get("unexpressed_differences", "")),
        largest_that_fit=largest,
    )


def published_measurements(path: Path = PUBLISHED_FILE) -> list[PublishedMeasurement]:
    """Every row of the published reference set, in file order.

    Raises:
        DataError: If the file is unreadable, a row is not JSON, lacks a field or its command
            cannot be parsed (the message names file and line).
    """
    from catalog import DataError, get_gpu, loads_json, read_text_limited

    def resolve_gpu(name: str) -> str:
        return get_gpu(name).name

    rows: list[PublishedMeasurement] = []
    seen: set[str] = set()
    text = read_text_limited(path, what="published measurements", max_bytes=16 * 1024 * 1024)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found = _row(loads_json(line, what=f"{path}:{number}"), resolve_gpu=resolve_gpu)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(
                f"{path}:{number} is not a published measurement ({type(exc).__name__}: {exc})"
            ) from None
        if found.id in seen:
            raise DataError(f"{path}:{number}: duplicate id {found.id!r}")
        seen.add(found.id)
        rows.append(found)
    return rows
