"""How the training loop runs under several processes or an offloading launcher: the
accelerate Accelerator, the DDP/FSDP/DeepSpeed wrap of the recipe's model and optimizer (PEFT's
wrap policy for adapters, rank-0 loading), and the final save of what was trained.
Used by :mod:`runners.train`; torch, accelerate and peft are imported inside each function.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from profiler import TuningConfig


def accelerator_if_distributed(device: str) -> Any:
    """An accelerate Accelerator when started by ``accelerate launch`` / torchrun with several
    processes (gloo on CPU, for smoke runs of the multi-process path), or with FSDP/DeepSpeed
    on one GPU (CPU offload)."""
    launched = os.environ.get("ACCELERATE_USE_FSDP") == "true" or (
        os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    )
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not launched:
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=device == "cpu")


def is_deepspeed(accelerator: Any) -> bool:
    return (
        accelerator is not None
        and getattr(accelerator.state, "deepspeed_plugin", None) is not None
    )


def prepare_distributed(
    prepared: Any,
    accelerator: Any,
    config: TuningConfig,
    *,
    learning_rate: float,
    rank0_only: bool,
) -> None:
    """Wrap the recipe's model and optimizer for several processes (DDP, FSDP or DeepSpeed, as
    ``accelerate launch`` configured them), in place.

    LoRA/QLoRA under FSDP use PEFT's wrap policy (:func:`wrap_adapters_apart`), so no gradient
    buffer covers the frozen base. DeepSpeed with CPU offload names its own optimizer (its CPU
    Adam): accelerate takes a placeholder. With rank-0 loading the optimizer is made after
    sharding (:func:`shard_then_make_optimizer`).
    """
    wrap_adapters_apart(prepared.model, accelerator, config)
    if is_deepspeed(accelerator) and config.sharding.offloads:
        from accelerate.utils import DummyOptim

        params = [p for p in prepared.model.parameters() if p.requires_grad]
        prepared.optimizer = DummyOptim(params, lr=learning_rate)
    if rank0_only:
        shard_then_make_optimizer(prepared, accelerator, config, learning_rate=learning_rate)
        return
    prepared.model, prepared.optimizer = accelerator.prepare(prepared.model, prepared.optimizer)


def wrap_adapters_apart(model: Any, accelerator: Any, config: TuningConfig) -> bool:
    """LoRA/QLoRA under FSDP: wrap with :func:`adapter_wrap_policy` instead of one unit per
    decoder layer (accelerate keeps a callable policy as it is). Returns whether it applied."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None or not config.method.traits.adapters:
        return False
    plugin.auto_wrap_policy = adapter_wrap_policy(model)
    return True


def adapter_wrap_policy(model: Any) -> Any:
    """PEFT's FSDP wrap policy (``peft.utils.other.fsdp_auto_wrap_policy``, as transformers'
    Trainer and PEFT's FSDP guides set it): each decoder layer is a unit, and so is every leaf
    module whose weight trains (each adapter linear). A layer's flat parameter then holds only
    frozen weights and gets no gradient; with the adapters inside it, its sharded gradient
    covers the whole layer (41,088 elements per rank for 4,096 trainable on a 2-layer test
    model)."""
    from peft.utils.other import fsdp_auto_wrap_policy

    return fsdp_auto_wrap_policy(model)


def shard_then_make_optimizer(
    prepared: Any, accelerator: Any, config: Any, *, learning_rate: float
) -> None:
    """FSDP with rank-0-only loading: wrap (and so shard) the model first, then make the
    recipe's optimizer over the sharded parameters. The optimizer the recipe made before held
    the meta tensors of ranks other than 0, which FSDP replaces when it materialises them."""
    from profiler.recipes import make_optimizer

    prepared.model = accelerator.prepare(prepared.model)
    params = [p for p in prepared.model.parameters() if p.requires_grad]
    prepared.optimizer = accelerator.prepare(
        make_optimizer(params, config, learning_rate=learning_rate, device=prepared.device)
    )


def base_model(prepared: Any, *, accelerator: Any) -> Any:
    """The transformers model under the accelerate and PEFT wrappers."""
    model = accelerator.unwrap_model(prepared.model) if accelerator is not None else prepared.model
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def trained_model_config(prepared: Any, *, accelerator: Any = None) -> dict[str, Any]:
    """The config dict the run trained with, JSON-safe (transformers' own serialization)."""
    config = base_model(prepared, accelerator=accelerator).config
    return dict(json.loads(config.to_json_string(use_diff=False)))


def save_final_model(
    prepared: Any,
    folder: Path,
    *,
    accelerator: Any,
    tokenizer: Any = None,
    use_cache: bool | None = None,
) -> None:
    """``save_pretrained`` of the trained model (adapters only for LoRA/QLoRA) and of its
    tokenizer, so ``final/`` is ready to load or merge. Full fine-tuning's config is the
    checkpoint's own; only ``use_cache``, turned off for training, is put back."""
    is_main = accelerator is None or accelerator.is_main_process
    base = base_model(prepared, accelerator=accelerator)
    if use_cache is not None:
        base.config.use_cache = use_cache
    try:
        if accelerator is None:
            prepared.model.save_pretrained(str(folder))
        else:
            state = accelerator.get_state_dict(prepared.model)
            accelerator.unwrap_model(prepared.model).save_pretrained(
                str(folder), state_dict=state, is_main_process=is_main
            )
    finally:
        base.config.use_cache = False
    save = getattr(tokenizer, "save_pretrained", None)
    if is_main and callable(save):
        save(str(folder))
