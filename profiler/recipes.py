"""Training recipes: the one definition of full, LoRA and QLoRA fine-tuning in ftplan.

The profiler measures these functions and the runners launch them, so what ftplan prices is what
it trains (DESIGN.md, "The recipes"). torch, transformers, peft and bitsandbytes are imported
inside the functions only, so that ``import profiler`` stays light.

On CPU the recipes are unchanged except where CPU lacks a feature: bitsandbytes 8-bit and paged
optimizers need CUDA, so on CPU they fail with a clear error instead of being swapped silently.
CPU autocast (bf16 and fp16) is supported by torch and kept.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from profiler._types import (
    MLP_MODULES,
    Method,
    OptimizerKind,
    Precision,
    TuningConfig,
    adapted_modules,
    chunked_loss_problem,
    expert_parameters,
)
from profiler.estimator import CHUNKED_LOSS_TOKENS, EAGER_ATTENTION_MODEL_TYPES

if TYPE_CHECKING:
    from catalog import ModelSpec

# Starting AdamW learning rates, the one table the recipes, the planner's suggestions and launches
# use: 2e-5 for full fine-tuning (7B-class SFT, e.g. Llama 2's SFT, Touvron et al. 2023), and
# ~10x that for LoRA and QLoRA (Schulman et al., "LoRA Without Regret", 2025).
DEFAULT_LEARNING_RATE: dict[Method, float] = {
    Method.FULL: 2e-5,
    Method.LORA: 2e-4,
    Method.QLORA: 2e-4,
}

# Gradient clipping of every recipe, under every sharding: the global L2 norm of the gradients
# is clipped to 1.0, the common fine-tuning default (transformers' TrainingArguments.max_grad_norm,
# TRL's SFT scripts); DeepSpeed runs get the same value as their config's gradient_clipping.
MAX_GRAD_NORM = 1.0

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
# transformers refuses SDPA for gemma2 (attention-logit soft-capping), so it runs eager attention.


def attention_implementation(spec: ModelSpec) -> str:
    """``sdpa`` (PyTorch scaled-dot-product attention), or ``eager`` where transformers has no
    SDPA path for the architecture."""
    return "eager" if spec.model_type in EAGER_ATTENTION_MODEL_TYPES else "sdpa"


@dataclass(slots=True)
class PreparedModel:
    """Live torch objects of one recipe, ready for :func:`train_step` (a holder, not a record).

    Attributes:
        model: transformers causal LM (PEFT-wrapped for LoRA/QLoRA).
        optimizer: torch optimizer over the trainable parameters.
        trainable_params: Number of trainable parameters.
        total_params: Number of parameters (4-bit weights counted unpacked, as PEFT counts them).
        autocast_dtype: ``torch.bfloat16`` / ``torch.float16`` for autocast, ``None`` for none.
        grad_scaler: ``torch.amp.GradScaler`` for fp16-mixed, else ``None``.
        device: torch device string, e.g. ``cuda`` or ``cpu``.
        loss_chunk_tokens: Chunked cross-entropy (``config.chunked_loss``): the head and the
            loss run this many tokens at a time and are recomputed in backward; ``None`` runs
            them over the whole micro-batch (the model's own forward).
    """

    model: Any
    optimizer: Any
    trainable_params: int
    total_params: int
    autocast_dtype: Any | None
    grad_scaler: Any | None
    device: str
    loss_chunk_tokens: int | None = None


def loss_chunk_tokens(config: TuningConfig) -> int | None:
    """Tokens per chunk of the cross-entropy for ``config`` (None: not chunked).

    The chunked loss calls the decoder and the head directly, past any DDP/FSDP/DeepSpeed
    wrapper, so it runs on one unsharded GPU only.

    Raises:
        ValueError: ``chunked_loss`` with several GPUs or a sharding strategy.
    """
    if not config.chunked_loss:
        return None
    problem = chunked_loss_problem(gpu_count=config.gpu_count, sharding=config.sharding)
    if problem is not None:
        raise ValueError(f"{problem}. To fix: drop chunked_loss or plan one GPU")
    return CHUNKED_LOSS_TOKENS


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


def _fix_peft_stacked_parametrization() -> None:
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


def _sharded(config: TuningConfig) -> bool:
    """LoRA/QLoRA under FSDP/ZeRO-3: every parameter stays 16-bit (one dtype per flat tensor)."""
    return config.sharding.shards_state and config.method is not Method.FULL


def _dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """transformers >= 4.56 names the load dtype ``dtype``; older releases ``torch_dtype`` (the
    SageMaker images ftplan launches on may carry an older transformers)."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _weight_dtype(config: TuningConfig) -> Any:
    import torch

    if config.method is Method.FULL:
        return torch.bfloat16 if config.precision is Precision.BF16 else torch.float32
    return torch.float16 if config.precision is Precision.FP16_MIXED else torch.bfloat16


def _compute_dtype(config: TuningConfig) -> Any:
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
    dtype = _weight_dtype(config)
    attention = attention_implementation(spec)
    if config.method is Method.QLORA:
        return _build_nf4_model(
            hf_config, config, device=device, checkpoint=checkpoint, attention=attention
        )
    model: Any
    rank0_only = loads_on_rank0_only()
    if checkpoint is not None and rank0_only is not False:
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint, config=hf_config, attn_implementation=attention, **_dtype_kwarg(dtype)
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
                hf_config, attn_implementation=attention, **_dtype_kwarg(dtype)
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
            hf_config, attn_implementation=attention, **_dtype_kwarg(dtype)
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
    storage = {"bnb_4bit_quant_storage": _compute_dtype(config)} if _sharded(config) else {}
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_compute_dtype(config),
        **storage,
    )
    if _sharded(config) and loads_on_rank0_only() is not None:
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
                hf_config, source, dtype=_weight_dtype(config), attention=attention, device=device
            )
            if device.startswith("cuda"):
                torch.cuda.empty_cache()  # the modules' blocks: not part of the run's reserve
        model = AutoModelForCausalLM.from_pretrained(
            source,
            config=hf_config,
            quantization_config=quantization,
            device_map=device_map,
            attn_implementation=attention,
            **_dtype_kwarg(_weight_dtype(config)),
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

    dtype = _weight_dtype(config)
    model = nf4_skeleton(hf_config, quantization, dtype=dtype, attention=attention)
    tensors = None
    if loads_on_rank0_only():
        if checkpoint is None:
            torch.manual_seed(0)
            with torch.device("meta"):
                plain = AutoModelForCausalLM.from_config(
                    hf_config, attn_implementation=attention, **_dtype_kwarg(dtype)
                )
            tensors = random_tensors(plain, device=device)
        else:
            tensors = checkpoint_tensors(checkpoint)
    load_nf4_on_rank0(model, tensors, dtype=dtype, device=device)
    model.train()
    return model


def make_optimizer(
    params: list[Any], config: TuningConfig, *, learning_rate: float, device: str
) -> Any:
    """The recipe's optimizer over ``params`` (also used to make it again after FSDP sharding,
    when the parameters it was made over were meta tensors)."""
    return _make_optimizer(params, config, learning_rate=learning_rate, device=device)


def _make_optimizer(
    params: list[Any], config: TuningConfig, *, learning_rate: float, device: str
) -> Any:
    import torch

    if config.optimizer is OptimizerKind.ADAMW:
        return torch.optim.AdamW(params, lr=learning_rate)
    if not device.startswith("cuda"):
        raise ValueError(
            f"optimizer {config.optimizer.value} (bitsandbytes) needs a CUDA GPU; "
            f"use --optimizer adamw on {device}"
        )
    import bitsandbytes as bnb

    if config.optimizer is OptimizerKind.ADAMW_8BIT:
        return bnb.optim.AdamW8bit(params, lr=learning_rate)
    return bnb.optim.PagedAdamW8bit(params, lr=learning_rate)


def _grad_scaler(config: TuningConfig, device: str) -> Any | None:
    import torch

    if config.precision is not Precision.FP16_MIXED:
        return None
    return torch.amp.GradScaler(device.split(":")[0])


def _enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing, as in the reference H100 measurements."""
    with warnings.catch_warnings():
        # transformers 5 renamed it activation_checkpointing_enable; the old name still works.
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def setup_full(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    device: str,
    num_layers: int | None = None,
    checkpoint: str | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE[Method.FULL],
) -> PreparedModel:
    """Full fine-tuning: every parameter trains.

    bf16-mixed: fp32 weights + bf16 autocast + AdamW (fp32 states). bf16: bf16 weights, no
    autocast, AdamW (bf16 states). fp16-mixed: fp32 weights + fp16 autocast + GradScaler.

    Args:
        spec: Architecture facts.
        config: A ``method=full`` config.
        device: torch device string.
        num_layers: Truncate to this many decoder layers (``None``: all).
        checkpoint: Hub id or local path of real weights (``None``: random weights).
        learning_rate: AdamW learning rate.

    Raises:
        ValueError: If ``config.method`` is not full.
    """
    if config.method is not Method.FULL:
        raise ValueError(f"setup_full got method={config.method.value}")
    model = build_base_model(
        spec, config, device=device, num_layers=num_layers, checkpoint=checkpoint
    )
    if config.grad_checkpointing:
        _enable_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    autocast = None if config.precision is Precision.BF16 else _compute_dtype(config)
    return PreparedModel(
        model=model,
        optimizer=_make_optimizer(params, config, learning_rate=learning_rate, device=device),
        trainable_params=count,
        total_params=sum(p.numel() for p in model.parameters()),
        autocast_dtype=autocast,
        grad_scaler=_grad_scaler(config, device),
        device=device,
        loss_chunk_tokens=loss_chunk_tokens(config),
    )


def _lora_config(spec: ModelSpec, config: TuningConfig, model: Any) -> Any:
    from peft import LoraConfig

    rank, alpha = config.lora_rank, config.effective_lora_alpha
    if rank is None or alpha is None:
        raise ValueError(f"method={config.method.value} needs lora_rank")
    parameters = peft_target_parameters(model, spec, config)
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=peft_target_modules(spec, config),
        target_parameters=parameters or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _prepared_lora(
    model: Any, config: TuningConfig, *, device: str, learning_rate: float
) -> PreparedModel:
    trainable, total = model.get_nb_trainable_parameters()
    params = [p for p in model.parameters() if p.requires_grad]
    return PreparedModel(
        model=model,
        optimizer=_make_optimizer(params, config, learning_rate=learning_rate, device=device),
        trainable_params=int(trainable),
        total_params=int(total),
        autocast_dtype=_compute_dtype(config),
        grad_scaler=_grad_scaler(config, device),
        device=device,
        loss_chunk_tokens=loss_chunk_tokens(config),
    )


def setup_lora(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    device: str,
    num_layers: int | None = None,
    checkpoint: str | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE[Method.LORA],
) -> PreparedModel:
    """LoRA: 16-bit frozen base, PEFT adapters (PEFT's default fp32 adapter dtype), autocast.

    Args and Raises: as :func:`setup_full`, for a ``method=lora`` config.
    """
    from peft import get_peft_model

    if config.method is not Method.LORA:
        raise ValueError(f"setup_lora got method={config.method.value}")
    model = build_base_model(
        spec, config, device=device, num_layers=num_layers, checkpoint=checkpoint
    )
    if config.grad_checkpointing:
        _enable_checkpointing(model)
        # Frozen embeddings output no grad; checkpointed blocks need an input that requires one.
        model.enable_input_require_grads()
    # Sharded: adapters in the base's bf16, not PEFT's fp32 default, so FSDP can flatten them
    # with the frozen weights (use_orig_params keeps them separately trainable).
    model = get_peft_model(
        model, _lora_config(spec, config, model), autocast_adapter_dtype=not _sharded(config)
    )
    return _prepared_lora(model, config, device=device, learning_rate=learning_rate)


def setup_qlora(
    spec: ModelSpec,
    config: TuningConfig,
    *,
    device: str,
    num_layers: int | None = None,
    checkpoint: str | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE[Method.QLORA],
) -> PreparedModel:
    """QLoRA: NF4 + double-quant base, ``prepare_model_for_kbit_training``, then LoRA.

    ``prepare_model_for_kbit_training`` casts embeddings, head and norms to fp32, so without
    checkpointing QLoRA can need more memory than LoRA (DESIGN.md).

    Args and Raises: as :func:`setup_full`, for a ``method=qlora`` config.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if config.method is not Method.QLORA:
        raise ValueError(f"setup_qlora got method={config.method.value}")
    model = build_base_model(
        spec, config, device=device, num_layers=num_layers, checkpoint=checkpoint
    )
    if peft_target_parameters(model, spec, config):
        _fix_peft_stacked_parametrization()
    if _sharded(config):
        # Sharded QLoRA skips prepare_model_for_kbit_training: its fp32 upcast of embeddings,
        # head and norms would break FSDP's one-dtype flat tensors (TRL does the same).
        if config.grad_checkpointing:
            _enable_checkpointing(model)
            model.enable_input_require_grads()
    else:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.grad_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    # Sharded: adapters in the base's bf16, not PEFT's fp32 default, so FSDP can flatten them
    # with the frozen weights (use_orig_params keeps them separately trainable).
    model = get_peft_model(
        model, _lora_config(spec, config, model), autocast_adapter_dtype=not _sharded(config)
    )
    return _prepared_lora(model, config, device=device, learning_rate=learning_rate)


SETUP_FUNCTIONS: dict[Method, Callable[..., PreparedModel]] = {
    Method.FULL: setup_full,
    Method.LORA: setup_lora,
    Method.QLORA: setup_qlora,
}


def _causal_lm_loss(
    prepared: PreparedModel, input_ids: Any, labels: Any, *, attention_mask: Any = None
) -> Any:
    """Forward under the recipe's autocast; the model's mean causal-LM loss (a tensor)."""
    import torch

    device_type = prepared.device.split(":")[0]
    autocast = (
        torch.autocast(device_type=device_type, dtype=prepared.autocast_dtype)
        if prepared.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    if prepared.loss_chunk_tokens is not None:
        with autocast:
            return _chunked_causal_lm_loss(
                prepared.model,
                input_ids,
                labels,
                attention_mask=attention_mask,
                chunk_tokens=prepared.loss_chunk_tokens,
            )
    with autocast:
        outputs = prepared.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    loss = outputs.loss
    # Holding the outputs through backward keeps their logits alive: one more batch x seq x vocab
    # copy at the peak (2.3-9.3 GiB on the H200's 8k-32k-token steps, benchmarks/results/).
    del outputs
    return loss


def _chunked_causal_lm_loss(
    model: Any, input_ids: Any, labels: Any, *, attention_mask: Any, chunk_tokens: int
) -> Any:
    """The causal-LM loss of the model's own forward (mean over labels other than -100, next
    token), with the head and the cross-entropy run ``chunk_tokens`` tokens at a time under
    non-reentrant checkpointing: only one chunk's logits (and their fp32 copies) are ever
    alive, and backward recomputes each chunk. Final-logit soft-capping (Gemma 2) is applied as
    the model applies it.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    problem = chunked_loss_problem(model_type=getattr(base.config, "model_type", ""))
    if problem is None and getattr(base.config, "output_router_logits", False):
        problem = "ftplan's chunked cross-entropy leaves out the router's auxiliary loss"
    if problem is not None:
        raise ValueError(f"{problem}. To fix: train it without chunked_loss")
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    hidden = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(
            _chunk_loss_sum,
            head,
            softcap,
            hidden[start:end],
            targets[start:end],
            use_reentrant=False,
        )
    return total / (targets != -100).sum().clamp(min=1)


def _chunk_loss_sum(head: Any, softcap: float | None, hidden: Any, targets: Any) -> Any:
    """Summed fp32 cross-entropy of one chunk of final hidden states (the model's upcast)."""
    import torch

    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")


def eval_loss(prepared: PreparedModel, input_ids: Any) -> tuple[float, int]:
    """Forward only (no gradients), labels = inputs as in training, under the same autocast.

    The caller switches the model to eval mode (no dropout) and back.

    Args:
        prepared: Output of a ``setup_*`` function.
        input_ids: Token ids, shape (micro_batch, seq_len), on ``prepared.device``; every
            position is a real token (packed blocks, no padding).

    Returns:
        (sum of the per-token cross-entropy in nats, number of predicted tokens): the model
        shifts the labels, so each block predicts ``seq_len - 1`` tokens. Synchronizes with the
        device.
    """
    import torch

    with torch.no_grad():
        loss = _causal_lm_loss(prepared, input_ids, input_ids)
    tokens = int(input_ids.shape[0]) * (int(input_ids.shape[1]) - 1)
    return float(loss) * tokens, tokens


def forward_backward(
    prepared: PreparedModel,
    input_ids: Any,
    labels: Any,
    *,
    attention_mask: Any = None,
    backward: Callable[[Any], None] | None = None,
) -> Any:
    """Forward (under the recipe's autocast) with causal-LM loss, then backward.

    Returns:
        The loss tensor (detached), not yet synchronized to the host.
    """
    loss = _causal_lm_loss(prepared, input_ids, labels, attention_mask=attention_mask)
    if backward is not None:  # DeepSpeed: its engine runs backward (and its step)
        backward(loss)
        return loss.detach()
    if prepared.grad_scaler is not None:
        prepared.grad_scaler.scale(loss).backward()
    else:
        loss.backward()
    return loss.detach()


def clip_gradients(prepared: PreparedModel, *, max_norm: float = MAX_GRAD_NORM) -> float:
    """Scale the gradients so that their global L2 norm is at most ``max_norm``; returns the
    norm before clipping (inf or nan when a gradient is not finite).

    Under FSDP the norm must cover every rank's shard: FSDP's own ``clip_grad_norm_`` reduces
    it across ranks (what ``Accelerator.clip_grad_norm_`` calls). Otherwise (one process, DDP's
    identical gradients) torch's ``clip_grad_norm_`` over the trainable parameters. fp16-mixed
    unscales first. DeepSpeed clips inside its engine (``gradient_clipping`` in its config).
    """
    import torch

    if prepared.grad_scaler is not None:
        prepared.grad_scaler.unscale_(prepared.optimizer)
    fsdp_clip = getattr(prepared.model, "clip_grad_norm_", None)
    if callable(fsdp_clip):
        return float(fsdp_clip(max_norm))
    params = [p for p in prepared.model.parameters() if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def optimizer_step(prepared: PreparedModel) -> None:
    """Clip the gradients (:func:`clip_gradients`), step the optimizer (through the GradScaler
    for fp16-mixed), then ``zero_grad(set_to_none)``."""
    clip_gradients(prepared)
    if prepared.grad_scaler is not None:
        prepared.grad_scaler.step(prepared.optimizer)
        prepared.grad_scaler.update()
    else:
        prepared.optimizer.step()
    prepared.optimizer.zero_grad(set_to_none=True)


def train_step(
    prepared: PreparedModel, input_ids: Any, labels: Any, *, attention_mask: Any = None
) -> float:
    """One training step: forward, causal-LM loss, backward, optimizer step, zero_grad.

    Args:
        prepared: Output of a ``setup_*`` function.
        input_ids: Token ids, shape (micro_batch, seq_len), on ``prepared.device``.
        labels: Target ids (the inputs for causal LM; the model shifts them).
        attention_mask: Optional mask of shape (micro_batch, seq_len).

    Returns:
        The loss of this step (float; synchronizes with the device).
    """
    loss = forward_backward(prepared, input_ids, labels, attention_mask=attention_mask)
    optimizer_step(prepared)
    return float(loss)
