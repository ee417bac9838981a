"""Sharding strategies in the estimator: where state lives, working sets, traffic, host RAM,
with numbers worked out by hand; the CLI contract of ``estimate --sharding``."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from catalog import GPU, ModelSpec, get_gpu, get_model
from planner.cli import main
from profiler import Measurement, Method, OptimizerKind, Sharding, TuningConfig, sharding_problem
from profiler.calibration import calibration_for
from profiler.estimator import estimate, memory_fits
from profiler.headroom import capacity_gib
from profiler.memory import NF4_BYTES_PER_PARAM, memory_terms
from profiler.sharding import (
    HOST_RAM_PER_PROCESS_GIB,
    StateBytes,
    collective_bytes_per_gpu,
    host_ram_gib,
    offload_seconds,
    place,
    working_set_bytes,
)

GIB = 1024**3
STATE = StateBytes(
    weights=800,
    gradients=400,
    optimizer_states=800,
    optimizer_temp=400,
    autocast_cache=0,
    layer_gather_bytes=10,
    root_gather_bytes=30,
    head_gather_bytes=15,
    unit_gradient_bytes=5,
)


def _estimate(spec: ModelSpec, config: TuningConfig, gpu: GPU) -> Measurement:
    return estimate(spec, config, gpu, calibration=calibration_for(gpu))


def test_placement_per_strategy_by_hand() -> None:
    none = place(STATE, sharding=Sharding.NONE, gpu_count=1)
    assert (none.weights, none.working_set, none.host_bytes_per_gpu) == (800, 0, 0)
    assert place(STATE, sharding=Sharding.DDP, gpu_count=4).working_set == 400  # buckets
    fsdp = place(STATE, sharding=Sharding.FSDP, gpu_count=4)
    assert (fsdp.weights, fsdp.gradients, fsdp.optimizer_states, fsdp.optimizer_temp) == (
        200,
        100,
        200,
        100,
    )
    # Root unit (30) + current and prefetched layer (2 × 10) + one layer's gradients (5).
    assert fsdp.working_set == working_set_bytes(STATE, sharding=Sharding.FSDP) == 55
    # ZeRO-3: max(head 15, layer 10) + one prefetched layer (10) + gradients (5).
    assert place(STATE, sharding=Sharding.ZERO3, gpu_count=4).working_set == 30
    fsdp_off = place(STATE, sharding=Sharding.FSDP_OFFLOAD, gpu_count=4)
    assert (fsdp_off.weights, fsdp_off.optimizer_states, fsdp_off.working_set) == (0, 0, 55)
    assert fsdp_off.host_bytes_per_gpu == (800 + 400 + 800 + 400) / 4
    # DeepSpeedCPUAdam updates in place: no temporary in host memory.
    assert place(STATE, sharding=Sharding.ZERO3_OFFLOAD, gpu_count=4).host_bytes_per_gpu == 500


def test_collective_and_offload_traffic_by_hand() -> None:
    kw = {"gather_bytes": 2000.0, "trainable_gradient_bytes": 1000.0}
    assert collective_bytes_per_gpu(sharding=Sharding.NONE, gpu_count=1, **kw) == 0
    assert collective_bytes_per_gpu(sharding=Sharding.DDP, gpu_count=4, **kw) == 1500  # 2·¾·1000
    # All-gather forward and backward plus reduce-scatter: ¾·(2·2000 + 1000).
    assert collective_bytes_per_gpu(sharding=Sharding.FSDP, gpu_count=4, **kw) == 3750
    h100 = get_gpu("h100")
    # Hopper reaches the host over PCIe Gen5 x16, 64 GB/s per direction at 80%: 51.2 GB/s.
    pcie_s, cpu_s = offload_seconds(
        sharding=Sharding.ZERO3_OFFLOAD,
        gpu=h100,
        offloaded_weight_bytes_per_gpu=25.6e9,
        gradient_bytes_per_gpu=51.2e9,
        trainable_params_per_node=2e9,
    )
    assert pcie_s == pytest.approx((2 * 25.6e9 + 51.2e9) / 51.2e9) == pytest.approx(2.0)
    assert cpu_s == pytest.approx(2.0)  # 2e9 parameters at the assumed 1e9/s of CPU Adam
    assert offload_seconds(
        sharding=Sharding.FSDP,
        gpu=h100,
        offloaded_weight_bytes_per_gpu=1e9,
        gradient_bytes_per_gpu=1e9,
        trainable_params_per_node=1e9,
    ) == (0.0, 0.0)
    assert host_ram_gib(2 * GIB, gpus_per_node=2) == 4 + 2 * HOST_RAM_PER_PROCESS_GIB


def test_sharded_qlora_weights_and_working_set_by_hand() -> None:
    """70B QLoRA on 2 GPUs under FSDP: NF4 linears and bf16 rest split two ways; the root unit
    (embedding + head in bf16) and two NF4 layers gathered."""
    spec = get_model("llama3.1-70b")
    config = TuningConfig(
        method=Method.QLORA,
        lora_rank=16,
        lora_targets="all-linear",
        seq_len=1024,
        grad_checkpointing=True,
        gpu_count=2,
        sharding=Sharding.FSDP,
    )
    terms = memory_terms(spec, config, get_gpu("rtx4090"))
    linear = spec.params_per_layer() * spec.num_layers
    other = spec.param_count - linear
    adapters = 16 * ((8192 + 8192) * 2 + (8192 + 1024) * 2 + (8192 + 28672) * 3) * spec.num_layers
    # The packed 4-bit weights are split two ways; their quantization states (not parameters)
    # stay whole on both GPUs.
    states = linear * (NF4_BYTES_PER_PARAM - 0.5)
    weights = (linear * 0.5 + other * 2 + adapters * 2) / 2 + states
    assert terms.weights_gib * GIB == pytest.approx(weights)
    working = other * 2 + 2 * spec.params_per_layer() * NF4_BYTES_PER_PARAM
    assert terms.overhead_gib * GIB == pytest.approx(working + 0.06 * GIB)
    # bf16 adapters under FSDP: gradient 2 B, AdamW states 2 × 2 B, per shard.
    assert terms.optimizer_gib * GIB == pytest.approx(adapters * 4 / 2)


def test_offload_moves_state_to_host_ram_and_costs_time() -> None:
    spec, gpu = get_model("llama3.1-8b"), get_gpu("rtx4090")
    base = TuningConfig(method=Method.FULL, seq_len=2048, grad_checkpointing=True)
    offload = TuningConfig(
        method=Method.FULL, seq_len=2048, grad_checkpointing=True, sharding=Sharding.ZERO3_OFFLOAD
    )
    alone, off = _estimate(spec, base, gpu), _estimate(spec, offload, gpu)
    assert alone.peak_reserved_gib and off.peak_reserved_gib and off.host_ram_gib
    assert not memory_fits(alone.peak_reserved_gib, gpu)
    assert memory_fits(off.peak_reserved_gib, gpu)
    # fp32 master weights (4) + gradients (4) + AdamW states (8) + bf16 parameters (2) per param.
    assert off.host_ram_gib == pytest.approx(spec.param_count * 18 / GIB + 3.0)
    assert off.step_time_s and alone.step_time_s and off.step_time_s > alone.step_time_s


def test_issue_examples_fit_as_practitioners_run_them() -> None:
    rtx4090, h100 = get_gpu("rtx4090"), get_gpu("h100")
    qlora = {
        "method": Method.QLORA,
        "lora_rank": 16,
        "lora_targets": "all-linear",
        "seq_len": 1024,
        "grad_checkpointing": True,
        "gpu_count": 2,
    }
    # Llama-2 70B (32k vocabulary) QLoRA on 2 × 24 GB: its allocated memory fits under plain
    # FSDP, but not what FSDP reserves above it; Answer.AI ran it (and the 2 × A5000 24GB run
    # of its hardware table) with CPU offload, where it fits (benchmarks_03_2024.md).
    llama2 = get_model("llama2-70b")
    m = _estimate(llama2, TuningConfig(**qlora, sharding=Sharding.FSDP), rtx4090)
    assert m.peak_allocated_gib and m.peak_allocated_gib < rtx4090.usable_memory_gib - 1
    assert m.peak_reserved_gib and not memory_fits(m.peak_reserved_gib, rtx4090)
    m = _estimate(llama2, TuningConfig(**qlora, sharding=Sharding.FSDP_OFFLOAD), rtx4090)
    assert m.peak_reserved_gib and memory_fits(m.peak_reserved_gib, rtx4090)
    # Llama 3.1 70B's 128k vocabulary puts 2.1B bf16 parameters in FSDP's root unit: plain FSDP
    # misses 24 GB, FSDP with CPU offload fits.
    spec = get_model("llama3.1-70b")
    m = _estimate(spec, TuningConfig(**qlora, sharding=Sharding.FSDP), rtx4090)
    assert m.peak_reserved_gib and not memory_fits(m.peak_reserved_gib, rtx4090)
    m = _estimate(spec, TuningConfig(**qlora, sharding=Sharding.FSDP_OFFLOAD), rtx4090)
    assert m.peak_reserved_gib and memory_fits(m.peak_reserved_gib, rtx4090)
    assert m.host_ram_gib and 30 < m.host_ram_gib < 60
    # 70B LoRA with FSDP on 8 × H100 (each GPU holds 1/8 of the bf16 model).
    lora = TuningConfig(
        method=Method.LORA,
        lora_rank=16,
        lora_targets="all-linear",
        seq_len=2048,
        grad_checkpointing=True,
        gpu_count=8,
        sharding=Sharding.FSDP,
    )
    m = _estimate(spec, lora, h100)
    assert m.peak_reserved_gib and memory_fits(m.peak_reserved_gib, h100)
    # Mixtral-8x7B QLoRA with checkpointing: experts in NF4, under 40 GiB.
    mixtral = TuningConfig(
        method=Method.QLORA, lora_rank=16, lora_targets="all-linear", grad_checkpointing=True
    )
    m = _estimate(get_model("mixtral-8x7b"), mixtral, get_gpu("h200"))
    assert m.peak_reserved_gib and m.peak_reserved_gib < 40


@pytest.mark.parametrize(
    ("sharding", "method", "gpus", "optimizer", "hint"),
    [
        (Sharding.FSDP, Method.LORA, 1, OptimizerKind.ADAMW, "use none, or fsdp-offload"),
        (Sharding.DDP, Method.FULL, 1, OptimizerKind.ADAMW, "use none"),
        (Sharding.NONE, Method.LORA, 2, OptimizerKind.ADAMW, "use ddp"),
        (Sharding.ZERO3_OFFLOAD, Method.QLORA, 2, OptimizerKind.ADAMW, "use fsdp-offload"),
        (Sharding.FSDP_OFFLOAD, Method.FULL, 1, OptimizerKind.ADAMW_8BIT, "use optimizer adamw"),
    ],
)
def test_unusable_sharding_says_what_to_use(
    sharding: Sharding, method: Method, gpus: int, optimizer: OptimizerKind, hint: str
) -> None:
    problem = sharding_problem(sharding, method=method, gpu_count=gpus, optimizer=optimizer)
    assert problem is not None and hint in problem and "\n" not in problem


def test_plan_files_with_the_old_fsdp_name_still_load() -> None:
    assert Sharding("fsdp-full-shard") is Sharding.FSDP
    assert Sharding.ZERO3.deepspeed and Sharding.FSDP_OFFLOAD.offloads
    assert not Sharding.DDP.shards_state


def test_estimate_cli_sharding_json_and_bad_combination() -> None:
    args = ["estimate", "--model", "llama3.1-8b", "--method", "full", "--gpu", "rtx4090"]
    result = CliRunner().invoke(
        main,
        [*args, "--sharding", "zero3-offload", "--grad-checkpointing", "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["sharding"] == "zero3-offload" and data["fits"] is True
    assert data["host_ram_gib"] > 130
    result = CliRunner().invoke(main, [*args, "--sharding", "fsdp"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "use none, or fsdp-offload / zero3-offload" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("method", list(Method))
@pytest.mark.parametrize("sharding", list(Sharding))
@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_loading_never_needs_more_than_training_except_zero3_qlora(
    method: Method, sharding: Sharding, gpus: int
) -> None:
    """FSDP loads every method on rank 0 and ZeRO-3 builds full fine-tuning and LoRA under
    zero.Init, so the loading peak per GPU stays below the training peak; only ZeRO-3 QLoRA
    still builds the whole NF4 model on every GPU."""
    from profiler.memory import load_peak_gib
    from profiler.sharding import loads_whole_model_per_gpu

    spec, gpu = get_model("llama3.1-70b"), get_gpu("rtx4090")
    lora = method is not Method.FULL
    try:
        config = TuningConfig(
            method=method,
            lora_rank=16 if lora else None,
            lora_targets="all-linear" if lora else None,
            grad_checkpointing=True,
            gpu_count=gpus,
            sharding=sharding,
        )
    except ValueError:
        pytest.skip("not a valid config")
    load, train = load_peak_gib(spec, config), _estimate(spec, config, gpu).peak_allocated_gib
    whole = loads_whole_model_per_gpu(sharding=sharding, method=method)
    assert whole == (sharding.deepspeed and method is Method.QLORA)
    assert train is not None and (load > train) == (whole and gpus > 1)


@pytest.mark.parametrize(
    ("sharding", "bytes_per_param"),
    [
        # (linear weights, the rest): sharded QLoRA keeps embeddings, head and norms bf16.
        (Sharding.ZERO3, (NF4_BYTES_PER_PARAM, 2.0)),
        (Sharding.NONE, (NF4_BYTES_PER_PARAM, 4.0)),  # prepare_model_for_kbit_training's fp32
    ],
)
def test_load_peak_is_the_whole_model_where_the_runner_loads_it_whole(
    sharding: Sharding, bytes_per_param: tuple[float, float]
) -> None:
    from profiler.memory import load_peak_gib

    spec = get_model("llama3.1-70b")
    config = TuningConfig(
        method=Method.QLORA,
        lora_rank=16,
        lora_targets="all-linear",
        grad_checkpointing=True,
        gpu_count=1 if sharding is Sharding.NONE else 2,
        sharding=sharding,
    )
    load = load_peak_gib(spec, config)
    linear = spec.num_layers * sum(a * b for a, b in spec.linear_shapes().values())
    rest = spec.param_count - linear
    floor = (linear * bytes_per_param[0] + rest * bytes_per_param[1]) / 2**30
    assert floor < load < floor * 1.02 + 1.0  # + adapters, one 16-bit linear, the allocator


def test_qlora_fsdp_offload_loads_within_a_24_gb_card() -> None:
    """llama3.1-70b QLoRA with FSDP offload over 2 x RTX 4090 (what recommend picks there):
    37.5 GiB per GPU when every rank quantized the whole model; with rank-0 loading one unit
    and the quantization states (the shards go to host memory)."""
    from profiler.memory import load_peak_gib

    spec, gpu = get_model("llama3.1-70b"), get_gpu("rtx4090")
    config = TuningConfig(
        method=Method.QLORA,
        lora_rank=16,
        lora_targets="all-linear",
        grad_checkpointing=True,
        gpu_count=2,
        sharding=Sharding.FSDP_OFFLOAD,
    )
    assert load_peak_gib(spec, config) < 6.0 < capacity_gib(gpu)


def test_rank0_loading_needs_the_whole_model_in_host_ram() -> None:
    from catalog import Offer, Provider
    from planner.engine.measurer import host_ram_fits

    spec, h100 = get_model("llama2-70b"), get_gpu("h100")
    full = TuningConfig(method=Method.FULL, gpu_count=8, sharding=Sharding.FSDP)
    m = _estimate(spec, full, h100)
    # Rank 0 loads the fp32 weights (bf16-mixed) in CPU memory before FSDP shards them.
    assert m.host_ram_gib is not None and m.host_ram_gib > spec.param_count * 4 / 2**30
    offer = Offer(
        provider=Provider.AWS,
        service="ec2",
        instance_type="p.test",
        region="r",
        gpu=h100.name,
        gpu_count=8,
        usd_per_hour=1.0,
        spot=False,
        as_of="2026-11-30",
        source="test",
        memory_gib=128.0,
    )
    assert not host_ram_fits(m, offer)
    assert host_ram_fits(m, dataclasses.replace(offer, memory_gib=2048.0))
    assert host_ram_fits(m, dataclasses.replace(offer, memory_gib=None))  # cannot check: allowed
    # No rank-0 loading (DDP LoRA): host RAM is not the plan's concern.
    ddp = TuningConfig(
        method=Method.LORA,
        lora_rank=16,
        lora_targets="all-linear",
        gpu_count=8,
        sharding=Sharding.DDP,
    )
    assert host_ram_fits(_estimate(get_model("llama2-7b"), ddp, h100), offer)
