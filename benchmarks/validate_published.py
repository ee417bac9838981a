"""Validate the estimator on figures other people published (GPUs other than the H100).

Prints, for ``profiler/data/published-measurements.jsonl`` (litgpt on an A10G, Answer.AI's DDP,
FSDP and offload runs on RTX 3090/4090 and its 70B runs on RTX 6000 Ada, A100 40GB and H100,
torchtune on an A100 80GB, Unsloth's longest Hugging Face + FlashAttention 2 contexts): every
figure against the shipped estimate and against fits that never saw its publisher (leave one
source out) or its GPU (leave one GPU out); the largest micro-batch and sequence length ftplan
promises against what the published runs reached; and how often the shipped 80% bands hold the
real figure on every reference set.

    .venv/bin/python benchmarks/validate_published.py

``benchmarks/validate_estimator.py --write-calibration`` fits what this checks (the transfer
exponent, the reserved ratios by sharding, the transfer bands; ``profiler/transfer.py``) into
the shipped calibration.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from catalog import GPU, ModelSpec, get_gpu, get_model  # noqa: E402
from profiler._types import Measurement, TuningConfig  # noqa: E402
from profiler.calibration import Calibration, calibration_for  # noqa: E402
from profiler.estimator import estimate  # noqa: E402
from profiler.headroom import FitVerdict, measurement_fit  # noqa: E402
from profiler.published import (  # noqa: E402
    Comparable,
    PublishedMeasurement,
    Statistic,
    published_measurements,
)
from profiler.transfer import Residual, held_out_by  # noqa: E402
from profiler.whatif import max_micro_batch, max_seq_len  # noqa: E402


def _pct(value: float) -> str:
    return f"{value * 100:+.1f}"


def _shipped(row: PublishedMeasurement) -> Measurement:
    gpu = get_gpu(row.gpu)
    return estimate(get_model(row.model), row.config, gpu, calibration=calibration_for(gpu))


def _gpu_label(row: PublishedMeasurement) -> str:
    return f"{row.config.gpu_count}x {row.gpu}"


def figures(rows: Sequence[PublishedMeasurement]) -> None:
    """Every memory and throughput figure against the shipped estimate, with its band."""
    print("\n### Published figures against the shipped estimate\n")
    print(
        "| id | GPU | config | statistic | published | estimate | err % | in band | "
        "tokens/s published | estimate | err % | in band | comparable |"
    )
    print("|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---|---|")
    for row in rows:
        if row.statistic is Statistic.MAX_SEQ_LEN:
            continue
        e = _shipped(row)
        memory = ["", "", "", ""]
        if row.memory_gib is not None:
            value = getattr(e, row.statistic.value)
            band = e.band(row.statistic.value)
            inside = band is not None and band[0] <= row.memory_gib <= band[1]
            memory = [
                f"{row.memory_gib:.2f}",
                f"{value:.2f}",
                _pct(value / row.memory_gib - 1),
                "yes" if inside else "no",
            ]
        speed = ["", "", "", ""]
        if row.tokens_per_s and e.tokens_per_s is not None:
            band = e.band("step_time_s")
            tokens = row.config.micro_batch_size * row.config.seq_len * row.config.gpu_count
            real_step = tokens / row.tokens_per_s
            inside = band is not None and band[0] <= real_step <= band[1]
            speed = [
                f"{row.tokens_per_s:,.0f}",
                f"{e.tokens_per_s:,.0f}",
                _pct(e.tokens_per_s / row.tokens_per_s - 1),
                "yes" if inside else "no",
            ]
        statistic = row.statistic.value.replace("_gib", "").replace("peak_", "")
        print(
            f"| {row.id} | {_gpu_label(row)} | {row.config.label()} | {statistic} | "
            f"{' | '.join(memory)} | {' | '.join(speed)} | {row.comparable.value} |"
        )


def _summary(title: str, residuals: Sequence[Residual], *, key: str) -> None:
    print(f"\n### {title}\n")
    print("| group | quantity | rows | median abs % | signed median % | worst abs % |")
    print("|---|---|---:|---:|---:|---:|")
    groups: dict[tuple[str, str], list[float]] = {}
    for r in residuals:
        group = r.source_key if key == "source" else r.regime
        groups.setdefault((group, r.quantity), []).append(r.error)
        groups.setdefault(("all", r.quantity), []).append(r.error)
    for (group, quantity), errors in sorted(
        groups.items(), key=lambda i: (i[0][0] == "all", i[0])
    ):
        print(
            f"| {group} | {quantity} | {len(errors)} | "
            f"{statistics.median(abs(e) for e in errors) * 100:.1f} | "
            f"{statistics.median(errors) * 100:+.1f} | {max(abs(e) for e in errors) * 100:.1f} |"
        )


def held_out(rows: Sequence[PublishedMeasurement]) -> None:
    """Leave one source out and leave one GPU out: the transfer fit without the held-out
    figures. Step-time residuals are predicted / measured step time - 1 (a slow estimate is
    positive), memory residuals estimate / published - 1."""
    h100 = get_gpu("h100")
    base = calibration_for(h100)
    for by, title in (
        ("source", "Leave one source out (transfer fit without the publisher)"),
        ("gpu", "Leave one GPU out (transfer fit without the publisher's GPU)"),
    ):
        residuals = held_out_by(base, rows, get_model, get_gpu, by=by)
        _summary(f"{title}, by publisher", residuals, key="source")
        _summary(f"{title}, by regime", residuals, key="regime")


def largest(rows: Sequence[PublishedMeasurement]) -> None:
    """What ``ftplan estimate --max-batch`` / ``--max-seq-len`` promises (``fits``, the band
    included) and allows (``tight``) against the batch or context a published run reached."""
    print("\n### Largest micro-batch and context: ftplan's promise against real runs\n")
    print("| id | GPU | config | reached | ftplan fits | over % | ftplan tight |")
    print("|---|---|---|---:|---:|---:|---:|")
    overs: list[float] = []
    for row in rows:
        reached: int | None
        if row.largest_that_fit == "seq_len":
            reached, knob = row.max_seq_len or row.config.seq_len, "seq"
        elif row.largest_that_fit == "micro_batch":
            reached, knob = row.config.micro_batch_size, "batch"
        else:
            continue
        gpu = get_gpu(row.gpu)
        spec = get_model(row.model)
        calibration = calibration_for(gpu)

        def run(
            config: TuningConfig,
            spec: ModelSpec = spec,
            gpu: GPU = gpu,
            calibration: Calibration = calibration,
        ) -> Measurement:
            return estimate(spec, config, gpu, calibration=calibration)

        if knob == "seq":
            found = max_seq_len(run, row.config, gpu, spec=spec)
        else:
            found = max_micro_batch(run, row.config, gpu)
        assert reached is not None
        over = (found.value or 0) / reached - 1
        overs.append(over)
        print(
            f"| {row.id} | {_gpu_label(row)} | {row.config.label()} | {reached:,} | "
            f"{found.value if found.value is not None else '-'} | {_pct(over)} | "
            f"{found.value_tight if found.value_tight is not None else '-'} |"
        )
    print(
        f"\nftplan's promise above what a run reached: {sum(o > 0.03 for o in overs)} of "
        f"{len(overs)} by more than 3%; worst {max(overs) * 100:+.1f}% (rows whose publisher "
        f"says the batch or context was the largest that fit)"
    )


def coverage(rows: Sequence[PublishedMeasurement], calibration: Calibration) -> dict[str, str]:
    """How often the shipped 80% band holds the published figure, per quantity."""
    counts: dict[str, list[bool]] = {}
    for row in rows:
        if row.comparable is not Comparable.YES or row.statistic is Statistic.MAX_SEQ_LEN:
            continue
        e = _shipped(row)
        if row.memory_gib is not None:
            band = e.band(row.statistic.value)
            counts.setdefault(row.statistic.value, []).append(
                band is not None and band[0] <= row.memory_gib <= band[1]
            )
        if row.tokens_per_s and e.tokens_per_s is not None:
            band = e.band("step_time_s")
            real = row.config.micro_batch_size * row.config.seq_len * row.config.gpu_count
            step = real / row.tokens_per_s
            counts.setdefault("step_time_s", []).append(
                band is not None and band[0] <= step <= band[1]
            )
    return {q: f"{sum(v)}/{len(v)}" for q, v in sorted(counts.items())}


def h100_coverage(pairs: Sequence[tuple[Measurement, Measurement]]) -> dict[str, str]:
    """Coverage of the shipped bands on measured runs (the H100 sets, the H200 runs)."""
    counts: dict[str, list[bool]] = {}
    for measured, _ in pairs:
        gpu = get_gpu(measured.gpu)
        e = estimate(
            get_model(measured.model), measured.config, gpu, calibration=calibration_for(gpu)
        )
        for quantity in ("step_time_s", "peak_allocated_gib", "peak_reserved_gib"):
            truth, band = getattr(measured, quantity), e.band(quantity)
            if truth is not None and band is not None:
                counts.setdefault(quantity, []).append(band[0] <= truth <= band[1])
    return {q: f"{sum(v)}/{len(v)}" for q, v in sorted(counts.items())}


def verdicts(rows: Sequence[PublishedMeasurement]) -> None:
    """No published run that fit may be called 'no' (comparable figures: a 'no' comparability
    means the published figure cannot be the stated config)."""
    wrong = []
    for row in rows:
        if row.statistic is Statistic.MAX_SEQ_LEN or row.comparable is Comparable.NO:
            continue
        gpu = get_gpu(row.gpu)
        if measurement_fit(_shipped(row), gpu).verdict is FitVerdict.NO:
            wrong.append(row.id)
    print(f"\npublished runs called 'no' (does not fit): {len(wrong)} {wrong or ''}")


def main() -> None:
    rows = published_measurements()
    figures(rows)
    held_out(rows)
    largest(rows)
    verdicts(rows)
    print("\n### Band coverage (shipped calibration, 80% bands)\n")
    print(f"published figures (comparable): {coverage(rows, calibration_for(get_gpu('h100')))}")
    print(
        "(H100 and H200 runs: benchmarks/validate_estimator.py prints the coverage of their bands)"
    )


if __name__ == "__main__":
    main()
