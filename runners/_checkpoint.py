"""Training checkpoints that survive what clouds do to them: complete only when a marker written
last says so (and lists every file with its size, so an S3 sync that uploaded the folder in any
order, or stopped half-way, never looks complete), found by step, restored with the optimizer,
gradient scaler, RNG and data position, and never unpickling arbitrary objects.

Layout of ``<checkpoint_dir>/checkpoint-<step:08d>/``:

* ``model/``: ``save_pretrained`` output: the LoRA adapters only for LoRA/QLoRA (also under
  several processes), the whole model for full fine-tuning;
* ``optimizer.pt``: optimizer and gradient-scaler state dicts (tensors, numbers, lists, dicts:
  read back with ``torch.load(weights_only=True)``);
* ``rng.safetensors``: torch CPU and CUDA generator states (uint8 tensors);
* ``state.json``: step, epoch, tokens seen, config label, Python's ``random`` state, and the
  run's identity (:func:`run_identity`: model, config, seed, learning rate, accumulation,
  processes, weights, the data's SHA-256), so a resume with another plan or data is refused;
* ``COMPLETE``: the marker, written last: every other file's relative path, size in bytes and
  SHA-256. Listing checks the sizes (cheap: an interrupted upload); loading checks the digests
  first (same-size corruption), and a checkpoint that fails either is skipped.

Only the main process writes; the other ranks write nothing into the folder. Sharded runs
(FSDP or DeepSpeed: full fine-tuning, sharded LoRA) store ``accelerate_state/`` from
``Accelerator.save_state``
instead of ``model/`` and ``optimizer.pt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog import atomic_write_text, open_regular, read_json_file
from profiler import Method
from runners._types import LaunchSpec

CHECKPOINT_PREFIX = "checkpoint-"
MARKER_FILE = "COMPLETE"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
MODEL_DIR = "model"
ACCELERATE_DIR = "accelerate_state"
KEEP_LAST = 2  # older checkpoints are deleted; two survive a crash during the newest save
_MAX_JSON = 16 * 1024 * 1024  # a marker or state file is a few kB


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointInfo:
    """A complete checkpoint on disk; ``identity`` is the run that wrote it (:func:`run_identity`,
    empty for checkpoints of older ftplan versions)."""

    path: Path
    step: int
    tokens_seen: int
    identity: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


_HASH_CHUNK_BYTES = 8 * 1024 * 1024


class CheckpointMismatch(ValueError):
    """The checkpoints in the folder were written by another run (plan or data): resuming them
    would train something else, and restarting would prune them."""


def _files(folder: Path) -> list[Path]:
    return [
        path for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MARKER_FILE
    ]


def _file_sizes(folder: Path) -> dict[str, int]:
    return {path.relative_to(folder).as_posix(): path.stat().st_size for path in _files(folder)}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open_regular(path, what="file") as handle:  # a FIFO or device is refused, not read
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _file_digests(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): file_sha256(path) for path in _files(folder)}


def run_identity(spec: LaunchSpec, *, world_size: int, data_sha256: str) -> dict[str, Any]:
    """What makes a checkpoint this run's: the model, the config, seed, learning rate,
    accumulation, number of processes (the data order depends on it), the weights it started
    from and the training data's SHA-256. A run may resume with other step limits, checkpoint
    intervals, eval data or expectations, never with another of these."""
    return {
        "model": spec.model.name,
        "config": spec.config.label(),
        "seed": spec.seed,
        "learning_rate": spec.peak_learning_rate,
        "grad_accum_steps": spec.grad_accum_steps,
        "world_size": world_size,
        "weights": "random-init" if spec.random_init else spec.weights_source,
        "tokenizer": spec.tokenizer or "the model's",
        "data_sha256": data_sha256,
    }


def identity_mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first field where a checkpoint's recorded identity differs from this run's, as
    ``field: checkpoint X, this run Y``; None when they agree (fields a checkpoint written by
    an older ftplan lacks are not compared)."""
    for key, value in current.items():
        if key in recorded and recorded[key] != value:
            return f"{key}: the checkpoint has {recorded[key]!r}, this run {value!r}"
    return None


def verify_digests(folder: Path) -> None:
    """Check every file against the SHA-256 its marker lists (markers written before digests
    were kept list sizes only and pass).

    Raises:
        ValueError: A file's content differs from when it was written.
    """
    marker = read_json_file(folder / MARKER_FILE, what="marker", max_bytes=_MAX_JSON)
    for name, expected in sorted((marker.get("sha256") or {}).items()):
        if file_sha256(folder / name) != expected:
            raise ValueError(
                f"checkpoint {str(folder)!r}: {name} does not match the SHA-256 its marker "
                "recorded (changed or corrupted after it was written)"
            )


def is_complete(folder: Path) -> bool:
    """True when the marker exists and every file it lists is there with its size."""
    try:
        marker = read_json_file(folder / MARKER_FILE, what="marker", max_bytes=_MAX_JSON)
        files = marker["files"]
        if not isinstance(files, dict) or STATE_FILE not in files:
            return False
        return all(
            (folder / name).is_file() and (folder / name).stat().st_size == int(size)
            for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(checkpoint_dir: str | Path) -> list[CheckpointInfo]:
    """Complete checkpoints (see :func:`is_complete`), oldest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found: list[CheckpointInfo] = []
    for child in root.iterdir():
        if not (child.is_dir() and child.name.startswith(CHECKPOINT_PREFIX)):
            continue
        if not is_complete(child):
            continue  # interrupted save or upload: an older checkpoint is used
        try:
            state = read_json_file(child / STATE_FILE, what="state", max_bytes=_MAX_JSON)
            identity = state.get("run") or {}
            found.append(
                CheckpointInfo(
                    path=child,
                    step=int(state["step"]),
                    tokens_seen=int(state.get("tokens_seen", 0)),
                    identity=identity if isinstance(identity, dict) else {},
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(checkpoint_dir: str | Path) -> CheckpointInfo | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def _python_rng_to_json(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(data: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = data
    return (int(version), tuple(int(x) for x in internal), gauss)


def _rng_tensors() -> dict[str, Any]:
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{index}"] = state
    return tensors


def _unwrap(model: Any, accelerator: Any) -> Any:
    return accelerator.unwrap_model(model) if accelerator is not None else model


def _uses_accelerate_state(method: Method, accelerator: Any) -> bool:
    """Sharded parameters (FSDP, DeepSpeed ZeRO-3; full FT is always sharded across processes):
    saving them is a collective that accelerate's ``save_state`` runs on every rank."""
    if accelerator is None:
        return False
    kind = str(getattr(accelerator, "distributed_type", "")).upper()
    return not method.traits.adapters or "FSDP" in kind or "DEEPSPEED" in kind


def save_checkpoint(
    checkpoint_dir: str | Path,
    *,
    prepared: Any,
    step: int,
    tokens_seen: int,
    epoch: float,
    label: str,
    method: Method,
    accelerator: Any = None,
    identity: dict[str, Any] | None = None,
) -> Path:
    """Write one checkpoint (temporary folder, marker last, renamed into place) and prune old
    ones; returns its path. Collective under several processes: every rank must call it.

    Args:
        checkpoint_dir: Folder holding the checkpoints.
        prepared: The recipe's PreparedModel (model, optimizer, grad_scaler).
        step: Optimizer steps completed.
        tokens_seen: Training tokens processed so far, over all GPUs.
        epoch: Fractional epoch reached.
        label: The config's label (for people reading the folder).
        method: The recipe (LoRA/QLoRA checkpoints hold adapters, not the base model).
        accelerator: The accelerate Accelerator of a multi-process run, else None.
        identity: The run's :func:`run_identity`, kept in ``state.json``.
    """
    import torch
    from safetensors.torch import save_file

    root = Path(checkpoint_dir)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    is_main = accelerator is None or accelerator.is_main_process
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if _uses_accelerate_state(method, accelerator):
        accelerator.save_state(str(tmp / ACCELERATE_DIR))
    elif is_main:
        _unwrap(prepared.model, accelerator).save_pretrained(str(tmp / MODEL_DIR))
        optimizer_state = {
            "optimizer": prepared.optimizer.state_dict(),
            "grad_scaler": (
                prepared.grad_scaler.state_dict() if prepared.grad_scaler is not None else None
            ),
        }
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
    if is_main:
        save_file({k: v.contiguous() for k, v in _rng_tensors().items()}, str(tmp / RNG_FILE))
        state = {
            "step": step,
            "tokens_seen": tokens_seen,
            "epoch": epoch,
            "config": label,
            "python_rng": _python_rng_to_json(random.getstate()),
            "run": identity or {},
        }
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
        marker = {"step": step, "files": _file_sizes(tmp), "sha256": _file_digests(tmp)}
        atomic_write_text(tmp / MARKER_FILE, json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-KEEP_LAST]:
            shutil.rmtree(old.path, ignore_errors=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return final


def _read_safetensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    if not tensors:
        raise FileNotFoundError(f"checkpoint folder {str(folder)!r} holds no .safetensors files")
    return tensors


@dataclass(frozen=True, slots=True)
class _Loaded:
    weights: dict[str, Any]
    optimizer_state: dict[str, Any]
    rng: dict[str, Any]
    python_rng: tuple[Any, ...]


def _read(info: CheckpointInfo) -> _Loaded:
    """Read everything before changing anything, so a damaged checkpoint leaves the model as
    it was and an older one can be tried."""
    import torch
    from safetensors.torch import load_file

    state = read_json_file(info.path / STATE_FILE, what="checkpoint state", max_bytes=_MAX_JSON)
    optimizer_state = torch.load(info.path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    return _Loaded(
        weights=_read_safetensors(info.path / MODEL_DIR),
        optimizer_state=optimizer_state,
        rng=load_file(str(info.path / RNG_FILE)),
        python_rng=_python_rng_from_json(state["python_rng"]),
    )


def _set_rng(loaded: _Loaded) -> None:
    import torch

    torch.set_rng_state(loaded.rng["torch"])
    random.setstate(loaded.python_rng)
    cuda = sorted(k for k in loaded.rng if k.startswith("cuda_"))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([loaded.rng[f"cuda_{i}"] for i in range(len(cuda))])


def load_checkpoint(
    info: CheckpointInfo, *, prepared: Any, method: Method, accelerator: Any = None
) -> None:
    """Restore model weights (adapters for LoRA/QLoRA), optimizer, scaler and RNG in place.

    Under several processes every rank reads the same files (written by the main process).

    Raises:
        ValueError: If the checkpoint's weights do not match the model (another config) or a
            file is damaged (its SHA-256 differs from the marker's, or it does not parse).
    """
    verify_digests(info.path)
    if _uses_accelerate_state(method, accelerator):
        accelerator.load_state(str(info.path / ACCELERATE_DIR))
        return
    try:
        loaded = _read(info)
    except Exception as exc:  # any damaged file (unpickling refused, truncated safetensors,
        # bad JSON) means one thing: this checkpoint is unusable, so an older one is tried
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {str(info.path)!r} cannot be read: {first}") from None
    model = _unwrap(prepared.model, accelerator)
    if not method.traits.adapters:
        result = model.load_state_dict(loaded.weights, strict=False)
        tied = set()
        if getattr(model.config, "tie_word_embeddings", False):
            tied = {"lm_head.weight"}
        missing = set(result.missing_keys) - tied
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {str(info.path)!r} does not match the model: missing "
                f"{sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}; "
                "resume with the launch spec that wrote it"
            )
    else:
        from peft import set_peft_model_state_dict

        outcome: Any = set_peft_model_state_dict(model, loaded.weights)
        if outcome.unexpected_keys:
            raise ValueError(
                f"checkpoint {str(info.path)!r} holds adapters this model lacks "
                f"({sorted(outcome.unexpected_keys)[:5]}); resume with the launch spec that "
                "wrote it"
            )
    prepared.optimizer.load_state_dict(loaded.optimizer_state["optimizer"])
    scaler_state = loaded.optimizer_state.get("grad_scaler")
    if prepared.grad_scaler is not None and scaler_state is not None:
        prepared.grad_scaler.load_state_dict(scaler_state)
    if accelerator is None or accelerator.is_main_process:
        _set_rng(loaded)


def resume_from(
    checkpoint_dir: str | Path,
    *,
    prepared: Any,
    method: Method,
    accelerator: Any = None,
    log: Any = None,
) -> CheckpointInfo | None:
    """Load the newest complete checkpoint; when it cannot be read, fall back to the previous.

    Returns:
        The checkpoint loaded, or None when there is none.

    Raises:
        ValueError: Checkpoints are there but none can be read: starting over would prune them,
            so the run stops and says so.
    """
    found = list_checkpoints(checkpoint_dir)
    for info in reversed(found):
        try:
            load_checkpoint(info, prepared=prepared, method=method, accelerator=accelerator)
        except ValueError as exc:
            if log is not None:
                log({"event": "checkpoint_skipped", "path": str(info.path), "reason": str(exc)})
            continue
        return info
    if found:
        raise ValueError(
            f"none of the {len(found)} checkpoint(s) in {str(checkpoint_dir)!r} can be read "
            "(see the checkpoint_skipped lines); starting over would prune them. To fix: move "
            "the folder away to start from step 0, or restore a good checkpoint"
        )
    return None


def check_resumable(checkpoint_dir: str | Path, identity: dict[str, Any]) -> None:
    """Refuse to resume checkpoints another run wrote (other plan, data, weights, processes):
    before any weight loads, against the newest checkpoint's recorded identity.

    Raises:
        CheckpointMismatch: Naming the first field that differs, with what to do.
    """
    found = list_checkpoints(checkpoint_dir)
    if not found:
        return
    newest = found[-1]
    problem = identity_mismatch(newest.identity, identity)
    if problem is not None:
        raise CheckpointMismatch(
            f"the checkpoints in {str(checkpoint_dir)!r} (newest: step {newest.step}) belong to "
            f"another run ({problem}); resuming would train something else and starting over "
            "would prune them. To fix: resume with the plan and data that wrote them, or write "
            "to another output folder"
        )
