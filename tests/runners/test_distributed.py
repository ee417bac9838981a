"""Sharding at launch: the accelerate config and the DeepSpeed config generated from a plan load
in accelerate and in DeepSpeed's own config parsing; the runners write and pass them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from profiler import Method, OptimizerKind, Sharding, TuningConfig
from runners._distributed import (
    DEEPSPEED_CONFIG_FILE,
    accelerate_config,
    deepspeed_config,
    distribution_environment,
    uses_accelerate,
    yaml_text,
)


def _config(method: Method, sharding: Sharding, gpus: int) -> TuningConfig:
    lora = method is not Method.FULL
    return TuningConfig(
        method=method,
        lora_rank=16 if lora else None,
        lora_targets="all-linear" if lora else None,
        micro_batch_size=2,
        seq_len=1024,
        grad_checkpointing=True,
        optimizer=OptimizerKind.ADAMW,
        gpu_count=gpus,
        sharding=sharding,
    )


@pytest.mark.parametrize(
    ("method", "sharding", "gpus", "kind"),
    [
        (Method.LORA, Sharding.DDP, 2, "MULTI_GPU"),
        (Method.QLORA, Sharding.FSDP, 2, "FSDP"),
        (Method.QLORA, Sharding.FSDP_OFFLOAD, 1, "FSDP"),
        (Method.FULL, Sharding.ZERO3, 4, "DEEPSPEED"),
        (Method.FULL, Sharding.ZERO3_OFFLOAD, 1, "DEEPSPEED"),
    ],
)
def test_generated_accelerate_config_loads_in_accelerate(
    tmp_path: Path, method: Method, sharding: Sharding, gpus: int, kind: str
) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = _config(method, sharding, gpus)
    assert uses_accelerate(config)
    path = tmp_path / "accelerate_config.yaml"
    path.write_text(yaml_text(accelerate_config(config, num_processes=gpus)))
    loaded = load_config_from_file(str(path))
    assert loaded.distributed_type.value == kind
    assert loaded.num_processes == gpus and loaded.mixed_precision == "no"
    if kind == "FSDP":
        assert loaded.fsdp_config["fsdp_use_orig_params"] is True  # LoRA under FSDP
        offload = sharding is Sharding.FSDP_OFFLOAD
        assert loaded.fsdp_config["fsdp_offload_params"] is offload
        env = distribution_environment(config, deepspeed_config_path="unused")
        assert env["ACCELERATE_USE_FSDP"] == "true"
        assert env["FSDP_OFFLOAD_PARAMS"] == str(offload).lower()
    if kind == "DEEPSPEED":
        assert loaded.deepspeed_config["deepspeed_config_file"] == DEEPSPEED_CONFIG_FILE
        env = distribution_environment(config, deepspeed_config_path="/x/ds.json")
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == "/x/ds.json"


@pytest.mark.parametrize("sharding", [Sharding.ZERO3, Sharding.ZERO3_OFFLOAD])
@pytest.mark.parametrize("gpus", [1, 8])
def test_generated_deepspeed_config_passes_deepspeeds_own_parsing(
    sharding: Sharding, gpus: int
) -> None:
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    if gpus == 1 and sharding is Sharding.ZERO3:
        pytest.skip("zero3 needs several GPUs")
    config = _config(Method.FULL, sharding, gpus)
    data = deepspeed_config(config, grad_accum_steps=4, learning_rate=1e-5)
    json.dumps(data)  # what the runners write
    parsed = DeepSpeedConfig(data)  # no process group: DeepSpeed takes world size 1
    assert parsed.zero_optimization_stage == 3
    assert parsed.train_micro_batch_size_per_gpu == 2
    assert parsed.gradient_accumulation_steps == 4
    assert parsed.bfloat16_config.enabled
    if sharding is Sharding.ZERO3_OFFLOAD:
        assert parsed.zero_config.offload_optimizer.device == "cpu"
        assert parsed.zero_config.offload_param.device == "cpu"
        assert parsed.optimizer_name == "adamw"
    assert (
        deepspeed_config(
            _config(Method.LORA, Sharding.FSDP, 2), grad_accum_steps=1, learning_rate=1e-4
        )
        == {}
    )


def test_no_accelerate_for_one_gpu_without_offload() -> None:
    config = _config(Method.LORA, Sharding.NONE, 1)
    assert not uses_accelerate(config)
    assert distribution_environment(config, deepspeed_config_path="x") == {}


@pytest.mark.parametrize("method", [Method.FULL, Method.LORA, Method.QLORA])
def test_fsdp_loads_on_rank_0_only_for_every_method(tmp_path: Path, method: Method) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = _config(method, Sharding.FSDP, 4)
    path = tmp_path / "accelerate_config.yaml"
    path.write_text(yaml_text(accelerate_config(config, num_processes=4)))
    fsdp = load_config_from_file(str(path)).fsdp_config
    # QLoRA too: profiler._nf4_loading quantizes on rank 0
    # (tests/profiler/test_fsdp_rank0_loading.py).
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True
    assert fsdp["fsdp_sync_module_states"] is True  # rank 0's weights reach the other ranks
    env = distribution_environment(config, deepspeed_config_path="unused")
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert env["FSDP_SYNC_MODULE_STATES"] == "true"


@pytest.mark.parametrize(
    ("method", "partitioned"), [(Method.FULL, True), (Method.LORA, True), (Method.QLORA, False)]
)
def test_zero3_builds_the_model_partitioned_except_qlora(
    tmp_path: Path, method: Method, partitioned: bool
) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = _config(method, Sharding.ZERO3, 4)
    path = tmp_path / "accelerate_config.yaml"
    path.write_text(yaml_text(accelerate_config(config, num_processes=4)))
    loaded = load_config_from_file(str(path)).deepspeed_config
    assert loaded["zero3_init_flag"] is partitioned
    env = distribution_environment(config, deepspeed_config_path="ds.json")
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == str(partitioned).lower()


def test_deepspeed_clips_like_every_other_sharding() -> None:
    from profiler.recipes import MAX_GRAD_NORM

    config = _config(Method.FULL, Sharding.ZERO3, 4)
    data = deepspeed_config(config, grad_accum_steps=2, learning_rate=2e-5)
    assert data["gradient_clipping"] == MAX_GRAD_NORM == 1.0
