"""Chunked cross-entropy in the recipe (``TuningConfig.chunked_loss``): the same loss and the same
gradients as the model's own forward, a chunk of the head at a time (tiny models from config on
CPU, no downloads)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from model_specs import TINY_LLAMA

from catalog import ModelSpec
from profiler import Method, Precision, Sharding, TuningConfig

torch = pytest.importorskip("torch")
recipes = pytest.importorskip("profiler.recipes")

pytestmark = pytest.mark.slow

TINY_GEMMA2 = dataclasses.replace(
    TINY_LLAMA, name="tiny-gemma2", model_type="gemma2", tied_embeddings=True
)


def _config(method: Method, *, chunked: bool, **kwargs: Any) -> TuningConfig:
    lora = method is not Method.FULL
    return TuningConfig(
        method=method,
        precision=Precision.BF16 if method is Method.FULL else Precision.BF16_MIXED,
        lora_rank=4 if lora else None,
        lora_targets="all-linear" if lora else None,
        micro_batch_size=2,
        seq_len=32,
        chunked_loss=chunked,
        **kwargs,
    )


def _loss_and_grads(
    spec: ModelSpec, config: TuningConfig, ids: Any, *, chunk: int | None = None
) -> tuple[float, dict[str, Any]]:
    torch.manual_seed(0)
    prepared = recipes.SETUP_FUNCTIONS[config.method](spec, config, device="cpu")
    if chunk is not None:
        prepared.loss_chunk_tokens = chunk
    if spec.model_type == "gemma2":
        # Gemma 2's default cap (30) barely touches a tiny random model's logits: cap at 0.5 so
        # a loss that skipped the cap would differ.
        base = prepared.model.get_base_model() if config.method is not Method.FULL else None
        (base or prepared.model).config.final_logit_softcapping = 0.5
    loss = recipes.forward_backward(prepared, ids, ids)
    grads = {
        name: p.grad.detach().float().clone()
        for name, p in prepared.model.named_parameters()
        if p.grad is not None
    }
    return float(loss), grads


@pytest.mark.parametrize(
    ("spec", "method"),
    [(TINY_LLAMA, Method.FULL), (TINY_LLAMA, Method.LORA), (TINY_GEMMA2, Method.LORA)],
    ids=["llama-full", "llama-lora", "gemma2-softcap-lora"],
)
def test_chunked_loss_equals_the_models_own(spec: ModelSpec, method: Method) -> None:
    ids = torch.randint(0, spec.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    whole, whole_grads = _loss_and_grads(spec, _config(method, chunked=False), ids)
    # 62 predicted tokens in chunks of 8: seven full chunks and a short last one.
    chunked, chunked_grads = _loss_and_grads(spec, _config(method, chunked=True), ids, chunk=8)
    assert chunked == pytest.approx(whole, rel=1e-3)
    assert chunked_grads.keys() == whole_grads.keys() and whole_grads
    for name, grad in whole_grads.items():
        scale = float(grad.abs().max()) or 1.0
        assert float((chunked_grads[name] - grad).abs().max()) <= 2e-2 * scale, name


def test_the_recipe_runs_the_chunk_size_the_estimator_assumes() -> None:
    from profiler.memory import CHUNKED_LOSS_TOKENS

    prepared = recipes.setup_lora(TINY_LLAMA, _config(Method.LORA, chunked=True), device="cpu")
    assert prepared.loss_chunk_tokens == CHUNKED_LOSS_TOKENS
    plain = recipes.setup_lora(TINY_LLAMA, _config(Method.LORA, chunked=False), device="cpu")
    assert plain.loss_chunk_tokens is None


def test_chunked_loss_refuses_sharded_and_multi_gpu_configs() -> None:
    config = _config(Method.LORA, chunked=True, gpu_count=2, sharding=Sharding.DDP)
    with pytest.raises(ValueError, match="one GPU without sharding"):
        recipes.loss_chunk_tokens(config)
