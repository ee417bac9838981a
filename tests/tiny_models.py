"""Tiny model specs for CPU tests: built from config with random weights, never downloaded."""

from __future__ import annotations

from catalog import ModelSpec

# A 2-layer Llama: hidden 64, GQA (4 heads, 2 KV heads), byte-sized vocabulary. 106,816
# parameters = 2·256·64 (embeddings, head) + 2·(36,864 linear + 128 norm) + 64 (final norm).
TINY_LLAMA = ModelSpec(
    name="tiny-llama",
    hf_id="tiny/llama",
    model_type="llama",
    num_layers=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    vocab_size=256,
    tied_embeddings=False,
    param_count=106_816,
    max_seq_len=256,
    source="test",
    as_of="2026-11-23",
)
