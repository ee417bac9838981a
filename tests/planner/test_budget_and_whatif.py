"""What the budget buys (plan.budget_frontier, stronger options), billing units in the cost,
recommend --method, and estimate --max-batch / --max-seq-len (bisection over the estimator)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog import get_gpu, get_model, list_offers
from planner import Budget, TokensSource
from planner.cli import main
from planner.engine.cost import SpotAssumptions, estimate_cost
from planner.engine.frontier import affordable_tokens
from profiler import (
    FitVerdict,
    Measurement,
    Method,
    Provenance,
    Source,
    Status,
    TuningConfig,
    calibration_for,
    estimate,
    measurement_fit,
)
from profiler.whatif import largest_true, max_micro_batch, max_seq_len


def _plan(tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(
        main, ["recommend", *args, "--format", "json", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["plan"]  # type: ignore[no-any-return]


def test_budget_frontier_has_tokens_for_every_method(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "--model", "llama2-7b", "--budget", "200")
    frontier = plan["budget_frontier"]
    assert {e["method"] for e in frontier} == {"full", "lora", "qlora"}
    for entry in frontier:
        assert set(entry) >= {"method", "max_tokens", "max_epochs", "offer"}
        assert "usd_per_million_tokens" in entry
        assert entry["max_tokens"] > 0 and entry["offer"]
        assert entry["max_epochs"] == pytest.approx(entry["max_tokens"] / 10_000_000)
    # The budget buys far more than the plan's 30M tokens: the report says so.
    assert any("epochs" in s for s in plan["stronger_options"])


def test_bigger_budget_buys_more_tokens(tmp_path: Path) -> None:
    small = _plan(tmp_path, "--model", "llama2-7b", "--budget", "50")["budget_frontier"]
    large = _plan(tmp_path, "--model", "llama2-7b", "--budget", "500")["budget_frontier"]
    for a, b in zip(small, large, strict=True):
        assert b["max_tokens"] > a["max_tokens"] * 5


def test_method_full_pins_full_fine_tuning_under_the_quality_policy(tmp_path: Path) -> None:
    args = ("--model", "llama2-7b", "--budget", "200", "--method", "full")
    plan = _plan(tmp_path, *args)
    assert plan["chosen"]["config"]["method"] == "full"
    assert all(c["config"]["method"] == "full" for c in plan["ranked"])
    # --quality strict holds with the method pinned: no pure bf16 weights (medium risk).
    strict = _plan(tmp_path, *args, "--quality", "strict")
    assert strict["chosen"]["config"]["precision"] == "bf16-mixed"
    assert all(r["level"] == "low" for c in strict["ranked"] for r in c["risks"])


def test_a_pinned_method_keeps_the_quality_policy(tmp_path: Path) -> None:
    args = ["--model", "llama2-7b", "--budget", "200", "--tokens", "500000000"]
    args += ["--task", "cpt", "--epochs", "1", "--method", "lora"]
    # balanced: the ranks, targets and precision follow the policy (all-linear, a rank with the
    # capacity), not the cheapest high-risk adapter.
    plan = _plan(tmp_path, *args)
    chosen = plan["chosen"]
    assert chosen["config"]["lora_targets"] == "all-linear"
    assert {r["level"] for r in chosen["risks"]} <= {"low", "medium"}
    assert all(r["level"] != "high" for c in plan["ranked"] for r in c["risks"])
    # strict: LoRA on 500M tokens of continued pre-training is never low risk, so nothing is
    # feasible, and the message says what would be.
    result = CliRunner().invoke(
        main, ["recommend", *args, "--quality", "strict", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "--quality cheapest" in result.stderr and "drop --method lora" in result.stderr


def _measurement(tokens_per_s: float) -> Measurement:
    return Measurement(
        model="m",
        gpu="H100 SXM 80GB",
        config=TuningConfig(method=Method.FULL),
        status=Status.OK,
        source=Source.ESTIMATED,
        provenance=Provenance(device="test", date="x"),
        peak_reserved_gib=40.0,
        step_time_s=1.0,
        tokens_per_s=tokens_per_s,
    )


def test_capacity_block_bills_a_whole_day_upfront_and_states_the_idle_time() -> None:
    block = next(o for o in list_offers() if o.service == "ec2-capacity-block")
    budget = Budget(
        max_usd=5000.0, dataset_tokens=100_000_000, epochs=1.0, tokens_source=TokensSource.GIVEN
    )
    # 100M tokens at ~10k tokens/s is under 3 h of training.
    cost = estimate_cost(
        _measurement(10_000.0), block, budget, nodes=1, spot_policy=SpotAssumptions()
    )
    assert cost.hours < 4 and cost.billed_hours == 24.0
    assert cost.usd == pytest.approx(24.0 * block.usd_per_hour)
    assert cost.idle_billed_hours == pytest.approx(24.0 - cost.hours)
    assert cost.idle_usd == pytest.approx(cost.idle_billed_hours * block.usd_per_hour)


def test_affordable_tokens_respect_the_minimum_billing() -> None:
    from planner._types import Candidate

    block = next(o for o in list_offers() if o.service == "ec2-capacity-block")
    m = _measurement(10_000.0)
    budget = Budget(
        max_usd=100.0, dataset_tokens=1_000_000, epochs=1.0, tokens_source=TokensSource.GIVEN
    )
    cost = estimate_cost(m, block, budget, nodes=1, spot_policy=SpotAssumptions())
    cand = Candidate(
        config=m.config,
        offer=block,
        nodes=1,
        measurement=m,
        cost=cost,
        fits=True,
        usable_memory_gib=80.0,
    )
    assert affordable_tokens(cand, budget) == 0  # $100 does not buy a day of 8 × H100
    rich = dataclasses.replace(budget, max_usd=block.usd_per_hour * 24 * 2.5)
    expected = (48.0 - cost.startup_hours) * 3600 * 10_000.0  # two whole days, not 2.5
    assert affordable_tokens(cand, rich) == pytest.approx(expected, rel=1e-6)


def test_largest_true_is_exact() -> None:
    for edge in (1, 2, 3, 17, 1000, 4095, 4096):
        assert largest_true(lambda n, e=edge: n <= e, low=1, high=4096) == edge
    assert largest_true(lambda n: False, low=1, high=64) is None


def test_max_batch_is_the_last_batch_that_fits() -> None:
    spec, gpu = get_model("llama3.1-8b"), get_gpu("h100")
    config = TuningConfig(
        method=Method.LORA,
        lora_rank=16,
        lora_targets="all-linear",
        seq_len=2048,
        grad_checkpointing=True,
    )
    cal = calibration_for(gpu)

    def run(c: TuningConfig) -> Measurement:
        return estimate(spec, c, gpu, calibration=cal)

    found = max_micro_batch(run, config, gpu)
    # The promise: the largest batch whose error band's high end fits too.
    safe = found.value
    assert safe is not None and safe > 1
    for batch, verdict_ok in ((safe, True), (safe + 1, False)):
        m = run(dataclasses.replace(config, micro_batch_size=batch))
        assert (measurement_fit(m, gpu).verdict is FitVerdict.FITS) is verdict_ok
    # Beyond it, up to value_tight, a run may fit ('tight'); one more does not.
    tight = found.value_tight
    assert tight is not None and tight >= safe
    for batch, fits in ((tight, True), (tight + 1, False)):
        m = run(dataclasses.replace(config, micro_batch_size=batch))
        assert measurement_fit(m, gpu).fits is fits
    longest = max_seq_len(run, config, gpu, spec=spec)
    assert longest.value is not None and longest.value > 2048


def test_estimate_max_batch_json() -> None:
    args = ["estimate", "--model", "llama3.1-8b", "--method", "lora", "--gpu", "l4"]
    args += ["--seq-len", "1024", "--grad-checkpointing", "--max-batch", "--format", "json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["max_micro_batch"] >= 1 and out["fit"] == "fits"
    assert out["max_micro_batch_tight"] >= out["max_micro_batch"]


def test_estimate_max_batch_says_when_only_a_tight_size_may_fit() -> None:
    args = ["estimate", "--model", "llama3.1-8b", "--method", "lora", "--gpu", "l4"]
    args += ["--seq-len", "2048", "--grad-checkpointing", "--max-batch", "--format", "json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["max_micro_batch"] is None and out["fit"] == "tight"
    assert out["max_micro_batch_tight"] == 1


def test_estimate_max_batch_when_nothing_fits_exits_1_with_the_nearest_change() -> None:
    args = ["estimate", "--model", "llama2-7b", "--method", "lora", "--gpu", "l4"]
    result = CliRunner().invoke(main, [*args, "--seq-len", "8192", "--max-batch"])
    assert result.exit_code == 1
    assert "nothing fits at batch 1" in result.stderr
    assert "--grad-checkpointing" in result.stderr
    assert "Traceback" not in result.output
    assert FitVerdict.NO.value == "no"


def test_nearest_change_from_pure_bf16_full_fine_tuning_is_qlora_in_bf16_mixed() -> None:
    """QLoRA has no pure-bf16 recipe: the suggestion switches precision with the method."""
    args = ["estimate", "--model", "llama2-13b", "--method", "full", "--precision", "bf16"]
    result = CliRunner().invoke(main, [*args, "--gpu", "a100", "--max-batch"])
    assert result.exit_code == 1, result.output
    assert "Nearest change: --method qlora with --grad-checkpointing" in result.stderr
    assert "internal error" not in result.stderr


def test_balanced_cpt_prefers_full_fine_tuning_when_affordable(tmp_path: Path) -> None:
    args = ["--model", "llama2-7b", "--budget", "3000", "--tokens", "300000000"]
    plan = _plan(tmp_path, *args, "--epochs", "1", "--task", "cpt")
    assert plan["chosen"]["config"]["method"] == "full"
    lora = next(v for v in plan["verdicts"] if v["method"] == "lora")
    assert lora["best"]["cost"]["usd"] < plan["chosen"]["cost"]["usd"]  # full costs more
    # bf16-mixed: pure bf16 weights lose updates below half a bf16 step (Zamirai et al. 2020).
    assert plan["chosen"]["config"]["precision"] == "bf16-mixed"
    assert any("--task cpt: chose the low-risk plan" in a for a in plan["assumptions"])


def test_affordable_higher_rank_is_priced_on_the_chosen_offer(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "--model", "llama2-7b", "--budget", "200")
    assert plan["chosen"]["config"]["method"] in ("lora", "qlora")
    text = next(s for s in plan["stronger_options"] if s.startswith("a higher rank"))
    assert "$" in text and "capacity" in text
    full = next(s for s in plan["stronger_options"] if s.startswith("full fine-tuning"))
    assert "what it would change" in full


def test_reports_show_the_budget_frontier_billing_and_fit() -> None:
    from planner.plan_io import read_plan
    from planner.report.html import render_html
    from planner.report.markdown import render_markdown

    example = sorted((Path(__file__).parents[2] / "reports" / "examples").glob("*.json"))[0]
    plan = read_plan(example)
    assert {e.method for e in plan.budget_frontier} == {Method.FULL, Method.LORA, Method.QLORA}
    assert plan.chosen is not None and plan.chosen.fit is not None
    for text in (render_markdown(plan), render_html(plan)):
        assert "What the budget buys" in text and "Stronger options" in text
        assert "Billing" in text and "per second" in text


def test_a_plan_with_margin_wins_over_a_tight_one_that_saves_little(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--model", "llama2-13b", "--budget", "30", "--gpu", "l4", "--gpu-count", "1"]
    args += ["--method", "lora", "--service", "ec2"]
    plan = _plan(tmp_path, *args)
    chosen = plan["chosen"]
    assert chosen["fit"] == "fits"
    note = next(a for a in plan["assumptions"] if a.startswith("memory: chose"))
    # The search's cheapest plan is tight; the same config at a smaller micro-batch fits with
    # its margin for a few percent more.
    tight_usd = float(note.split("over the $")[1].split(" plan")[0].replace(",", ""))
    assert tight_usd < chosen["cost"]["usd"] <= tight_usd * 1.2
    assert f"${chosen['cost']['usd']:,.2f}" in note

    import planner.engine.plan as plan_module

    monkeypatch.setattr(plan_module, "TIGHT_PREMIUM", 0.0)
    kept = _plan(tmp_path, *args)
    assert kept["chosen"]["fit"] == "tight"
    assert kept["chosen"]["cost"]["usd"] == pytest.approx(tight_usd, abs=0.005)
    note = next(a for a in kept["assumptions"] if a.startswith("memory: kept"))
    assert "the cheapest plan of its method with margin costs" in note


def test_more_epochs_than_the_flag_takes_say_over(tmp_path: Path) -> None:
    # 4,000 tokens for $500: billions of epochs; --epochs takes at most MAX_EPOCHS.
    args = ["--model", "llama3.2-1b", "--budget", "500", "--tokens", "40000", "--epochs", "1"]
    plan = _plan(tmp_path, *args)
    more = [s for s in plan["stronger_options"] if s.startswith("the budget buys")]
    assert more and more[0].startswith("the budget buys over 1,000.0 epochs")
