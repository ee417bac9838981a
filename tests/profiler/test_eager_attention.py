"""Gemma 2 runs eager attention in ftplan's recipe (transformers has no SDPA path for it): the
b·H·s² scores of a layer are materialized and saved. The estimator's constants for them, its four
norms and its soft-capped logits are checked against what autograd really saves, counted with
saved-tensor hooks on 2-layer models (CPU), and their effect on estimates is checked on the
catalog's Gemma 2 models."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from model_specs import TINY_LLAMA

from catalog import ModelSpec, get_gpu, get_model
from profiler import Method, Precision, TuningConfig, calibration_for, estimate
from profiler.memory import (
    _EXTRA_H_COEF,
    _EXTRA_LOGITS_BYTES_PER_TOKEN_VOCAB,
    EAGER_ATTENTION_MODEL_TYPES,
    EAGER_SCORE_SAVED_BYTES,
    memory_terms,
)
from profiler.timing import time_terms

RECIPES = [
    (Method.LORA, Precision.BF16_MIXED, "adapters"),
    (Method.FULL, Precision.BF16, "full"),
    (Method.FULL, Precision.BF16_MIXED, "full-mixed"),
]
SEQS = (40, 80, 160)


def _tiny(model_type: str, hidden: int) -> ModelSpec:
    return dataclasses.replace(
        TINY_LLAMA,
        name=f"tiny-{model_type}",
        model_type=model_type,
        hidden_size=hidden,
        tied_embeddings=True,
    )


def _saved(spec: ModelSpec, method: Method, precision: Precision, seq: int) -> tuple[int, int]:
    """Bytes autograd saves in one forward (parameters excluded): (vocabulary-wide, the rest)."""
    torch = pytest.importorskip("torch")
    recipes = pytest.importorskip("profiler.recipes")
    lora = method is not Method.FULL
    config = TuningConfig(
        method=method,
        precision=precision,
        lora_rank=4 if lora else None,
        lora_targets="all-linear" if lora else None,
        seq_len=seq,
    )
    torch.manual_seed(0)
    prepared = recipes.SETUP_FUNCTIONS[method](spec, config, device="cpu")
    ids = torch.randint(0, spec.vocab_size, (1, seq))
    saved: dict[int, tuple[int, tuple[int, ...]]] = {}

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = (storage.nbytes(), tuple(tensor.shape))
        return tensor

    params = {p.untyped_storage().data_ptr() for p in prepared.model.parameters()}
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=prepared.autocast_dtype is not None),
    ):
        prepared.model(input_ids=ids, labels=ids)
    own = [(n, shape) for key, (n, shape) in saved.items() if key not in params]
    vocab = sum(n for n, shape in own if shape and shape[-1] == spec.vocab_size)
    return vocab, sum(n for n, _ in own) - vocab


def _per_token_and_square(spec: ModelSpec, method: Method, precision: Precision) -> Any:
    """(bytes per token, bytes per s², bytes per token per vocabulary entry) of one forward."""
    import numpy as np

    rows = [_saved(spec, method, precision, seq) for seq in SEQS]
    design = np.array([[1.0, s, s * s] for s in SEQS])
    rest = np.linalg.solve(design, np.array([r[1] for r in rows], dtype=float))
    vocab = np.linalg.solve(design, np.array([r[0] for r in rows], dtype=float))
    return rest[1], rest[2], vocab[1] / spec.vocab_size


@pytest.mark.slow
@pytest.mark.parametrize(("method", "precision", "recipe"), RECIPES)
def test_gemma2_saves_what_the_estimator_counts(
    method: Method, precision: Precision, recipe: str
) -> None:
    extra_h: dict[int, float] = {}
    for hidden in (64, 128):
        gemma2 = _per_token_and_square(_tiny("gemma2", hidden), method, precision)
        llama = _per_token_and_square(_tiny("llama", hidden), method, precision)
        layers, heads = TINY_LLAMA.num_layers, TINY_LLAMA.num_heads
        # The scores: 8 bytes per score per layer (and none under SDPA).
        assert gemma2[1] == pytest.approx(EAGER_SCORE_SAVED_BYTES * heads * layers)
        assert llama[1] == pytest.approx(0.0, abs=1e-6)
        # The soft-capped logits: 2 bytes per token per vocabulary entry more.
        assert gemma2[2] - llama[2] == pytest.approx(_EXTRA_LOGITS_BYTES_PER_TOKEN_VOCAB["gemma2"])
        extra_h[hidden] = (gemma2[0] - llama[0]) / layers
    # The two extra norms: linear in h, at the estimator's coefficient (within a few bytes of a
    # term in the other widths that the h coefficient leaves out).
    slope = (extra_h[128] - extra_h[64]) / 64
    assert slope == pytest.approx(_EXTRA_H_COEF["gemma2"][recipe])
    assert abs(extra_h[64] - slope * 64) <= 2 * TINY_LLAMA.intermediate_size


def _config(method: Method, seq: int, *, ckpt: bool = True) -> TuningConfig:
    lora = method is not Method.FULL
    return TuningConfig(
        method=method,
        lora_rank=16 if lora else None,
        lora_targets="all-linear" if lora else None,
        seq_len=seq,
        grad_checkpointing=ckpt,
    )


@pytest.mark.parametrize("method", [Method.LORA, Method.QLORA])
def test_eager_scores_grow_with_the_square_of_the_sequence(method: Method) -> None:
    gemma2 = get_model("gemma2-9b")
    assert gemma2.model_type in EAGER_ATTENTION_MODEL_TYPES
    like_llama = dataclasses.replace(gemma2, name="gemma2-sdpa", model_type="llama")
    gpu = get_gpu("h100")
    config = _config(method, 4096, ckpt=False)
    eager, sdpa = (memory_terms(s, config, gpu) for s in (gemma2, like_llama))
    scores = gemma2.num_heads * 4096**2
    # Without checkpointing every layer keeps its scores, on top of the four norms' bytes.
    extra = eager.activations_gib - sdpa.activations_gib
    assert extra * 1024**3 >= gemma2.num_layers * EAGER_SCORE_SAVED_BYTES * scores
    # Time: every score computed (no causal skip) and the score chain's traffic.
    cal = calibration_for(gpu)
    t_eager, t_sdpa = (time_terms(s, config, gpu, calibration=cal) for s in (gemma2, like_llama))
    assert t_sdpa.eager_forward_s == t_sdpa.eager_backward_s == 0.0
    assert t_eager.eager_backward_s > t_eager.eager_forward_s > 0.0
    assert t_eager.forward_s_at_rate > t_sdpa.forward_s_at_rate
    long, short = (
        estimate(gemma2, _config(method, s), gpu, calibration=cal) for s in (8192, 2048)
    )
    assert long.step_time_s and short.step_time_s
    assert long.step_time_s > 4.5 * short.step_time_s  # 4× the tokens, and s² on top
