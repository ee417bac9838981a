"""Measurement isolation (one subprocess per config) and ``ftplan profile`` end to end on CPU."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from model_specs import TINY_LLAMA

from catalog import ModelSpec, from_jsonable
from profiler import (
    Measurement,
    Method,
    Provenance,
    Source,
    Status,
    TuningConfig,
    _worker,
    measure,
)
from profiler.extrapolate import extrapolate
from profiler.store import ProfileStore

TINY = dataclasses.replace(TINY_LLAMA, num_layers=8)
LORA = TuningConfig(method=Method.LORA, lora_rank=4, lora_targets="all-linear", seq_len=32)


def test_a_raising_job_becomes_an_error_record() -> None:
    result = measure.measure(TINY, LORA, num_layers=2, device="cpu", fault="error")
    assert result.status is Status.ERROR and result.source is Source.MEASURED
    assert "fault injected by the job" in result.error
    assert result.model == "tiny-llama@2-layers"
    assert dict(result.fit)["num_layers"] == 2.0


def test_a_hard_exit_becomes_an_error_record_not_a_crash() -> None:
    result = measure.measure(TINY, LORA, device="cpu", fault="hard-exit")
    assert result.status is Status.ERROR
    assert "exited with code 3" in result.error
    assert result.model == "tiny-llama"


@pytest.mark.slow
def test_an_out_of_memory_error_becomes_an_oom_record() -> None:
    result = measure.measure(TINY, LORA, num_layers=2, device="cpu", fault="oom")
    assert result.status is Status.OOM
    assert "out of memory" in result.error
    assert result.peak_allocated_gib is None and result.step_time_s is None


@pytest.mark.slow
def test_cuda_without_a_gpu_is_an_error_record() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    result = measure.measure(TINY, LORA, num_layers=2, device="cuda")
    assert result.status is Status.ERROR and "sees no CUDA GPU" in result.error
    assert result.provenance.device == "cuda (not available)"


def test_a_hanging_worker_times_out_into_an_error_record() -> None:
    result = measure.measure(TINY, LORA, device="cpu", timeout_s=0.05)
    assert result.status is Status.ERROR and "timed out after" in result.error


def test_the_worker_rejects_a_malformed_job(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"model": {}, "config": {}}'))
    assert _worker.main() == 2
    assert "bad job" in capsys.readouterr().err


def test_catalog_gpu_names_from_device_names() -> None:
    assert _worker.catalog_gpu_name("NVIDIA H100 80GB HBM3") == "H100 SXM 80GB"
    assert _worker.catalog_gpu_name("NVIDIA H100 PCIe") == "H100 PCIe"
    assert _worker.catalog_gpu_name("NVIDIA A100-SXM4-40GB") == "A100 SXM 40GB"
    assert _worker.catalog_gpu_name("NVIDIA L40S") == "L40S"
    assert _worker.catalog_gpu_name("NVIDIA L4") == "L4"
    assert _worker.catalog_gpu_name("Mystery GPU") == "Mystery GPU"


def _fake(layers: int, *, peak: float | None, status: Status = Status.OK) -> Measurement:
    ok = status is Status.OK
    return Measurement(
        model=f"tiny-llama@{layers}-layers",
        gpu="H100 SXM 80GB",
        config=LORA,
        status=status,
        source=Source.MEASURED,
        provenance=Provenance(device="d", date="2026-11-23"),
        peak_allocated_gib=peak,
        peak_reserved_gib=peak,
        step_time_s=0.01 * layers if ok else None,
        tokens_per_s=LORA.tokens_per_step / (0.01 * layers) if ok else None,
        fit=(("num_layers", float(layers)),),
    )


def test_profile_extrapolated_fits_and_stops_after_an_oom(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int | None] = []

    def fake_measure(
        spec: ModelSpec, config: TuningConfig, *, num_layers: int | None, **_: object
    ) -> Measurement:
        calls.append(num_layers)
        assert num_layers is not None
        return _fake(num_layers, peak=1.0 + 0.5 * num_layers)

    monkeypatch.setattr(measure, "measure", fake_measure)
    seen: list[Measurement] = []
    result = measure.profile_extrapolated(TINY, LORA, layers=(4, 2), on_measured=seen.append)
    assert calls == [2, 4] and len(seen) == 2
    assert result.source is Source.EXTRAPOLATED and result.model == "tiny-llama"
    assert result.peak_allocated_gib == pytest.approx(1.0 + 0.5 * 8)

    calls.clear()

    def oom_measure(
        spec: ModelSpec, config: TuningConfig, *, num_layers: int | None, **_: object
    ) -> Measurement:
        calls.append(num_layers)
        return _fake(2, peak=None, status=Status.OOM)

    monkeypatch.setattr(measure, "measure", oom_measure)
    result = measure.profile_extrapolated(TINY, LORA, layers=(2, 4))
    assert calls == [2]
    assert result.status is Status.OOM and "2-layer model already ran out" in result.error
    with pytest.raises(ValueError, match="two distinct layer counts"):
        measure.profile_extrapolated(TINY, LORA, layers=(2, 2))


@pytest.mark.slow
def test_ftplan_profile_on_cpu_end_to_end(tmp_path: Path) -> None:
    from planner.cli import main

    out = tmp_path / "profiles.jsonl"
    result = CliRunner().invoke(
        main,
        [
            "profile",
            "--model",
            "llama3.2-1b",
            "--method",
            "lora",
            "--rank",
            "4",
            "--device",
            "cpu",
            "--seq-len",
            "16",
            "--warmup-steps",
            "1",
            "--timed-steps",
            "2",
            "--out",
            str(out),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [from_jsonable(Measurement, r) for r in json.loads(result.stdout)]
    assert len(records) == 1
    record = records[0]
    assert record.status is Status.OK, record.error
    assert record.model == "llama3.2-1b-cpu-tiny" and record.gpu == "cpu"
    assert record.peak_allocated_gib is None and record.peak_reserved_gib is None
    assert record.step_time_s is not None and record.step_time_s > 0
    assert record.tokens_per_s == pytest.approx(16 / record.step_time_s)
    # Stand-in: 2 layers, hidden 256, 8 heads / 2 KV heads of 32, MLP 1024 (8192 x 256/2048).
    per_layer = 4 * ((256 + 256) + 2 * (256 + 64) + (256 + 256) + 2 * (256 + 1024) + (1024 + 256))
    assert record.trainable_params == 2 * per_layer
    assert "tiny stand-in of llama3.2-1b" in result.stderr
    stored = ProfileStore([out]).lookup(
        model="llama3.2-1b-cpu-tiny", config=record.config, gpu="cpu"
    )
    assert stored == record


def test_ftplan_profile_without_cuda_says_how_to_fix() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    from planner.cli import main

    result = CliRunner().invoke(main, ["profile", "--model", "llama2-7b", "--method", "qlora"])
    assert result.exit_code == 2
    assert "needs a CUDA GPU" in result.stderr and "--device cpu" in result.stderr


def test_ftplan_profile_sweeps_and_stores_extrapolations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU path of the command, with the GPU work replaced by synthetic measurements."""
    from planner.cli import main
    from planner.cli import profile as _cli_profile

    def fake_extrapolated(
        spec: ModelSpec,
        config: TuningConfig,
        *,
        layers: tuple[int, ...],
        on_measured: object,
        gpu: str | None,
        **_: object,
    ) -> Measurement:
        assert gpu == "H100 SXM 80GB" and layers == (2, 4)
        points = [
            dataclasses.replace(
                _fake(n, peak=1.0 + n), config=config, model=f"{spec.name}@{n}-layers"
            )
            for n in layers
        ]
        for point in points:
            on_measured(point)  # type: ignore[operator]
        return extrapolate(points, target_layers=spec.num_layers, model=spec.name)

    monkeypatch.setattr(_cli_profile, "_require_cuda", lambda device: None)
    monkeypatch.setattr(measure, "profile_extrapolated", fake_extrapolated)
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(
        main,
        [
            "profile",
            "--model",
            "llama2-7b",
            "--method",
            "qlora",
            "--gpu",
            "h100",
            "--batch",
            "1",
            "--batch",
            "4",
            "--seq-len",
            "1024",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "extrapolated" in result.stdout and "llama2-7b@4-layers" in result.stdout
    store = ProfileStore([out])
    assert len(store.records()) == 6
    config = TuningConfig(
        method=Method.QLORA,
        lora_rank=16,
        lora_targets="all-linear",
        micro_batch_size=4,
        seq_len=1024,
    )
    found = store.lookup(model="llama2-7b", config=config, gpu="H100 SXM 80GB")
    assert found is not None and found.source is Source.EXTRAPOLATED
    assert found.peak_allocated_gib == pytest.approx(1.0 + 32)
