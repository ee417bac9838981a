"""A user's choices as training configs: the defaults ftplan fills in (LoRA rank, alpha and
targets, the GPU's precision, the sharding for the GPU count) and the checks that name the
option to change. Pure.

``ftplan estimate`` and ``ftplan profile`` build their configs here, so a flag means the same in
both. Errors are :class:`catalog.InputError` (exit 2, one line) naming the command-line options,
since these are the choices a user typed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from catalog import InputError
from profiler._types import (
    DEFAULT_LORA_RANK,
    DEFAULT_LORA_TARGETS,
    Method,
    OptimizerKind,
    Precision,
    Sharding,
    TuningConfig,
    chunked_loss_problem,
    default_lora_alpha,
    default_precision,
    default_sharding,
    precision_problem,
    resolve_targets,
    sharding_problem,
)

if TYPE_CHECKING:
    from catalog import GPU, ModelSpec

# CPU runs time a tiny stand-in of the model: wide layers and a 100k+ vocabulary would take
# minutes per step on a laptop CPU and tell nothing about GPU memory anyway.
CPU_MAX_LAYERS = 2
CPU_MAX_HIDDEN = 256
CPU_MAX_VOCAB = 4096
MAX_LAYERS = 1024


def checked_targets(text: str) -> str:
    """``text`` when it is a LoRA target spec (all-linear, attention, q_proj,v_proj, ...).

    Raises:
        InputError: Naming ``--targets`` and the modules it may list.
    """
    try:
        resolve_targets(text)
    except ValueError as exc:
        raise InputError(f"--targets: {exc}") from None
    return text


def config_from_options(**fields: Any) -> TuningConfig:
    """A :class:`TuningConfig` from options; a contradiction among them is bad input.

    Raises:
        InputError: The config's own check failed (e.g. pure bf16 for LoRA).
    """
    try:
        return TuningConfig(**fields)
    except ValueError as exc:
        raise InputError(f"these options do not go together: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigRequest:
    """One config as ``ftplan estimate`` takes it, per GPU; ``None`` asks for ftplan's default
    (:func:`estimate_config` fills it in)."""

    method: Method
    precision: Precision | None = None
    rank: int | None = None
    alpha: int | None = None
    targets: str | None = None
    batch: int = 1
    seq_len: int = 2048
    grad_checkpointing: bool = False
    optimizer: OptimizerKind = OptimizerKind.ADAMW
    gpu_count: int = 1
    sharding: Sharding | None = None
    chunked_loss: bool = False


def estimate_config(
    request: ConfigRequest, spec: ModelSpec, gpu: GPU
) -> tuple[TuningConfig, list[str]]:
    """The config a request describes on ``gpu``, with notes on what the user should know:
    a default that was switched (fp16-mixed on a GPU without bf16), a chunked loss that ftplan's
    recipe cannot run for this model or GPU count (estimated all the same).

    Defaults: the GPU's precision (:func:`~profiler._types.default_precision`), LoRA rank
    :data:`~profiler._types.DEFAULT_LORA_RANK` with alpha 2 × rank and targets
    :data:`~profiler._types.DEFAULT_LORA_TARGETS`, the sharding for the GPU count
    (:func:`~profiler._types.default_sharding`).

    Raises:
        InputError: LoRA options with full fine-tuning, a precision the GPU cannot run, a
            sharding that cannot run the method on that many GPUs, unknown targets, or options
            that contradict each other.
    """
    r = request
    lora = r.method.traits.adapters
    if not lora and (r.rank is not None or r.alpha is not None or r.targets is not None):
        raise InputError(
            "--rank/--alpha/--targets apply to LoRA and QLoRA only, not "
            "--method full. To fix: drop them or use --method lora"
        )
    precision, notes = _precision(r.precision, gpu)
    sharding = r.sharding if r.sharding is not None else default_sharding(r.method, r.gpu_count)
    problem = sharding_problem(
        sharding,
        method=r.method,
        gpu_count=r.gpu_count,
        optimizer=r.optimizer,
        num_experts=spec.num_experts,
    )
    if problem is not None:
        raise InputError(f"--sharding {sharding.value} with --gpu-count {r.gpu_count}: {problem}")
    if lora and r.targets is not None:
        checked_targets(r.targets)
    rank = r.rank if r.rank is not None else DEFAULT_LORA_RANK
    alpha = r.alpha if r.alpha is not None else default_lora_alpha(rank)
    config = config_from_options(
        method=r.method,
        precision=precision,
        lora_rank=rank if lora else None,
        lora_alpha=alpha if lora else None,
        lora_targets=(r.targets or DEFAULT_LORA_TARGETS) if lora else None,
        micro_batch_size=r.batch,
        seq_len=r.seq_len,
        grad_checkpointing=r.grad_checkpointing,
        optimizer=r.optimizer,
        gpu_count=r.gpu_count,
        sharding=sharding,
        chunked_loss=r.chunked_loss,
    )
    if config.chunked_loss:
        problem = chunked_loss_problem(
            model_type=spec.model_type, gpu_count=config.gpu_count, sharding=config.sharding
        )
        if problem is not None:
            notes.append(
                f"{problem}, so 'ftplan profile' and 'ftplan launch' cannot run this config"
            )
    return config, notes


def _precision(asked: Precision | None, gpu: GPU) -> tuple[Precision, list[str]]:
    """The precision to estimate at, and a note when the GPU's default was switched."""
    if asked is None:
        precision = default_precision(gpu)
        problem = precision_problem(gpu, Precision.BF16_MIXED)
        return precision, [] if problem is None else [f"{problem}: using {precision.value}"]
    problem = precision_problem(gpu, asked)
    if problem is not None:
        raise InputError(
            f"{problem}, so --precision {asked.value} cannot run on it. To fix: use "
            f"--precision {default_precision(gpu).value}"
        )
    return asked, []


def sweep_configs(
    method: Method,
    *,
    precision: Precision,
    rank: int,
    alpha: int | None,
    targets: str,
    batches: Sequence[int],
    seq_lens: Sequence[int],
    grad_checkpointing: bool,
    optimizer: OptimizerKind,
    chunked_loss: bool = False,
) -> list[TuningConfig]:
    """The configs ``ftplan profile`` measures: every micro-batch at every sequence length, in
    that order; the LoRA options apply to LoRA and QLoRA only (alpha ``None``: 2 × rank).

    Raises:
        InputError: Options that contradict each other.
    """
    lora = method.traits.adapters
    return [
        config_from_options(
            method=method,
            precision=precision,
            lora_rank=rank if lora else None,
            lora_alpha=alpha if lora else None,
            lora_targets=targets if lora else None,
            micro_batch_size=batch,
            seq_len=seq_len,
            grad_checkpointing=grad_checkpointing,
            optimizer=optimizer,
            chunked_loss=chunked_loss,
        )
        for batch in batches
        for seq_len in seq_lens
    ]


def layer_counts(text: str) -> tuple[int, ...]:
    """The truncated depths of ``--layers`` (e.g. ``2,4``): two to eight distinct counts between
    1 and :data:`MAX_LAYERS`, ascending.

    Raises:
        InputError: Anything else, with an example.
    """
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        counts = ()
    if len(counts) < 2 or counts[0] <= 0 or counts[-1] > MAX_LAYERS or len(counts) > 8:
        raise InputError(
            f"--layers {text!r}: give two to eight layer counts between 1 and {MAX_LAYERS}, "
            "e.g. 2,4"
        )
    return counts


def profiled_model(spec: ModelSpec, *, chunked_loss: bool, cpu: bool) -> tuple[ModelSpec, str]:
    """The model ``ftplan profile`` runs, and a note for the user ('' when none): the model
    itself on a GPU, its :func:`cpu_stand_in` on CPU.

    Raises:
        InputError: The chunked loss was asked for a model whose loss it would change.
    """
    problem = chunked_loss_problem(model_type=spec.model_type) if chunked_loss else None
    if problem is not None:
        raise InputError(f"--chunked-loss: {problem}. To fix: drop --chunked-loss")
    return cpu_stand_in(spec) if cpu else (spec, "")


def cpu_stand_in(spec: ModelSpec) -> tuple[ModelSpec, str]:
    """A tiny model of the same architecture type for CPU timing, and a note on what shrank.

    Layers are cut to 2, and hidden size, heads, MLP width and vocabulary are scaled down where
    they exceed 256 / 4096, keeping the attention grouping (heads per KV head) and head size.
    """
    heads, kv_heads, head_dim, hidden = (
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
        spec.hidden_size,
    )
    if hidden > CPU_MAX_HIDDEN:
        group = spec.num_heads // spec.num_kv_heads  # query heads per KV head, kept
        head_dim = min(spec.head_dim, 32)
        kv_heads = max(1, CPU_MAX_HIDDEN // (group * head_dim))
        heads = kv_heads * group
        hidden = heads * head_dim
    layers = min(spec.num_layers, CPU_MAX_LAYERS)
    vocab = min(spec.vocab_size, CPU_MAX_VOCAB)
    tiny = dataclasses.replace(
        spec,
        name=f"{spec.name}-cpu-tiny",
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=max(1, round(spec.intermediate_size * hidden / spec.hidden_size)),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        param_count=1,
        source=f"CPU stand-in of {spec.name}",
    )
    note = (
        f"CPU run on a tiny stand-in of {spec.name}: {layers} of {spec.num_layers} layers, "
        f"hidden {hidden} (was {spec.hidden_size}), vocab {vocab} (was {spec.vocab_size}); "
        f"step time only, no memory figures, not representative of a GPU"
    )
    return tiny, note
