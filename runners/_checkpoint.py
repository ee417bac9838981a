"""Training checkpoints: written atomically (a temporary folder renamed into place), found by step,
and restored with the optimizer, gradient scaler, RNG and data position.

Layout of ``<checkpoint_dir>/checkpoint-<step:08d>/``:

* ``model/``: ``save_pretrained`` output: the LoRA adapters only for LoRA/QLoRA, the whole model
  for full fine-tuning (loadable with transformers / PEFT as they are);
* ``trainer_state.pt``: optimizer and gradient-scaler state, torch / CUDA / Python RNG states;
* ``state.json``: step, epoch, tokens seen, config label (written last, so its presence marks a
  complete checkpoint even on file systems where the rename is not atomic, e.g. S3 syncs).

Multi-process runs (accelerate) store ``accelerate_state/`` from ``Accelerator.save_state``
instead of ``trainer_state.pt`` and the model folder.
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
STATE_FILE = "state.json"
TRAINER_STATE_FILE = "trainer_state.pt"
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


def list_checkpoints(checkpoint_dir: str | Path) -> list[CheckpointInfo]:
    """Complete checkpoints (with ``state.json``), oldest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found: list[CheckpointInfo] = []
    for child in root.iterdir():
        state_file = child / STATE_FILE
        if not (
            child.is_dir() and child.name.startswith(CHECKPOINT_PREFIX) and state_file.is_file()
        ):
            continue
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
            found.append(
                CheckpointInfo(
                    path=child,
                    step=int(state["step"]),
                    tokens_seen=int(state.get("tokens_seen", 0)),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue  # a damaged checkpoint is skipped; an older one is used
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(checkpoint_dir: str | Path) -> CheckpointInfo | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    checkpoint_dir: str | Path,
    *,
    prepared: Any,
    step: int,
    tokens_seen: int,
    epoch: float,
    label: str,
    accelerator: Any = None,
) -> Path:
    """Write one checkpoint atomically and prune old ones; returns its path.

    Args:
        checkpoint_dir: Folder holding the checkpoints.
        prepared: The recipe's PreparedModel (model, optimizer, grad_scaler).
        step: Optimizer steps completed.
        tokens_seen: Training tokens processed so far, over all GPUs.
        epoch: Fractional epoch reached.
        label: The config's label (for people reading the folder).
        accelerator: The accelerate Accelerator of a multi-process run, else None.
    """
    import torch

    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    is_main = accelerator is None or accelerator.is_main_process
    if is_main and tmp.exists():
        shutil.rmtree(tmp)
    if accelerator is not None:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / ACCELERATE_DIR))
        accelerator.wait_for_everyone()
    else:
        prepared.model.save_pretrained(str(tmp / MODEL_DIR))
        trainer_state = {
            "optimizer": prepared.optimizer.state_dict(),
            "grad_scaler": (
                prepared.grad_scaler.state_dict() if prepared.grad_scaler is not None else None
            ),
            "rng": _rng_state(),
        }
        torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
    if is_main:
        state = {"step": step, "tokens_seen": tokens_seen, "epoch": epoch, "config": label}
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
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


def load_checkpoint(
    info: CheckpointInfo, *, prepared: Any, method: Method, accelerator: Any = None
) -> None:
    """Restore model weights (adapters for LoRA/QLoRA), optimizer, scaler and RNG in place.

    Raises:
        ValueError: If the checkpoint's weights do not match the model (another config).
    """
    import torch

    if accelerator is not None:
        accelerator.load_state(str(info.path / ACCELERATE_DIR))
        return
    weights = _read_safetensors(info.path / MODEL_DIR)
    if method is Method.FULL:
        result = prepared.model.load_state_dict(weights, strict=False)
        tied = set()
        if getattr(prepared.model.config, "tie_word_embeddings", False):
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

        outcome: Any = set_peft_model_state_dict(prepared.model, weights)
        if outcome.unexpected_keys:
            raise ValueError(
                f"checkpoint {str(info.path)!r} holds adapters this model lacks "
                f"({sorted(outcome.unexpected_keys)[:5]}); resume with the launch spec that "
                "wrote it"
            )
    state = torch.load(info.path / TRAINER_STATE_FILE, map_location="cpu", weights_only=False)
    prepared.optimizer.load_state_dict(state["optimizer"])
    if prepared.grad_scaler is not None and state.get("grad_scaler") is not None:
        prepared.grad_scaler.load_state_dict(state["grad_scaler"])
    _set_rng_state(state["rng"])
