"""Model specs for tests, independent of the shipped catalog: a tiny Llama that CPU tests build
from config with random weights (never downloaded), and Llama 2 7B's facts for planner tests."""

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

# meta-llama/Llama-2-7b-hf config.json; 6,738,415,616 parameters.
LLAMA2_7B = ModelSpec(
    name="llama2-7b",
    hf_id="meta-llama/Llama-2-7b-hf",
    model_type="llama",
    num_layers=32,
    hidden_size=4096,
    intermediate_size=11008,
    num_heads=32,
    num_kv_heads=32,
    head_dim=128,
    vocab_size=32000,
    tied_embeddings=False,
    param_count=6_738_415_616,
    max_seq_len=4096,
    source="test",
    as_of="2023-07-18",
)
