"""Quality rules: each risk, its level and its source, and what each --quality policy accepts."""

from __future__ import annotations

import pytest

from catalog import get_model, list_models
from planner import Budget, QualityPolicy, RiskLevel, Task, TokensSource
from planner.engine.quality import (
    BIDERMAN_2024,
    DETTMERS_2023,
    SCHULMAN_2025,
    ZAMIRAI_2020,
    accepted,
    assess_quality,
    bf16_spacing,
    capacity_ratio,
    max_level,
    suggested_learning_rate,
)
from profiler import Method, Precision, TuningConfig

SPEC = get_model("llama2-7b")


def _budget(tokens: int = 10_000_000, task: Task = Task.SFT) -> Budget:
    return Budget(
        max_usd=100.0,
        dataset_tokens=tokens,
        epochs=1.0,
        tokens_source=TokensSource.GIVEN,
        task=task,
    )


def _lora(
    rank: int = 16, targets: str = "all-linear", method: Method = Method.LORA
) -> TuningConfig:
    return TuningConfig(method=method, lora_rank=rank, lora_targets=targets)


def test_small_sft_on_all_linear_lora_is_low_risk() -> None:
    risks = assess_quality(SPEC, _lora(), _budget())
    assert max_level(risks) is RiskLevel.LOW
    assert risks == ()


def test_capacity_ratio_by_hand() -> None:
    # r16 all-linear on llama2-7b: 39,976,960 params × 2 bits = 79.95M bits;
    # 100M SFT tokens × 0.5 bit = 50M bits -> 62.5% of capacity.
    ratio = capacity_ratio(SPEC, _lora(16), _budget(100_000_000))
    assert ratio == pytest.approx(50e6 / (2 * 39_976_960))
    risks = assess_quality(SPEC, _lora(16), _budget(100_000_000))
    assert max_level(risks) is RiskLevel.MEDIUM
    assert risks[0].source == SCHULMAN_2025
    assert "63%" in risks[0].message


def test_data_beyond_capacity_is_high_and_a_larger_rank_fixes_it() -> None:
    budget = _budget(400_000_000)
    assert max_level(assess_quality(SPEC, _lora(8), budget)) is RiskLevel.HIGH
    assert max_level(assess_quality(SPEC, _lora(128), budget)) is RiskLevel.LOW


def test_attention_only_targets_are_medium_risk() -> None:
    risks = assess_quality(SPEC, _lora(64, "attention"), _budget())
    assert [r.level for r in risks] == [RiskLevel.MEDIUM]
    assert "MLP" in risks[0].message and risks[0].source == SCHULMAN_2025


def test_continued_pretraining_risk_grows_with_the_tokens_trained() -> None:
    def cpt_level(tokens: int) -> RiskLevel:
        risks = assess_quality(SPEC, _lora(128), _budget(tokens, Task.CPT))
        return next(r.level for r in risks if r.source == BIDERMAN_2024)

    assert cpt_level(50_000_000) is RiskLevel.LOW
    assert cpt_level(500_000_000) is RiskLevel.MEDIUM
    assert cpt_level(2_000_000_000) is RiskLevel.HIGH
    full = assess_quality(SPEC, TuningConfig(method=Method.FULL), _budget(2_000_000_000, Task.CPT))
    assert full == ()


def test_minimum_accepted_rank_grows_with_the_dataset() -> None:
    def smallest_rank(tokens: int) -> int:
        return next(
            r
            for r in (8, 16, 32, 64, 128, 256)
            if accepted(assess_quality(SPEC, _lora(r), _budget(tokens)), QualityPolicy.STRICT)
        )

    ranks = [smallest_rank(t) for t in (10_000_000, 100_000_000, 400_000_000, 1_000_000_000)]
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]


def test_attention_only_is_medium_risk_everywhere_moe_included() -> None:
    moe = next(m for m in list_models() if m.num_experts > 1)
    for task in (Task.SFT, Task.CPT, Task.RL):
        risks = assess_quality(moe, _lora(16, "attention"), _budget(task=task))
        assert any(r.level is RiskLevel.MEDIUM and "experts" in r.message for r in risks)
    # all-linear adapts the experts too (PEFT target_parameters): no attention-only risk.
    full_targets = assess_quality(moe, _lora(16), _budget())
    assert not any("attention-only" in r.message for r in full_targets)


def test_fp16_says_what_loss_scaling_does_and_what_overflow_remains() -> None:
    config = TuningConfig(method=Method.FULL, precision=Precision.FP16_MIXED)
    (risk,) = assess_quality(SPEC, config, _budget())
    assert "loss scaler" in risk.message and "65504" in risk.message
    assert "skipped" in risk.message and "Micikevicius" in risk.source


def test_rl_needs_little_capacity() -> None:
    risks = assess_quality(SPEC, _lora(8), _budget(5_000_000_000, Task.RL))
    assert max_level(risks) is RiskLevel.LOW
    assert any("RL" in r.message for r in risks)


def test_large_global_batch_is_a_lora_risk() -> None:
    risks = assess_quality(SPEC, _lora(), _budget(), global_batch_tokens=4_194_304)
    assert max_level(risks) is RiskLevel.MEDIUM
    assert "batch" in risks[0].message


def test_qlora_notes_dettmers_and_pure_bf16_full_ft_is_medium() -> None:
    qlora = assess_quality(SPEC, _lora(method=Method.QLORA), _budget())
    assert [(r.level, r.source) for r in qlora] == [(RiskLevel.LOW, DETTMERS_2023)]
    bf16 = assess_quality(
        SPEC, TuningConfig(method=Method.FULL, precision=Precision.BF16), _budget()
    )
    assert [(r.level, r.source) for r in bf16] == [(RiskLevel.MEDIUM, ZAMIRAI_2020)]


def test_policies_accept_levels() -> None:
    medium = assess_quality(SPEC, _lora(64, "attention"), _budget())
    high = assess_quality(SPEC, _lora(8), _budget(400_000_000))
    assert not accepted(medium, QualityPolicy.STRICT)
    assert accepted(medium, QualityPolicy.BALANCED)
    assert not accepted(high, QualityPolicy.BALANCED)
    assert accepted(high, QualityPolicy.CHEAPEST)
    assert accepted((), QualityPolicy.STRICT)


def test_lora_learning_rate_is_ten_times_full() -> None:
    full = suggested_learning_rate(TuningConfig(method=Method.FULL))
    assert suggested_learning_rate(_lora()) == pytest.approx(10 * full)


def test_pure_bf16_risk_grows_with_the_tokens_trained_and_names_the_alternative() -> None:
    full_bf16 = TuningConfig(method=Method.FULL, precision=Precision.BF16)
    # 2e-5 (the full-FT learning rate) is under half the 1.2e-4 bf16 spacing at |w| = 0.02:
    # most updates round away, which matters more the longer the run.
    assert bf16_spacing(0.02) == pytest.approx(2**-13)
    assert suggested_learning_rate(full_bf16) < bf16_spacing(0.02) / 2
    short = assess_quality(SPEC, full_bf16, _budget(30_000_000))
    long = assess_quality(SPEC, full_bf16, _budget(2_000_000_000, Task.CPT))
    assert max_level(short) is RiskLevel.MEDIUM and max_level(long) is RiskLevel.HIGH
    assert long[0].source == ZAMIRAI_2020
    # The recipes offer neither Kahan summation nor stochastic rounding: bf16-mixed is the fix.
    assert "offer neither" in long[0].message and "bf16-mixed" in long[0].message
    mixed = TuningConfig(method=Method.FULL, precision=Precision.BF16_MIXED)
    assert assess_quality(SPEC, mixed, _budget(2_000_000_000, Task.CPT)) == ()


def test_gemma_2_in_fp16_is_a_risk_with_its_source() -> None:
    gemma = get_model("gemma2-2b")
    fp16 = TuningConfig(method=Method.FULL, precision=Precision.FP16_MIXED)
    risks = assess_quality(gemma, fp16, _budget())
    assert max_level(risks) is RiskLevel.MEDIUM
    assert any("transformers#36822" in r.source for r in risks)
    assert max_level(assess_quality(SPEC, fp16, _budget())) is RiskLevel.LOW  # Llama: a note
