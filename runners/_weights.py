"""The weights a run fine-tunes: where they are (a local folder resolved against the caller's
folder, a hub id, or ``s3://``), whether their architecture is the plan's model, and whether
their tokenizer loads. Checked before anything starts, is uploaded or is billed.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from catalog import ModelSpec, expand_user, printable, read_json_file
from runners._types import RunnerError

CONFIG_FILE = "config.json"
#: The variable huggingface_hub reads a token from (gated models such as Llama 2); a run gets
#: the caller's token under this name.
HF_TOKEN_ENV = "HF_TOKEN"
# A Hugging Face repo id: ``name`` or ``owner/name`` (letters, digits, ``-_.``), as the hub's
# validate_repo_id accepts; anything with more slashes can only be a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")

# Hub ids whose repositories are gated (the account behind the token must accept the model's
# licence on its Hugging Face page before any file downloads): Meta's Llama, Google's Gemma and
# Mistral AI's models (their model pages, checked 2025). Without a token the download fails
# after the job has started and is billed.
GATED_HUB_PREFIXES = ("meta-llama/", "google/gemma", "mistralai/")

# ModelSpec field -> the config.json keys that may hold it (first present wins) and the default
# when none is present (None: required).
_ARCHITECTURE_FIELDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("num_layers", "layers", ("num_hidden_layers",)),
    ("hidden_size", "hidden size", ("hidden_size",)),
    ("num_heads", "attention heads", ("num_attention_heads",)),
    ("num_kv_heads", "KV heads", ("num_key_value_heads", "num_attention_heads")),
    ("intermediate_size", "intermediate size", ("intermediate_size",)),
    ("vocab_size", "vocabulary", ("vocab_size",)),
    ("num_experts", "experts", ("num_local_experts", "num_experts")),
    ("head_dim", "head dimension", ("head_dim",)),
)


#: Largest config or tokenizer file of a weights folder (a 256k-vocabulary tokenizer.json is
#: ~35 MB): Hugging Face reads these whole before a run starts.
MAX_WEIGHTS_TEXT_BYTES = 256 * 1024 * 1024
_TEXT_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")


class MissingWeightsError(RunnerError):
    """``--weights`` names a local folder that is not there."""


def is_s3(source: str) -> bool:
    return source.startswith("s3://")


def resolve_weights(weights: str, *, cwd: Path | None = None) -> str:
    """An absolute folder for a local path (the run's working folder differs from the
    caller's), else the hub id or ``s3://`` URI unchanged.

    Raises:
        RunnerError: If ``weights`` names a local path that does not exist, or is neither a
            path nor a hub id.
    """
    if is_s3(weights):
        return weights.rstrip("/")
    base = cwd or Path.cwd()
    path = expand_user(weights)
    candidate = path if path.is_absolute() else base / path
    if candidate.exists():
        if not candidate.is_dir():
            raise RunnerError(
                f"--weights {weights!r} is a file; it must be a folder holding config.json, the "
                "weights and the tokenizer (what save_pretrained writes), or a hub id"
            )
        return str(candidate.resolve())
    looks_local = weights.startswith((".", "/", "~")) or not _HUB_ID.match(weights)
    if looks_local:
        raise MissingWeightsError(
            f"--weights {weights!r}: no such folder (looked in {str(candidate)!r}). To fix: "
            "pass the folder save_pretrained wrote, or a hub id like meta-llama/Llama-2-7b-hf"
        )
    return weights


def architecture_mismatch(planned: ModelSpec, config: Mapping[str, Any]) -> str | None:
    """The first architecture fact where a checkpoint's ``config.json`` differs from the plan's
    model, as one line naming the field and both values; None when they agree.

    Compared: the model type, layers, hidden size, attention and KV heads, intermediate size,
    vocabulary, experts and head dimension (hidden size / heads where the config has none).
    Multimodal configs are compared on their ``text_config``.
    """
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), Mapping):
        config = config["text_config"]
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type != planned.model_type:
        return (
            f"model type (model_type): the checkpoint has {model_type!r}, the plan's model "
            f"{planned.name!r} has {planned.model_type!r}"
        )
    for field, label, keys in _ARCHITECTURE_FIELDS:
        planned_value = getattr(planned, field)
        found = next((config[k] for k in keys if config.get(k) is not None), None)
        if found is None:
            if field == "num_experts":
                found = 1
            elif field == "head_dim" and config.get("num_attention_heads"):
                found = int(config["hidden_size"]) // int(config["num_attention_heads"])
            else:
                return f"the checkpoint's config.json has no {keys[0]!r} ({label})"
        whole = isinstance(found, int) or (isinstance(found, float) and found.is_integer())
        if isinstance(found, bool) or not whole:
            return f"the checkpoint's config.json has {keys[0]}={str(found)[:40]!r}, not a count"
        if int(found) != int(planned_value):
            return (
                f"{label} ({keys[0]}): the checkpoint has {str(found)[:40]}, the plan's model "
                f"{planned.name!r} has {planned_value}"
            )
    return None


def check_weights_folder(folder: str | Path) -> None:
    """Refuse a local weights folder that would hang or flood whatever reads it (ftplan's
    config check, the tokenizer, transformers): an entry that is a FIFO, device or socket (also
    behind a symbolic link, or a link loop), or a config/tokenizer file over
    :data:`MAX_WEIGHTS_TEXT_BYTES`.

    Raises:
        RunnerError: On the first such entry, naming it.
    """
    root = Path(folder)
    shown = printable(root)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise RunnerError(f"weights folder {shown!r} cannot be read: {exc.strerror}") from None
    for entry in entries:
        try:
            info = os.stat(entry.path)  # follows links: what a reader would open
        except FileNotFoundError:
            continue  # a dangling link: the loaders report the file they miss
        except OSError as exc:
            raise RunnerError(
                f"weights folder {shown!r}: {printable(entry.name)!r} cannot be opened "
                f"({exc.strerror}). To fix: replace it with the file save_pretrained wrote"
            ) from None
        if stat.S_ISDIR(info.st_mode):
            continue
        if not stat.S_ISREG(info.st_mode):
            raise RunnerError(
                f"weights folder {shown!r}: {printable(entry.name)!r} is not a regular file (a "
                "FIFO, device or socket). To fix: replace it with the file save_pretrained wrote"
            )
        if entry.name.endswith(_TEXT_SUFFIXES) and info.st_size > MAX_WEIGHTS_TEXT_BYTES:
            raise RunnerError(
                f"weights folder {shown!r}: {printable(entry.name)!r} is "
                f"{info.st_size >> 20} MiB, more than any config or tokenizer file "
                f"({MAX_WEIGHTS_TEXT_BYTES >> 20} MiB). To fix: replace it with the file "
                "save_pretrained wrote"
            )


def read_local_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` of a local weights folder, through the bounded reader (after
    :func:`check_weights_folder`).

    Raises:
        RunnerError: If the folder holds no readable config.json, or an entry that is not a
            regular file.
        DataError: If config.json is not UTF-8 JSON (nested too deep, a huge number, ...).
    """
    check_weights_folder(folder)
    path = Path(folder) / CONFIG_FILE
    try:
        data = read_json_file(path, what="weights config", max_bytes=MAX_WEIGHTS_TEXT_BYTES)
    except OSError:
        raise RunnerError(
            f"weights folder {printable(folder)!r} holds no {CONFIG_FILE}. To fix: pass the "
            "folder save_pretrained wrote (config.json, weights, tokenizer)"
        ) from None
    if not isinstance(data, dict):
        raise RunnerError(
            f"{printable(path)!r} holds a JSON {type(data).__name__}, not an object. To fix: "
            "pass the folder save_pretrained wrote"
        )
    arch = data.get("text_config") if "num_hidden_layers" not in data else data
    for _field, label, keys in _ARCHITECTURE_FIELDS:
        for key in keys:
            value = arch.get(key) if isinstance(arch, dict) else None
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**9
            ):
                raise RunnerError(
                    f"{printable(path)!r}: {key} ({label}) is {str(value)[:40]!r}, not a count "
                    "between 0 and 10**9. To fix: pass the folder save_pretrained wrote"
                )
    return data


def check_architecture(planned: ModelSpec, config: Mapping[str, Any], *, source: str) -> None:
    """Refuse weights whose architecture is not the plan's model.

    Raises:
        RunnerError: On the first differing fact (see :func:`architecture_mismatch`).
    """
    mismatch = architecture_mismatch(planned, config)
    if mismatch is not None:
        raise RunnerError(
            f"--weights {source!r} is not the planned model: {mismatch}. To fix: pass the "
            "weights of the model you planned, or re-plan with --model "
            f"{source.rstrip('/')}/config.json; nothing was started"
        )


def check_tokenizer(folder: str | Path) -> str:
    """Load the folder's tokenizer (offline) to prove it works; returns its class name.

    Raises:
        RunnerError: If no tokenizer files are there or they do not load.
    """
    root = Path(folder)
    check_weights_folder(root)
    if not any((root / name).is_file() for name in _TOKENIZER_FILES):
        raise RunnerError(
            f"weights folder {str(root)!r} holds no tokenizer ({', '.join(_TOKENIZER_FILES)}). "
            "To fix: save the tokenizer next to the weights (tokenizer.save_pretrained(DIR)); "
            "ftplan never trains real weights with another tokenizer"
        )
    from transformers import AutoTokenizer  # deferred: heavy, only launches need it

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunnerError(
            f"the tokenizer in {str(root)!r} does not load: {first}. To fix: save it again "
            "with tokenizer.save_pretrained(DIR)"
        ) from None
    return type(tokenizer).__name__


def read_hf_token(env: Mapping[str, str], variable: str | None) -> str | None:
    """The Hugging Face token a cloud run gets: ``$variable`` (``--hf-token-env``), else
    ``$HF_TOKEN``; None when that is unset or empty.

    Raises:
        RunnerError: ``variable`` is named but unset or empty.
    """
    token = env.get(variable or HF_TOKEN_ENV) or None
    if variable is not None and token is None:
        raise RunnerError(
            f"--hf-token-env {variable}: the variable is not set (or empty). To fix: export "
            f"{variable}=hf_... (a token that can read the model), or leave the option out"
        )
    return token


def gated_token_problem(
    spec: ModelSpec, *, weights: str | None, random_init: bool, has_token: bool, where: str
) -> str | None:
    """Why the run cannot read its weights: a gated hub repository (:data:`GATED_HUB_PREFIXES`)
    without a Hugging Face token where the run starts; None when the weights are random, local,
    on S3, not gated, or a token is there.

    Args:
        spec: The plan's model.
        weights: ``--weights`` (None: the model's hub id).
        random_init: The run draws random weights and downloads nothing.
        has_token: Whether a token reaches the run (its environment, or the login's cache).
        where: How the token would reach the run, for the fix (e.g. ``export HF_TOKEN=...``).
    """
    source = weights or spec.hf_id
    if random_init or has_token or is_s3(source) or not _HUB_ID.match(source):
        return None
    if weights is not None and expand_user(weights).exists():
        return None
    if not source.startswith(GATED_HUB_PREFIXES):
        return None
    return (
        f"{source} is a gated model on the Hugging Face Hub and no token reaches the run, so "
        f"its download would fail after the run has started. To fix: {where} (from an account "
        "that accepted the model's licence), or pass --weights with a copy of the weights, or "
        "--random-init for a memory and speed check"
    )
