"""``ftplan recommend`` end to end on the shipped catalog, the analytic estimator and the stored
profiles (CPU, offline), plus recommend() with the fake estimator of test_search."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog import get_gpu, get_model
from planner import RiskLevel
from planner.cli import main
from planner.engine.dataset import count_dataset
from profiler import Method, Precision, Sharding, TuningConfig


def _invoke(*args: str, out: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["recommend", *args, "--out", str(out)])
    return result.exit_code, result.stdout, result.stderr


def _json_plan(*args: str, out: Path) -> dict:  # type: ignore[type-arg]
    code, stdout, stderr = _invoke(*args, "--format", "json", out=out)
    assert code == 0, stderr
    return json.loads(stdout)["plan"]  # type: ignore[no-any-return]


def test_default_recommend_is_within_budget_and_writes_reports(tmp_path: Path) -> None:
    plan = _json_plan("--model", "llama2-7b", "--budget", "200", out=tmp_path)
    chosen = plan["chosen"]
    assert chosen is not None
    assert 0 < chosen["cost"]["usd"] <= 200
    assert chosen["cost"]["usd"] == pytest.approx(
        chosen["cost"]["billed_hours"] * chosen["cost"]["usd_per_hour"]
    )
    assert chosen["cost"]["billed_hours"] >= chosen["cost"]["hours"]
    assert chosen["fit"] in ("fits", "tight") and chosen["fits"] is True
    assert chosen["offer"]["min_billing_hours"] >= 0 and chosen["offer"]["billing_source"]
    assert chosen["measurement"]["peak_reserved_gib"] <= chosen["usable_memory_gib"]
    assert {v["method"] for v in plan["verdicts"]} == {"full", "lora", "qlora"}
    assert all("$" in v["reason"] for v in plan["verdicts"])
    usd = [c["cost"]["usd"] for c in plan["ranked"]]
    assert usd == sorted(usd)
    assert any("ASSUMED" in a for a in plan["assumptions"])
    assert plan["search"]["seed"] == 0 and plan["search"]["evaluated"] > 0
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".html", ".json", ".md"]


def test_the_same_model_typed_two_ways_names_the_same_reports(tmp_path: Path) -> None:
    for model in ("llama3.2-1b", "meta-llama/Llama-3.2-1B", "LLAMA3.2-1B"):
        assert _invoke("--model", model, "--budget", "50", "--quiet", out=tmp_path / "a")[0] == 0
    assert len(list((tmp_path / "a").glob("*.json"))) == 1
    folder = tmp_path / "cfg"
    folder.mkdir()
    config = {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
    }
    (folder / "config.json").write_text(json.dumps(config))
    for model in (str(folder), str(folder / "config.json"), str(folder / ".." / "cfg")):
        assert _invoke("--model", model, "--budget", "50", "--quiet", out=tmp_path / "b")[0] == 0
    (report,) = (tmp_path / "b").glob("*.json")
    assert report.name.startswith("cfg-50usd-")
    # Another budget is another plan, with its own reports.
    assert _invoke("--model", str(folder), "--budget", "60", "--quiet", out=tmp_path / "b")[0] == 0
    assert len(list((tmp_path / "b").glob("*.json"))) == 2


def test_same_seed_gives_the_same_plan(tmp_path: Path) -> None:
    args = ("--model", "llama3.2-1b", "--budget", "50", "--seed", "3")
    assert _json_plan(*args, out=tmp_path) == _json_plan(*args, out=tmp_path)


def test_70b_never_full_ft_on_one_80gb_gpu_and_states_memory(tmp_path: Path) -> None:
    plan = _json_plan("--model", "llama2-70b", "--budget", "500", out=tmp_path)
    shown = plan["ranked"] + plan["pareto"] + [v["best"] for v in plan["verdicts"] if v["best"]]
    for c in shown:
        if c["config"]["method"] == "full" and c["config"]["gpu_count"] == 1:
            # Only with the weights and optimizer in host memory, which the offer must have.
            assert c["config"]["sharding"] == "zero3-offload"
        if c["config"]["sharding"] in ("fsdp-offload", "zero3-offload"):
            # Checked where the catalog lists the offer's memory; a risk the plan states if not.
            have = c["offer"]["memory_gib"]
            assert have is None or c["measurement"]["host_ram_gib"] <= have
        assert c["fit"] != "no"
    assert plan["chosen"]["config"]["method"] in ("qlora", "lora")
    if plan["chosen"]["offer"]["memory_gib"] is None and plan["chosen"]["config"]["sharding"] in (
        "fsdp",
        "fsdp-offload",
        "zero3-offload",
    ):
        assert any("host RAM" in w for w in plan["warnings"])


def test_70b_full_ft_goes_multi_node_when_the_budget_allows(tmp_path: Path) -> None:
    plan = _json_plan(
        "--model",
        "llama2-70b",
        "--budget",
        "20000",
        "--gpu",
        "h100",
        "--gpu-count",
        "8",
        "--quality",
        "strict",
        "--tokens",
        "100000000",
        "--epochs",
        "1",
        out=tmp_path,
    )
    full = next(v for v in plan["verdicts"] if v["method"] == "full")
    assert full["best"] is not None
    # 70B full FT does not fit one node of 8 × H100 with FSDP alone: it spreads over nodes, or
    # keeps one node and moves weights and optimizer to host memory (ZeRO-3 offload).
    best = full["best"]
    assert best["config"]["gpu_count"] == 8 * best["nodes"]
    assert (best["nodes"] > 1 and best["config"]["sharding"] == "fsdp") or best["config"][
        "sharding"
    ] == "zero3-offload"


def test_no_feasible_plan_exits_1_writes_report_and_says_what_works(tmp_path: Path) -> None:
    code, stdout, stderr = _invoke("--model", "llama2-7b", "--budget", "0.05", out=tmp_path)
    assert code == 1
    assert "raise --budget to $" in stderr
    assert "Traceback" not in stdout + stderr
    (report,) = tmp_path.glob("*.json")
    plan = json.loads(report.read_text())["plan"]
    assert plan["chosen"] is None and plan["near_misses"] and plan["suggestions"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--model", "llama2-7b", "--budget", "-5"), "budget"),
        (("--model", "llama2-7b", "--budget", "abc"), "abc"),
        (("--model", "llama2-7", "--budget", "10"), "llama2-7b"),
        (("--model", "<script>alert(1)</script>", "--budget", "10"), "model"),
        (("--model", "llama2-7b", "--budget", "10", "--gpu", "h1000"), "h100"),
        (("--model", "llama2-7b", "--budget", "10", "--provider", "awz"), "aws"),
        (
            ("--model", "llama2-7b", "--budget", "10", "--dataset", "/nonexistent.jsonl"),
            "nonexistent",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    code, stdout, stderr = _invoke(*args, out=tmp_path)
    assert code == 2
    assert expected in stderr
    assert "Traceback" not in stdout + stderr
    assert not list(tmp_path.iterdir())


def test_quiet_prints_one_line(tmp_path: Path) -> None:
    code, stdout, _ = _invoke("--model", "llama2-7b", "--budget", "200", "--quiet", out=tmp_path)
    assert code == 0
    assert len(stdout.strip().splitlines()) == 1
    assert "$" in stdout and "GiB per GPU" in stdout


def test_dataset_is_counted_and_sizes_the_sequence(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    rows = [{"messages": [{"role": "user", "content": "x" * 400}]}] * 9
    rows.append({"text": "y" * 12_000})  # 3,000 tokens: longer than the 2048 default
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    stats = count_dataset(data)
    assert stats.samples == 10
    assert stats.tokens == 9 * math.ceil(404 / 4) + 3000
    assert stats.longest_sample_tokens == 3000
    plan = _json_plan(
        "--model", "llama3.2-1b", "--budget", "50", "--dataset", str(data), out=tmp_path / "r"
    )
    assert plan["budget"]["tokens_source"] == "counted"
    assert plan["budget"]["longest_sample_tokens"] == 3000
    assert plan["chosen"]["config"]["seq_len"] == 3072


def test_seq_len_shorter_than_the_longest_sample_warns(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"text": "z" * 20_000}) + "\n")
    plan = _json_plan(
        "--model",
        "llama3.2-1b",
        "--budget",
        "50",
        "--dataset",
        str(data),
        "--seq-len",
        "1024",
        out=tmp_path / "r",
    )
    assert any("longest sample" in w for w in plan["warnings"])


def test_bad_dataset_line_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "ok"}\nnot json\n')
    code, _, stderr = _invoke(
        "--model", "llama2-7b", "--budget", "10", "--dataset", str(data), out=tmp_path / "r"
    )
    assert code == 2 and "line 2" in stderr


def test_spot_plans_carry_a_checkpoint_interval(tmp_path: Path) -> None:
    plan = _json_plan("--model", "llama2-7b", "--budget", "200", "--spot", out=tmp_path)
    spot = [c for c in plan["ranked"] if c["offer"]["spot"]]
    assert spot
    for c in spot:
        assert c["cost"]["checkpoint_interval_minutes"] > 0
        assert c["cost"]["spot_overhead_hours"] > 0
    assert any("interruptions per instance-hour" in a for a in plan["assumptions"])


def test_local_offer_is_free_when_no_price_is_given(tmp_path: Path) -> None:
    plan = _json_plan(
        "--model",
        "llama3.2-1b",
        "--budget",
        "1",
        "--provider",
        "local",
        "--gpu",
        "rtx4090",
        "--gpu-count",
        "1",
        out=tmp_path,
    )
    assert plan["chosen"]["offer"]["provider"] == "local"
    assert plan["chosen"]["cost"]["usd"] == 0.0


def test_recommend_with_fake_estimator_explains_losing_methods() -> None:
    from test_search import GPUS, OFFERS, SPEC, fake_estimate, fits_usable

    from planner import (
        Budget,
        EstimateFunctions,
        Measurer,
        RecommendRequest,
        TokensSource,
        recommend,
    )

    budget = Budget(
        max_usd=3.0, dataset_tokens=30_000_000, epochs=1.0, tokens_source=TokensSource.GIVEN
    )
    plan = recommend(
        RecommendRequest(spec=SPEC, budget=budget, offers=OFFERS, gpus=GPUS),
        Measurer(EstimateFunctions(fake_estimate), fits=fits_usable),
    )
    assert plan.chosen is not None and plan.chosen.cost.usd <= 3.0
    verdicts = {v.method: v for v in plan.verdicts}
    assert verdicts[plan.chosen.config.method].reason.endswith(".")
    full = verdicts[Method.FULL]
    assert full.best is not None and not full.best.within_budget
    assert "× the $3.00 budget" in full.reason
    hours = [c.cost.hours for c in plan.pareto]
    assert hours == sorted(hours, reverse=True)


def test_storage_resume_from_the_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    args = ("--model", "llama3.2-1b", "--budget", "50", "--gpu", "l4", "--storage", url)
    first = _json_plan(*args, out=tmp_path / "a")
    second = _json_plan(*args, out=tmp_path / "b")
    assert first["chosen"] == second["chosen"]
    assert first["search"]["trials"] == second["search"]["trials"]
    assert second["search"]["storage"] == url


def test_few_trials_use_seeded_tpe(tmp_path: Path) -> None:
    args = ("--model", "llama2-7b", "--budget", "200", "--trials", "15", "--seed", "5")
    a = _json_plan(*args, out=tmp_path)
    b = _json_plan(*args, out=tmp_path)
    assert "TPESampler(seed=5)" in a["search"]["sampler"]
    assert a["search"]["trials"] == 15
    assert a["chosen"] == b["chosen"]


def test_70b_on_one_l4_fits_only_with_offload_and_says_what_it_costs(tmp_path: Path) -> None:
    code, _, stderr = _invoke(
        "--model", "llama2-70b", "--budget", "50", "--gpu", "l4", "--gpu-count", "1", out=tmp_path
    )
    assert code == 1
    # 70B cannot sit on a 24 GB L4; with CPU offload it fits, at a price over the budget, on an
    # instance with enough host RAM.
    assert "raise --budget" in stderr and "1gpu-" in stderr and "offload" in stderr
    assert "host RAM" in stderr
    (report,) = tmp_path.glob("*.json")
    plan = json.loads(report.read_text())["plan"]
    qlora = next(v for v in plan["verdicts"] if v["method"] == "qlora")
    best = qlora["best"]
    if best is None:
        # The runner would build the whole NF4 model on the GPU while loading: dropped, and
        # the verdict says so.
        assert "while it loads" in qlora["reason"]
    else:
        assert best["config"]["sharding"] == "fsdp-offload"
        have = best["offer"]["memory_gib"]  # unknown: allowed, as a risk the plan states
        assert have is None or best["measurement"]["host_ram_gib"] <= have


def test_balanced_quality_keeps_low_risk_unless_medium_risk_saves_real_money(
    tmp_path: Path,
) -> None:
    balanced = _json_plan("--model", "llama2-7b", "--budget", "200", out=tmp_path)
    cheapest = _json_plan(
        "--model", "llama2-7b", "--budget", "200", "--quality", "cheapest", out=tmp_path
    )
    # Attention-only LoRA (medium risk: no MLP adapters) is what 'cheapest' takes; 'balanced'
    # pays the few cents for all-linear adapters and says why.
    assert cheapest["chosen"]["config"]["lora_targets"] == "attention"
    assert balanced["chosen"]["config"]["lora_targets"] == "all-linear"
    assert all(r["level"] == "low" for r in balanced["chosen"]["risks"])
    premium = balanced["chosen"]["cost"]["usd"] / cheapest["chosen"]["cost"]["usd"] - 1
    assert 0 <= premium <= 0.20
    assert any("chose the low-risk plan" in a for a in balanced["assumptions"])


def test_lora_keeps_torch_adamw(tmp_path: Path) -> None:
    plan = _json_plan("--model", "llama3.2-1b", "--budget", "50", out=tmp_path)
    for c in plan["ranked"]:
        if c["config"]["method"] != "full":
            assert c["config"]["optimizer"] == "adamw"


def test_small_dataset_keeps_enough_optimizer_steps(tmp_path: Path) -> None:
    # 200k tokens: 128 Ki tokens per optimizer step would leave ~1.5 steps per epoch; the plan
    # lowers accumulation so an epoch has at least ~50 optimizer steps.
    plan = _json_plan(
        "--model", "llama3.2-1b", "--budget", "50", "--tokens", "200000", out=tmp_path
    )
    chosen = plan["chosen"]
    assert chosen["global_batch_tokens"] <= 200_000 / 50 * 1.5
    assert 200_000 / chosen["global_batch_tokens"] >= 30


def test_own_gpus_compare_methods_by_time(tmp_path: Path) -> None:
    plan = _json_plan(
        "--model",
        "qwen2.5-7b",
        "--budget",
        "1",
        "--provider",
        "local",
        "--gpu",
        "rtx4090",
        "--gpu-count",
        "2",
        out=tmp_path,
    )
    assert plan["chosen"]["cost"]["usd"] == 0
    losers = [v["reason"] for v in plan["verdicts"] if "also works" in v["reason"]]
    assert losers and all("the chosen plan's time" in r for r in losers)


def test_service_filter_prices_what_sagemaker_runs(tmp_path: Path) -> None:
    plan = _json_plan(
        "--model",
        "llama2-7b",
        "--budget",
        "200",
        "--provider",
        "aws",
        "--service",
        "sagemaker",
        out=tmp_path,
    )
    assert plan["ranked"]
    assert all(c["offer"]["instance_type"].startswith("ml.") for c in plan["ranked"])
    code, _, stderr = _invoke(
        "--model", "llama2-7b", "--budget", "200", "--service", "sagemker", out=tmp_path
    )
    assert code == 2 and "Did you mean: sagemaker" in stderr and "Traceback" not in stderr


def test_dataset_length_distribution_streams_with_progress(tmp_path: Path) -> None:
    data = tmp_path / "big.jsonl"
    lengths = [40 * (i % 100 + 1) for i in range(20_000)]  # 10..1000 tokens, uniform
    data.write_text("".join(json.dumps({"text": "a" * n}) + "\n" for n in lengths))
    seen: list[int] = []
    stats = count_dataset(data, on_progress=seen.append)
    assert stats.samples == 20_000
    assert (stats.p50_sample_tokens, stats.p95_sample_tokens) == (500, 950)
    assert stats.longest_sample_tokens == 1000
    assert seen and seen[-1] == data.stat().st_size and seen == sorted(seen)
    assert len(stats.histogram) == 100  # memory bounded by distinct lengths, not samples
    assert stats.share_longer_than(900) == pytest.approx(0.10)


def test_packing_sizes_for_the_95th_percentile_not_one_outlier(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    rows = [{"text": "x" * 2000}] * 99 + [{"text": "y" * 40_000}]  # 500 tokens; one of 10k
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    plan = _json_plan(
        "--model", "llama3.2-1b", "--budget", "50", "--dataset", str(data), out=tmp_path / "r"
    )
    assert plan["budget"]["p95_sample_tokens"] == 500
    assert plan["chosen"]["config"]["seq_len"] == 2048  # the default block, not 10,240
    assert any("split across blocks" in w for w in plan["warnings"])


def test_70b_on_two_local_4090s_is_sharded_qlora_with_host_ram_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from planner.explain import load_problem

    args = ("--model", "llama3.1-70b", "--budget", "0.01", "--provider", "local")
    args += ("--gpu", "rtx4090", "--gpu-count", "2")
    plan = _json_plan(*args, "--host-ram-gib", "128", out=tmp_path / "a")
    chosen = plan["chosen"]
    # Sharded QLoRA loads on rank 0 (quantized a tensor at a time into CPU memory), so the
    # plan practitioners run (Answer.AI's FSDP+QLoRA) is chosen and loads without a warning.
    assert chosen["config"]["method"] == "qlora"
    assert chosen["config"]["sharding"] == "fsdp-offload"
    assert 0 < chosen["measurement"]["host_ram_gib"] <= 128
    assert not any("while it loads" in w for w in plan["warnings"])
    # Every plan shown loads on the cards and fits the machine's 128 GiB of host RAM.
    spec, gpu = get_model("llama3.1-70b"), get_gpu("rtx4090")
    for c in [chosen, *plan["ranked"], *plan["pareto"]]:
        config = TuningConfig(
            method=Method(c["config"]["method"]),
            precision=Precision(c["config"]["precision"]),
            lora_rank=c["config"]["lora_rank"],
            lora_targets=c["config"]["lora_targets"],
            gpu_count=c["config"]["gpu_count"],
            sharding=Sharding(c["config"]["sharding"]),
        )
        assert load_problem(spec, config, gpu) is None
        assert c["measurement"]["host_ram_gib"] <= 128
    (plan_file,) = (tmp_path / "a").glob("*.json")
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n', encoding="utf-8")
    launch = CliRunner().invoke(
        main,
        ["launch", str(plan_file), "--target", "local", "--data", str(data), "--dry-run"]
        + ["--output-dir", str(tmp_path / "runs")],
    )
    assert launch.exit_code == 0, launch.output
    assert "loads" not in launch.output and "out of memory" not in launch.output
    # A machine too short of RAM for any of them: nothing is feasible, and the verdicts say why.
    code, _, _ = _invoke(*args, "--host-ram-gib", "16", out=tmp_path / "b")
    assert code == 1
    (report,) = (tmp_path / "b").glob("*.json")
    reasons = " ".join(v["reason"] for v in json.loads(report.read_text())["plan"]["verdicts"])
    assert "host RAM" in reasons and "16 GiB" in reasons
    # Without --host-ram-gib the machine's own RAM is read and stated.
    import planner.engine.request as request_module

    monkeypatch.setattr(request_module, "machine_ram_gib", lambda: 512.0)
    plan = _json_plan(*args, out=tmp_path / "c")
    assert plan["chosen"]["offer"]["memory_gib"] == 512.0
    assert "512 GiB read from this machine" in plan["chosen"]["offer"]["source"]


@pytest.mark.parametrize("max_usd", [3.0, 200.0])
def test_balanced_quality_searches_once_and_finds_the_low_risk_optimum(
    max_usd: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from test_search import FAKE, GPUS, OFFERS, SPACE, SPEC

    import planner.engine.plan
    from planner import Budget, QualityPolicy, RecommendRequest, TokensSource, recommend
    from planner.engine.search import exhaustive_search

    calls: list[object] = []
    real_search = planner.engine.plan.search
    monkeypatch.setattr(
        planner.engine.plan, "search", lambda r, m: calls.append(r) or real_search(r, m)
    )
    budget = Budget(
        max_usd=max_usd, dataset_tokens=30_000_000, epochs=1.0, tokens_source=TokensSource.GIVEN
    )
    request = RecommendRequest(spec=SPEC, budget=budget, offers=OFFERS, gpus=GPUS, space=SPACE)
    plan = recommend(request, FAKE)
    assert len(calls) == 1
    strict = dataclasses.replace(budget, quality=QualityPolicy.STRICT)
    low = exhaustive_search(dataclasses.replace(request, budget=strict), FAKE).best
    medium = exhaustive_search(request, FAKE).best
    assert plan.chosen is not None and low is not None and medium is not None
    if plan.chosen.risk_level is RiskLevel.LOW:
        assert plan.chosen.cost.usd == pytest.approx(low.cost.usd, rel=1e-9)
        assert low.cost.usd <= medium.cost.usd * 1.2
    else:
        assert plan.chosen.cost.usd == pytest.approx(medium.cost.usd, rel=1e-9)
        assert low.cost.usd > medium.cost.usd * 1.2


def test_the_machines_own_ram_is_read_for_local_plans() -> None:
    from planner.engine.request import machine_ram_gib

    ram = machine_ram_gib()
    assert ram is not None and 0.5 < ram < 1e6  # GiB, from os.sysconf on Linux and macOS
