"""FSDP full fine-tuning loads on rank 0 only (accelerate's ``fsdp_cpu_ram_efficient_loading``):
across two CPU processes (gloo), rank 1 builds the model on the meta device (random init and real
weights), FSDP broadcasts rank 0's weights when it shards (``sync_module_states``, the
same step done by hand here, see below), and the optimizer made after sharding trains.

On CPU neither accelerate 1.15 (its FSDP plugin looks for an accelerator device when
``sync_module_states`` is on) nor torch's FSDP1 (it refuses CPU modules for that broadcast)
run ``sync_module_states``, so the wrap here is torch's FSDP with accelerate's other settings
and the broadcast is FSDP's own sequence written out."""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from ports import free_port, spawn_workers

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow


def _broadcast_shard_and_train(
    model: Any,
    config: Any,
    ids: Any,
    *,
    rank: int,
    layer: type,
    learning_rate: float,
    policy: Any = None,
) -> dict[str, Any]:
    """FSDP's rank-0 loading, written out, then two training steps.

    torch's FSDP1 refuses sync_module_states for CPU modules, so its GPU-side step runs here as
    FSDP runs it (_sync_module_params_and_buffers): the other ranks materialise the meta tensors
    (accelerate's param_init_fn, weights re-tied), then rank 0's states are broadcast. The
    model is wrapped with accelerate's settings and the recipe's optimizer is made after.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from profiler.recipes import make_optimizer

    cpu = torch.device("cpu")
    if rank != 0:
        model.to_empty(device=cpu)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.tie_weights()
    for state in [*model.parameters(), *model.buffers()]:
        dist.broadcast(state.data, src=0)
    sharded = FullyShardedDataParallel(
        model,
        auto_wrap_policy=policy
        or functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={layer}),
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        use_orig_params=True,
        device_id=cpu,
    )
    optimizer = make_optimizer(
        [p for p in sharded.parameters() if p.requires_grad],
        config,
        learning_rate=learning_rate,
        device="cpu",
    )
    before = {n: p.detach().clone() for n, p in sharded.named_parameters() if p.numel()}
    losses = []
    gradients = []
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=policy is not None):
            loss = sharded(input_ids=ids, labels=ids).loss
        loss.backward()
        gradients.append(sum(p.grad.numel() for p in sharded.parameters() if p.grad is not None))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    changed = sum(
        not torch.equal(before[n], p.detach())
        for n, p in sharded.named_parameters()
        if n in before and p.requires_grad
    )
    trainable = sum(1 for n, p in sharded.named_parameters() if n in before and p.requires_grad)
    return {
        "losses": losses,
        "changed": changed,
        "local_shards": trainable,
        "gradient_elements": gradients[0],
        "trainable_elements": sum(p.numel() for p in sharded.parameters() if p.requires_grad),
    }


def _worker(rank: int, world: int, port: int, out: str, checkpoint: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # What ``accelerate launch`` with ftplan's FSDP config sets for full fine-tuning.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        LOCAL_RANK=str(rank),
        ACCELERATE_USE_FSDP="true",
        FSDP_CPU_RAM_EFFICIENT_LOADING="true",
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from model_specs import TINY_LLAMA

    from profiler import Method, Sharding, TuningConfig
    from profiler.recipes import loads_on_rank0_only, setup_full

    config = TuningConfig(method=Method.FULL, seq_len=32, gpu_count=world, sharding=Sharding.FSDP)
    result: dict[str, object] = {"loads": loads_on_rank0_only()}
    random_init = setup_full(TINY_LLAMA, config, device="cpu")
    result["random_init_meta"] = [p.is_meta for p in random_init.model.parameters()]
    del random_init

    prepared = setup_full(TINY_LLAMA, config, device="cpu", checkpoint=checkpoint)
    model = prepared.model
    result["checkpoint_meta"] = [p.is_meta for p in model.parameters()]
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    if rank == 0:
        with torch.no_grad():
            result["unsharded_loss"] = float(model(input_ids=ids, labels=ids).loss)
    result.update(
        _broadcast_shard_and_train(
            model, config, ids, rank=rank, layer=type(model.model.layers[0]), learning_rate=3e-3
        )
    )
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _run_two_ranks(worker: Any, tmp_path: Path, prefix: str) -> list[dict[str, Any]]:
    """Save a tiny Llama checkpoint (seed 123, not the recipe's random-init seed: the loaded
    values must travel), run ``worker`` on two gloo processes, return each rank's JSON record."""
    import sys

    from transformers import AutoModelForCausalLM

    from profiler.recipes import hf_config_for

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch without gloo")
    sys.path.insert(0, str(Path(__file__).parent))
    from model_specs import TINY_LLAMA

    checkpoint = tmp_path / "weights"
    torch.manual_seed(123)
    AutoModelForCausalLM.from_config(hf_config_for(TINY_LLAMA)).save_pretrained(checkpoint)
    spawn_workers(worker, (2, free_port(), str(tmp_path), str(checkpoint)))
    return [json.loads(Path(tmp_path, f"{prefix}{r}.json").read_text()) for r in range(2)]


def _assert_rank0_weights_trained(ranks: list[dict[str, Any]]) -> None:
    """Sharded rank 0's weights, not rank 1's uninitialised memory: the first sharded loss is
    the loaded checkpoint's on every rank, and training lowers it."""
    first = ranks[0]["losses"][0]
    assert math.isclose(first, ranks[0]["unsharded_loss"], rel_tol=1e-4)
    for r in ranks:
        assert r["losses"][0] == pytest.approx(first, rel=1e-5)
        assert all(math.isfinite(x) for x in r["losses"])
        assert r["losses"][1] < r["losses"][0]
        # The optimizer made after sharding steps every trainable shard this rank holds.
        assert r["changed"] == r["local_shards"]


def test_full_fine_tuning_under_fsdp_loads_on_rank_0_only(tmp_path: Path) -> None:
    ranks = _run_two_ranks(_worker, tmp_path, "rank")
    assert [r["loads"] for r in ranks] == [True, False]
    for key in ("random_init_meta", "checkpoint_meta"):
        assert not any(ranks[0][key]), key  # rank 0 holds real weights
        assert ranks[1][key] and all(ranks[1][key]), key  # rank 1 materialised nothing
    _assert_rank0_weights_trained(ranks)
    assert all(r["local_shards"] > 0 for r in ranks)


def _lora_worker(rank: int, world: int, port: int, out: str, checkpoint: str) -> None:
    """LoRA under FSDP with rank-0 loading: rank 1 builds base and adapters on the meta device,
    rank 0 loads the checkpoint in CPU memory; after FSDP's broadcast (written out as above)
    every rank trains the same adapters on rank 0's base."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    from profiler import Method, Sharding, TuningConfig
    from runners._distributed import fsdp_settings

    config = TuningConfig(
        method=Method.LORA,
        lora_rank=4,
        lora_targets="all-linear",
        seq_len=32,
        gpu_count=world,
        sharding=Sharding.FSDP,
    )
    # What ``accelerate launch`` sets from ftplan's FSDP config for this plan.
    loading = fsdp_settings(config)["fsdp_cpu_ram_efficient_loading"]
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        LOCAL_RANK=str(rank),
        ACCELERATE_USE_FSDP="true",
        FSDP_CPU_RAM_EFFICIENT_LOADING=loading,
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from model_specs import TINY_LLAMA

    from profiler.recipes import loads_on_rank0_only, setup_lora

    result: dict[str, object] = {"loads": loads_on_rank0_only(), "setting": loading}
    prepared = setup_lora(TINY_LLAMA, config, device="cpu", checkpoint=checkpoint)
    model = prepared.model
    result["meta"] = [p.is_meta for p in model.parameters()]
    result["adapters_meta"] = [p.is_meta for p in model.parameters() if p.requires_grad]
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    if rank == 0:
        with torch.no_grad():
            result["unsharded_loss"] = float(model(input_ids=ids, labels=ids).loss)
    layer = type(model.get_base_model().model.layers[0])
    result.update(
        _broadcast_shard_and_train(model, config, ids, rank=rank, layer=layer, learning_rate=1e-2)
    )
    Path(out, f"lora-rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_lora_under_fsdp_loads_on_rank_0_only(tmp_path: Path) -> None:
    ranks = _run_two_ranks(_lora_worker, tmp_path, "lora-rank")
    assert ranks[0]["setting"] == "true"  # ftplan's accelerate config for a LoRA FSDP plan
    assert [r["loads"] for r in ranks] == [True, False]
    assert not any(ranks[0]["meta"])  # rank 0 holds the checkpoint and the adapters
    assert all(ranks[1]["meta"]) and ranks[1]["adapters_meta"]  # rank 1 built nothing real
    _assert_rank0_weights_trained(ranks)


def _qlora_worker(rank: int, world: int, port: int, out: str, checkpoint: str) -> None:
    """Sharded QLoRA with rank-0 loading: rank 0 quantizes the checkpoint into CPU memory,
    rank 1 builds meta tensors and receives rank 0's quantization states; after FSDP's
    broadcast (written out as above) both train the same adapters on rank 0's 4-bit base."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    from bitsandbytes.nn import Linear4bit
    from model_specs import TINY_LLAMA

    from profiler import Method, Sharding, TuningConfig
    from profiler.recipes import loads_on_rank0_only, setup_qlora
    from runners._distributed import fsdp_settings
    from runners._train_sharded import adapter_wrap_policy

    config = TuningConfig(
        method=Method.QLORA,
        lora_rank=4,
        lora_targets="all-linear",
        seq_len=32,
        gpu_count=world,
        sharding=Sharding.FSDP,
    )
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result: dict[str, Any] = {}

    def loss_of(model: Any) -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return float(model(input_ids=ids, labels=ids).loss)

    if rank == 0:  # transformers' own NF4 loading, every rank for itself (no rank-0 loading)
        result["from_pretrained_loss"] = loss_of(
            setup_qlora(TINY_LLAMA, config, device="cpu", checkpoint=checkpoint).model
        )
    loading = fsdp_settings(config)["fsdp_cpu_ram_efficient_loading"]
    os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING=loading)
    result.update(loads=loads_on_rank0_only(), setting=loading)
    model = setup_qlora(TINY_LLAMA, config, device="cpu", checkpoint=checkpoint).model
    result["meta"] = [p.is_meta for p in model.parameters()]
    result["dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    states = [m.quant_state for m in model.modules() if isinstance(m, Linear4bit)]
    result["states"] = [float(s.absmax.float().sum()) + float(s.offset) for s in states]
    if rank == 0:
        result["unsharded_loss"] = loss_of(model)
    layer = type(model.get_base_model().model.layers[0])
    result.update(
        _broadcast_shard_and_train(
            model,
            config,
            ids,
            rank=rank,
            layer=layer,
            learning_rate=1e-2,
            policy=adapter_wrap_policy(model),
        )
    )
    Path(out, f"qlora-rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_qlora_under_fsdp_loads_on_rank_0_only(tmp_path: Path) -> None:
    ranks = _run_two_ranks(_qlora_worker, tmp_path, "qlora-rank")
    assert ranks[0]["setting"] == "true"  # ftplan's accelerate config for a QLoRA FSDP plan
    assert [r["loads"] for r in ranks] == [True, False]
    assert not any(ranks[0]["meta"]) and all(ranks[1]["meta"])  # rank 1 read no weight
    assert ranks[0]["dtypes"] == ranks[1]["dtypes"] == ["torch.bfloat16"]  # NF4 in bf16 storage
    # Rank 1 holds rank 0's quantization states, and rank 0 quantized what from_pretrained does.
    assert len(ranks[0]["states"]) == 14 and ranks[0]["states"] == ranks[1]["states"]
    assert ranks[0]["unsharded_loss"] == pytest.approx(ranks[0]["from_pretrained_loss"], rel=1e-6)
    _assert_rank0_weights_trained(ranks)
    for r in ranks:  # the adapters' own FSDP units: gradients for them only
        assert r["gradient_elements"] == r["trainable_elements"] == 4_096
