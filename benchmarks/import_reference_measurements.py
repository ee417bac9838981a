"""Convert the reference H100 measurements into ftplan profile records.

Reads a reference file (``profiler/data/reference-h100.jsonl`` or ``reference-h100-2.jsonl``:
real training steps on one NVIDIA H100 80GB HBM3; conditions in ``profiler/data/README.md``) and
writes its full-depth rows as ``Source.MEASURED`` records that ``profiler.store.default_store()``
ships. Rows of a model truncated to 2 or 4 decoder layers are not profiles of that model and are
left out (the estimator's validation reads them from the reference file).

Usage::

    python benchmarks/import_reference_measurements.py \\
        --source profiler/data/reference-h100.jsonl \\
        --out profiler/data/profiles-h100-reference.jsonl
    python benchmarks/import_reference_measurements.py \\
        --source profiler/data/reference-h100-2.jsonl \\
        --out profiler/data/profiles-h100-reference-2.jsonl
    python benchmarks/import_reference_measurements.py \\
        --source profiler/data/reference-h100-optim8bit.jsonl \\
        --out profiler/data/profiles-h100-reference-optim8bit.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from catalog import atomic_write_text, get_model, to_jsonable  # noqa: E402
from profiler import (  # noqa: E402
    TARGETS_ALL_LINEAR,
    TARGETS_ATTENTION,
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    Provenance,
    Source,
    Status,
    TuningConfig,
)

GPU_NAME = "H100 SXM 80GB"
DEVICE_NAME = "NVIDIA H100 80GB HBM3"
VERSIONS = (
    ("torch", "2.11"),
    ("transformers", "5.17"),
    ("peft", "0.21.0"),
    ("bitsandbytes", "0.50.2"),
)
# The reference set carries no date of its own; "2026-11" marks it (sorts before any dated run).
REFERENCE_DATE = "2026-11"
METHOD_NOTE = (
    "reference set: random weights from the architecture config, random token ids, "
    "labels = inputs, 7 steps, step time = median of the last 5 (synchronized), "
    "peaks = torch.cuda.max_memory_allocated/reserved reset before those steps, "
    "PyTorch SDPA attention"
)
_MODES: dict[str, tuple[Method, Precision]] = {
    "full-mixed": (Method.FULL, Precision.BF16_MIXED),
    "full-bf16": (Method.FULL, Precision.BF16),
    "lora": (Method.LORA, Precision.BF16_MIXED),
    "qlora": (Method.QLORA, Precision.BF16_MIXED),
}
# Optimizer names of the reference files (absent: torch AdamW).
_OPTIMIZERS: dict[str | None, OptimizerKind] = {
    None: OptimizerKind.ADAMW,
    "adamw": OptimizerKind.ADAMW,
    "adamw8bit": OptimizerKind.ADAMW_8BIT,
}
# Target names of the reference files (absent in the first set: all-linear).
_TARGETS: dict[str | None, str] = {
    None: TARGETS_ALL_LINEAR,
    TARGETS_ALL_LINEAR: TARGETS_ALL_LINEAR,
    "attn": TARGETS_ATTENTION,
    "qv": "q_proj,v_proj",
}


def convert(row: dict[str, Any], *, source_name: str = "reference-h100.jsonl") -> Measurement:
    """One reference row as a Measurement.

    Raises:
        ValueError: If the row's mode, targets or status is not one the reference set uses.
    """
    if row["mode"] not in _MODES:
        raise ValueError(f"unknown mode {row['mode']!r} in {row}")
    method, precision = _MODES[row["mode"]]
    lora = method is not Method.FULL
    if lora and row["lora_targets"] not in _TARGETS:
        raise ValueError(f"unexpected LoRA targets {row['lora_targets']!r} in {row}")
    config = TuningConfig(
        method=method,
        precision=precision,
        lora_rank=int(row["lora_r"]) if lora else None,
        lora_alpha=None,  # reference alpha is always 2 x r, the default
        lora_targets=_TARGETS[row["lora_targets"]] if lora else None,
        micro_batch_size=int(row["batch"]),
        seq_len=int(row["seq"]),
        grad_checkpointing=bool(row["grad_ckpt"]),
        optimizer=_OPTIMIZERS[row.get("optim")],
    )
    status = Status(row["status"])
    ok = status is Status.OK
    return Measurement(
        model=row["model"],
        gpu=GPU_NAME,
        config=config,
        status=status,
        source=Source.MEASURED,
        provenance=Provenance(
            device=DEVICE_NAME,
            date=REFERENCE_DATE,
            versions=VERSIONS,
            method=METHOD_NOTE,
            notes=(
                f"{row['layers']} layers; static allocation {row['static_alloc_gib']} GiB; "
                f"device used (total - free) {row['device_used_gib']} GiB; conditions in "
                f"profiler/data/README.md ({source_name})"
            ),
        ),
        peak_allocated_gib=float(row["peak_alloc_gib"]) if ok else None,
        peak_reserved_gib=float(row["peak_reserved_gib"]) if ok else None,
        step_time_s=float(row["step_s"]) if ok else None,
        tokens_per_s=float(row["tokens_per_s"]) if ok else None,
        trainable_params=int(row["trainable_params"]),
        total_params=int(row["total_params"]),
        fit=(("num_layers", float(row["layers"])),),
    )


def main(argv: list[str] | None = None) -> int:
    """Convert the file; print how many records were written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument(
        "--source",
        type=Path,
        default=root / "profiler" / "data" / "reference-h100.jsonl",
    )
    parser.add_argument(
        "--out", type=Path, default=root / "profiler" / "data" / "profiles-h100-reference.jsonl"
    )
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.source.read_text().splitlines() if line.strip()]
    full_depth = [r for r in rows if int(r["layers"]) >= get_model(r["model"]).num_layers]
    records = [convert(row, source_name=args.source.name) for row in full_depth]
    atomic_write_text(
        args.out, "".join(json.dumps(to_jsonable(r), sort_keys=True) + "\n" for r in records)
    )
    print(
        f"wrote {len(records)} records to {args.out} "
        f"({len(rows) - len(full_depth)} truncated-depth rows left out)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
