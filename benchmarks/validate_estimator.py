"""Validate the analytic estimator against the real H100 reference runs, and time it.

Prints, for the full-depth rows of both shipped H100 sets (profiler/data/reference-h100.jsonl and
reference-h100-2.jsonl; 7 models): first-principles (uncalibrated) errors, leave-one-model-out
cross-validated errors of the fitted calibration (every fitted constant refitted without the
held-out model), the table by regime (short/long steps, recipe, checkpointing), whether the
bands hold, and the in-sample fit; then real runs held out from both sets when present
(``benchmarks/results/*.jsonl`` on other GPUs, e.g. an H200 the calibration was not fitted on),
sanity rows for larger models and 8-bit AdamW, and the cost of one ``estimate`` call.
``--write-calibration`` refits on all rows and writes profiler/data/calibration-h100-sxm-80gb.json
(the shipped calibration, with its cross-validated bands).

    .venv/bin/python benchmarks/validate_estimator.py [--write-calibration] [--held-out FILE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from catalog import atomic_write_text, get_gpu, get_model  # noqa: E402
from profiler._types import (  # noqa: E402
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    Provenance,
    TuningConfig,
)
from profiler.calibration import (  # noqa: E402
    FIRST_PRINCIPLES,
    REFERENCE_H100_PROVENANCE,
    SHIPPED_DATA_DIR,
    Calibration,
    all_reference_measurements,
    calibration_file_name,
    calibration_for,
    calibration_to_json,
    load_calibration,
    regime_of,
)
from profiler.estimator import estimate  # noqa: E402
from profiler.fit import fit_calibration, held_out_predictions  # noqa: E402
from profiler.published import published_measurements  # noqa: E402
from profiler.store import ProfileStore  # noqa: E402
from profiler.timing import host_seconds, time_terms  # noqa: E402
from profiler.transfer import calibrate_transfer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_published import coverage, h100_coverage  # noqa: E402

# Steps of at least this many tokens are "long" (production-sized) in the regime table.
LONG_STEP_TOKENS = 8192

Row = tuple[Measurement, Measurement]


def _pct(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured * 100.0


def _table(title: str, pairs: Sequence[Row]) -> dict[str, float]:
    print(f"\n### {title}\n")
    print(
        "| model | config | alloc GiB meas | pred | err % | reserved err % | step s meas | pred "
        "| err % |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    mem, res, tim = [], [], []
    for measured, predicted in pairs:
        assert measured.peak_allocated_gib and predicted.peak_allocated_gib
        assert measured.peak_reserved_gib and predicted.peak_reserved_gib
        assert measured.step_time_s and predicted.step_time_s
        em = _pct(predicted.peak_allocated_gib, measured.peak_allocated_gib)
        er = _pct(predicted.peak_reserved_gib, measured.peak_reserved_gib)
        et = _pct(predicted.step_time_s, measured.step_time_s)
        mem.append(abs(em))
        res.append(abs(er))
        tim.append(abs(et))
        print(
            f"| {measured.model} | {measured.config.label()} | {measured.peak_allocated_gib:.2f}"
            f" | {predicted.peak_allocated_gib:.2f} | {em:+.1f} | {er:+.1f} | "
            f"{measured.step_time_s:.4f} | {predicted.step_time_s:.4f} | {et:+.1f} |"
        )
    summary = {
        "memory_median": statistics.median(mem),
        "memory_max": max(mem),
        "reserved_median": statistics.median(res),
        "reserved_max": max(res),
        "time_median": statistics.median(tim),
        "time_max": max(tim),
    }
    print(
        f"\n|abs error| peak allocated: median {summary['memory_median']:.1f}%, worst "
        f"{summary['memory_max']:.1f}%; peak reserved: median {summary['reserved_median']:.1f}%"
        f", worst {summary['reserved_max']:.1f}%; step time: median "
        f"{summary['time_median']:.1f}%, worst {summary['time_max']:.1f}%"
    )
    return summary


def _predict(
    rows: Sequence[Measurement], calibration_of: Callable[[Measurement], Calibration]
) -> list[Row]:
    gpu = get_gpu("h100")
    return [
        (m, estimate(get_model(m.model), m.config, gpu, calibration=calibration_of(m)))
        for m in rows
    ]


def _tokens(m: Measurement) -> int:
    return m.config.micro_batch_size * m.config.seq_len


def _regimes(pairs: Sequence[Row]) -> None:
    """Held-out step-time and memory error by regime: step length, recipe, checkpointing."""
    print("\n### By regime (leave-one-model-out)\n")
    print(
        "| regime | rows | step time median abs % | signed median % | worst abs % "
        "| peak alloc median abs % | worst abs % |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    groups: dict[str, list[Row]] = {}
    for measured, predicted in pairs:
        long = _tokens(measured) >= LONG_STEP_TOKENS
        groups.setdefault(
            f"{'long' if long else 'short'} (tokens {'>=' if long else '<'} {LONG_STEP_TOKENS})",
            [],
        ).append((measured, predicted))
        groups.setdefault(regime_of(measured.config), []).append((measured, predicted))
        groups.setdefault("all", []).append((measured, predicted))
    for name, rows in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        signed = [_pct(p.step_time_s or 0, m.step_time_s or 1) for m, p in rows]
        memory = [abs(_pct(p.peak_allocated_gib or 0, m.peak_allocated_gib or 1)) for m, p in rows]
        print(
            f"| {name} | {len(rows)} | {statistics.median(map(abs, signed)):.1f} | "
            f"{statistics.median(signed):+.1f} | {max(map(abs, signed)):.1f} | "
            f"{statistics.median(memory):.2f} | {max(memory):.2f} |"
        )


def _band_coverage(
    pairs: Sequence[Row], calibration: Calibration, held_out: Sequence[Path]
) -> None:
    """How often the shipped 80% bands contain the measured value, on every reference set,
    and how wide the step-time bands are on the H100."""
    gpu = get_gpu("h100")
    widths: list[float] = []
    for measured, _ in pairs:
        e = estimate(get_model(measured.model), measured.config, gpu, calibration=calibration)
        band = e.band("step_time_s")
        assert band is not None and measured.step_time_s and e.step_time_s
        widths.append((band[1] - band[0]) / e.step_time_s * 100)
    print("\n### Band coverage (shipped calibration; target: 80% of rows inside)\n")
    print("| reference set | step time | peak allocated | peak reserved |")
    print("|---|---|---|---|")
    sets = (
        ("H100 reference runs (58)", h100_coverage(pairs)),
        (
            "H200 held-out runs",
            h100_coverage([(m, m) for m in _held_out_records(held_out)]),
        ),
        ("published figures, comparable", coverage(published_measurements(), calibration)),
    )
    for name, found in sets:
        cells = [
            found.get(q, "-") for q in ("step_time_s", "peak_allocated_gib", "peak_reserved_gib")
        ]
        print(f"| {name} | {' | '.join(cells)} |")
    print(
        f"\nstep-time bands on the H100: width median {statistics.median(widths):.0f}% of the "
        f"estimate, widest {max(widths):.0f}% (the H200 memory rows predate a recipe fix; see "
        f"benchmarks/results/README.md)"
    )


def _held_out_records(paths: Sequence[Path]) -> list[Measurement]:
    """Measured full-depth runs with step time and memory from profile-store files."""
    return [
        m
        for m in ProfileStore(list(paths)).records()
        if m.step_time_s is not None
        and m.peak_allocated_gib is not None
        and m.source.value == "measured"
        and "@" not in m.model  # truncated-depth rows (e.g. llama2-70b@2-layers)
    ]


def _held_out_pairs(paths: Sequence[Path], calibration: Calibration) -> list[Row]:
    """(measured, predicted by ``calibration``) for the held-out runs on other GPUs."""
    return [
        (m, estimate(get_model(m.model), m.config, get_gpu(m.gpu), calibration=calibration))
        for m in _held_out_records(paths)
    ]


def _other_gpus(paths: Sequence[Path]) -> None:
    """Real runs from files the calibration never saw (e.g. an H200): the H100 fit, scaled."""
    records = _held_out_records(paths)
    if not records:
        print("\n(no held-out runs on other GPUs given)")
        return
    print(f"\n### Held out: {len(records)} runs from {', '.join(p.name for p in paths)}\n")
    print("| model | gpu | config | tokens | step s meas | pred | err % | alloc err % | fits |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    from profiler.estimator import memory_fits

    time_errors: list[float] = []
    for m in records:
        gpu = get_gpu(m.gpu)
        e = estimate(get_model(m.model), m.config, gpu, calibration=calibration_for(gpu))
        assert e.step_time_s and m.step_time_s and e.peak_allocated_gib and m.peak_allocated_gib
        et = _pct(e.step_time_s, m.step_time_s)
        time_errors.append(et)
        fits = memory_fits(e.peak_reserved_gib or 0, gpu)
        print(
            f"| {m.model} | {m.gpu} | {m.config.label()} | {_tokens(m)} | {m.step_time_s:.4f} "
            f"| {e.step_time_s:.4f} | {et:+.1f} | "
            f"{_pct(e.peak_allocated_gib, m.peak_allocated_gib):+.1f} | "
            f"{'yes' if fits else 'NO'} |"
        )
    print(
        f"\nstep time: median abs {statistics.median(map(abs, time_errors)):.1f}%, signed "
        f"median {statistics.median(time_errors):+.1f}%, worst {max(map(abs, time_errors)):.1f}%"
    )


# Rule-of-thumb MFU for the sanity rows: well-tuned large-model training reaches 40-50% (PaLM 46%,
# Chowdhery et al. 2022; Llama 3 38-43%, Dubey et al. 2024).
_RULE_OF_THUMB_MFU = 0.45


def _lora(method: Method, *, batch: int, seq: int, ckpt: bool = False) -> TuningConfig:
    return TuningConfig(
        method=method,
        lora_rank=16,
        lora_alpha=32,
        lora_targets="all-linear",
        micro_batch_size=batch,
        seq_len=seq,
        grad_checkpointing=ckpt,
    )


def _sanity(calibration: Calibration) -> None:
    """Large models, where fixed per-layer costs must stay small next to the matmuls."""
    gpu = get_gpu("h100")
    cases = [
        ("llama3.1-8b", _lora(Method.LORA, batch=4, seq=2048)),
        (
            "llama3.1-8b",
            TuningConfig(
                method=Method.FULL, precision=Precision.BF16, micro_batch_size=4, seq_len=2048
            ),
        ),
        ("qwen2.5-7b", _lora(Method.QLORA, batch=4, seq=2048)),
        ("gemma-7b", _lora(Method.LORA, batch=2, seq=2048, ckpt=True)),
        ("llama2-70b", _lora(Method.QLORA, batch=1, seq=2048, ckpt=True)),
        ("llama2-70b", _lora(Method.LORA, batch=4, seq=4096)),
    ]
    print("\n### Sanity: models without reference runs (H100, shipped fit)\n")
    print(
        "| model | config | step s | tokens/s | 6·N·tokens at 45% MFU, s | ratio | host time % |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, config in cases:
        spec = get_model(name)
        tokens = config.micro_batch_size * config.seq_len
        predicted = estimate(spec, config, gpu, calibration=calibration)
        assert predicted.step_time_s is not None and predicted.tokens_per_s is not None
        rule_s = 6 * spec.param_count * tokens / (_RULE_OF_THUMB_MFU * gpu.matmul_tflops * 1e12)
        host_s = sum(
            host_seconds(time_terms(spec, config, gpu, calibration=calibration), calibration)
        )
        print(
            f"| {name} | {config.label()} | {predicted.step_time_s:.3f} | "
            f"{predicted.tokens_per_s:,.0f} | {rule_s:.3f} | "
            f"{predicted.step_time_s / rule_s:.2f} | "
            f"{host_s / predicted.step_time_s * 100:.0f} |"
        )
    print(
        "\n(ratio < 1 is expected for LoRA/QLoRA: frozen weights skip the weight gradient, "
        "4·N instead of 6·N; checkpointing adds 2·N, QLoRA its dequantization)"
    )


def _eight_bit(rows: Sequence[Measurement], provenance: Provenance) -> None:
    """8-bit AdamW: each of the six H100 8-bit rows predicted by a fit without it (its
    efficiency and seconds per tensor refitted on the other five), and by the first-principles
    assumptions the fit starts from."""
    gpu = get_gpu("h100")
    eight = [m for m in rows if m.config.optimizer is not OptimizerKind.ADAMW]
    print("\n### 8-bit AdamW, each H100 row held out (leave one row out)\n")
    print("| model | config | step s meas | held out | err % | first principles | err % |")
    print("|---|---|---:|---:|---:|---:|---:|")
    held, prior = [], []
    for m in eight:
        fold = fit_calibration(
            [r for r in rows if r is not m], get_model, gpu, fitted_date="", bands=False
        )
        assumed = dataclasses.replace(
            fold,
            bnb8_bandwidth_efficiency=FIRST_PRINCIPLES.bnb8_bandwidth_efficiency,
            bnb8_host_s_per_tensor=FIRST_PRINCIPLES.bnb8_host_s_per_tensor,
        )
        spec = get_model(m.model)
        a = estimate(spec, m.config, gpu, calibration=fold).step_time_s or 0
        b = estimate(spec, m.config, gpu, calibration=assumed).step_time_s or 0
        assert m.step_time_s
        held.append(_pct(a, m.step_time_s))
        prior.append(_pct(b, m.step_time_s))
        print(
            f"| {m.model} | {m.config.label()} | {m.step_time_s:.4f} | {a:.4f} | "
            f"{held[-1]:+.1f} | {b:.4f} | {prior[-1]:+.1f} |"
        )
    print(
        f"\nheld out: median abs {statistics.median(map(abs, held)):.1f}%, worst "
        f"{max(map(abs, held)):.1f}%; first principles: median abs "
        f"{statistics.median(map(abs, prior)):.1f}%, worst {max(map(abs, prior)):.1f}%"
    )


def _speed() -> None:
    gpu = get_gpu("h100")
    rows = all_reference_measurements()
    specs = [get_model(m.model) for m in rows]
    calibration = calibration_for(gpu)
    # Vary the batch so per-config caches do not hide the cost of a fresh call.
    configs = [(s, m.config) for s, m in zip(specs, rows, strict=True)]
    n = 0
    start = time.perf_counter()
    for _ in range(200):
        for spec, config in configs:
            estimate(spec, config, gpu, calibration=calibration)
            n += 1
    elapsed = time.perf_counter() - start
    print(
        f"\nestimate(): {elapsed / n * 1e6:.1f} µs per call over {n} calls "
        f"(CPython {sys.version.split()[0]}, one core)"
    )


def _extrapolation(held_out: Sequence[Row]) -> None:
    """Truncated-layer extrapolation (``profiler.extrapolate``) of the second H100 set's 2- and
    4-layer rows against the same configs at full depth, beside the held-out estimate."""
    from profiler.extrapolate import extrapolate

    truncated = [m for m in all_reference_measurements(include_truncated=True) if m.fit]
    estimated = {(m.model, m.config): e for m, e in held_out}
    print("\n### Truncated-layer extrapolation (2 and 4 layers) against full depth, H100\n")
    print("| model | config | step s full depth | extrapolated err % | held-out estimate err % |")
    print("|---|---|---:|---:|---:|")
    errors: list[float] = []
    for (model, config), predicted in estimated.items():
        points = [m for m in truncated if m.model == model and m.config == config]
        measured = next(m for m, _ in held_out if m.model == model and m.config == config)
        if len(points) < 2 or measured.step_time_s is None or predicted.step_time_s is None:
            continue
        line = extrapolate(points, target_layers=get_model(model).num_layers, model=model)
        assert line.step_time_s is not None
        errors.append(_pct(line.step_time_s, measured.step_time_s))
        print(
            f"| {model} | {config.label()} | {measured.step_time_s:.4f} | {errors[-1]:+.1f} | "
            f"{_pct(predicted.step_time_s, measured.step_time_s):+.1f} |"
        )
    if errors:
        print(
            f"\nextrapolated step time: median abs {statistics.median(map(abs, errors)):.1f}%, "
            f"worst {max(map(abs, errors)):.1f}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write-calibration",
        action="store_true",
        help="refit on all rows and write the shipped H100 calibration",
    )
    parser.add_argument(
        "--held-out",
        nargs="*",
        type=Path,
        default=sorted((Path(__file__).resolve().parent / "results").glob("h200-*.jsonl")),
        help="profile-store JSONL files of real runs to report errors on (not fitted)",
    )
    args = parser.parse_args()
    rows = all_reference_measurements()
    gpu = get_gpu("h100")
    _table("First principles (no calibration)", _predict(rows, lambda m: FIRST_PRINCIPLES))
    held_out = held_out_predictions(rows, get_model, gpu)
    _table("Leave-one-model-out (every constant refitted without the model)", held_out)
    _regimes(held_out)
    provenance = Provenance(
        device=REFERENCE_H100_PROVENANCE.device,
        date=REFERENCE_H100_PROVENANCE.date,
        versions=REFERENCE_H100_PROVENANCE.versions,
        method=REFERENCE_H100_PROVENANCE.method,
        notes="profiler/data/reference-h100.jsonl and reference-h100-2.jsonl, full-depth rows "
        "(see profiler/data/README.md)",
    )
    full = fit_calibration(rows, get_model, gpu, provenance=provenance)
    _table(
        f"In-sample (the shipped calibration, fitted on all {len(rows)} rows)",
        _predict(rows, lambda m: full),
    )
    # What carries the fit to other GPUs and sharding regimes, on published figures and the
    # runs on other GPUs (profiler/transfer.py; benchmarks/validate_published.py reports it).
    full = calibrate_transfer(
        full,
        published_measurements(),
        get_model,
        get_gpu,
        held_out=_held_out_pairs(args.held_out, full),
    )
    if args.write_calibration:  # before the sections below, which load the shipped calibration
        path = atomic_write_text(
            SHIPPED_DATA_DIR / calibration_file_name(gpu.name), calibration_to_json(full)
        )
        load_calibration.cache_clear()  # type: ignore[attr-defined]
        print(f"\nwrote {path}")
    _band_coverage(held_out, full, args.held_out)
    _extrapolation(held_out)
    print(f"\nfitted: {full}")
    _other_gpus(args.held_out)
    _sanity(full)
    _eight_bit(rows, provenance)
    _speed()


if __name__ == "__main__":
    main()
