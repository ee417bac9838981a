"""The eval pass in plans: its memory phase and time (profiler.eval_pass), its hours in the cost,
and the --eval-dataset / --eval-tokens / --evaluations flags of estimate and recommend."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog import get_gpu, get_model
from planner import Budget, TokensSource
from planner.cli import main
from planner.engine.cost import SpotAssumptions, estimate_cost
from profiler import (
    Measurement,
    Method,
    Precision,
    Provenance,
    Source,
    Status,
    TuningConfig,
    calibration_for,
    estimate,
    eval_pass,
)
from profiler.calibration import TimeModel
from profiler.timing import compute_seconds, forward_seconds, time_terms

QLORA = TuningConfig(
    method=Method.QLORA,
    lora_rank=16,
    lora_targets="all-linear",
    micro_batch_size=4,
    seq_len=1024,
    grad_checkpointing=True,
)
FULL = TuningConfig(method=Method.FULL, precision=Precision.BF16, micro_batch_size=1, seq_len=2048)
LORA = TuningConfig(method=Method.LORA, lora_rank=16, lora_targets="all-linear", seq_len=4096)


@pytest.mark.parametrize(
    ("model", "config"),
    [("llama2-7b", QLORA), ("llama3.2-1b", FULL), ("llama3.1-8b", LORA)],
)
def test_eval_pass_is_a_lighter_phase_than_training(model: str, config: TuningConfig) -> None:
    spec, gpu = get_model(model), get_gpu("h100")
    cal = calibration_for(gpu)
    trained = estimate(spec, config, gpu, calibration=cal)
    found = eval_pass(spec, config, gpu, calibration=cal)
    phases = dict(trained.phase_peaks_gib)
    # No gradients and no saved activations: below the forward/backward peak, above the
    # weights and optimizer states that stay resident.
    assert found.peak_allocated_gib < phases["forward_backward"]
    assert trained.breakdown is not None
    assert found.peak_allocated_gib > trained.breakdown.weights_gib
    # One forward of the micro-batch: well under a step (forward, backward, optimizer), and
    # more than the third a pure FLOP count gives (host time and traffic do not shrink as much).
    assert 0.2 < found.step_fraction < 0.6
    assert found.train_step_time_s == pytest.approx(trained.step_time_s, rel=1e-9)


def test_eval_pass_memory_grows_with_the_vocabulary_chain_and_chunking_shrinks_it() -> None:
    spec, gpu = get_model("llama3.2-1b"), get_gpu("h100")
    cal = calibration_for(gpu)
    short = eval_pass(spec, FULL, gpu, calibration=cal)
    long = eval_pass(spec, dataclasses.replace(FULL, seq_len=8192), gpu, calibration=cal)
    chunked = eval_pass(
        spec, dataclasses.replace(FULL, seq_len=8192, chunked_loss=True), gpu, calibration=cal
    )
    # 6144 more tokens × 128256 vocab × 10 B of logits chain, plus one layer's activations.
    assert long.peak_allocated_gib - short.peak_allocated_gib > 6144 * 128256 * 10 / 2**30
    assert chunked.peak_allocated_gib < long.peak_allocated_gib


def test_forward_seconds_under_both_time_models() -> None:
    spec, gpu = get_model("llama2-7b"), get_gpu("h100")
    cal = calibration_for(gpu)
    for model in (TimeModel.HOST_OVERLAP, TimeModel.ADDITIVE):
        c = dataclasses.replace(cal, time_model=model)
        tt = time_terms(spec, QLORA, gpu, calibration=c)
        forward, step = forward_seconds(tt, c), compute_seconds(tt, c)
        assert 0 < forward < step - tt.optimizer_s


def _measurement(tokens_per_s: float) -> Measurement:
    return Measurement(
        model="m",
        gpu="H100 SXM 80GB",
        config=LORA,
        status=Status.OK,
        source=Source.ESTIMATED,
        provenance=Provenance(device="test", date="x"),
        peak_reserved_gib=40.0,
        step_time_s=2.0,
        tokens_per_s=tokens_per_s,
    )


def test_eval_hours_by_hand() -> None:
    from catalog import list_offers

    offer = next(o for o in list_offers() if o.gpu == "H100 SXM 80GB" and not o.spot)
    budget = Budget(
        max_usd=100.0, dataset_tokens=3_600_000, epochs=1.0, tokens_source=TokensSource.GIVEN
    )
    with_eval = dataclasses.replace(budget, eval_tokens=360_000, evaluations=10)
    spot = SpotAssumptions()
    plain = estimate_cost(_measurement(1000.0), offer, budget, nodes=1, spot_policy=spot)
    cost = estimate_cost(
        _measurement(1000.0),
        offer,
        with_eval,
        nodes=1,
        spot_policy=spot,
        eval_step_fraction=0.25,
    )
    # 10 passes × 360k tokens at 1000 tokens/s ÷ 0.25 = 3.6M / 4000 = 900 s.
    assert cost.eval_hours == pytest.approx(0.25)
    assert cost.hours == pytest.approx(plain.hours + 0.25)
    assert cost.train_hours == pytest.approx(plain.train_hours)
    with pytest.raises(ValueError, match="eval step fraction"):
        estimate_cost(_measurement(1000.0), offer, with_eval, nodes=1, spot_policy=spot)


@pytest.mark.parametrize(
    ("eval_tokens", "evaluations"), [(1000, 0), (0, 3), (-1, 1)], ids=["no-count", "no-set", "neg"]
)
def test_budget_refuses_half_an_eval_set(eval_tokens: int, evaluations: int) -> None:
    with pytest.raises(ValueError):
        Budget(
            max_usd=1.0,
            dataset_tokens=1,
            epochs=1.0,
            tokens_source=TokensSource.GIVEN,
            eval_tokens=eval_tokens,
            evaluations=evaluations,
        )


def _plan(tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(
        main,
        ["recommend", "--model", "llama2-7b", "--budget", "200", *args]
        + ["--format", "json", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["plan"]  # type: ignore[no-any-return]


def test_recommend_prices_the_eval_passes(tmp_path: Path) -> None:
    plain = _plan(tmp_path, "--method", "lora")
    lines = [json.dumps({"text": "x" * 4000}) for _ in range(250)]  # 250 × 1000 tokens
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plan = _plan(tmp_path, "--method", "lora", "--eval-dataset", str(eval_file))
    assert plan["budget"]["eval_tokens"] == 250_000
    assert plan["budget"]["evaluations"] == 10  # the default
    chosen, before = plan["chosen"], plain["chosen"]
    assert chosen["config"] == before["config"] and chosen["offer"] == before["offer"]
    cost = chosen["cost"]
    tokens_per_s = chosen["measurement"]["tokens_per_s"]
    # 2.5M eval tokens at more than the training rate (forward only), less than 5× it.
    assert 2.5e6 / tokens_per_s / 5 < cost["eval_hours"] * 3600 < 2.5e6 / tokens_per_s
    assert cost["hours"] == pytest.approx(before["cost"]["hours"] + cost["eval_hours"], rel=1e-6)
    assert any(a.startswith("evaluation: 10 passes") for a in plan["assumptions"])
    # Both documents show the eval passes and their hours.
    html = next(p for p in tmp_path.glob("*.html") if "eval passes over" in p.read_text())
    assert " h eval + " in html.read_text()
    md = html.with_suffix(".md").read_text()
    assert "| Evaluation | 10 passes over 250,000 eval tokens" in md and " h eval + " in md
    fewer = _plan(tmp_path, "--method", "lora", "--eval-tokens", "250000", "--evaluations", "2")
    assert fewer["chosen"]["cost"]["eval_hours"] == pytest.approx(cost["eval_hours"] / 5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--evaluations", "3"], "--evaluations needs an eval set"),
        (["--eval-tokens", "5", "--eval-dataset", "EVAL"], "not both"),
        (["--eval-tokens", "0"], "--eval-tokens"),
    ],
)
def test_recommend_eval_flags_refuse_bad_input(
    tmp_path: Path, args: list[str], message: str
) -> None:
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text('{"text": "hello"}\n', encoding="utf-8")
    args = [str(eval_file) if a == "EVAL" else a for a in args]
    base = ["recommend", "--model", "llama2-7b", "--budget", "200", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, [*base, *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_estimate_adds_the_eval_phase_and_pass_time() -> None:
    args = ["estimate", "--model", "llama2-7b", "--method", "lora", "--batch", "2"]
    args += ["--seq-len", "1024", "--analytic-only", "--format", "json"]
    result = CliRunner().invoke(main, [*args, "--eval-tokens", "100000"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    ev = out["eval"]
    assert out["phase_peaks_gib"]["eval"] == ev["peak_allocated_gib"]
    assert ev["peak_allocated_gib"] < out["phase_peaks_gib"]["forward_backward"]
    assert ev["step_time_s"] < out["step_time_s"]
    assert ev["pass_s"] == pytest.approx(100_000 / ev["tokens_per_s"])
    plain = json.loads(CliRunner().invoke(main, args).stdout)
    assert "eval" not in plain and "eval" not in plain["phase_peaks_gib"]


# -- launch: the plan's eval passes become the run's schedule ------------------------------------
ROLE = "arn:aws:iam::123456789012:role/ftplan-sagemaker"


def _eval_plan(tmp_path: Path, evaluations: int) -> Path:
    from plan_fixtures import OFFER_L4_SPOT, make_plan

    from planner.plan_io import write_plan

    plan = make_plan()
    chosen = next(c for c in plan.ranked if c.offer == OFFER_L4_SPOT)
    if evaluations:
        cost = dataclasses.replace(chosen.cost, eval_hours=0.5, hours=chosen.cost.hours + 0.5)
        chosen = dataclasses.replace(chosen, cost=cost)
    budget = dataclasses.replace(
        plan.budget, eval_tokens=200_000 if evaluations else 0, evaluations=evaluations
    )
    return write_plan(make_plan(chosen=chosen, budget=budget), tmp_path / "plan.json")


def _sagemaker_dry_run(plan: Path, *args: str) -> tuple[dict, dict, str]:  # type: ignore[type-arg]
    out = CliRunner().invoke(
        main,
        ["launch", str(plan), "--target", "sagemaker", "--dry-run", "--role", ROLE]
        + ["--data", "s3://b/train/", *args],
    )
    assert out.exit_code == 0, out.output
    request = json.loads(out.stdout)
    spec = json.loads(request["HyperParameters"]["ftplan_spec"])["spec"]
    return request, spec, out.stderr


def test_launch_spreads_the_plans_eval_passes_over_the_run(tmp_path: Path) -> None:
    from runners import evaluations_in_run

    plan = _eval_plan(tmp_path, evaluations=10)
    request, spec, notes = _sagemaker_dry_run(plan, "--eval-data", "s3://b/eval/")
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert channels["eval"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/eval/"
    every = spec["eval_every_steps"]
    steps = int(re.search(r"([\d,]+) steps,", notes).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert every == -(-steps // 10) and evaluations_in_run(steps, every) == 10
    assert "eval: 10 passes over --eval-data" in notes
    # The stopping condition covers the priced eval hours.
    _, plain_spec, _ = _sagemaker_dry_run(plan)
    assert spec["max_hours"] == pytest.approx(plain_spec["max_hours"] + 0.5)
    assert "the plan priced 10 eval passes; without --eval-data" in _sagemaker_dry_run(plan)[2]
    assert plain_spec["eval_every_steps"] is None


def test_launch_eval_every_steps_overrides_and_needs_eval_data(tmp_path: Path) -> None:
    plan = _eval_plan(tmp_path, evaluations=0)
    _, spec, notes = _sagemaker_dry_run(plan, "--eval-data", "s3://b/eval/")
    assert spec["eval_every_steps"] is None  # the plan priced none: after the last step only
    assert (
        "eval: 1 pass over --eval-data, after the last step" in notes
        and "priced no eval passes" in notes
    )
    _, spec, _ = _sagemaker_dry_run(plan, "--eval-data", "s3://b/eval/", "--eval-every-steps", "7")
    assert spec["eval_every_steps"] == 7
    out = CliRunner().invoke(
        main,
        ["launch", str(plan), "--target", "sagemaker", "--dry-run", "--role", ROLE]
        + ["--data", "s3://b/train/", "--eval-every-steps", "7"],
    )
    assert out.exit_code == 2 and "--eval-every-steps needs --eval-data" in out.output


def test_launch_prices_the_eval_set_it_really_gets(tmp_path: Path) -> None:
    from planner.handoff import launch_spec_from_plan, with_real_length
    from planner.plan_io import read_plan

    plan = read_plan(_eval_plan(tmp_path, evaluations=10))
    candidate = plan.chosen
    assert candidate is not None
    spec = launch_spec_from_plan(plan, candidate, random_init=True, device="cpu")
    spec = dataclasses.replace(spec, tokenizer="byte")
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"text": "x" * 5000}) + "\n", encoding="utf-8")
    half = tmp_path / "eval.jsonl"  # 100 × (999 bytes + EOS) = the plan's 200k tokens ÷ 2
    half.write_text("\n".join(json.dumps({"text": "y" * 999}) for _ in range(100)) + "\n")
    base, _ = with_real_length(plan, candidate, spec, data=str(train), tokens=None)
    run, notes = with_real_length(
        plan, candidate, spec, data=str(train), tokens=None, eval_data=str(half)
    )
    assert any(n.startswith("eval set: 100,000 tokens") for n in notes)
    # The plan priced 0.5 h for 10 passes over 200k tokens; the run makes its passes over half.
    assert run.eval_every_steps == 1  # one step of training data: a single pass, after it
    assert run.max_hours == pytest.approx(base.max_hours + 0.5 / 10 * 1 * 0.5)
