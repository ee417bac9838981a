"""Training recipes: the one definition of full, LoRA and QLoRA fine-tuning in ftplan.

Three parts: :mod:`~profiler.recipes.model` (the transformers model from the catalog's facts),
:mod:`~profiler.recipes.methods` (one setup per method) and :mod:`~profiler.recipes.step`
(loss, backward, clipping, optimizer step); this package exports what the profiler and the
runners use.

The profiler measures these functions and the runners launch them, so what ftplan prices is what
it trains (DESIGN.md, "The recipes"). torch, transformers, peft and bitsandbytes are imported
inside the functions only, so that ``import profiler`` stays light.

On CPU the recipes are unchanged except where CPU lacks a feature: bitsandbytes 8-bit and paged
optimizers need CUDA, so on CPU they fail with a clear error instead of being swapped silently.
CPU autocast (bf16 and fp16) is supported by torch and kept.
"""

from __future__ import annotations

from profiler.recipes.methods import (
    DEFAULT_LEARNING_RATE,
    SETUP_FUNCTIONS,
    PreparedModel,
    loss_chunk_tokens,
    make_optimizer,
    setup_full,
    setup_lora,
    setup_qlora,
)
from profiler.recipes.model import (
    RANDOM_SHARD_BYTES,
    attention_implementation,
    build_base_model,
    checkpoint_config,
    hf_config_for,
    loads_on_rank0_only,
    peft_target_modules,
    peft_target_parameters,
    quantize_experts_nf4,
    write_random_checkpoint,
)
from profiler.recipes.step import (
    MAX_GRAD_NORM,
    clip_gradients,
    eval_loss,
    forward_backward,
    optimizer_step,
    train_step,
)

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "MAX_GRAD_NORM",
    "RANDOM_SHARD_BYTES",
    "SETUP_FUNCTIONS",
    "PreparedModel",
    "attention_implementation",
    "build_base_model",
    "checkpoint_config",
    "clip_gradients",
    "eval_loss",
    "forward_backward",
    "hf_config_for",
    "loads_on_rank0_only",
    "loss_chunk_tokens",
    "make_optimizer",
    "optimizer_step",
    "peft_target_modules",
    "peft_target_parameters",
    "quantize_experts_nf4",
    "setup_full",
    "setup_lora",
    "setup_qlora",
    "train_step",
    "write_random_checkpoint",
]
