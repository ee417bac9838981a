"""The optuna search against the exhaustive grid, on a small space with a deterministic fake
estimator (a simple analytic memory/time model; its numbers are made up for the test and stand
for no GPU)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from model_specs import LLAMA2_7B

from catalog import GPU, Interconnect, ModelSpec, Offer, Provider
from planner import Budget, QualityPolicy, TokensSource
from planner.engine.evaluate import Evaluator, constraints
from planner.engine.measurer import EstimateFunctions, Measurer
from planner.engine.search import exhaustive_search, search
from planner.engine.space import Hardware, RecommendRequest, SearchSpace, Variant
from profiler import (
    FitVerdict,
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    Provenance,
    Sharding,
    Source,
    Status,
    TuningConfig,
    sharding_problem,
)

GIB = 1024**3
SPEC = dataclasses.replace(LLAMA2_7B, name="toy-7b", hf_id="toy/7b")


def make_gpu(name: str, memory_gib: float, tflops: float, *, bf16: bool = True) -> GPU:
    return GPU(
        name=name,
        aliases=(),
        arch="x",
        memory_gib=memory_gib,
        usable_memory_gib=memory_gib,
        memory_bandwidth_tbps=2.0,
        bf16_tflops=tflops if bf16 else None,
        fp16_tflops=tflops,
        bf16_supported=bf16,
        intra_node_interconnect=Interconnect.NVLINK,
        intra_node_gbps=400.0,
        source="test",
        as_of="2025-01-01",
    )


GPUS = {
    g.name: g
    for g in (
        make_gpu("H100", 80.0, 989.0),
        make_gpu("A10G", 22.0, 125.0),
        make_gpu("T4", 15.0, 65.0, bf16=False),
    )
}


def make_offer(
    instance: str,
    gpu: str,
    count: int,
    usd: float,
    *,
    spot: bool = False,
    max_nodes: int = 1,
    gbps: float = 0.0,
) -> Offer:
    return Offer(
        provider=Provider.AWS,
        service="ec2",
        instance_type=instance,
        region="us-east-1",
        gpu=gpu,
        gpu_count=count,
        usd_per_hour=usd,
        spot=spot,
        as_of="2025-05-31",
        source="test",
        max_nodes=max_nodes,
        inter_node_gbps=gbps,
    )


OFFERS = (
    make_offer("h1", "H100", 1, 3.3),
    make_offer("h8", "H100", 8, 98.3, max_nodes=2, gbps=400.0),
    make_offer("h8", "H100", 8, 40.0, spot=True, max_nodes=2, gbps=400.0),
    make_offer("a1", "A10G", 1, 1.2),
    make_offer("a1", "A10G", 1, 0.45, spot=True),
    make_offer("a4", "A10G", 4, 5.7),
    make_offer("t1", "T4", 1, 0.53),
)


def fake_estimate(
    spec: ModelSpec,
    config: TuningConfig,
    gpu: GPU,
    *,
    nodes: int = 1,
    inter_node_gbps: float = 0.0,
    calibration: object = None,
) -> Measurement:
    """A monotone analytic stand-in for profiler.estimate (made-up coefficients)."""
    params = spec.param_count
    shard = config.gpu_count if config.sharding is Sharding.FSDP else 1
    if config.method is Method.FULL:
        weight_b = 2.0 if config.precision is Precision.BF16 else 4.0
        state_b = 2.0 if config.optimizer is OptimizerKind.ADAMW_8BIT else 2 * weight_b
        static = params * (2 * weight_b + state_b) / shard
        flops_per_token = 6.0 * params
    else:
        rank = config.lora_rank or 1
        per_rank = 32_768 if config.lora_targets == "attention" else 78_080
        trainable = rank * per_rank * spec.num_layers
        base_b = 2.0 if config.method is Method.LORA else 0.55
        state_b = 2.0 if config.optimizer is OptimizerKind.ADAMW_8BIT else 8.0
        static = params * base_b + trainable * (4 + state_b)
        flops_per_token = 4.0 * params + 6.0 * trainable
    tokens = config.micro_batch_size * config.seq_len
    per_layer = 2.0 if config.grad_checkpointing else 34.0
    acts = tokens * spec.hidden_size * spec.num_layers * per_layer
    logits = min(tokens, 1024 if config.chunked_loss else tokens) * spec.vocab_size * 8.0
    peak_gib = (static + acts + logits) / GIB + 1.0
    if config.grad_checkpointing:
        flops_per_token *= 4 / 3
    if config.chunked_loss:
        flops_per_token += 2.0 * spec.hidden_size * spec.vocab_size
    mfu = 0.5 * tokens / (tokens + 4096)
    per_gpu = gpu.matmul_tflops * 1e12 * mfu / flops_per_token
    comm = 1.0 if nodes == 1 else 1.0 / (1.0 + 50.0 / max(inter_node_gbps, 1.0))
    tokens_per_s = per_gpu * config.gpu_count * comm
    return Measurement(
        model=spec.name,
        gpu=gpu.name,
        config=config,
        status=Status.OK,
        source=Source.ESTIMATED,
        provenance=Provenance(device="fake", date="x"),
        peak_allocated_gib=peak_gib * 0.95,
        peak_reserved_gib=peak_gib,
        step_time_s=tokens * config.gpu_count / tokens_per_s,
        tokens_per_s=tokens_per_s,
    )


def fits_usable(measurement: Measurement, gpu: GPU) -> FitVerdict:
    peak = measurement.peak_reserved_gib or math.inf
    return FitVerdict.FITS if peak <= gpu.usable_memory_gib else FitVerdict.NO


SPACE = SearchSpace(
    lora_ranks=(8, 16, 64), micro_batches=(1, 2, 3, 4, 6, 8, 12, 16), node_counts=(1, 2)
)


def problem(
    *,
    max_usd: float = 200.0,
    quality: QualityPolicy = QualityPolicy.BALANCED,
    max_hours: float | None = None,
    tokens: int = 30_000_000,
    offers: tuple[Offer, ...] = OFFERS,
) -> RecommendRequest:
    budget = Budget(
        max_usd=max_usd,
        dataset_tokens=tokens,
        epochs=1.0,
        tokens_source=TokensSource.GIVEN,
        quality=quality,
        max_hours=max_hours,
    )
    return RecommendRequest(
        spec=SPEC, budget=budget, seq_len=2048, offers=offers, gpus=GPUS, space=SPACE
    )


FAKE = Measurer(EstimateFunctions(fake_estimate), fits=fits_usable)


def _run(p: RecommendRequest, **kwargs: object):  # type: ignore[no-untyped-def]
    return search(dataclasses.replace(p, **kwargs), FAKE)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_usd": 5.0},
        {"quality": QualityPolicy.STRICT},
        {"quality": QualityPolicy.CHEAPEST},
        {"max_hours": 1.0, "max_usd": 1000.0},
        {"tokens": 400_000_000, "max_usd": 5000.0},
    ],
)
def test_search_matches_exhaustive_grid(kwargs: dict[str, object]) -> None:
    p = problem(**kwargs)  # type: ignore[arg-type]
    fast = _run(p)
    full = exhaustive_search(p, FAKE)
    assert full.best is not None and fast.best is not None
    assert fast.best.cost.usd == pytest.approx(full.best.cost.usd, rel=1e-9)
    assert fast.evaluated < full.evaluated


def test_search_respects_budget_deadline_and_memory() -> None:
    result = _run(problem(max_hours=0.4, max_usd=1000.0))
    best = result.best
    assert best is not None
    assert best.cost.hours <= 0.4 and best.cost.usd <= 1000.0
    assert best.measurement.peak_reserved_gib is not None
    assert best.measurement.peak_reserved_gib <= best.usable_memory_gib
    assert all(v <= 0 for v in constraints(best, problem(max_hours=0.4).budget))
    # A 0.4-hour deadline on 30M tokens needs several GPUs in this fake model.
    assert best.config.gpu_count > 1


def test_no_bf16_on_gpus_without_it() -> None:
    result = exhaustive_search(problem(), FAKE)
    on_t4 = [c for c in result.candidates if c.offer.gpu == "T4"]
    assert on_t4
    assert all(c.config.precision is Precision.FP16_MIXED for c in on_t4)


def test_strategies_per_method_on_several_gpus() -> None:
    result = exhaustive_search(problem(), FAKE)
    multi = [c for c in result.candidates if c.config.gpu_count > 1]
    assert multi
    for c in multi:
        assert c.config.sharding is not Sharding.NONE
        assert c.config.gpu_count == c.offer.gpu_count * c.nodes
        assert (
            sharding_problem(
                c.config.sharding,
                method=c.config.method,
                gpu_count=c.config.gpu_count,
                optimizer=c.config.optimizer,
            )
            is None
        )
    # Every strategy is a search option of its own: DDP, FSDP, ZeRO-3 and both offloads.
    lora = {c.config.sharding for c in multi if c.config.method is Method.LORA}
    assert lora == {s for s in Sharding if s is not Sharding.NONE}
    single = {c.config.sharding for c in result.candidates if c.config.gpu_count == 1}
    assert single == {Sharding.NONE, Sharding.FSDP_OFFLOAD, Sharding.ZERO3_OFFLOAD}


def test_same_seed_same_result_and_sorted() -> None:
    a = _run(problem(), seed=7)
    b = _run(problem(), seed=7)
    assert [(c.offer.key, c.config, c.nodes) for c in a.candidates] == [
        (c.offer.key, c.config, c.nodes) for c in b.candidates
    ]
    usd = [round(c.cost.usd, 6) for c in a.feasible]
    assert usd == sorted(usd)


def test_lower_bound_never_exceeds_a_priced_cost() -> None:
    from planner.engine.evaluate import Evaluator

    p = problem()
    evaluator = Evaluator(p, FAKE)
    for variant in evaluator.variants():
        for hw in evaluator.hardware():
            bound = evaluator.lower_bound_usd(variant, hw)
            for c in evaluator.walk_cell_exhaustively(variant, hw):
                assert bound <= c.cost.usd


def test_tpe_mode_with_few_trials_is_reproducible() -> None:
    a = _run(problem(), seed=3, trials=12)
    b = _run(problem(), seed=3, trials=12)
    assert "TPESampler" in a.sampler
    assert a.trials == 12
    assert a.best is not None and b.best is not None
    assert a.best.cost.usd == b.best.cost.usd


def test_storage_resume(tmp_path: object) -> None:
    import optuna

    url = f"sqlite:///{tmp_path}/study.db"
    first = _run(problem(), storage=url)
    second = _run(problem(), storage=url)
    assert first.best is not None and second.best is not None
    assert second.best.cost.usd == first.best.cost.usd
    assert second.trials == first.trials  # resumed: nothing left to run
    names = optuna.get_all_study_names(storage=url)
    assert len(names) == 1
    stored = optuna.load_study(study_name=names[0], storage=url)
    assert sum(t.state.is_finished() for t in stored.trials) == first.trials


def test_nothing_fits_gives_no_best_but_near_misses() -> None:
    tiny = (make_offer("t1", "T4", 1, 0.53),)
    result = _run(problem(offers=tiny, max_usd=0.01, quality=QualityPolicy.CHEAPEST))
    assert result.best is None
    assert all(not c.feasible for c in result.candidates)


def test_infeasible_trials_record_positive_constraints() -> None:
    p = problem(max_usd=0.5)
    result = _run(p)
    over = [c for c in result.candidates if not c.within_budget]
    assert over
    assert all(constraints(c, p.budget)[1] > 0 for c in over)
    assert not math.isnan(over[0].cost.usd)


def test_stored_profile_is_used_and_labelled() -> None:
    from dataclasses import replace

    def lookup(model: str, config: TuningConfig, gpu: str) -> Measurement | None:
        if gpu == "H100" and config.method is Method.QLORA and config.gpu_count == 1:
            measured = fake_estimate(SPEC, config, GPUS["H100"])
            return replace(measured, source=Source.MEASURED, tokens_per_s=1e6)
        return None

    p = problem()
    result = search(p, Measurer(EstimateFunctions(fake_estimate), lookup, fits_usable))
    best = result.best
    assert best is not None
    assert best.measurement.source is Source.MEASURED  # the (fast) stored profile wins
    assert best.offer.instance_type == "h1" and best.config.method is Method.QLORA


def test_memory_savers_cost_the_least_time_first_and_chunk_only_where_the_recipe_can() -> None:
    evaluator = Evaluator(problem(), FAKE)
    variant = Variant(method=Method.LORA, precision=Precision.BF16_MIXED, targets="all-linear")
    one = Hardware(gpu=GPUS["A10G"], gpus_per_node=1, nodes=1, offers=OFFERS[3:4])
    four = Hardware(gpu=GPUS["A10G"], gpus_per_node=4, nodes=1, offers=OFFERS[5:6])
    assert evaluator.memory_savers(one, Sharding.NONE) == (
        (False, False),
        (False, True),
        (True, False),
        (True, True),
    )
    # Several GPUs or any sharding: the recipe's chunked loss is for one unsharded GPU.
    assert evaluator.memory_savers(four, Sharding.DDP) == ((False, False), (True, False))
    assert evaluator.memory_savers(one, Sharding.FSDP_OFFLOAD) == ((False, False), (True, False))
    other = dataclasses.replace(problem(), spec=dataclasses.replace(SPEC, model_type="cohere"))
    assert Evaluator(other, FAKE).memory_savers(one, Sharding.NONE) == (
        (False, False),
        (True, False),
    )
    off = dataclasses.replace(problem(), space=dataclasses.replace(SPACE, chunked_loss=(False,)))
    assert Evaluator(off, FAKE).memory_savers(one, Sharding.NONE) == (
        (False, False),
        (True, False),
    )
    # The fast solve reaches a chunked point only past the last micro-batch that fits without
    # it (a 256k vocabulary makes the logits count).
    big_vocab = dataclasses.replace(problem(), spec=dataclasses.replace(SPEC, vocab_size=256_000))
    found = Evaluator(big_vocab, FAKE).solve_cell(variant, one)
    batches: dict[tuple[bool, bool], list[int]] = {}
    for c in found:
        if c.fits:
            key = (c.config.grad_checkpointing, c.config.chunked_loss)
            batches.setdefault(key, []).append(c.config.micro_batch_size)
    assert set(batches) == {(True, False), (True, True)}
    assert min(batches[True, True]) > max(batches[True, False])


def test_the_largest_micro_batch_that_fits_need_not_be_a_power_of_two() -> None:
    # In the fake model LoRA on toy-7b needs ~22.6 GiB at b1 plus ~9 GiB per sequence without
    # checkpointing: on a 45 GiB card b3 fits and b4 does not.
    gpu = make_gpu("L45", 45.0, 300.0)
    p = dataclasses.replace(
        problem(offers=(make_offer("l1", "L45", 1, 1.0),)),
        gpus={"L45": gpu},
        space=dataclasses.replace(
            SPACE, methods=(Method.LORA,), grad_checkpointing=(False,), chunked_loss=(False,)
        ),
    )
    fast, grid = search(p, FAKE), exhaustive_search(p, FAKE)
    assert fast.best is not None and grid.best is not None
    assert fast.best.config.micro_batch_size == grid.best.config.micro_batch_size == 3
    assert fast.best.cost.usd == pytest.approx(grid.best.cost.usd)


def test_host_ram_is_checked_on_every_offer_of_a_gpu_shape() -> None:
    """Two offers of one GPU shape: the first (by name) lacks the host RAM an offload plan
    needs, the second has it; the search finds the plan on the second."""

    def with_host_ram(
        spec: ModelSpec, config: TuningConfig, gpu: GPU, **kw: object
    ) -> Measurement:
        m = fake_estimate(spec, config, gpu, **kw)  # type: ignore[arg-type]
        if config.sharding.offloads:
            # Offloaded weights leave the GPU (the fake keeps them) and need 20 GiB of RAM.
            peak = (m.peak_reserved_gib or 0) - 12.0
            return dataclasses.replace(
                m, peak_reserved_gib=peak, peak_allocated_gib=peak, host_ram_gib=20.0
            )
        return dataclasses.replace(m, host_ram_gib=3.0)

    small = dataclasses.replace(make_offer("a-small", "T4", 1, 0.50), memory_gib=16.0)
    large = dataclasses.replace(make_offer("b-large", "T4", 1, 0.55), memory_gib=28.0)
    p = dataclasses.replace(
        problem(offers=(small, large), quality=QualityPolicy.CHEAPEST),
        space=dataclasses.replace(SPACE, methods=(Method.LORA,)),
    )
    measurer = Measurer(EstimateFunctions(with_host_ram), fits=fits_usable)
    best = search(p, measurer).best
    assert best is not None and best.config.sharding.offloads
    assert best.offer.instance_type == "b-large"
    assert exhaustive_search(p, measurer).best == best
    on_small = [c for c in exhaustive_search(p, measurer).candidates if c.offer is small]
    assert on_small and not any(c.fits for c in on_small if c.config.sharding.offloads)


def test_a_plan_whose_largest_micro_batch_fits_is_found() -> None:
    """Short sequences: every micro-batch of the space fits, so the largest is priced first and
    kept (it bounds nothing but itself)."""
    p = dataclasses.replace(problem(), seq_len=64)
    fast, grid = search(p, FAKE), exhaustive_search(p, FAKE)
    assert fast.best is not None and grid.best is not None
    assert fast.best.config.micro_batch_size == max(SPACE.micro_batches)
    assert fast.best.cost.usd == pytest.approx(grid.best.cost.usd)
