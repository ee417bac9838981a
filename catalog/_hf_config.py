"""Hugging Face ``config.json`` → :class:`ModelSpec`, for models the catalog does not list."""

from __future__ import annotations

import hashlib
import os
from datetime import date
from typing import Any

from catalog._io import expand_user, read_json_file, read_text_limited
from catalog._types import CatalogError, ModelSpec
from catalog.errors import ErrorKind, printable

#: ``tie_word_embeddings`` when a config.json omits it: transformers' per-architecture defaults
#: (LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config, Phi3Config default False; GemmaConfig,
#: Gemma2Config and the base PretrainedConfig default True).
_UNTIED_BY_DEFAULT = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "phi3"})

#: A config.json is a few kB; 4 MiB leaves room for huge tokenizer-embedded configs.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: Accepted (inclusive) ranges of the architecture facts: wide enough for every published model
#: (Llama 3.1 405B: 126 layers, hidden 16384, MLP 53248; Gemma: 256k vocab; Llama 4 Scout: 10M
#: context; Qwen MoE: 128 experts) and narrow enough that every derived size stays finite.
_RANGES: dict[str, tuple[int, int]] = {
    "num_hidden_layers": (1, 1024),
    "hidden_size": (1, 131_072),
    "intermediate_size": (1, 1_048_576),
    "num_attention_heads": (1, 4096),
    "num_key_value_heads": (1, 4096),
    "head_dim": (1, 4096),
    "vocab_size": (1, 4_194_304),
    "max_position_embeddings": (1, 1 << 27),
    "num_local_experts": (1, 4096),
    "num_experts": (1, 4096),
    "num_experts_per_tok": (1, 4096),
}


def model_from_hf_config(path: str | os.PathLike[str]) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face ``config.json`` (or a folder holding one).

    ``param_count`` is the sum of the shapes the config implies: decoder linears (all experts),
    embeddings and head (once when tied), RMSNorm weights (two per layer plus the final norm;
    four per layer for gemma2), q/k/v biases for qwen2 and the MoE router. On the catalog's 23
    models this equals the published total exactly or within 0.01%.

    Every architecture fact is checked against a range (see ``_RANGES``).

    Raises:
        CatalogError: The file is missing.
        DataError: It is not a regular file or not JSON.
        CatalogError: It is not a JSON object, or a field is missing, of the wrong type or out
            of range (``kind`` DATA).
    """
    config_path = expand_user(path)
    if config_path.is_dir():
        config_path = config_path / "config.json"
    shown = printable(config_path)
    if not config_path.exists():
        raise CatalogError(
            f"cannot read model config {shown}: no such file. Pass a catalog model name "
            f"(see 'ftplan catalog models') or a path to a Hugging Face config.json."
        )
    loaded = read_json_file(config_path, what="model config", max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(loaded, dict):
        raise _bad(
            f"model config {shown} holds a JSON {type(loaded).__name__}, not an object; "
            "give a Hugging Face config.json"
        )
    config: dict[str, Any] = loaded
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], "_name_or_path": config.get("_name_or_path", "")}

    def need(key: str, *, default: int | None = None) -> int:
        value = config.get(key)
        if value is None and default is not None:
            return default
        low, high = _RANGES[key]
        if value is None:
            raise _bad(
                f"model config {shown} lacks an integer {key!r}; ftplan needs the decoder's "
                "architecture facts from a decoder-only model's config.json"
            )
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _bad(
                f"model config {shown}: {key} must be an integer between {low} and {high}, got "
                f"{printable(repr(value))[:80]}; ftplan needs the decoder's architecture facts "
                "from a decoder-only model's config.json"
            )
        return value

    model_type = _text(config, "model_type", shown) or "unknown"
    layers, hidden = need("num_hidden_layers"), need("hidden_size")
    heads = need("num_attention_heads")
    kv_heads = need("num_key_value_heads", default=heads)
    head_dim = need("head_dim", default=max(1, hidden // heads))
    experts = need("num_local_experts", default=need("num_experts", default=1))
    per_token = need("num_experts_per_tok", default=1)
    tied = config.get("tie_word_embeddings", model_type not in _UNTIED_BY_DEFAULT)
    if not isinstance(tied, bool):
        raise _bad(f"model config {shown}: tie_word_embeddings must be true or false")
    if heads % kv_heads:
        raise _bad(
            f"model config {shown}: num_attention_heads={heads} is not a multiple of "
            f"num_key_value_heads={kv_heads}"
        )
    if per_token > experts:
        raise _bad(
            f"model config {shown}: num_experts_per_tok={per_token} exceeds the {experts} experts"
        )
    fields: dict[str, Any] = dict(
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=need("intermediate_size"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=need("vocab_size"),
        tied_embeddings=tied,
        max_seq_len=need("max_position_embeddings", default=2048),
        num_experts=experts,
        experts_per_token=per_token,
    )
    probe = ModelSpec(
        name="probe", hf_id="", model_type=model_type, param_count=1, source="", as_of="", **fields
    )
    folder = config_path.parent.name or str(config_path)
    return ModelSpec(
        # Folder names may hold anything, escape sequences included: the name is echoed.
        name=printable(folder)[:200],
        hf_id=_text(config, "_name_or_path", shown) or printable(config_path.parent),
        model_type=model_type,
        param_count=_param_count(probe, config),
        source=str(config_path),
        as_of=date.fromtimestamp(config_path.stat().st_mtime).isoformat(),
        **fields,
    )


def config_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a config.json's bytes: what a plan records to notice a changed file."""
    return hashlib.sha256(
        read_text_limited(path, what="model config", max_bytes=MAX_CONFIG_BYTES).encode("utf-8")
    ).hexdigest()


def _bad(message: str) -> CatalogError:
    return CatalogError(message, kind=ErrorKind.DATA)


def _text(config: dict[str, Any], key: str, shown: str) -> str:
    value = config.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(f"model config {shown}: {key} must be text, got {type(value).__name__}")
    return printable(value)[:300]


def _param_count(spec: ModelSpec, config: dict[str, object]) -> int:
    norms_per_layer = 4 if spec.model_type == "gemma2" else 2
    total = spec.params_per_layer() * spec.num_layers + spec.embedding_params()
    total += spec.hidden_size * (norms_per_layer * spec.num_layers + 1)
    if spec.model_type.startswith("qwen2") or config.get("attention_bias"):
        total += (spec.q_dim + 2 * spec.kv_dim) * spec.num_layers
    if spec.num_experts > 1:
        total += spec.hidden_size * spec.num_experts * spec.num_layers  # router (gate) weights
    return total
