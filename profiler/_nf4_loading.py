"""How a recipe's weights arrive without ever holding the whole 16-bit model on a GPU: random
weights drawn a module at a time, and sharded QLoRA loaded on rank 0 only.

Sharded QLoRA (FSDP) loads the way Answer.AI's fsdp_qlora and PEFT's FSDP+QLoRA guide
(``fsdp_cpu_ram_efficient_loading``) do: every rank builds the quantized skeleton on the meta
device with transformers' own bitsandbytes quantizer (so the same linears are 4-bit as in
``from_pretrained``); rank 0 alone reads the checkpoint (or draws the random weights) one tensor
at a time, quantizes each linear weight to NF4 on its GPU (packed in 16-bit elements,
``bnb_4bit_quant_storage``) and keeps the packed data in CPU memory; the quantization states
(absmax, code, offset: about 1/64 byte per weight, not parameters, so FSDP neither shards nor
broadcasts them) are broadcast from rank 0 to every rank's GPU; FSDP then broadcasts rank 0's
packed weights as it shards (``sync_module_states``). transformers 5 leaves quantized models
out of its own rank-0 loading (``modeling_utils``: ``not is_quantized``) and would quantize the
whole model onto every GPU.

torch, transformers, safetensors and bitsandbytes are imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from catalog import read_json_file

# bitsandbytes' default block size for 4-bit quantization (bnb.nn.Params4bit, and what
# BitsAndBytesConfig uses): one absmax per 64 weights.
NF4_BLOCKSIZE = 64


def random_tensors(skeleton: Any, *, device: str) -> Iterator[tuple[str, Any]]:
    """Random-init tensors of a meta-device model, one module at a time, in module order.

    Each module's own tensors are materialized on ``device``, filled by the model's own
    ``_init_weights`` (over zeros, so a tensor it skips is still finite) and yielded as
    ``(state-dict name, tensor)``; the module goes back to the meta device when the caller asks
    for the next one, so use (or copy) each tensor before that. Tied weights are yielded once,
    under their first name; persistent buffers are yielded, non-persistent ones are not (as in a
    saved checkpoint). Draws from torch's global generator: seed it first for repeatable weights.
    """
    import torch

    every_param = {name for name, _ in skeleton.named_parameters(remove_duplicate=False)}
    keys = {name for name, _ in skeleton.named_parameters()}
    keys |= {name for name in skeleton.state_dict() if name not in every_param}
    for prefix, module in skeleton.named_modules():
        names = {
            f"{prefix}.{n}" if prefix else n: n for n in [*module._parameters, *module._buffers]
        }
        own = {key: name for key, name in names.items() if key in keys}
        if not own:
            continue
        module.to_empty(device=device, recurse=False)
        with torch.no_grad():
            for name in own.values():
                getattr(module, name).zero_()  # finite even where _init_weights does not reach
            skeleton._init_weights(module)
        for key, name in own.items():
            yield key, getattr(module, name)
        module.to_empty(device="meta", recurse=False)


def checkpoint_tensors(checkpoint: str) -> Iterator[tuple[str, Any]]:
    """Every tensor of a safetensors checkpoint (a local folder or a hub id), one at a time in CPU
    memory, file by file.

    Raises:
        ValueError: The checkpoint holds no ``.safetensors`` files (sharded QLoRA reads them one
            tensor at a time; ``.bin`` files would load whole).
    """
    from safetensors import safe_open

    folder = Path(checkpoint)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(checkpoint, allow_patterns=["*.safetensors", "*.json"]))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_file(index, what="weights index", max_bytes=256 << 20)["weight_map"]
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(
            f"weights {checkpoint!r} hold no .safetensors files; sharded QLoRA reads the "
            "checkpoint one tensor at a time on rank 0. To fix: convert the weights to "
            "safetensors (save_pretrained(..., safe_serialization=True))"
        )
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not mappings
                yield key, handle.get_tensor(key)


def nf4_skeleton(hf_config: Any, quantization: Any, *, dtype: Any, attention: str) -> Any:
    """The model on the meta device with its linears replaced by bitsandbytes ``Linear4bit``,
    by transformers' own quantizer (the same modules ``from_pretrained`` quantizes: everything
    but the output head), ready for :func:`load_nf4_on_rank0`."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.quantizers import AutoHfQuantizer

    quantizer = AutoHfQuantizer.from_config(quantization)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            hf_config, attn_implementation=attention, dtype=dtype
        )
    quantizer.preprocess_model(model=model, dtype=dtype, device_map={"": "cpu"})
    model.hf_quantizer = quantizer
    return model


def load_nf4_on_rank0(
    model: Any,
    tensors: Iterator[tuple[str, Any]] | None,
    *,
    dtype: Any,
    device: str,
) -> None:
    """Fill an :func:`nf4_skeleton` in place: rank 0 (``tensors`` given) loads the weights into
    CPU memory, quantizing each 4-bit linear on ``device``; every other rank (``tensors`` None)
    keeps its weights on the meta device. Then every rank holds the same quantization states on
    ``device`` (:func:`share_quant_states`), which is a collective when torch.distributed is up.

    Args:
        model: The skeleton (meta device).
        tensors: ``(state-dict name, tensor)`` pairs of the whole model (a checkpoint or random
            weights), or None on ranks that receive rank 0's weights from FSDP.
        dtype: The 16-bit dtype of the unquantized weights and of the packed 4-bit storage.
        device: Where the quantization runs and its states live (the rank's GPU, or ``cpu``).

    Raises:
        ValueError: The tensors leave a weight of the model unloaded (another architecture, or
            a checkpoint whose names need a conversion this loader does not do).
    """
    if tensors is not None:
        _materialize(model, tensors, dtype=dtype, device=device)
    share_quant_states(model, device=device)
    model.hf_quantizer.postprocess_model(model)


def _materialize(
    model: Any, tensors: Iterator[tuple[str, Any]], *, dtype: Any, device: str
) -> None:
    import torch
    from bitsandbytes.nn import Linear4bit

    prefix = getattr(model, "base_model_prefix", "")
    known = set(model.state_dict())
    for key, tensor in tensors:
        name = key if key in known or not prefix else f"{prefix}.{key}"
        if name not in known:
            continue  # e.g. rotary inv_freq in old checkpoints: transformers ignores them too
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        value = tensor.to(dtype=dtype) if tensor.is_floating_point() else tensor
        with torch.no_grad():
            if isinstance(module, Linear4bit) and attr == "weight":
                _quantize_into(module, value, device=device, storage=dtype)
            elif attr in module._parameters:
                old = module._parameters[attr]
                module._parameters[attr] = torch.nn.Parameter(
                    value.to("cpu", copy=True), requires_grad=old.requires_grad
                )
            else:
                module._buffers[attr] = value.to("cpu", copy=True)
    # Non-persistent buffers (rotary inv_freq) are not in checkpoints: the model's own init.
    for module in model.modules():
        if any(b is not None and b.is_meta for b in module._buffers.values()):
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)
    model.tie_weights()
    missing = sorted(n for n, p in model.named_parameters() if p.is_meta)
    if missing:
        raise ValueError(
            f"the weights leave {len(missing)} parameter(s) of the model unloaded "
            f"({', '.join(missing[:3])}); they are not the planned model's weights"
        )


def _quantize_into(module: Any, weight: Any, *, device: str, storage: Any) -> None:
    """NF4-quantize one linear weight on ``device``; the packed data goes to CPU memory, the
    quantization state stays on ``device`` (where the layer computes)."""
    import bitsandbytes as bnb
    from bitsandbytes.nn import Params4bit

    old = module.weight
    packed, state = bnb.functional.quantize_4bit(
        weight.to(device),
        blocksize=getattr(old, "blocksize", None) or NF4_BLOCKSIZE,
        compress_statistics=old.compress_statistics,
        quant_type=old.quant_type,
        quant_storage=storage,
    )
    module._parameters["weight"] = Params4bit(
        packed.to("cpu"),
        requires_grad=False,
        quant_state=state,
        blocksize=state.blocksize,
        compress_statistics=old.compress_statistics,
        quant_type=old.quant_type,
        quant_storage=storage,
        module=module,
        bnb_quantized=True,
    )
    module.quant_state = state


def share_quant_states(model: Any, *, device: str) -> int:
    """Give every rank rank 0's quantization state of each 4-bit linear, on ``device``.

    Ranks whose weights are on the meta device first make a state of the right shapes (by
    quantizing zeros of the weight's shape, one linear at a time) and a meta packed weight;
    then each state's tensors are broadcast from rank 0, in module order, when
    torch.distributed is initialized. Returns the number of 4-bit linears.
    """
    import bitsandbytes as bnb
    import torch
    import torch.distributed as dist
    from bitsandbytes.nn import Linear4bit, Params4bit

    shared = dist.is_available() and dist.is_initialized()
    count = 0
    for module in model.modules():
        if not isinstance(module, Linear4bit):
            continue
        count += 1
        weight: Any = module.weight  # a bitsandbytes Params4bit
        state = getattr(weight, "quant_state", None)
        if state is None:
            shape = (module.out_features, module.in_features)
            zeros = torch.zeros(shape, dtype=torch.bfloat16, device=device)
            packed, state = bnb.functional.quantize_4bit(
                zeros,
                blocksize=getattr(weight, "blocksize", None) or NF4_BLOCKSIZE,
                compress_statistics=weight.compress_statistics,
                quant_type=weight.quant_type,
                quant_storage=weight.quant_storage,
            )
            del zeros
            module._parameters["weight"] = Params4bit(
                torch.empty_like(packed, device="meta"),
                requires_grad=False,
                quant_state=state,
                blocksize=state.blocksize,
                compress_statistics=weight.compress_statistics,
                quant_type=weight.quant_type,
                quant_storage=weight.quant_storage,
                module=module,
                bnb_quantized=True,
            )
            module.quant_state = state
        if shared:
            for tensor in _state_tensors(state):
                dist.broadcast(tensor, src=0)
    return count


def _state_tensors(state: Any) -> list[Any]:
    """The tensors of a bitsandbytes QuantState, in a fixed order (shapes alike on every rank)."""
    out = [state.absmax, state.code]
    if state.nested:
        out += [state.offset, state.state2.absmax, state.state2.code]
    return out
