"""Chunked cross-entropy in estimates and plans: what it saves and costs in the estimator, when
the search offers it, and the flags that control it (real catalog and estimator, no GPU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from plan_fixtures import make_plan

from catalog import GIB, get_gpu, get_model, list_models
from planner import Plan
from planner.cli import main
from planner.plan_io import read_plan, write_plan
from profiler import (
    Method,
    Precision,
    Sharding,
    TuningConfig,
    calibration_for,
    estimate,
    eval_pass,
)
from profiler.memory import (
    CHUNKED_LOSS_TOKENS,
    LOGITS_BYTES_PER_TOKEN_VOCAB,
    _logits_bytes_per_token_vocab,
)
from profiler.timing import compute_seconds, time_terms

LONG = TuningConfig(
    method=Method.LORA,
    lora_rank=16,
    lora_targets="all-linear",
    micro_batch_size=1,
    seq_len=16384,
    grad_checkpointing=True,
)


@pytest.mark.parametrize("method", [Method.LORA, Method.QLORA])
def test_chunked_loss_trades_the_logits_for_one_more_head_forward(method: Method) -> None:
    spec, gpu = get_model("llama3.1-8b"), get_gpu("h100")
    cal = calibration_for(gpu)
    whole = dataclasses.replace(LONG, method=method)
    chunked = dataclasses.replace(whole, chunked_loss=True)
    a, b = (estimate(spec, c, gpu, calibration=cal) for c in (whole, chunked))
    assert a.breakdown is not None and b.breakdown is not None
    # One chunk's chain instead of the step's, plus the bf16 gradient of the final hidden states.
    tokens = whole.micro_batch_size * whole.seq_len
    saved = LOGITS_BYTES_PER_TOKEN_VOCAB * (tokens - CHUNKED_LOSS_TOKENS) * spec.vocab_size
    grown = 2 * tokens * spec.hidden_size
    scale = cal.activation_scale
    assert a.breakdown.logits_gib - b.breakdown.logits_gib == pytest.approx(
        (saved - grown) / GIB * scale, rel=1e-6
    )
    assert a.peak_allocated_gib and b.peak_allocated_gib
    assert b.peak_allocated_gib < a.peak_allocated_gib - 15  # 23 GiB of logits chain, 128k vocab
    # Time: the head's forward again (2 FLOPs per head weight per token) and the chain's traffic
    # twice, no more: a few percent of a 16k-token step.
    ta, tb = (
        time_terms(spec, whole, gpu, calibration=cal),
        time_terms(spec, chunked, gpu, calibration=cal),
    )
    head_flops = 2.0 * tokens * spec.vocab_size * spec.hidden_size
    assert tb.backward_s_at_rate - ta.backward_s_at_rate == pytest.approx(
        head_flops / (gpu.sustained_matmul_tflops * 1e12), rel=1e-6
    )
    assert tb.elementwise_s > ta.elementwise_s
    assert a.step_time_s and b.step_time_s
    assert a.step_time_s < b.step_time_s < 1.1 * a.step_time_s
    assert compute_seconds(tb, cal) > compute_seconds(ta, cal)


def _recommend(folder: Path, *extra: str) -> Plan:
    """The plan ``recommend`` writes to ``folder`` for llama3.1-8b at 16k tokens on an L40S."""
    args = ["--model", "llama3.1-8b", "--budget", "200", "--seq-len", "16384", "--gpu", "l40s"]
    result = CliRunner().invoke(
        main, ["recommend", *args, "--out", str(folder), "--quiet", *extra]
    )
    assert result.exit_code == 0, result.output
    (path,) = folder.glob("*.json")
    return read_plan(path)


def test_recommend_chunks_the_loss_where_it_beats_the_other_ways_to_fit(tmp_path: Path) -> None:
    # llama3.1-8b LoRA on one 48 GB L40S at 16k tokens: without chunking one sample needs
    # checkpointing and still holds ~23 GiB of logits chain, so the single-GPU plan offloads
    # or stays at one sample; chunked, two samples fit with room.
    chunked = _recommend(tmp_path / "a")
    plain = _recommend(tmp_path / "b", "--no-chunked-loss")
    assert chunked.chosen is not None and plain.chosen is not None
    assert chunked.chosen.config.chunked_loss
    assert not any(c.config.chunked_loss for c in plain.ranked)
    assert chunked.chosen.cost.usd < plain.chosen.cost.usd
    assert any("chunked cross-entropy" in a for a in chunked.assumptions)
    assert not any("chunked cross-entropy" in a for a in plain.assumptions)
    # Plans on several GPUs never chunk (the recipe chunks on one unsharded GPU).
    assert all(
        c.config.gpu_count == 1 and c.config.sharding is Sharding.NONE
        for c in chunked.ranked
        if c.config.chunked_loss
    )
    (report,) = (tmp_path / "a").glob("*.md")
    assert "| Chunked cross-entropy | yes, 1,024 tokens per chunk |" in report.read_text()


def test_no_chunked_loss_names_its_own_report(tmp_path: Path) -> None:
    plain = _recommend(tmp_path / "b", "--no-chunked-loss")
    _recommend(tmp_path / "a")
    assert [p.name for p in (tmp_path / "a").glob("*.md")] != [
        p.name for p in (tmp_path / "b").glob("*.md")
    ]
    assert plain.chosen is not None and not plain.chosen.config.chunked_loss


def _unsupported_model(tmp_path: Path) -> Path:
    folder = tmp_path / "cohere-like"
    folder.mkdir()
    config = {
        "model_type": "cohere",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 4,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_profile_refuses_the_chunked_loss_for_models_it_would_change(tmp_path: Path) -> None:
    folder = _unsupported_model(tmp_path)
    args = ["--model", str(folder), "--method", "lora", "--chunked-loss"]
    result = CliRunner().invoke(main, ["profile", *args, "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "chunked cross-entropy" in result.stderr and "cohere" in result.stderr
    assert "Traceback" not in result.output
    estimated = CliRunner().invoke(main, ["estimate", *args, "--format", "json"])
    assert estimated.exit_code == 0, estimated.output
    notes = json.loads(estimated.stdout)["notes"]
    assert any("'ftplan profile' and 'ftplan launch' cannot run" in n for n in notes)


def test_the_recipe_refuses_models_whose_loss_it_would_change() -> None:
    torch = pytest.importorskip("torch")
    recipes = pytest.importorskip("profiler.recipes")

    class Config:
        model_type = "cohere"

    class Model(torch.nn.Module):
        config = Config()

    ids = torch.zeros((1, 8), dtype=torch.long)
    with pytest.raises(ValueError, match="cohere"):
        recipes.step._chunked_causal_lm_loss(
            Model(), ids, ids, attention_mask=None, chunk_tokens=4
        )


def test_launch_refuses_a_chunked_loss_the_recipe_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan edited by hand: refused before anything starts, even as a dry run."""
    monkeypatch.chdir(tmp_path)
    plan = make_plan()
    assert plan.chosen is not None
    config = dataclasses.replace(
        plan.chosen.config, chunked_loss=True, sharding=Sharding.FSDP_OFFLOAD
    )
    chosen = dataclasses.replace(plan.chosen, config=config)
    write_plan(dataclasses.replace(plan, chosen=chosen), tmp_path / "plan.json")
    (tmp_path / "train.jsonl").write_text('{"text": "hello world"}\n')
    args = ["launch", "plan.json", "--target", "local", "--data", "train.jsonl", "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "chunked cross-entropy" in result.stderr and "fsdp-offload" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()
    # The same plan on one unsharded GPU launches (dry run).
    config = dataclasses.replace(config, gpu_count=1, sharding=Sharding.NONE)
    chosen = dataclasses.replace(plan.chosen, config=config)
    write_plan(dataclasses.replace(plan, chosen=chosen), tmp_path / "plan.json")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from([m.name for m in list_models()]),
    method=st.sampled_from(list(Method)),
    batch=st.sampled_from([1, 2, 8]),
    seq_len=st.sampled_from([256, 1024, 1500, 4096, 32768]),
    ckpt=st.booleans(),
    gpu=st.sampled_from(["h100", "l4", "a100", "t4"]),
)
def test_the_chunked_loss_never_costs_memory_and_never_saves_time(
    model: str, method: Method, batch: int, seq_len: int, ckpt: bool, gpu: str
) -> None:
    """For every catalog model: chunking can only lower the peak (at most by the logits chain
    it no longer holds) and can only add time (the head's forward again, the chain twice)."""
    spec, card = get_model(model), get_gpu(gpu)
    lora = method is not Method.FULL
    config = TuningConfig(
        method=method,
        precision=Precision.BF16_MIXED if card.bf16_supported else Precision.FP16_MIXED,
        lora_rank=16 if lora else None,
        lora_targets="all-linear" if lora else None,
        micro_batch_size=batch,
        seq_len=seq_len,
        grad_checkpointing=ckpt,
    )
    cal = calibration_for(card)
    whole = estimate(spec, config, card, calibration=cal)
    chunked = estimate(spec, dataclasses.replace(config, chunked_loss=True), card, calibration=cal)
    assert whole.peak_allocated_gib and chunked.peak_allocated_gib
    assert whole.step_time_s and chunked.step_time_s
    tokens = batch * seq_len
    hidden_grad_gib = 2 * tokens * spec.hidden_size / GIB * cal.activation_scale
    assert chunked.peak_allocated_gib <= whole.peak_allocated_gib + hidden_grad_gib + 1e-9
    chain_gib = _logits_bytes_per_token_vocab(spec) * tokens * spec.vocab_size / GIB
    assert (
        chunked.peak_allocated_gib >= whole.peak_allocated_gib - chain_gib * cal.activation_scale
    )
    assert chunked.step_time_s >= whole.step_time_s


def test_what_if_says_how_far_the_chunked_loss_goes() -> None:
    args = ["estimate", "--model", "llama3.1-8b", "--method", "qlora", "--gpu", "l4"]
    args += ["--grad-checkpointing", "--max-seq-len", "--format", "json"]
    found = json.loads(CliRunner().invoke(main, args).stdout)
    # The 128k-vocabulary logits chain binds first: chunked, the sequence can be longer.
    assert found["max_seq_len_with_chunked_loss"] > 2 * found["max_seq_len"]
    chunked = json.loads(CliRunner().invoke(main, [*args, "--chunked-loss"]).stdout)
    assert chunked["max_seq_len"] == found["max_seq_len_with_chunked_loss"]
    assert chunked["max_seq_len_with_chunked_loss"] is None  # already chunked
    # When nothing fits, the nearest change may be the chunked loss with checkpointing.
    args = ["estimate", "--model", "llama3.1-8b", "--method", "lora", "--gpu", "l40s"]
    result = CliRunner().invoke(main, [*args, "--seq-len", "16384", "--max-batch"])
    assert result.exit_code == 1
    assert "Nearest change: add --grad-checkpointing and --chunked-loss" in result.stderr


def test_nothing_fits_suggests_only_what_the_search_left_out(tmp_path: Path) -> None:
    args = ["recommend", "--model", "gemma2-9b", "--budget", "50", "--seq-len", "8192"]
    args += ["--gpu", "a10g", "--out", str(tmp_path), "--quiet"]
    searched = CliRunner().invoke(main, args)
    assert searched.exit_code == 1
    assert "fit in memory" in searched.stderr and "use QLoRA" not in searched.stderr
    narrowed = CliRunner().invoke(main, [*args, "--method", "lora", "--no-chunked-loss"])
    assert narrowed.exit_code == 1
    assert "use QLoRA" in narrowed.stderr and "drop --no-chunked-loss" in narrowed.stderr


def test_an_eval_forward_costs_the_same_chunked_or_not() -> None:
    """The chunked terms are backward work: the eval pass's forward is timed as the unchunked
    one, while the training step it is a fraction of includes them."""
    spec, gpu = get_model("llama3.1-8b"), get_gpu("h100")
    cal = calibration_for(gpu)
    whole = eval_pass(spec, LONG, gpu, calibration=cal)
    chunked = eval_pass(spec, dataclasses.replace(LONG, chunked_loss=True), gpu, calibration=cal)
    assert chunked.step_time_s == pytest.approx(whole.step_time_s, rel=1e-12)
    assert chunked.train_step_time_s > whole.train_step_time_s
    assert chunked.peak_allocated_gib < whole.peak_allocated_gib  # one chunk's logits
