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
* ``state.json``: step, epoch, tokens seen, config label, Python's ``random`` state;
* ``COMPLETE``: the marker, written last: every other file's relative path and size in bytes.

Only the main process writes; the other ranks write nothing into the folder. Sharded runs
(FSDP or DeepSpeed: full fine-tuning, sharded LoRA) store ``accelerate_state/`` from
``Accelerator.save_state``
instead of ``model/`` and ``optimizer.pt``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog import atomic_write_text
from profiler import Method

CHECKPOINT_PREFIX = "checkpoint-"
MARKER_FILE = "COMPLETE"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
MODEL_DIR = "model"
ACCELERATE_DIR = "accelerate_state"
KEEP_LAST = 2  # older checkpoints are deleted; two survive a crash during the newest save


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointInfo:
    """A complete checkpoint on disk."""

    path: Path
    step: int
    tokens_seen: int


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def _file_sizes(folder: Path) -> dict[str, int]:
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MARKER_FILE
    }


def is_complete(folder: Path) -> bool:
    """True when the marker exists and every file it lists is there with its size."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
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
            state = json.loads((child / STATE_FILE).read_text(encoding="utf-8"))
            found.append(
                CheckpointInfo(
                    path=child,
                    step=int(state["step"]),
                    tokens_seen=int(state.get("tokens_seen", 0)),
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
    return method is Method.FULL or "FSDP" in kind or "DEEPSPEED" in kind


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
        }
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
        marker = {"step": step, "files": _file_sizes(tmp)}
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

    state = json.loads((info.path / STATE_FILE).read_text(encoding="utf-8"))
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
            file is damaged.
    """
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
    if method is Method.FULL:
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
        The checkpoint loaded, or None when none is complete (or none loads).
    """
    for info in reversed(list_checkpoints(checkpoint_dir)):
        try:
            load_checkpoint(info, prepared=prepared, method=method, accelerator=accelerator)
        except ValueError as exc:
            if log is not None:
                log({"event": "checkpoint_skipped", "path": str(info.path), "reason": str(exc)})
            continue
        return info
    return None
