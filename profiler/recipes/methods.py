"""Recipes, part 2: the methods. One explicit setup per method (full, LoRA, QLoRA) that builds the
model (:mod:`profiler.recipes.model`), its adapters, optimizer and gradient scaler into a
:class:`PreparedModel`, and the default learning rate of each. torch, transformers, peft and
bitsandbytes are imported inside the functions only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from profiler._types import (
    METHOD_TRAITS,
    Method,
    OptimizerKind,
    Precision,
    TuningConfig,
    chunked_loss_problem,
)
from profiler.memory import CHUNKED_LOSS_TOKENS
from profiler.recipes.model import (
    build_base_model,
    compute_dtype,
    fix_peft_stacked_parametrization,
    is_sharded,
    peft_target_modules,
    peft_target_parameters,
)

if TYPE_CHECKING:
    from catalog import ModelSpec


# Starting AdamW learning rates by method, from the method traits (the one table the recipes, the
# planner's suggestions and launches use).
DEFAULT_LEARNING_RATE: dict[Method, float] = {
    method: traits.learning_rate for method, traits in METHOD_TRAITS.items()
}


@dataclass(slots=True)
class PreparedModel:
    """Live torch objects of one recipe, ready for :func:`train_step` (a holder, not a record).

    Attributes:
        model: transformers causal LM (PEFT-wrapped for LoRA/QLoRA).
        optimizer: torch optimizer over the trainable parameters.
        trainable_params: Number of trainable parameters.
        total_params: Number of parameters (4-bit weights counted unpacked, as PEFT counts them).
        autocast_dtype: ``torch.bfloat16`` / ``torch.float16`` for autocast, ``None`` for none.
        grad_scaler: ``torch.amp.GradScaler`` for fp16-mixed, else ``None``.
        device: torch device string, e.g. ``cuda`` or ``cpu``.
        loss_chunk_tokens: Chunked cross-entropy (``config.chunked_loss``): the head and the
            loss run this many tokens at a time and are recomputed in backward; ``None`` runs
            them over the whole micro-batch (the model's own forward).
    """

    model: Any
    optimizer: Any
    trainable_params: int
    total_params: int
    autocast_dtype: Any | None
    grad_scaler: Any | None
    device: str
    loss_chunk_tokens: int | None = None


def loss_chunk_tokens(config: TuningConfig) -> int | None:
    """Tokens per chunk of the cross-entropy for ``config`` (None: not chunked).

    The chunked loss calls the decoder and the head directly, past any DDP/FSDP/DeepSpeed
    wrapper, so it runs on one unsharded GPU only.

    Raises:
        ValueError: ``chunked_loss`` with several GPUs or a sharding strategy.
    """
    if not config.chunked_loss:
        return None
    problem = chunked_loss_problem(gpu_count=config.gpu_count, sharding=config.sharding)
    if problem is not None:
        raise ValueError(f"{problem}. To fix: drop chunked_loss or plan one GPU")
    return CHUNKED_LOSS_TOKENS


def make_optimizer(
    params: list[Any], config: TuningConfig, *, learning_rate: float, device: str
) -> Any:
    """The recipe's optimizer over ``params`` (also used to make it again after FSDP sharding,
    when the parameters it was made over were meta tensors)."""
    return _make_optimizer(params, config, learning_rate=learning_rate, device=device)


def _make_optimizer(
    params: list[Any], config: TuningConfig, *, learning_rate: float, device: str
) -> Any:
    import torch

    if config.optimizer is OptimizerKind.ADAMW:
        return torch.optim.AdamW(params, lr=learning_rate)
    if not device.startswith("cuda"):
        raise ValueError(
            f"optimizer {config.optimizer.value} (bitsandbytes) needs a CUDA GPU; "
            f"use --optimizer adamw on {device}"
        )
    import bitsandbytes as bnb

    if config.optimizer is OptimizerKind.ADAMW_8BIT:
        return bnb.optim.AdamW8bit(params, lr=learning_rate)
    return bnb.optim.PagedAdamW8bit(params, lr=learning_rate)


def _grad_scaler(config: TuningConfig, device: str) -> Any | None:
    import torch

    if config.precision is not Precision.FP16_MIXED:
        return None
    return torch.amp.GradScaler(device.split(":")[0])


def _enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing, as in the reference H100 measurements."""
    with warnings.catch_warnings():
        # transformers 5 renamed it activation_checkpointing_enable; the old name still works.
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def setup_full(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    device: str,
    num_layers: int | None = None,
    checkpoint: str | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE[Method.FULL],
) -> PreparedModel:
    """Full fine-tuning: every parameter trains.

    bf16-mixed: fp32 weights + bf16 autocast + AdamW (fp32 states). bf16: bf16 weights, no
    autocast, AdamW (bf16 states). fp16-mixed: fp32 weights + fp16 autocast + GradScaler.

    Args:
        spec: Architecture facts.
        config: A ``method=full`` config.
        device: torch device string.
        num_layers: Truncate to this many decoder layers (``None``: all).
        checkpoint: Hub id or local path of real weights (``None``: random weights).
        learning_rate: AdamW learning rate.

    Raises:
        ValueError: If ``config.method`` is not full.
    """
    if config.method is not Method.FULL:
        raise ValueError(f"setup_full got method={config.method.value}")
    model = build_base_model(
        spec, config, device=device, num_layers=num_layers, checkpoint=checkpoint
    )
    if config.grad_checkpointing:
        _enable_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    autocast = None if config.precision is Precision.BF16 else compute_dtype(config)
    return PreparedModel(
        model=model,
        optimizer=_make_optimizer(params, config, learning_rate=learning_rate, device=device),
        trainable_params=count,
        total_params=sum(p.numel() for p in model.parameters()),
        autocast_dtype=autocast,
        grad_scaler=_grad_scaler(config, device),
        device=device,
        loss_chunk_tokens=loss_chunk_tokens(config),
    )


def _lora_config(spec: ModelSpec, config: TuningConfig, model: Any) -> Any:
    from peft import LoraConfig

    rank, alpha = config.lora_rank, config.effective_lora_alpha
    if rank is None or alpha is None:
        raise ValueError(f"method={config.method.value} needs lora_rank")
    parameters = peft_target_parameters(model, spec, config)
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=peft_target_modules(spec, config),
        target_parameters=parameters or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _prepared_lora(
    model: Any, config: TuningConfig, *, device: str, learning_rate: float
) -> PreparedModel:
    trainable, total = model.get_nb_trainable_parameters()
    params = [p for p in model.parameters() if p.requires_grad]
    return PreparedModel(
        model=model,
        optimizer=_make_optimizer(params, config, learning_rate=learning_rate, device=device),
        trainable_params=int(trainable),
        total_params=int(total),
        autocast_dtype=compute_dtype(config),
        grad_scaler=_grad_scaler(config, device),
        device=device,
        loss_chunk_tokens=loss_chunk_tokens(config),
    )


def setup_lora(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    device: str,
    num_layers: int | None = None,
    checkpoint: str | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE[Method.LORA],
) -> PreparedModel:
    """LoRA: 16-bit frozen base, PEFT adapters (PEFT's default fp32 adapter dtype), autocast.

    Args and Raises: as :func:`setup_full`, for a ``method=lora`` config.
    """
    from peft import get_peft_model

    if config.method is not Method.LORA:
        raise ValueError(f"setup_lora got method={config.method.value}")
    model = build_base_model(
        spec, config, device=device, num_layers=num_layers, checkpoint=checkpoint
    )
    if config.grad_checkpointing:
        _enable_checkpointing(model)
        # Frozen embeddings output no grad; checkpointed blocks need an input that requires one.
        model.enable_input_require_grads()
    # Sharded: adapters in the base's bf16, not PEFT's fp32 default, so FSDP can flatten them
    # with the frozen weights (use_orig_params keeps them separately trainable).
    model = get_peft_model(
        model, _lora_config(spec, config, model), autocast_adapter_dtype=not is_sharded(config)
    )
    return _prepared_lora(model, config, device=device, learning_rate=learning_rate)


def setup_qlora(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    device: str,
    num_layers: int | None = None,
    checkpoint: str | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE[Method.QLORA],
) -> PreparedModel:
    """QLoRA: NF4 + double-quant base, ``prepare_model_for_kbit_training``, then LoRA.

    ``prepare_model_for_kbit_training`` casts embeddings, head and norms to fp32, so without
    checkpointing QLoRA can need more memory than LoRA (DESIGN.md).

    Args and Raises: as :func:`setup_full`, for a ``method=qlora`` config.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if config.method is not Method.QLORA:
        raise ValueError(f"setup_qlora got method={config.method.value}")
    model = build_base_model(
        spec, config, device=device, num_layers=num_layers, checkpoint=checkpoint
    )
    if peft_target_parameters(model, spec, config):
        fix_peft_stacked_parametrization()
    if is_sharded(config):
        # Sharded QLoRA skips prepare_model_for_kbit_training: its fp32 upcast of embeddings,
        # head and norms would break FSDP's one-dtype flat tensors (TRL does the same).
        if config.grad_checkpointing:
            _enable_checkpointing(model)
            model.enable_input_require_grads()
    else:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.grad_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    # Sharded: adapters in the base's bf16, not PEFT's fp32 default, so FSDP can flatten them
    # with the frozen weights (use_orig_params keeps them separately trainable).
    model = get_peft_model(
        model, _lora_config(spec, config, model), autocast_adapter_dtype=not is_sharded(config)
    )
    return _prepared_lora(model, config, device=device, learning_rate=learning_rate)


SETUP_FUNCTIONS: dict[Method, Callable[..., PreparedModel]] = {
    Method.FULL: setup_full,
    Method.LORA: setup_lora,
    Method.QLORA: setup_qlora,
}
if set(SETUP_FUNCTIONS) != set(Method):  # a new Method needs its recipe
    raise RuntimeError(f"SETUP_FUNCTIONS lacks {sorted(set(Method) - set(SETUP_FUNCTIONS))}")
