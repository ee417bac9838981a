"""LoRA under FSDP full shard across two CPU processes (gloo): the recipe's sharded LoRA (bf16
adapters next to the frozen bf16 base, use_orig_params) wraps, shards and trains."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import pytest
from ports import free_port, spawn_workers

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from model_specs import TINY_LLAMA

    from profiler import Method, Sharding, TuningConfig
    from profiler.recipes import setup_lora

    config = TuningConfig(
        method=Method.LORA,
        lora_rank=4,
        lora_targets="all-linear",
        seq_len=32,
        grad_checkpointing=True,
        gpu_count=world,
        sharding=Sharding.FSDP,
    )
    prepared = setup_lora(TINY_LLAMA, config, device="cpu")
    layer = type(prepared.model.get_base_model().model.layers[0])
    total = sum(p.numel() for p in prepared.model.parameters())
    model = FullyShardedDataParallel(
        prepared.model,
        auto_wrap_policy=functools.partial(
            transformer_auto_wrap_policy, transformer_layer_cls={layer}
        ),
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        use_orig_params=True,
        device_id=torch.device("cpu"),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(rank))
    # With use_orig_params a rank sees the parameters outside its shard as empty tensors.
    before = {
        n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.numel()
    }
    losses = []
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    changed = sum(
        not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if n in before
    )
    local = sum(p.numel() for p in model.parameters())
    dtypes = {str(p.dtype) for p in model.parameters()}
    Path(out, f"rank{rank}.txt").write_text(
        f"{losses[0]} {losses[-1]} {changed} {len(before)} {local} {total} {sorted(dtypes)}"
    )
    dist.destroy_process_group()


def test_lora_trains_under_fsdp_on_two_cpu_processes(tmp_path: Path) -> None:
    import sys

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch without gloo")
    sys.path.insert(0, str(Path(__file__).parent))
    spawn_workers(_worker, (2, free_port(), str(tmp_path)))
    for rank in range(2):
        first, last, changed, trainable, local, total, dtypes = (
            Path(tmp_path, f"rank{rank}.txt").read_text().split(" ", 6)
        )
        assert math.isfinite(float(first)) and float(last) < float(first)
        assert int(changed) == int(trainable) > 0  # every local adapter shard was updated
        assert int(local) <= math.ceil(int(total) / 2) + 64  # half the parameters per rank
        assert dtypes == "['torch.bfloat16']"  # one dtype: bf16 adapters with the bf16 base


def _gradient_worker(rank: int, world: int, port: int, out: str, method_value: str) -> None:
    """LoRA/QLoRA wrapped with the runner's policy (``_train_sharded.adapter_wrap_policy``) and
    accelerate's other FSDP settings on two gloo processes (accelerate itself picks DDP on CPU);
    one backward, then the gradient elements each rank holds."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from model_specs import TINY_LLAMA

    from profiler import Method, Sharding, TuningConfig
    from profiler.recipes import SETUP_FUNCTIONS, clip_gradients, forward_backward
    from runners._train_sharded import adapter_wrap_policy

    method = Method(method_value)
    config = TuningConfig(
        method=method,
        lora_rank=4,
        lora_targets="all-linear",
        seq_len=32,
        gpu_count=world,
        sharding=Sharding.FSDP,
    )
    prepared = SETUP_FUNCTIONS[method](TINY_LLAMA, config, device="cpu")
    prepared.model = FullyShardedDataParallel(
        prepared.model,
        auto_wrap_policy=adapter_wrap_policy(prepared.model),
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        use_orig_params=True,
        device_id=torch.device("cpu"),
    )
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(rank))
    forward_backward(prepared, ids, ids)
    units = FullyShardedDataParallel.fsdp_modules(prepared.model)
    flat = [u._handle.flat_param for u in units if u._handle is not None]
    gradient = sum(p.grad.numel() for p in flat if p.grad is not None)
    trainable = sum(p.numel() for p in flat if p.requires_grad)
    frozen_with_grad = sum(1 for p in flat if not p.requires_grad and p.grad is not None)
    # The recipe's clipping under FSDP: one global norm, the same on every rank (a norm over
    # the local shards would differ between ranks and clip each differently).
    norm = clip_gradients(prepared, max_norm=1e-3)
    after = clip_gradients(prepared, max_norm=1e9)
    Path(out, f"grad-{method_value}-{rank}.txt").write_text(
        f"{gradient} {trainable} {frozen_with_grad} {len(flat)} {norm!r} {after!r}"
    )
    dist.destroy_process_group()


@pytest.mark.parametrize("method_value", ["lora", "qlora"])
def test_adapters_get_their_own_fsdp_units_so_only_they_hold_gradients(
    tmp_path: Path, method_value: str
) -> None:
    import sys

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch without gloo")
    sys.path.insert(0, str(Path(__file__).parent))
    spawn_workers(_gradient_worker, (2, free_port(), str(tmp_path), method_value))
    norms = []
    for rank in range(2):
        fields = Path(tmp_path, f"grad-{method_value}-{rank}.txt").read_text().split()
        gradient, trainable, frozen_with_grad, units = map(int, fields[:4])
        norms.append((float(fields[4]), float(fields[5])))
        # 2 layers x 4,096 adapter elements, sharded over two ranks; with one flat parameter
        # per decoder layer this was 41,088 (the frozen layer weights' share too).
        assert gradient == trainable == 4_096
        assert frozen_with_grad == 0
        assert units > 2 + 1  # the adapters' own units besides the layers and the root
    assert norms[0] == norms[1] and norms[0][0] > 1e-3
    assert norms[0][1] == pytest.approx(1e-3, rel=1e-2)  # clipped to the global max norm


def test_the_runner_hands_accelerate_the_adapter_policy() -> None:
    """accelerate's FSDP plugin keeps a callable policy through ``set_auto_wrap_policy``; full
    fine-tuning keeps the per-layer wrap."""
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin
    from model_specs import TINY_LLAMA

    from profiler import Method, Sharding, TuningConfig
    from profiler.recipes import setup_lora
    from runners._train_sharded import wrap_adapters_apart

    config = TuningConfig(
        method=Method.LORA,
        lora_rank=4,
        lora_targets="all-linear",
        seq_len=32,
        gpu_count=2,
        sharding=Sharding.FSDP,
    )
    model = setup_lora(TINY_LLAMA, config, device="cpu").model
    plugin = FullyShardedDataParallelPlugin(auto_wrap_policy="transformer_based_wrap")
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
    assert wrap_adapters_apart(model, accelerator, config)
    chosen = plugin.auto_wrap_policy
    plugin.set_auto_wrap_policy(model)
    assert plugin.auto_wrap_policy is chosen
    lora_a = model.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"]
    assert chosen(module=lora_a, recurse=False, nonwrapped_numel=0)
    full = TuningConfig(method=Method.FULL, seq_len=32, gpu_count=2, sharding=Sharding.FSDP)
    assert not wrap_adapters_apart(model, accelerator, full)
