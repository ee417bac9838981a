"""How a plan's sharding is launched: the accelerate FSDP plugin settings and the DeepSpeed ZeRO-3
config, generated from the plan's config. One definition for the local and the SageMaker runners
(and whatever else launches a plan), so what was priced is what runs. Pure: values in, values out.
"""

from __future__ import annotations

import json
from typing import Any

from profiler import Precision, Sharding, TuningConfig
from profiler.recipes import MAX_GRAD_NORM
from profiler.sharding import loads_on_rank0, loads_partitioned

DEEPSPEED_CONFIG_FILE = "deepspeed_config.json"

_DISTRIBUTED_TYPE = {
    Sharding.NONE: "NO",
    Sharding.DDP: "MULTI_GPU",
    Sharding.FSDP: "FSDP",
    Sharding.FSDP_OFFLOAD: "FSDP",
    Sharding.ZERO3: "DEEPSPEED",
    Sharding.ZERO3_OFFLOAD: "DEEPSPEED",
}


def uses_accelerate(config: TuningConfig) -> bool:
    """Whether the run starts under ``accelerate launch``: several GPUs, or one GPU with CPU
    offload (FSDP or DeepSpeed wrap the model even alone)."""
    return config.gpu_count > 1 or config.sharding is not Sharding.NONE


def distributed_type(config: TuningConfig) -> str:
    """accelerate's ``distributed_type`` for the plan's sharding."""
    return _DISTRIBUTED_TYPE[config.sharding]


def fsdp_settings(config: TuningConfig) -> dict[str, str]:
    """accelerate FSDP plugin settings (config-file keys, ``fsdp_`` prefixed), empty unless FSDP.

    Full shard, each decoder layer its own unit (accelerate reads the layer class from the
    model's ``_no_split_modules``), backward prefetch. ``use_orig_params`` keeps the original
    parameters, so a frozen base and trainable LoRA adapters can share a flat parameter and the
    recipe's optimizer maps over them (PEFT's FSDP guide). Activation checkpointing stays the
    recipe's own. ``fsdp-offload`` keeps parameters (and so the optimizer step) on the CPU.
    Every method loads on rank 0 only (``cpu_ram_efficient_loading``: the other ranks build on
    the meta device, ``sync_module_states`` broadcasts rank 0's weights when FSDP shards;
    :func:`profiler.sharding.loads_on_rank0`), so a 70B model is not built whole on every rank.
    LoRA/QLoRA replace the per-layer wrap with PEFT's policy at launch
    (``runners._train_sharded.adapter_wrap_policy``: adapters in their own units).
    """
    if config.sharding not in (Sharding.FSDP, Sharding.FSDP_OFFLOAD):
        return {}
    return {
        "fsdp_version": "1",
        "fsdp_reshard_after_forward": "FULL_SHARD",
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_backward_prefetch": "BACKWARD_PRE",
        "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_use_orig_params": "true",
        "fsdp_sync_module_states": "true",
        "fsdp_cpu_ram_efficient_loading": (
            "true" if loads_on_rank0(sharding=config.sharding, method=config.method) else "false"
        ),
        "fsdp_offload_params": "true" if config.sharding is Sharding.FSDP_OFFLOAD else "false",
        "fsdp_activation_checkpointing": "false",
    }


# accelerate's environment names for the FSDP settings (accelerate/utils/launch.py), read when
# training starts without a config file (SageMaker's torchrun launcher).
_FSDP_ENV = {
    "fsdp_version": "FSDP_VERSION",
    "fsdp_reshard_after_forward": "FSDP_SHARDING_STRATEGY",
    "fsdp_auto_wrap_policy": "FSDP_AUTO_WRAP_POLICY",
    "fsdp_backward_prefetch": "FSDP_BACKWARD_PREFETCH",
    "fsdp_state_dict_type": "FSDP_STATE_DICT_TYPE",
    "fsdp_use_orig_params": "FSDP_USE_ORIG_PARAMS",
    "fsdp_sync_module_states": "FSDP_SYNC_MODULE_STATES",
    "fsdp_cpu_ram_efficient_loading": "FSDP_CPU_RAM_EFFICIENT_LOADING",
    "fsdp_offload_params": "FSDP_OFFLOAD_PARAMS",
    "fsdp_activation_checkpointing": "FSDP_ACTIVATION_CHECKPOINTING",
}


def deepspeed_config(
    config: TuningConfig, *, grad_accum_steps: int, learning_rate: float
) -> dict[str, Any]:
    """DeepSpeed ZeRO stage 3 config for ``zero3`` / ``zero3-offload`` plans; empty otherwise.

    ``zero3-offload`` keeps the optimizer and the parameters in pinned CPU memory, and names
    AdamW in the config so that DeepSpeed runs its CPU Adam (the optimizer the estimator prices).
    Mixed precision follows the recipe: bf16 unless the GPU needs fp16. The micro-batch and
    accumulation are the plan's; 16-bit weights are gathered for saving.
    """
    if not config.sharding.deepspeed:
        return {}
    offload = config.sharding is Sharding.ZERO3_OFFLOAD
    zero: dict[str, Any] = {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    fp16 = config.precision is Precision.FP16_MIXED
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": MAX_GRAD_NORM,  # the recipes' clipping (profiler.recipes)
        "zero_optimization": zero,
        "bf16": {"enabled": not fp16},
        "fp16": {"enabled": fp16},
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if offload:
        out["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": learning_rate, "betas": [0.9, 0.999], "eps": 1e-8},
        }
        out["zero_force_ds_cpu_optimizer"] = True
    return out


def accelerate_config(config: TuningConfig, *, num_processes: int) -> dict[str, Any]:
    """The accelerate config-file contents (``accelerate launch --config_file``) of a plan.

    Mixed precision stays ``no`` for FSDP and DDP: the recipe applies its own autocast, exactly
    as measured. DeepSpeed reads its precision from the generated DeepSpeed config
    (:data:`DEEPSPEED_CONFIG_FILE`, next to the accelerate config).
    """
    kind = distributed_type(config)
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": kind,
        "mixed_precision": "no",
        "downcast_bf16": "no",
        "num_processes": num_processes,
        "num_machines": 1,
        "machine_rank": 0,
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "main_training_function": "main",
    }
    fsdp = fsdp_settings(config)
    if fsdp:
        out["fsdp_config"] = {key: _typed(value) for key, value in fsdp.items()}
    if kind == "DEEPSPEED":
        out["deepspeed_config"] = {
            "deepspeed_config_file": DEEPSPEED_CONFIG_FILE,
            "zero3_init_flag": zero3_init(config),
        }
    return out


def _typed(value: str) -> Any:
    if value in ("true", "false"):
        return value == "true"
    return int(value) if value.isdigit() else value


def distribution_environment(
    config: TuningConfig, *, deepspeed_config_path: str
) -> dict[str, str]:
    """accelerate settings as environment variables, for launchers without a config file
    (SageMaker's torchrun): the same choices as :func:`accelerate_config`."""
    if not uses_accelerate(config):
        return {}
    env = {"ACCELERATE_MIXED_PRECISION": "no"}
    fsdp = fsdp_settings(config)
    if fsdp:
        env["ACCELERATE_USE_FSDP"] = "true"
        env.update({_FSDP_ENV[key]: value for key, value in fsdp.items()})
    if config.sharding.deepspeed:
        env["ACCELERATE_USE_DEEPSPEED"] = "true"
        env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = deepspeed_config_path
        env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] = "true" if zero3_init(config) else "false"
    return env


def zero3_init(config: TuningConfig) -> bool:
    """accelerate's ``zero3_init_flag``: build the model under DeepSpeed's ``zero.Init``, so each
    parameter is partitioned as it is created or loaded (transformers does so when the
    Accelerator made before the model says ZeRO-3; :func:`profiler.sharding.loads_partitioned`).
    Off for QLoRA, which transformers never builds under ``zero.Init``."""
    return loads_partitioned(sharding=config.sharding, method=config.method)


def yaml_text(data: dict[str, Any], *, indent: int = 0) -> str:
    """A small YAML writer for flat and one-level-nested config dicts (no PyYAML needed at
    launch time): strings quoted where YAML would misread them."""
    lines: list[str] = []
    pad = "  " * indent
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(yaml_text(value, indent=indent + 1).rstrip("\n"))
        elif isinstance(value, bool):
            lines.append(f"{pad}{key}: {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{pad}{key}: {value}")
        else:
            lines.append(f"{pad}{key}: '{value}'")
    return "\n".join(lines) + "\n"


def deepspeed_config_json(
    config: TuningConfig, *, grad_accum_steps: int, learning_rate: float
) -> str:
    """:func:`deepspeed_config` as the file's text ("" for shardings without DeepSpeed)."""
    data = deepspeed_config(config, grad_accum_steps=grad_accum_steps, learning_rate=learning_rate)
    return json.dumps(data, indent=2, sort_keys=True) + "\n" if data else ""


def launch_problem(config: TuningConfig) -> str | None:
    """Why this machine cannot launch the plan's sharding, with what to do; ``None`` if it can.
    DeepSpeed is an optional extra: a ``zero3`` plan needs it installed where it runs."""
    import importlib.util

    if config.sharding.deepspeed and importlib.util.find_spec("deepspeed") is None:
        other = "fsdp-offload" if config.sharding.offloads else "fsdp"
        return (
            f"the plan's sharding {config.sharding.value} runs under DeepSpeed, which is not "
            f"installed here: pip install 'ftplan[deepspeed]', or re-plan with "
            f"'ftplan estimate ... --sharding {other}'"
        )
    return None
