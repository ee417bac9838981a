"""Cost model arithmetic, checked by hand: hours, USD, start-up, multi-node and spot overhead."""

from __future__ import annotations

import math

import pytest

from catalog import Offer, Provider
from planner import Budget, TokensSource
from planner.engine.cost import (
    SpotAssumptions,
    StartupAssumptions,
    checkpoint_interval_s,
    estimate_cost,
)
from profiler import Measurement, Method, Provenance, Source, Status, TuningConfig
from profiler.memory import trainable_params

CONFIG = TuningConfig(method=Method.LORA, lora_rank=16, lora_targets="all-linear")
BUDGET = Budget(
    max_usd=100.0, dataset_tokens=36_000_000, epochs=1.0, tokens_source=TokensSource.GIVEN
)


def _measurement(tokens_per_s: float = 1000.0, step_time_s: float = 2.0) -> Measurement:
    return Measurement(
        model="m",
        gpu="H100 SXM 80GB",
        config=CONFIG,
        status=Status.OK,
        source=Source.ESTIMATED,
        provenance=Provenance(device="test", date="x"),
        peak_reserved_gib=40.0,
        step_time_s=step_time_s,
        tokens_per_s=tokens_per_s,
    )


def _offer(*, usd: float = 4.0, spot: bool = False, provider: Provider = Provider.AWS) -> Offer:
    return Offer(
        provider=provider,
        service="ec2",
        instance_type="p.test",
        region="r",
        gpu="H100 SXM 80GB",
        gpu_count=1,
        usd_per_hour=usd,
        spot=spot,
        as_of="2025-05-31",
        source="test",
        max_nodes=8,
    )


def test_on_demand_hours_and_usd_by_hand() -> None:
    cost = estimate_cost(
        _measurement(), _offer(), BUDGET, nodes=1, spot_policy=SpotAssumptions(), weights_gib=10.0
    )
    # 36M tokens / 1000 tok/s = 36 000 s = 10 h; start-up 5 min + 10 GiB / 0.5 GiB/s = 320 s.
    assert cost.train_hours == pytest.approx(10.0)
    assert cost.startup_hours == pytest.approx(320 / 3600)
    assert cost.spot_overhead_hours == 0.0
    assert cost.hours == pytest.approx(10.0 + 320 / 3600)
    assert cost.usd == pytest.approx((10.0 + 320 / 3600) * 4.0)
    assert cost.checkpoint_interval_minutes is None


def test_multi_node_bills_every_node() -> None:
    one = estimate_cost(_measurement(), _offer(), BUDGET, nodes=1, spot_policy=SpotAssumptions())
    two = estimate_cost(_measurement(), _offer(), BUDGET, nodes=2, spot_policy=SpotAssumptions())
    assert two.usd_per_hour == 8.0
    assert two.usd == pytest.approx(one.hours * 8.0)


def test_epochs_multiply_tokens() -> None:
    budget = Budget(
        max_usd=100.0, dataset_tokens=36_000_000, epochs=3.0, tokens_source=TokensSource.GIVEN
    )
    cost = estimate_cost(_measurement(), _offer(), budget, nodes=1, spot_policy=SpotAssumptions())
    assert cost.train_hours == pytest.approx(30.0)


def test_local_offer_has_no_provisioning() -> None:
    cost = estimate_cost(
        _measurement(),
        _offer(usd=0.0, provider=Provider.LOCAL),
        BUDGET,
        nodes=1,
        spot_policy=SpotAssumptions(),
        weights_gib=5.0,
    )
    assert cost.startup_hours == pytest.approx(10 / 3600)
    assert cost.usd == 0.0


def test_spot_overhead_by_hand() -> None:
    spot = SpotAssumptions(
        interruptions_per_hour=0.1, restart_minutes=10.0, checkpoint_write_gib_per_s=1.0
    )
    cost = estimate_cost(
        _measurement(),
        _offer(usd=1.0, spot=True),
        BUDGET,
        nodes=1,
        spot_policy=spot,
        startup=StartupAssumptions(provision_minutes=0.0),
        checkpoint_size_gib=2.0,
    )
    # Young: sqrt(2 × 2 s × 36 000 s) = 379.47 s -> 190 steps of 2 s = 380 s.
    assert cost.checkpoint_interval_minutes == pytest.approx(380 / 60)
    saves_s = 36_000 / 380 * 2.0
    interruptions = 0.1 * (36_000 + saves_s) / 3600
    overhead_s = saves_s + interruptions * (380 / 2 + 600)
    assert cost.spot_overhead_hours == pytest.approx(overhead_s / 3600)
    assert cost.spot_overhead_hours == pytest.approx(0.27323, rel=1e-4)
    assert cost.billed_hours is not None and cost.billed_hours >= cost.hours
    assert cost.usd == pytest.approx(cost.billed_hours * 1.0)
    assert cost.billed_hours - cost.hours < 1 / 3600  # per-second billing rounds up one second


def test_spot_interruptions_scale_with_nodes() -> None:
    spot = SpotAssumptions(interruptions_per_hour=0.1, restart_minutes=10.0)
    one = estimate_cost(
        _measurement(),
        _offer(spot=True),
        BUDGET,
        nodes=1,
        spot_policy=spot,
        checkpoint_size_gib=2.0,
    )
    four = estimate_cost(
        _measurement(),
        _offer(spot=True),
        BUDGET,
        nodes=4,
        spot_policy=spot,
        checkpoint_size_gib=2.0,
    )
    assert four.spot_overhead_hours > 3 * one.spot_overhead_hours


def test_checkpoint_interval_is_whole_steps_and_infinite_without_interruptions() -> None:
    assert (
        checkpoint_interval_s(step_time_s=1000.0, save_s=1.0, interruptions_per_hour=1.0) == 1000.0
    )
    assert math.isinf(
        checkpoint_interval_s(step_time_s=1.0, save_s=1.0, interruptions_per_hour=0.0)
    )


def test_zero_throughput_is_an_error() -> None:
    with pytest.raises(ValueError, match="tokens_per_s"):
        estimate_cost(
            _measurement(tokens_per_s=0.0),
            _offer(),
            BUDGET,
            nodes=1,
            spot_policy=SpotAssumptions(),
        )


def test_bad_spot_assumptions_are_rejected() -> None:
    with pytest.raises(ValueError, match="interruptions"):
        SpotAssumptions(interruptions_per_hour=-1.0)


def test_lora_trainable_params_llama2_7b() -> None:
    from catalog import get_model

    spec = get_model("llama2-7b")
    # r16 all-linear: per layer 4 × 16 × (4096 + 4096) + 3 × 16 × (4096 + 11008) = 1 249 280,
    # × 32 layers = 39 976 960 (PEFT prints 39,976,960 trainable params for this config).
    assert trainable_params(spec, CONFIG) == 39_976_960
