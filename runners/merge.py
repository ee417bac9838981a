"""Merge a LoRA/QLoRA run's adapters into its base weights (bf16), saved with the tokenizer,
ready to serve (``ftplan merge RUN``). Full fine-tuning's ``final/`` is already the whole model.

torch, transformers and peft are imported inside :func:`merge_run` only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from catalog import read_text_limited
from runners._run_files import OUTPUT_DIR, SPEC_FILE
from runners._types import LaunchSpec, RunnerError, launch_spec_from_json
from runners._weights import check_weights_folder
from runners.local import RUN_ID_PATTERN, run_dir_for

FINAL_DIR = "final"
MERGED_DIR = "merged"
ADAPTER_CONFIG = "adapter_config.json"


def run_folder(run: str, *, runs_dir: str | Path) -> Path:
    """The folder of a local run, given its id (under ``runs_dir``) or its path.

    Raises:
        RunnerError: If neither names a run folder (one holding launch.json).
    """
    candidates = [Path(run)]
    if RUN_ID_PATTERN.match(run) and ".." not in run:
        candidates.append(run_dir_for(runs_dir, run))
    for candidate in candidates:
        if (candidate / SPEC_FILE).is_file():
            return candidate.resolve()
    raise RunnerError(
        f"no local run {run!r} (looked for {SPEC_FILE} in {run!r} and under "
        f"{str(runs_dir)!r}). To fix: pass the run id printed by 'ftplan launch', or --runs-dir"
    )


def merge_source(spec: LaunchSpec) -> str:
    """The base weights the adapters were trained on.

    Raises:
        RunnerError: Full fine-tuning (nothing to merge) or a random-init run (no base weights).
    """
    if not spec.config.method.traits.adapters:
        raise RunnerError(
            "this run is full fine-tuning: its final/ folder is already the whole model "
            "(with the tokenizer); there are no adapters to merge"
        )
    if spec.random_init:
        raise RunnerError(
            "this run trained adapters on random weights (--random-init); there are no base "
            "weights to merge them into. To fix: launch with --weights DIR or a hub id"
        )
    return spec.weights_source


def merge_run(run_dir: Path, *, out: Path | None = None) -> Path:
    """Merge ``run_dir``'s adapters (``output/final``) into the base weights in bf16 and save
    the model and tokenizer to ``out`` (default ``<run>/output/merged``), atomically.

    QLoRA adapters merge into the 16-bit base, not the 4-bit one they trained against (the
    usual practice; merging into NF4 weights would round the update away).

    Returns:
        The folder written.

    Raises:
        RunnerError: Full or random-init run, no finished adapters, or ``out`` already exists.
    """
    spec = launch_spec_from_json(
        read_text_limited(run_dir / SPEC_FILE, what="launch spec", max_bytes=16 * 1024 * 1024),
        where=str(run_dir / SPEC_FILE),
    )
    base = merge_source(spec)
    adapters = run_dir / OUTPUT_DIR / FINAL_DIR
    if not (adapters / ADAPTER_CONFIG).is_file():
        raise RunnerError(
            f"{str(adapters)!r} holds no {ADAPTER_CONFIG}: the run has not finished. To fix: "
            "wait for it (ftplan status RUN) and merge then"
        )
    target = (out or run_dir / OUTPUT_DIR / MERGED_DIR).resolve()
    if target.exists():
        raise RunnerError(f"{str(target)!r} already exists. To fix: pass --out NEW_DIR")
    # Before transformers and peft open them: no FIFO, device or oversized config there.
    check_weights_folder(adapters)
    if Path(base).is_dir():
        check_weights_folder(base)
    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers >= 4.56 names the load dtype ``dtype``, older releases ``torch_dtype``.
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(base, **{dtype_key: torch.bfloat16})
    merged = PeftModel.from_pretrained(model, str(adapters)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(adapters), local_files_only=True)
    tmp = target.parent / f".tmp-{target.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
