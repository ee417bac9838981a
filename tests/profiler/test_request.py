"""The config a user's flags describe (profiler.request), and the rules that have one home each:
the LoRA defaults, a GPU without bf16, the default sharding, the peak a fit compares, the offers
``catalog offers`` lists and what a new calibration falls back on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalog import GPU, CatalogError, InputError, get_gpu, get_model, list_gpus, select_offers
from profiler import (
    DEFAULT_LORA_RANK,
    DEFAULT_LORA_TARGETS,
    Measurement,
    Method,
    Precision,
    Provenance,
    Sharding,
    Source,
    Status,
    TuningConfig,
    default_lora_alpha,
    default_precision,
    default_sharding,
    peak_for_fit_gib,
    precision_problem,
)
from profiler.calibrated import read_measurement_files, recalibrate
from profiler.calibration import (
    REFERENCE_H100_FILE,
    calibration_file_name,
    calibration_to_json,
    load_calibration,
    shipped_calibration,
    shipped_calibration_for,
)
from profiler.request import ConfigRequest, estimate_config, layer_counts, sweep_configs
from profiler.store import ProfileStore, default_store, profile_for_estimate, user_profiles_path

LLAMA = get_model("llama2-7b")


def test_lora_defaults_are_rank_16_alpha_32_all_linear() -> None:
    assert (DEFAULT_LORA_RANK, DEFAULT_LORA_TARGETS) == (16, "all-linear")
    assert default_lora_alpha(DEFAULT_LORA_RANK) == 32 and default_lora_alpha(8) == 16
    config = TuningConfig(method=Method.LORA, lora_rank=8, lora_targets=DEFAULT_LORA_TARGETS)
    assert config.effective_lora_alpha == default_lora_alpha(8)
    estimated, notes = estimate_config(ConfigRequest(method=Method.QLORA), LLAMA, get_gpu("h100"))
    assert (estimated.lora_rank, estimated.lora_alpha, estimated.lora_targets) == (
        16,
        32,
        "all-linear",
    )
    assert notes == []
    full, _ = estimate_config(ConfigRequest(method=Method.FULL), LLAMA, get_gpu("h100"))
    assert full.lora_rank is None and full.lora_alpha is None and full.lora_targets is None


@given(gpu=st.sampled_from(list_gpus()), precision=st.sampled_from(list(Precision)))
def test_a_gpu_without_bf16_runs_fp16_mixed_only(gpu: GPU, precision: Precision) -> None:
    assert precision_problem(gpu, default_precision(gpu)) is None
    problem = precision_problem(gpu, precision)
    runs = precision is Precision.FP16_MIXED or gpu.bf16_supported
    assert (problem is None) == runs
    if problem is not None:
        assert "no bf16" in problem


def test_estimate_switches_to_fp16_on_a_gpu_without_bf16_and_refuses_bf16_there() -> None:
    t4 = get_gpu("t4")
    config, notes = estimate_config(ConfigRequest(method=Method.LORA), LLAMA, t4)
    assert config.precision is Precision.FP16_MIXED
    assert notes == ["T4 has no bf16: using fp16-mixed"]
    with pytest.raises(InputError, match="--precision bf16-mixed cannot run on it"):
        estimate_config(
            ConfigRequest(method=Method.LORA, precision=Precision.BF16_MIXED), LLAMA, t4
        )


@pytest.mark.parametrize(
    ("method", "gpu_count", "expected"),
    [
        (Method.LORA, 1, Sharding.NONE),
        (Method.FULL, 1, Sharding.NONE),
        (Method.QLORA, 2, Sharding.DDP),
        (Method.FULL, 4, Sharding.FSDP),
    ],
)
def test_default_sharding(method: Method, gpu_count: int, expected: Sharding) -> None:
    assert default_sharding(method, gpu_count) is expected
    request = ConfigRequest(method=method, gpu_count=gpu_count)
    assert estimate_config(request, LLAMA, get_gpu("h100"))[0].sharding is expected


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ConfigRequest(method=Method.FULL, rank=8), "apply to LoRA and QLoRA only"),
        (ConfigRequest(method=Method.LORA, targets="mlp_proj"), "--targets"),
        (ConfigRequest(method=Method.LORA, sharding=Sharding.DDP), "--sharding ddp"),
        (ConfigRequest(method=Method.LORA, precision=Precision.BF16), "do not go together"),
    ],
)
def test_estimate_config_names_the_option_to_change(request_: ConfigRequest, message: str) -> None:
    with pytest.raises(InputError, match=message):
        estimate_config(request_, LLAMA, get_gpu("h100"))


def test_profile_sweeps_every_batch_at_every_length_and_checks_layers() -> None:
    configs = sweep_configs(
        Method.QLORA,
        precision=Precision.BF16_MIXED,
        rank=8,
        alpha=None,
        targets="attention",
        batches=(1, 4),
        seq_lens=(512, 1024),
        grad_checkpointing=False,
        optimizer=TuningConfig(method=Method.FULL).optimizer,
    )
    assert [(c.micro_batch_size, c.seq_len) for c in configs] == [
        (1, 512),
        (1, 1024),
        (4, 512),
        (4, 1024),
    ]
    assert all(c.lora_alpha is None and c.effective_lora_alpha == 16 for c in configs)
    assert layer_counts("4, 2,4") == (2, 4)
    for text in ("x", "4", "0,2", "2,99999"):
        with pytest.raises(InputError, match="--layers"):
            layer_counts(text)


def _measured(
    *, peak_allocated_gib: float | None = None, peak_reserved_gib: float | None = None
) -> Measurement:
    return Measurement(
        model="m",
        gpu="H100 SXM 80GB",
        config=TuningConfig(method=Method.FULL),
        status=Status.OK,
        source=Source.MEASURED,
        provenance=Provenance(device="test", date="2026-01-01"),
        step_time_s=1.0,
        tokens_per_s=2048.0,
        peak_allocated_gib=peak_allocated_gib,
        peak_reserved_gib=peak_reserved_gib,
    )


def test_the_peak_a_fit_compares_is_reserved_else_allocated_and_inf_for_failed_runs() -> None:
    both = _measured(peak_allocated_gib=10.0, peak_reserved_gib=12.0)
    assert both.peak_memory_gib == 12.0 and peak_for_fit_gib(both) == 12.0
    allocated = _measured(peak_allocated_gib=10.0)
    assert allocated.peak_memory_gib == 10.0 and peak_for_fit_gib(allocated) == 10.0
    cpu = _measured()
    assert cpu.peak_memory_gib is None and peak_for_fit_gib(cpu) == float("inf")
    oom = dataclasses.replace(both, status=Status.OOM)
    assert oom.peak_memory_gib == 12.0 and peak_for_fit_gib(oom) == float("inf")


def test_offers_listed_cheapest_per_gpu_hour_first() -> None:
    offers = select_offers(gpus=("h100",), include_spot=False)
    assert offers and all(o.gpu == "H100 SXM 80GB" and not o.spot for o in offers)
    keys = [(o.usd_per_hour / o.gpu_count, o.key) for o in offers]
    assert keys == sorted(keys)
    assert len(select_offers()) >= len(select_offers(providers=("aws",)))
    with pytest.raises(CatalogError, match="unknown provider"):
        select_offers(providers=("mars",))


def test_a_new_fit_falls_back_on_the_shipped_h100_fit_not_the_users(user_cache: Path) -> None:
    """A user's own H100 calibration changes what estimates use (the errors before), never what
    a new fit takes the terms its measurements cannot show from."""
    h100 = get_gpu("h100")
    shipped = shipped_calibration(h100.name)
    assert shipped is not None and shipped_calibration_for(h100) == shipped
    odd = dataclasses.replace(shipped, bnb8_host_s_per_tensor=1.0, reserved_by_sharding=())
    user_cache.mkdir()
    (user_cache / calibration_file_name(h100.name)).write_text(calibration_to_json(odd))
    load_calibration.cache_clear()  # type: ignore[attr-defined]
    assert load_calibration(h100.name) == odd and shipped_calibration_for(h100) == shipped
    records = read_measurement_files([REFERENCE_H100_FILE], h100, what="--from")
    assert len(records) == 24
    found = recalibrate(records, get_model, h100)
    assert found.fitted.fit_inputs == 24
    assert found.fitted.bnb8_host_s_per_tensor == shipped.bnb8_host_s_per_tensor
    assert found.fitted.reserved_by_sharding == shipped.reserved_by_sharding
    assert 0 <= found.errors_before.memory_median_pct <= found.errors_before.memory_max_pct


def test_estimate_alpha_follows_the_rank_so_it_finds_what_profile_stored() -> None:
    """``ftplan profile --rank 8`` stores alpha None (2 × rank = 16); ``ftplan estimate --rank 8``
    asks for the same config, so it shows that profile."""
    config, _ = estimate_config(ConfigRequest(method=Method.LORA, rank=8), LLAMA, get_gpu("h100"))
    assert config.lora_alpha == 16
    stored = sweep_configs(
        Method.LORA,
        precision=Precision.BF16_MIXED,
        rank=8,
        alpha=None,
        targets=DEFAULT_LORA_TARGETS,
        batches=(1,),
        seq_lens=(2048,),
        grad_checkpointing=False,
        optimizer=config.optimizer,
    )[0]
    measured = dataclasses.replace(
        _measured(peak_allocated_gib=20.0, peak_reserved_gib=22.0), model=LLAMA.name, config=stored
    )
    path = user_profiles_path()
    ProfileStore([path]).append(path, [measured])
    default_store.cache_clear()
    found = profile_for_estimate(LLAMA.name, config, "H100 SXM 80GB")
    assert found is not None and found.peak_reserved_gib == 22.0
