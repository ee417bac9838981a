"""Sharding terms of the estimator: where model state lives (GPU shard, host RAM), the unsharded
working set, collective traffic between GPUs and PCIe traffic to the host, per strategy.

Pure functions over byte counts the estimator computes for the whole model; no torch. Each
constant says whether it is measured or an assumption (docs/estimator.md, "Sharding").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from catalog import GIB
from profiler._types import Method, Sharding

if TYPE_CHECKING:
    from catalog import GPU


# Host memory each training process holds besides offloaded state: the Python interpreter, torch,
# the CUDA runtime and its pinned staging buffers. Assumption (typical resident size of a
# torch + CUDA process), not measured here.
HOST_RAM_PER_PROCESS_GIB = 3.0

# GPU-to-host link per direction, GB/s, by architecture (PCIe x16: Gen5 64, Gen4 32, Gen3 16;
# PCI-SIG figures, the per-direction half of the bidirectional totals on NVIDIA datasheets).
# SXM parts (H100/H200/A100/B200) reach the host over PCIe too, so NVLink does not help here.
_HOST_LINK_GBPS_BY_ARCH = {
    "Blackwell": 64.0,
    "Hopper": 64.0,
    "Ada": 32.0,
    "Ampere": 32.0,
    "Turing": 16.0,
    "Volta": 16.0,
}
# Pinned host<->device copies reach about 80% of the PCIe link (CUDA bandwidthTest typically shows
# ~25 GB/s on Gen4 x16). Assumption until measured; each GPU is assumed to have its own x16 link.
PCIE_EFFICIENCY = 0.8

# CPU optimizer throughput per node, parameters updated per second. Assumptions until measured:
# DeepSpeedCPUAdam (AVX, multi-threaded; Ren et al. 2021, ZeRO-Offload, report it several times
# faster than torch's CPU Adam) at 1e9 params/s, torch AdamW on CPU (FSDP CPU offload) at 0.25e9.
CPU_ADAM_PARAMS_PER_S = {Sharding.ZERO3_OFFLOAD: 1.0e9, Sharding.FSDP_OFFLOAD: 0.25e9}


@dataclass(frozen=True, slots=True, kw_only=True)
class StateBytes:
    """Bytes of one recipe's model state for the whole model, before any sharding.

    ``layer_gather_bytes`` is one decoder layer (one FSDP unit) as gathered for compute,
    ``root_gather_bytes`` the parameters outside the decoder layers (embedding, head, final norm;
    FSDP's root unit), ``head_gather_bytes`` the LM head alone, and ``unit_gradient_bytes`` one
    layer's unsharded gradients before the reduce-scatter (full FT only). ``unsharded_weights``
    is the part of ``weights`` that is not a parameter, so no strategy shards or offloads it:
    every GPU holds it whole (QLoRA's quantization states: bitsandbytes keeps them beside the
    packed 4-bit weights, which are FSDP's parameters).
    """

    weights: float
    gradients: float
    optimizer_states: float
    optimizer_temp: float
    autocast_cache: float
    layer_gather_bytes: float
    root_gather_bytes: float
    head_gather_bytes: float
    unit_gradient_bytes: float
    unsharded_weights: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Bytes per GPU of each state component, the unsharded working set, and what is offloaded
    to host memory per GPU."""

    weights: float
    gradients: float
    optimizer_states: float
    optimizer_temp: float
    autocast_cache: float
    working_set: float
    host_bytes_per_gpu: float


def shard_count(sharding: Sharding, gpu_count: int) -> int:
    """How many ways the state is split: ``gpu_count`` for FSDP/ZeRO-3, else 1."""
    return gpu_count if sharding.shards_state else 1


def place(state: StateBytes, *, sharding: Sharding, gpu_count: int) -> Placement:
    """Where the state lives, per GPU, for a strategy.

    - none: everything on the GPU.
    - ddp: everything on every GPU, plus DDP's gradient buckets (a second gradient copy).
    - fsdp / zero3: weights, gradients, states and temporaries split n ways; plus the working
      set (:func:`working_set_bytes`).
    - fsdp-offload / zero3-offload: the shards live in host memory and the optimizer runs on
      the CPU; the GPU holds only the working set (the autocast cache goes with the weights).
    """
    n = shard_count(sharding, gpu_count)
    if sharding is Sharding.NONE:
        extra = 0.0
    elif sharding is Sharding.DDP:
        extra = state.gradients
    else:
        extra = working_set_bytes(state, sharding=sharding)
    whole = state.unsharded_weights
    if sharding.offloads:
        # DeepSpeedCPUAdam updates in place; torch AdamW on the CPU keeps its temporary.
        temp = state.optimizer_temp if sharding is Sharding.FSDP_OFFLOAD else 0.0
        host = (state.weights - whole + state.gradients + state.optimizer_states + temp) / n
        return Placement(
            weights=whole,
            gradients=0.0,
            optimizer_states=0.0,
            optimizer_temp=0.0,
            autocast_cache=0.0,
            working_set=extra,
            host_bytes_per_gpu=host,
        )
    return Placement(
        weights=(state.weights - whole) / n + whole,
        gradients=state.gradients / n,
        optimizer_states=state.optimizer_states / n,
        optimizer_temp=state.optimizer_temp / n,
        autocast_cache=state.autocast_cache / n,
        working_set=extra,
        host_bytes_per_gpu=0.0,
    )


def loads_on_rank0(*, sharding: Sharding, method: Method) -> bool:
    """Whether ftplan's runner loads the weights on rank 0 only, in CPU memory, and FSDP
    broadcasts them as it shards: every method under FSDP (accelerate's
    ``fsdp_cpu_ram_efficient_loading``; runners/_distributed.py). Full fine-tuning and LoRA load
    through transformers' own rank-0 loading (PEFT's FSDP guide), QLoRA through
    ``profiler._nf4_loading``: rank 0 quantizes one tensor at a time on its GPU into CPU memory
    and broadcasts the quantization states (Answer.AI's fsdp_qlora, PEFT's FSDP+QLoRA guide).
    The other ranks build on the meta device. ``method`` is kept for callers: no method is left
    out any more."""
    del method
    return sharding in (Sharding.FSDP, Sharding.FSDP_OFFLOAD)


def loads_partitioned(*, sharding: Sharding, method: Method) -> bool:
    """Whether ftplan's runner builds the model under DeepSpeed's ``zero.Init``
    (``zero3_init_flag``): ZeRO-3 full fine-tuning and LoRA, each parameter partitioned as it is
    created or loaded, so no GPU holds more than its shard and one module at a time.
    transformers leaves quantized models out of ``zero.Init`` (modeling_utils:
    ``is_deepspeed_zero3_enabled() and not is_quantized``), so ZeRO-3 QLoRA is not."""
    return sharding.deepspeed and not method.traits.quantized_base


def loads_whole_model_per_gpu(*, sharding: Sharding, method: Method) -> bool:
    """Whether ftplan's runner builds the whole model on every GPU before sharding it, so that
    each GPU must hold the unsharded weights once, at load: only ZeRO-3 QLoRA now (the NF4
    model on every GPU, partitioned at ``deepspeed.initialize``). FSDP loads on rank 0
    (:func:`loads_on_rank0`), ZeRO-3 full fine-tuning and LoRA under ``zero.Init``
    (:func:`loads_partitioned`). Unsharded runs hold the whole model anyway."""
    return (
        sharding.shards_state
        and not loads_on_rank0(sharding=sharding, method=method)
        and not loads_partitioned(sharding=sharding, method=method)
    )


def working_set_bytes(state: StateBytes, *, sharding: Sharding) -> float:
    """Unsharded bytes a GPU holds at once under FSDP or ZeRO-3 (offloaded or not).

    FSDP (accelerate's transformer-based wrap): the root unit (embedding, head, final norm) is
    gathered for the whole forward and backward (FSDP does not reshard the root after forward),
    plus the current and the prefetched decoder layer (BACKWARD_PRE). ZeRO-3 gathers modules on
    use: the larger of the head and a layer, plus one prefetched layer. Both add one layer's
    unsharded gradients for full FT. The ZeRO-3 term is an assumption until measured.
    """
    if sharding in (Sharding.FSDP, Sharding.FSDP_OFFLOAD):
        gathered = state.root_gather_bytes + 2 * state.layer_gather_bytes
    else:
        gathered = max(state.head_gather_bytes, state.layer_gather_bytes)
        gathered += state.layer_gather_bytes
    return gathered + state.unit_gradient_bytes


def zero3_master_copy_bytes(*, method: Method, full_mixed: bool, param_count: int) -> float:
    """Extra host bytes DeepSpeed ZeRO-3 offload keeps for full bf16-mixed FT: the 16-bit
    parameters next to the fp32 master weights (2 B/param); none for LoRA/QLoRA."""
    return 2.0 * param_count if not method.traits.adapters and full_mixed else 0.0


def host_ram_gib(
    host_bytes_per_gpu: float, *, gpus_per_node: int, extra_host_bytes_per_gpu: float = 0.0
) -> float:
    """Host memory one node needs, GiB: offloaded state of its GPUs plus one process each
    (:data:`HOST_RAM_PER_PROCESS_GIB`). Weights load through memory-mapped safetensors and are
    not counted."""
    offloaded = (host_bytes_per_gpu + extra_host_bytes_per_gpu) * gpus_per_node
    return offloaded / GIB + HOST_RAM_PER_PROCESS_GIB * gpus_per_node


def collective_bytes_per_gpu(
    *,
    sharding: Sharding,
    gpu_count: int,
    gather_bytes: float,
    trainable_gradient_bytes: float,
) -> float:
    """Bytes each GPU sends per step in ring collectives.

    DDP all-reduces the gradients: 2·(n−1)/n of their bytes. FSDP/ZeRO-3 all-gather the
    parameters in forward and again in backward (``gather_bytes``: 16-bit, or the 4-bit storage
    for QLoRA) and reduce-scatter the trainable gradients: (2·gather + gradients)·(n−1)/n.
    Recomputation under checkpointing runs inside the backward gather, so it adds none.
    """
    n = gpu_count
    if n <= 1 or sharding is Sharding.NONE:
        return 0.0
    fraction = (n - 1) / n
    if sharding is Sharding.DDP:
        return 2 * fraction * trainable_gradient_bytes
    return fraction * (2 * gather_bytes + trainable_gradient_bytes)


def host_link_gbps(gpu: GPU) -> float:
    """GPU-to-host bandwidth per direction, GB/s (PCIe generation by architecture)."""
    return _HOST_LINK_GBPS_BY_ARCH.get(gpu.arch, 16.0)


def offload_seconds(
    *,
    sharding: Sharding,
    gpu: GPU,
    offloaded_weight_bytes_per_gpu: float,
    gradient_bytes_per_gpu: float,
    trainable_params_per_node: float,
) -> tuple[float, float]:
    """(PCIe seconds, CPU optimizer seconds) per step for an offload strategy; zeros otherwise.

    PCIe: each GPU fetches its weight shard from host memory for the forward and again for the
    backward gather, and sends its gradient shard to host memory for the CPU optimizer. CPU: the
    optimizer updates the node's trainable parameters at :data:`CPU_ADAM_PARAMS_PER_S`.
    """
    if not sharding.offloads:
        return 0.0, 0.0
    pcie_bytes = 2 * offloaded_weight_bytes_per_gpu + gradient_bytes_per_gpu
    pcie_s = pcie_bytes / (host_link_gbps(gpu) * 1e9 * PCIE_EFFICIENCY)
    cpu_s = trainable_params_per_node / CPU_ADAM_PARAMS_PER_S[sharding]
    return pcie_s, cpu_s
