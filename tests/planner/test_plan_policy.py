"""The user's policy holds in every line of a plan: the chosen plan, the ranking, the verdicts,
the budget frontier and the stronger options meet the same limits (budget, deadline, quality
policy, memory, loading, host RAM); free own GPUs rank by time; the warnings a plan owes its
user (CLI end to end on the shipped catalog and the analytic estimator, CPU, offline)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog import GPU, ModelSpec, get_gpu, get_model
from planner import QualityPolicy
from planner.cli import main
from planner.engine.quality import ACCEPTED_LEVELS
from planner.explain import load_problem, plan_warnings
from profiler import (
    Measurement,
    Method,
    OptimizerKind,
    Precision,
    Sharding,
    TuningConfig,
    calibration_for,
    estimate,
)

RISKS = ("low", "medium", "high")


def _plan(tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(
        main, ["recommend", *args, "--format", "json", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["plan"]  # type: ignore[no-any-return]


def _risk(candidate: dict) -> str:  # type: ignore[type-arg]
    levels = [r["level"] for r in candidate["risks"]] or ["low"]
    return max(levels, key=RISKS.index)


def _config(c: dict) -> TuningConfig:  # type: ignore[type-arg]
    cfg = c["config"]
    return TuningConfig(
        method=Method(cfg["method"]),
        precision=Precision(cfg["precision"]),
        lora_rank=cfg["lora_rank"],
        lora_targets=cfg["lora_targets"],
        micro_batch_size=cfg["micro_batch_size"],
        seq_len=cfg["seq_len"],
        optimizer=OptimizerKind(cfg["optimizer"]),
        gpu_count=cfg["gpu_count"],
        sharding=Sharding(cfg["sharding"]),
    )


def _assert_within_limits(plan: dict, c: dict, policy: str) -> None:  # type: ignore[type-arg]
    budget = plan["budget"]
    accepted = {r.value for r in ACCEPTED_LEVELS[QualityPolicy(policy)]}
    assert _risk(c) in accepted, c["config"]
    assert c["cost"]["usd"] <= budget["max_usd"] + 1e-9
    if budget["max_hours"] is not None:
        assert c["cost"]["hours"] <= budget["max_hours"] + 1e-9
    assert c["fit"] != "no"
    have = c["offer"]["memory_gib"]
    assert have is None or c["measurement"]["host_ram_gib"] <= have
    gpu = get_gpu(c["offer"]["gpu"])
    assert load_problem(get_model(plan["model"]), _config(c), gpu) is None


def test_cpt_strict_every_line_meets_the_policy(tmp_path: Path) -> None:
    args = ["--model", "llama3.1-8b", "--budget", "2000", "--task", "cpt"]
    args += ["--tokens", "2000000000", "--epochs", "1", "--quality", "strict"]
    plan = _plan(tmp_path, *args)
    chosen = plan["chosen"]
    # Pure bf16 weights would lose most updates over 2B tokens at 2e-5: bf16-mixed.
    assert chosen["config"]["method"] == "full"
    assert chosen["config"]["precision"] == "bf16-mixed"
    for c in [chosen, *plan["ranked"], *plan["pareto"]]:
        _assert_within_limits(plan, c, "strict")
    for v in plan["verdicts"]:
        if v["best"] is not None and ("wins" in v["reason"] or "also works" in v["reason"]):
            _assert_within_limits(plan, v["best"], "strict")
    # The budget frontier is priced on configs the policy accepts: no pure bf16, no LoRA that
    # is high risk on 2B tokens of continued pre-training.
    for entry in plan["budget_frontier"]:
        assert entry["config"] is None or " bf16 " not in f" {entry['config']} "
    full = next(e for e in plan["budget_frontier"] if e["method"] == "full")
    assert full["config"] is not None and "bf16-mixed" in full["config"]


def test_a_deadline_holds_in_the_stronger_options(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "--model", "llama2-7b", "--budget", "500", "--max-hours", "0.5")
    assert plan["chosen"]["cost"]["hours"] <= 0.5
    for text in plan["stronger_options"]:
        if text.startswith("full fine-tuning is affordable"):
            instance = text.split(" on ")[1].split(" (")[0]
            ranked = [c for c in plan["ranked"] if c["offer"]["instance_type"] == instance]
            assert all(c["cost"]["hours"] <= 0.5 for c in ranked)
        if text.startswith("the budget buys"):
            shown = text.split("buys ")[1].split(" epochs")[0].removeprefix("over ")
            epochs = float(shown.replace(",", ""))
            hours = plan["chosen"]["cost"]
            train = hours["train_hours"] * epochs / plan["budget"]["epochs"]
            assert train + hours["startup_hours"] <= 0.5 + 1e-6


def test_free_own_gpus_rank_by_time_then_risk(tmp_path: Path) -> None:
    args = ["--model", "llama2-13b", "--budget", "100", "--provider", "local"]
    args += ["--gpu", "rtx4090", "--gpu-count", "2", "--host-ram-gib", "64"]
    plan = _plan(tmp_path, *args)
    chosen = plan["chosen"]
    assert chosen["cost"]["usd"] == 0
    fastest = min(c["cost"]["hours"] for c in plan["ranked"])
    assert chosen["cost"]["hours"] == pytest.approx(fastest)
    hours = [(round(c["cost"]["hours"], 6), RISKS.index(_risk(c))) for c in plan["ranked"]]
    assert hours == sorted(hours)
    if _risk(chosen) != "low":
        assert any("ranked by time" in a for a in plan["assumptions"])


def test_a_t4_lora_plan_uses_an_offer_with_the_host_ram_for_offload(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path, "--model", "llama2-7b", "--budget", "200", "--gpu", "t4", "--gpu-count", "1"
    )
    chosen = plan["chosen"]
    assert chosen["config"]["sharding"] in ("fsdp-offload", "zero3-offload")
    assert chosen["measurement"]["host_ram_gib"] <= chosen["offer"]["memory_gib"]
    _assert_within_limits(plan, chosen, "balanced")


def test_gemma_2_on_a_t4_and_instruction_data_say_what_they_risk(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path, "--model", "gemma2-2b", "--budget", "50", "--gpu", "t4", "--tokens", "2000000"
    )
    assert plan["chosen"]["config"]["precision"] == "fp16-mixed"
    gemma = [w for w in plan["warnings"] if "fp16" in w and "Gemma" in w]
    assert gemma and "transformers#36822" in gemma[0]
    packing = [w for w in plan["warnings"] if w.startswith("data: ")]
    assert packing and "arXiv:2107.02027" in packing[0] and "prompts" in packing[0]
    cpt = _plan(tmp_path, "--model", "llama3.2-1b", "--budget", "50", "--task", "cpt")
    assert not any(w.startswith("data: ") for w in cpt["warnings"])


def test_a_spot_price_far_below_the_rest_of_the_catalog_is_flagged(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path, "--model", "llama3.2-1b", "--budget", "20", "--provider", "azure", "--spot"
    )
    assert plan["chosen"]["offer"]["spot"]
    flagged = [w for w in plan["warnings"] if "spot price" in w and "other providers" in w]
    assert flagged and plan["chosen"]["offer"]["instance_type"] in " ".join(flagged)


def _candidate_on(spec: ModelSpec, config: TuningConfig, gpu: GPU) -> Measurement:
    return estimate(spec, config, gpu, calibration=calibration_for(gpu))


def test_deepspeed_cpu_adam_on_an_arm_host_is_a_warning() -> None:
    from catalog import list_offers
    from planner import Budget, TokensSource
    from planner._types import Candidate, CostEstimate
    from planner.engine.space import RecommendRequest

    spec, gpu = get_model("llama3.1-8b"), get_gpu("gh200")
    offer = next(o for o in list_offers() if o.gpu == gpu.name)
    config = TuningConfig(method=Method.FULL, sharding=Sharding.ZERO3_OFFLOAD)
    cost = CostEstimate(
        train_hours=1.0, startup_hours=0.1, spot_overhead_hours=0.0, hours=1.1, usd=2.0,
        usd_per_hour=1.8,
    )  # fmt: skip
    candidate = Candidate(
        config=config,
        offer=offer,
        nodes=1,
        measurement=_candidate_on(spec, config, gpu),
        cost=cost,
        fits=True,
        usable_memory_gib=gpu.usable_memory_gib,
    )
    budget = Budget(max_usd=10, dataset_tokens=10**6, epochs=1, tokens_source=TokensSource.GIVEN)
    request = RecommendRequest(spec=spec, budget=budget, offers=(offer,), gpus={gpu.name: gpu})
    warnings = plan_warnings(request, (candidate,))
    arm = [w for w in warnings if "DeepSpeed's CPU Adam" in w]
    assert arm and "op_builder/builder.py" in arm[0] and "fsdp-offload" in arm[0]
    fsdp = dataclasses.replace(
        candidate, config=dataclasses.replace(config, sharding=Sharding.FSDP_OFFLOAD)
    )
    assert not any("DeepSpeed's CPU Adam" in w for w in plan_warnings(request, (fsdp,)))


@pytest.mark.parametrize(("known_usd", "takes_known"), [(0.55, True), (0.70, False)])
def test_a_plan_whose_host_ram_nothing_checked_gives_way_to_a_known_one(
    known_usd: float, takes_known: bool
) -> None:
    from test_search import SPACE, fake_estimate, fits_usable, make_offer, problem

    from planner import QualityPolicy, recommend
    from planner.engine.measurer import EstimateFunctions, Measurer

    def offload_only(spec: ModelSpec, config: TuningConfig, gpu: GPU, **kw: object) -> Measurement:
        """The fake model, where only CPU offload fits a T4 and needs 40 GiB of host RAM."""
        m = fake_estimate(spec, config, gpu, **kw)  # type: ignore[arg-type]
        extra = 0.0 if config.sharding.offloads else 50.0
        peak = (m.peak_reserved_gib or 0.0) + extra
        return dataclasses.replace(
            m,
            peak_reserved_gib=peak,
            peak_allocated_gib=peak,
            host_ram_gib=40.0 if config.sharding.offloads else 3.0,
        )

    # The same T4 twice: the cheaper offer does not say how much RAM it has.
    unknown = make_offer("a-unknown", "T4", 1, 0.50)
    known = dataclasses.replace(make_offer("b-known", "T4", 1, known_usd), memory_gib=64.0)
    p = dataclasses.replace(
        problem(offers=(unknown, known), quality=QualityPolicy.CHEAPEST),
        space=dataclasses.replace(SPACE, methods=(Method.QLORA,)),
    )
    plan = recommend(p, Measurer(EstimateFunctions(offload_only), fits=fits_usable))
    assert plan.chosen is not None and plan.chosen.config.sharding.offloads
    if takes_known:  # +10%: within the premium
        assert plan.chosen.offer.instance_type == "b-known"
        assert any(a.startswith("host RAM: chose") for a in plan.assumptions)
    else:  # +40%: kept, and the plan says what to check
        assert plan.chosen.offer.instance_type == "a-unknown"
        assert any(a.startswith("host RAM: kept") for a in plan.assumptions)
        assert any("does not list the memory" in w for w in plan.warnings)


def test_balanced_frontier_and_full_option_take_the_low_risk_config(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "--model", "llama2-7b", "--budget", "200")
    # Attention-only adapters and pure bf16 weights are medium risk; balanced prices the
    # frontier and the full fine-tuning option on low-risk configs unless those cost over 20%.
    for entry in plan["budget_frontier"]:
        assert entry["config"] is not None
        assert "attention" not in entry["config"] and " bf16 " not in f" {entry['config']} "
    full = [s for s in plan["stronger_options"] if s.startswith("full fine-tuning")]
    assert all("bf16-mixed" in s for s in full)
