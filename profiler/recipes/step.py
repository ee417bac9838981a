"""Recipes, part 3: the step. The causal-LM loss under the recipe's autocast (chunked where the
recipe asks), forward and backward, gradient clipping, the optimizer step, and an eval loss; the
same for measuring (:mod:`profiler._worker`) and training (:mod:`runners.train`). torch is
imported inside the functions only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from profiler._types import chunked_loss_problem
from profiler.recipes.methods import PreparedModel

# Gradient clipping of every recipe, under every sharding: the global L2 norm of the gradients
# is clipped to 1.0, the common fine-tuning default (transformers' TrainingArguments.max_grad_norm,
# TRL's SFT scripts); DeepSpeed runs get the same value as their config's gradient_clipping.
MAX_GRAD_NORM = 1.0


def _causal_lm_loss(
    prepared: PreparedModel, input_ids: Any, labels: Any, *, attention_mask: Any = None
) -> Any:
    """Forward under the recipe's autocast; the model's mean causal-LM loss (a tensor)."""
    import torch

    device_type = prepared.device.split(":")[0]
    autocast = (
        torch.autocast(device_type=device_type, dtype=prepared.autocast_dtype)
        if prepared.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    if prepared.loss_chunk_tokens is not None:
        with autocast:
            return _chunked_causal_lm_loss(
                prepared.model,
                input_ids,
                labels,
                attention_mask=attention_mask,
                chunk_tokens=prepared.loss_chunk_tokens,
            )
    with autocast:
        outputs = prepared.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    loss = outputs.loss
    # Holding the outputs through backward keeps their logits alive: one more batch x seq x vocab
    # copy at the peak (2.3-9.3 GiB on the H200's 8k-32k-token steps, benchmarks/results/).
    del outputs
    return loss


def _chunked_causal_lm_loss(
    model: Any, input_ids: Any, labels: Any, *, attention_mask: Any, chunk_tokens: int
) -> Any:
    """The causal-LM loss of the model's own forward (mean over labels other than -100, next
    token), with the head and the cross-entropy run ``chunk_tokens`` tokens at a time under
    non-reentrant checkpointing: only one chunk's logits (and their fp32 copies) are ever
    alive, and backward recomputes each chunk. Final-logit soft-capping (Gemma 2) is applied as
    the model applies it.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    problem = chunked_loss_problem(model_type=getattr(base.config, "model_type", ""))
    if problem is None and getattr(base.config, "output_router_logits", False):
        problem = "ftplan's chunked cross-entropy leaves out the router's auxiliary loss"
    if problem is not None:
        raise ValueError(f"{problem}. To fix: train it without chunked_loss")
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    hidden = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(
            _chunk_loss_sum,
            head,
            softcap,
            hidden[start:end],
            targets[start:end],
            use_reentrant=False,
        )
    return total / (targets != -100).sum().clamp(min=1)


def _chunk_loss_sum(head: Any, softcap: float | None, hidden: Any, targets: Any) -> Any:
    """Summed fp32 cross-entropy of one chunk of final hidden states (the model's upcast)."""
    import torch

    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")


def eval_loss(prepared: PreparedModel, input_ids: Any) -> tuple[float, int]:
    """Forward only (no gradients), labels = inputs as in training, under the same autocast.

    The caller switches the model to eval mode (no dropout) and back.

    Args:
        prepared: Output of a ``setup_*`` function.
        input_ids: Token ids, shape (micro_batch, seq_len), on ``prepared.device``; every
            position is a real token (packed blocks, no padding).

    Returns:
        (sum of the per-token cross-entropy in nats, number of predicted tokens): the model
        shifts the labels, so each block predicts ``seq_len - 1`` tokens. Synchronizes with the
        device.
    """
    import torch

    with torch.no_grad():
        loss = _causal_lm_loss(prepared, input_ids, input_ids)
    tokens = int(input_ids.shape[0]) * (int(input_ids.shape[1]) - 1)
    return float(loss) * tokens, tokens


def forward_backward(
    prepared: PreparedModel,
    input_ids: Any,
    labels: Any,
    *,
    attention_mask: Any = None,
    backward: Callable[[Any], None] | None = None,
) -> Any:
    """Forward (under the recipe's autocast) with causal-LM loss, then backward.

    Returns:
        The loss tensor (detached), not yet synchronized to the host.
    """
    loss = _causal_lm_loss(prepared, input_ids, labels, attention_mask=attention_mask)
    if backward is not None:  # DeepSpeed: its engine runs backward (and its step)
        backward(loss)
        return loss.detach()
    if prepared.grad_scaler is not None:
        prepared.grad_scaler.scale(loss).backward()
    else:
        loss.backward()
    return loss.detach()


def clip_gradients(prepared: PreparedModel, *, max_norm: float = MAX_GRAD_NORM) -> float:
    """Scale the gradients so that their global L2 norm is at most ``max_norm``; returns the
    norm before clipping (inf or nan when a gradient is not finite).

    Under FSDP the norm must cover every rank's shard: FSDP's own ``clip_grad_norm_`` reduces
    it across ranks (what ``Accelerator.clip_grad_norm_`` calls). Otherwise (one process, DDP's
    identical gradients) torch's ``clip_grad_norm_`` over the trainable parameters. fp16-mixed
    unscales first. DeepSpeed clips inside its engine (``gradient_clipping`` in its config).
    """
    import torch

    if prepared.grad_scaler is not None:
        prepared.grad_scaler.unscale_(prepared.optimizer)
    fsdp_clip = getattr(prepared.model, "clip_grad_norm_", None)
    if callable(fsdp_clip):
        return float(fsdp_clip(max_norm))
    params = [p for p in prepared.model.parameters() if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def optimizer_step(prepared: PreparedModel) -> None:
    """Clip the gradients (:func:`clip_gradients`), step the optimizer (through the GradScaler
    for fp16-mixed), then ``zero_grad(set_to_none)``."""
    clip_gradients(prepared)
    if prepared.grad_scaler is not None:
        prepared.grad_scaler.step(prepared.optimizer)
        prepared.grad_scaler.update()
    else:
        prepared.optimizer.step()
    prepared.optimizer.zero_grad(set_to_none=True)


def train_step(
    prepared: PreparedModel, input_ids: Any, labels: Any, *, attention_mask: Any = None
) -> float:
    """One training step: forward, causal-LM loss, backward, optimizer step, zero_grad.

    Args:
        prepared: Output of a ``setup_*`` function.
        input_ids: Token ids, shape (micro_batch, seq_len), on ``prepared.device``.
        labels: Target ids (the inputs for causal LM; the model shifts them).
        attention_mask: Optional mask of shape (micro_batch, seq_len).

    Returns:
        The loss of this step (float; synchronizes with the device).
    """
    loss = forward_backward(prepared, input_ids, labels, attention_mask=attention_mask)
    optimizer_step(prepared)
    return float(loss)
