"""Hugging Face ``config.json`` → :class:`ModelSpec`, for models the catalog does not list."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import Any

from catalog._types import CatalogError, ModelSpec

#: ``tie_word_embeddings`` when a config.json omits it: transformers' per-architecture defaults
#: (LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config, Phi3Config default False; GemmaConfig,
#: Gemma2Config and the base PretrainedConfig default True).
_UNTIED_BY_DEFAULT = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "phi3"})


def model_from_hf_config(path: str | os.PathLike[str]) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face ``config.json`` (or a folder holding one).

    ``param_count`` is the sum of the shapes the config implies: decoder linears (all experts),
    embeddings and head (once when tied), RMSNorm weights (two per layer plus the final norm;
    four per layer for gemma2), q/k/v biases for qwen2 and the MoE router. On the catalog's 23
    models this equals the published total exactly or within 0.01%.

    Raises:
        CatalogError: The file is missing, not JSON, or lacks a required key.
    """
    config_path = Path(path).expanduser()
    if config_path.is_dir():
        config_path = config_path / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(
            f"cannot read model config {config_path}: {exc.strerror}. Pass a catalog model name "
            f"(see 'ftplan catalog models') or a path to a Hugging Face config.json."
        ) from None
    except json.JSONDecodeError as exc:
        raise CatalogError(f"model config {config_path} is not valid JSON: {exc}") from None
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], "_name_or_path": config.get("_name_or_path", "")}

    def need(key: str) -> int:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CatalogError(
                f"model config {config_path} lacks an integer {key!r} (got {value!r}); ftplan "
                f"needs the decoder's architecture facts from a decoder-only model's config.json."
            )
        return value

    model_type = str(config.get("model_type", "unknown"))
    layers, hidden = need("num_hidden_layers"), need("hidden_size")
    heads = need("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    tied = config.get("tie_word_embeddings", model_type not in _UNTIED_BY_DEFAULT)
    experts = config.get("num_local_experts") or config.get("num_experts") or 1
    fields: dict[str, Any] = dict(
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=need("intermediate_size"),
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        vocab_size=need("vocab_size"),
        tied_embeddings=bool(tied),
        max_seq_len=int(config.get("max_position_embeddings") or 2048),
        num_experts=int(experts),
        experts_per_token=int(config.get("num_experts_per_tok") or 1),
    )
    probe = ModelSpec(
        name="probe", hf_id="", model_type=model_type, param_count=1, source="", as_of="", **fields
    )
    folder = config_path.parent.name or str(config_path)
    return ModelSpec(
        name=folder,
        hf_id=str(config.get("_name_or_path") or config_path.parent),
        model_type=model_type,
        param_count=_param_count(probe, config),
        source=str(config_path),
        as_of=date.fromtimestamp(config_path.stat().st_mtime).isoformat(),
        **fields,
    )


def _param_count(spec: ModelSpec, config: dict[str, object]) -> int:
    norms_per_layer = 4 if spec.model_type == "gemma2" else 2
    total = spec.params_per_layer() * spec.num_layers + spec.embedding_params()
    total += spec.hidden_size * (norms_per_layer * spec.num_layers + 1)
    if spec.model_type.startswith("qwen2") or config.get("attention_bias"):
        total += (spec.q_dim + 2 * spec.kv_dim) * spec.num_layers
    if spec.num_experts > 1:
        total += spec.hidden_size * spec.num_experts * spec.num_layers  # router (gate) weights
    return total
