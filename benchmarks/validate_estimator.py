"""Validate the analytic estimator against the real H100 reference runs, and time it.

Prints, for the 24 rows of profiler/data/reference-h100.jsonl: first-principles (uncalibrated)
errors, leave-one-out and leave-one-model-out cross-validated errors of the fitted calibration,
and the in-sample fit; then the cost of one ``estimate`` call. ``--write-calibration`` refits on
all rows and writes profiler/data/calibration-h100-sxm-80gb.json (the shipped calibration).

    .venv/bin/python benchmarks/validate_estimator.py [--write-calibration]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from catalog import atomic_write_text, get_gpu, get_model  # noqa: E402
from profiler._types import Measurement  # noqa: E402
from profiler.calibration import (  # noqa: E402
    FIRST_PRINCIPLES,
    REFERENCE_H100_PROVENANCE,
    SHIPPED_DATA_DIR,
    Calibration,
    calibration_file_name,
    calibration_to_json,
    fit_calibration,
    reference_measurements,
)
from profiler.estimator import estimate  # noqa: E402

Row = tuple[Measurement, Measurement]


def _pct(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured * 100.0


def _table(title: str, pairs: Sequence[Row]) -> dict[str, float]:
    print(f"\n### {title}\n")
    print("| model | config | alloc GiB meas | pred | err % | reserved err % | step s meas | pred "
          "| err % |")
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
        print(f"| {measured.model} | {measured.config.label()} | {measured.peak_allocated_gib:.2f}"
              f" | {predicted.peak_allocated_gib:.2f} | {em:+.1f} | {er:+.1f} | "
              f"{measured.step_time_s:.4f} | {predicted.step_time_s:.4f} | {et:+.1f} |")
    summary = {"memory_median": statistics.median(mem), "memory_max": max(mem),
               "reserved_median": statistics.median(res), "reserved_max": max(res),
               "time_median": statistics.median(tim), "time_max": max(tim)}
    print(f"\n|abs error| peak allocated: median {summary['memory_median']:.1f}%, worst "
          f"{summary['memory_max']:.1f}%; peak reserved: median {summary['reserved_median']:.1f}%"
          f", worst {summary['reserved_max']:.1f}%; step time: median "
          f"{summary['time_median']:.1f}%, worst {summary['time_max']:.1f}%")
    return summary


def _predict(rows: Sequence[Measurement], calibration_of: Callable[[Measurement], Calibration]
             ) -> list[Row]:
    gpu = get_gpu("h100")
    return [(m, estimate(get_model(m.model), m.config, gpu, calibration=calibration_of(m)))
            for m in rows]


def _held_out(rows: Sequence[Measurement], group: Callable[[Measurement], object]) -> list[Row]:
    gpu = get_gpu("h100")
    fits: dict[object, Calibration] = {}
    for key in {group(m) for m in rows}:
        training = [m for m in rows if group(m) != key]
        fits[key] = fit_calibration(training, get_model, gpu)
    return _predict(rows, lambda m: fits[group(m)])


def _speed() -> None:
    gpu = get_gpu("h100")
    rows = reference_measurements()
    specs = [get_model(m.model) for m in rows]
    calibration = fit_calibration(rows, get_model, gpu)
    # Vary the batch so per-config caches do not hide the cost of a fresh call.
    configs = [(s, m.config) for s, m in zip(specs, rows, strict=True)]
    n = 0
    start = time.perf_counter()
    for _ in range(400):
        for spec, config in configs:
            estimate(spec, config, gpu, calibration=calibration)
            n += 1
    elapsed = time.perf_counter() - start
    print(f"\nestimate(): {elapsed / n * 1e6:.1f} µs per call over {n} calls "
          f"(CPython {sys.version.split()[0]}, one core)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-calibration", action="store_true",
                        help="refit on all rows and write the shipped H100 calibration")
    args = parser.parse_args()
    rows = reference_measurements()
    gpu = get_gpu("h100")
    _table("First principles (no calibration)", _predict(rows, lambda m: FIRST_PRINCIPLES))
    _table("Leave-one-out (fit on 23 rows, predict the 24th)",
           _held_out(rows, lambda m: (m.model, m.config)))
    _table("Leave-one-model-out (fit on the other two models)", _held_out(rows, lambda m: m.model))
    full = fit_calibration(rows, get_model, gpu, provenance=REFERENCE_H100_PROVENANCE)
    _table("In-sample (the shipped calibration, fitted on all 24 rows)",
           _predict(rows, lambda m: full))
    print(f"\nfitted: {full}")
    _speed()
    if args.write_calibration:
        path = atomic_write_text(SHIPPED_DATA_DIR / calibration_file_name(gpu.name),
                                 calibration_to_json(full))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
