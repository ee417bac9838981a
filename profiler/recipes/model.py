"""Recipes, part 1: the model. The transformers config from the catalog's architecture facts,
PEFT's target names, dtypes per recipe, and building the base model (random, from a checkpoint,
in NF4, on rank 0 only under FSDP) that :mod:`profiler.recipes.methods` wraps. torch,
transformers, peft and bitsandbytes are imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import tempfile
from typing import TYPE_CHECKING, Any

from profiler._types import (
    MLP_MODULES,
    Precision,
    TuningConfig,
    adapted_modules,
    expert_parameters,
)
from profiler.memory import EAGER_ATTENTION_MODEL_TYPES

if TYPE_CHECKING:
    from catalog import ModelSpec


# Architectures whose decoder layers fuse some Llama-named linears into one module.
# phi3: q/k/v live in ``qkv_proj`` and gate/up in ``gate_up_proj`` (transformers modeling_phi3).
_FUSED_LINEAR_NAMES: dict[str, dict[str, str]] = {
    "phi3": {
        "q_proj": "qkv_proj",
        "k_proj": "qkv_proj",
        "v_proj": "qkv_proj",
        "gate_proj": "gate_up_proj",
        "up_proj": "gate_up_proj",
    },
}


def attention_implementation(spec: ModelSpec) -> str:
    """``sdpa`` (PyTorch scaled-dot-product attention), or ``eager`` where transformers has no
    SDPA path for the architecture."""
    return "eager" if spec.model_type in EAGER_ATTENTION_MODEL_TYPES else "sdpa"


def hf_config_for(spec: ModelSpec, *, num_layers: int | None = None) -> Any:
    """A transformers config built from the catalog's architecture facts.

    Args:
        spec: The model's architecture facts.
        num_layers: Keep only this many decoder layers (same embeddings and head); ``None`` keeps
            ``spec.num_layers``.

    Returns:
        A ``transformers.PretrainedConfig`` for ``spec.model_type`` with SDPA attention (eager
        where transformers has no SDPA path) and no KV cache (training).

    Raises:
        ValueError: If ``num_layers`` is not positive or transformers does not know the model type.
    """
    from transformers import AutoConfig

    layers = spec.num_layers if num_layers is None else num_layers
    if layers <= 0:
        raise ValueError(f"num_layers must be > 0, got {layers}")
    kwargs: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "tie_word_embeddings": spec.tied_embeddings,
        "max_position_embeddings": spec.max_seq_len,
        "use_cache": False,
        # Token ids of the shipped tokenizer may exceed a shrunk vocabulary; they do not matter
        # for memory or time, so drop them rather than fail the embedding's padding_idx check.
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
    }
    if spec.num_experts > 1:
        kwargs["num_local_experts"] = spec.num_experts
        kwargs["num_experts_per_tok"] = spec.experts_per_token
    try:
        config = AutoConfig.for_model(spec.model_type, **kwargs)
    except ValueError as exc:
        raise ValueError(
            f"model {spec.name!r}: transformers does not know model_type {spec.model_type!r} "
            f"({exc}); fix the catalog entry or upgrade transformers"
        ) from None
    # Some architectures carry a per-layer list that must match the truncated depth.
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) != layers:
        config.layer_types = [layer_types[i % len(layer_types)] for i in range(layers)]
    config._attn_implementation = attention_implementation(spec)
    return config


def peft_target_modules(spec: ModelSpec, config: TuningConfig) -> list[str]:
    """PEFT ``target_modules`` names for ``config.lora_targets`` in this architecture.

    Llama-style names are mapped to fused modules where the architecture fuses them (phi3:
    ``q_proj`` -> ``qkv_proj``). For mixture-of-experts models the experts are fused parameters,
    not linear modules: the MLP targets go to :func:`peft_target_parameters` instead.

    Raises:
        ValueError: If the config has no LoRA targets or nothing remains to adapt.
    """
    if config.lora_targets is None:
        raise ValueError(f"method={config.method.value} needs lora_targets")
    names = adapted_modules(config.lora_targets, num_experts=spec.num_experts)
    if spec.num_experts > 1:
        names = tuple(n for n in names if n not in MLP_MODULES)
    fused = _FUSED_LINEAR_NAMES.get(spec.model_type, {})
    mapped: list[str] = []
    for name in names:
        module = fused.get(name, name)
        if module not in mapped:
            mapped.append(module)
    if not mapped and not (spec.num_experts > 1 and expert_parameters(config.lora_targets)):
        raise ValueError(
            f"LoRA targets {config.lora_targets!r} leave no module of {spec.name!r} to adapt; "
            f"use 'attention' or 'all-linear'"
        )
    return mapped


def peft_target_parameters(model: Any, spec: ModelSpec, config: TuningConfig) -> list[str]:
    """Full names of the fused MoE expert parameters to adapt (PEFT ``target_parameters``).

    transformers 5 stores a layer's experts as 3-D parameters ``experts.gate_up_proj`` (E, 2i, h)
    and ``experts.down_proj`` (E, h, i). PEFT's ``lora.ParamWrapper`` adapts them with rank r per
    expert; once bitsandbytes has quantized them (a parametrization), PEFT matches only the exact
    ``module.parameter`` name, so the names are listed from the model. Empty for dense models.
    """
    wanted = expert_parameters(config.lora_targets or "attention")
    if spec.num_experts <= 1 or not wanted:
        return []
    names: list[str] = []
    for module_name, module in model.named_modules():
        for param in wanted:
            tensor = getattr(module, param, None)
            if tensor is not None and getattr(tensor, "ndim", 0) == 3:
                names.append(f"{module_name}.{param}")
    return names


def quantize_experts_nf4(model: Any) -> int:
    """Quantize fused 3-D MoE expert parameters to NF4 with double quantization, in place.

    transformers' bitsandbytes integration replaces ``nn.Linear`` modules only
    (``replace_with_bnb_linear``), so fused experts would stay 16-bit. bitsandbytes >= 0.48
    quantizes any parameter through a parametrization
    (``bitsandbytes.nn.parametrize.replace_parameter_4bit``) that dequantizes on access.

    Returns:
        The number of parameters quantized.
    """
    from bitsandbytes.nn.parametrize import replace_parameter_4bit

    done = 0
    for module in list(model.modules()):
        for name in ("gate_up_proj", "down_proj"):
            tensor = module._parameters.get(name) if hasattr(module, "_parameters") else None
            if tensor is not None and tensor.ndim == 3:
                replace_parameter_4bit(module, name, compress_statistics=True, quant_type="nf4")
                done += tensor.numel()
    return done


def fix_peft_stacked_parametrization() -> None:
    """Work around a peft 0.21.2 bug with LoRA on already-parametrized (4-bit) parameters.

    ``lora.ParamWrapper`` folds a single adapter into a fused expert stack with a
    ``_LoraFactorsProxy`` parametrization and removes it after each forward; when the parameter
    already carries bitsandbytes' 4-bit parametrization, ``_remove_parametrizations`` looks only
    for ``_LoraParameterProxy`` and leaves the factors proxy in place (peft/tuners/lora/layer.py,
    "Could not find any LoRA parametrization"). The next forward then stacks a second proxy (the
    delta applied twice) or, under checkpointing, fails with "only Tensors of floating point dtype
    can require gradients". Found on a tiny Mixtral on CPU; this removes either proxy type.
    """
    import torch
    from peft.tuners.lora import layer

    if getattr(layer.ParamWrapper, "_ftplan_fixed", False):
        return
    proxies = tuple(
        getattr(layer, name)
        for name in ("_LoraParameterProxy", "_LoraFactorsProxy")
        if hasattr(layer, name)
    )

    def remove(self: Any) -> None:
        base = self.get_base_layer()
        chain = base.parametrizations[self.parameter_name]
        if len(chain) == 1:
            torch.nn.utils.parametrize.remove_parametrizations(
                base, self.parameter_name, leave_parametrized=False
            )
            return
        for index in reversed(range(len(chain))):
            if isinstance(chain[index], proxies):
                del chain[index]
                return

    # Assigned through setattr: a method replaced on a third-party class, on purpose.
    setattr(layer.ParamWrapper, "_remove_parametrizations", remove)  # noqa: B010
    setattr(layer.ParamWrapper, "_ftplan_fixed", True)  # noqa: B010


def is_sharded(config: TuningConfig) -> bool:
    """LoRA/QLoRA under FSDP/ZeRO-3: every parameter stays 16-bit (one dtype per flat tensor)."""
    return config.sharding.shards_state and config.method.traits.adapters


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """transformers >= 4.56 names the load dtype ``dtype``; older releases ``torch_dtype`` (the
    SageMaker images ftplan launches on may carry an older transformers)."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def weight_dtype(config: TuningConfig) -> Any:
    import torch

    if not config.method.traits.adapters:
        return torch.bfloat16 if config.precision is Precision.BF16 else torch.float32
    return torch.float16 if config.precision is Precision.FP16_MIXED else torch.bfloat16


def compute_dtype(config: TuningConfig) -> Any:
    import torch

    return torch.float16 if config.precision is Precision.FP16_MIXED else torch.bfloat16


def checkpoint_config(
    checkpoint: str, *, num_layers: int | None = None, for_training: bool = True
) -> Any:
    """The checkpoint's own transformers config, with only the training switches applied.

    Architecture details the catalog does not carry (``rope_theta``, rope scaling,
    ``rms_norm_eps``, sliding windows, token ids) come from the weights, so the model trains as
    it was pre-trained. Only the KV cache is turned off (training); the attention
    implementation and dtype are load arguments.

    Args:
        checkpoint: Hub id or local folder of the weights.
        num_layers: Keep only this many decoder layers (``None``: the checkpoint's depth).
        for_training: Apply the training switches; False returns the config as saved.

    Raises:
        ValueError: If the config cannot be read (missing folder, gated or unknown hub id).
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(checkpoint)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"cannot read the model config of {checkpoint!r}: {first}. To fix: pass --weights "
            "with a folder holding config.json, or a hub id you can read (gated models need "
            "HF_TOKEN)"
        ) from None
    text = getattr(config, "text_config", None)
    target = text if text is not None and not hasattr(config, "num_hidden_layers") else config
    if num_layers is not None:
        target.num_hidden_layers = num_layers
        layer_types = getattr(target, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) != num_layers:
            target.layer_types = [layer_types[i % len(layer_types)] for i in range(num_layers)]
    if for_training:
        config.use_cache = False
    return config


def loads_on_rank0_only() -> bool | None:
    """Whether this process takes part in FSDP rank-0-only loading (accelerate's
    ``fsdp_cpu_ram_efficient_loading``, as transformers reads it: ``ACCELERATE_USE_FSDP`` and
    ``FSDP_CPU_RAM_EFFICIENT_LOADING`` set, torch.distributed started): ``True`` on local rank 0,
    which materialises the weights in CPU memory, ``False`` on the other ranks, which build
    shapes only on the meta device (never reading the checkpoint) and receive rank 0's weights
    when FSDP shards (``sync_module_states``);
    ``None`` when not in such a run (every process builds the whole model on its device)."""
    from transformers.modeling_utils import is_fsdp_enabled, is_local_dist_rank_0

    return bool(is_local_dist_rank_0()) if is_fsdp_enabled() else None


def build_base_model(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    device: str,
    num_layers: int | None = None,
    checkpoint: str | None = None,
) -> Any:
    """The base causal LM of a recipe, in the recipe's weight dtype, on ``device``.

    Full bf16-mixed and fp16-mixed: fp32 weights; full bf16: bf16 weights; LoRA: 16-bit frozen
    weights; QLoRA: bitsandbytes NF4 with double quantization and 16-bit compute.

    Real weights load with their own config (:func:`checkpoint_config`); the catalog's
    architecture facts build only random-init models (measurements, ``--random-init``).

    Args:
        spec: Architecture facts.
        config: The training config (method and precision pick the weight format).
        device: torch device string (``cuda``, ``cuda:1``, ``cpu``).
        num_layers: Truncate to this many decoder layers (``None``: all).
        checkpoint: Hub id or local path of real weights; ``None`` builds random weights from the
            architecture config (weights' values do not change memory or time).

    Returns:
        A ``transformers`` causal LM in train mode.

    Raises:
        ValueError: If the checkpoint's config cannot be read.
    """
    import torch
    from transformers import AutoModelForCausalLM

    hf_config = (
        hf_config_for(spec, num_layers=num_layers)
        if checkpoint is None
        else checkpoint_config(checkpoint, num_layers=num_layers)
    )
    dtype = weight_dtype(config)
    attention = attention_implementation(spec)
    if config.method.traits.quantized_base:
        return _build_nf4_model(
            hf_config, config, device=device, checkpoint=checkpoint, attention=attention
        )
    model: Any
    rank0_only = loads_on_rank0_only()
    if checkpoint is not None and rank0_only is not False:
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint, config=hf_config, attn_implementation=attention, **dtype_kwarg(dtype)
        )
        if rank0_only is None:
            model = model.to(device)
    else:
        # Rank-0-only loading: rank 0 builds in CPU memory (FSDP moves each shard to its GPU),
        # the other ranks build shapes only, on the meta device (transformers 5 would read the
        # whole checkpoint on every rank). Random weights seed 0 alike on every rank.
        torch.manual_seed(0)
        build_on = device if rank0_only is None else ("cpu" if rank0_only else "meta")
        with torch.device(build_on):
            model = AutoModelForCausalLM.from_config(
                hf_config, attn_implementation=attention, **dtype_kwarg(dtype)
            )
    model.train()
    return model


# Bytes of random weights held in host memory at once while writing a random-init checkpoint.
RANDOM_SHARD_BYTES = 2 * 1024**3


def write_random_checkpoint(
    hf_config: Any,
    folder: Any,
    *,
    dtype: Any,
    attention: str,
    device: str = "cpu",
    shard_bytes: int = RANDOM_SHARD_BYTES,
) -> int:
    """Write a random-init checkpoint of ``hf_config`` to ``folder`` one module at a time.

    The model is built on the meta device (shapes only); each module's own tensors are then
    materialized on ``device`` (random numbers are fast on a GPU), filled by the model's own
    ``_init_weights`` (over zeros, so a tensor it skips is still finite), copied to CPU
    safetensors shards of about ``shard_bytes`` with an index, and released. The device holds
    one module at a time and the host about one shard, so a QLoRA model whose 16-bit weights
    exceed the GPU still loads NF4 from it (transformers quantizes shard by shard). Tied
    weights are written once. Seeded (0).

    Returns:
        Bytes of tensors written.
    """
    import json
    from pathlib import Path

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from profiler._nf4_loading import random_tensors

    folder = Path(folder)
    torch.manual_seed(0)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(
            hf_config, attn_implementation=attention, **dtype_kwarg(dtype)
        )
    skeleton.config.save_pretrained(folder)
    weight_map: dict[str, str] = {}
    shard: dict[str, Any] = {}
    total = shard_size = 0

    def flush() -> None:
        nonlocal shard, shard_size
        if shard:
            name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, folder / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            shard, shard_size = {}, 0

    module_of = ""
    for key, tensor in random_tensors(skeleton, device=device):
        # Flush between modules only, as before: a module's tensors share a shard.
        owner = key.rpartition(".")[0]
        if owner != module_of and shard_size >= shard_bytes:
            flush()
        module_of = owner
        shard[key] = tensor.detach().to("cpu").contiguous()
        size = tensor.numel() * tensor.element_size()
        shard_size += size
        total += size
    flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def _build_nf4_model(
    hf_config: Any, config: TuningConfig, *, device: str, checkpoint: str | None, attention: str
) -> Any:
    """Load a 4-bit NF4 model. ``from_config`` takes no quantization config, so random weights
    are written to a temporary folder first (:func:`write_random_checkpoint`: a module at a time,
    so only the NF4 model is ever whole on the GPU) and loaded back through
    ``from_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    # FSDP/ZeRO-3 shard flat tensors of one dtype: NF4 packed into bf16 elements
    # (bnb_4bit_quant_storage) can be sharded next to the bf16 parameters (Answer.AI's FSDP+QLoRA,
    # in transformers and PEFT since 2024).
    storage = {"bnb_4bit_quant_storage": compute_dtype(config)} if is_sharded(config) else {}
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(config),
        **storage,
    )
    if is_sharded(config) and loads_on_rank0_only() is not None:
        return _build_nf4_model_on_rank0(
            hf_config,
            quantization,
            config,
            device=device,
            checkpoint=checkpoint,
            attention=attention,
        )
    # accelerate wants a device index for CUDA ("cuda" alone names the current device).
    device_map: dict[str, int | str] = {"": device}
    if device.startswith("cuda"):
        index = torch.device(device).index
        device_map = {"": torch.cuda.current_device() if index is None else index}
    with contextlib.ExitStack() as stack:
        source = checkpoint
        if source is None:
            source = stack.enter_context(tempfile.TemporaryDirectory(prefix="ftplan-nf4-"))
            write_random_checkpoint(
                hf_config, source, dtype=weight_dtype(config), attention=attention, device=device
            )
            if device.startswith("cuda"):
                torch.cuda.empty_cache()  # the modules' blocks: not part of the run's reserve
        model = AutoModelForCausalLM.from_pretrained(
            source,
            config=hf_config,
            quantization_config=quantization,
            device_map=device_map,
            attn_implementation=attention,
            **dtype_kwarg(weight_dtype(config)),
        )
    quantize_experts_nf4(model)
    model.train()
    return model


def _build_nf4_model_on_rank0(
    hf_config: Any,
    quantization: Any,
    config: TuningConfig,
    *,
    device: str,
    checkpoint: str | None,
    attention: str,
) -> Any:
    """Sharded QLoRA under FSDP rank-0 loading (:mod:`profiler._nf4_loading`): local rank 0
    quantizes the checkpoint (or random weights drawn a module at a time, seeded 0 as
    :func:`write_random_checkpoint`) tensor by tensor on ``device`` into CPU memory; the other
    ranks keep meta tensors and receive rank 0's quantization states now and its packed weights
    when FSDP shards. No GPU ever holds the whole model."""
    import torch
    from transformers import AutoModelForCausalLM

    from profiler._nf4_loading import (
        checkpoint_tensors,
        load_nf4_on_rank0,
        nf4_skeleton,
        random_tensors,
    )

    dtype = weight_dtype(config)
    model = nf4_skeleton(hf_config, quantization, dtype=dtype, attention=attention)
    tensors = None
    if loads_on_rank0_only():
        if checkpoint is None:
            torch.manual_seed(0)
            with torch.device("meta"):
                plain = AutoModelForCausalLM.from_config(
                    hf_config, attn_implementation=attention, **dtype_kwarg(dtype)
                )
            tensors = random_tensors(plain, device=device)
        else:
            tensors = checkpoint_tensors(checkpoint)
    load_nf4_on_rank0(model, tensors, dtype=dtype, device=device)
    model.train()
    return model
