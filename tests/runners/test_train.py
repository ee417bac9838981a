"""The training entrypoint on CPU: data formats and errors, packing and the resumable schedule,
real training of a tiny Llama (hidden 64, 2 layers, vocab 256, seq 32) under full, LoRA and QLoRA
with the profiler's recipes, checkpoints, resume, SageMaker's environment, the summary, and
held-out evaluation (schedule, token-weighted loss, resume, two processes, bad eval files)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from model_specs import TINY_LLAMA
from ports import free_port

from profiler import Method, Sharding, TuningConfig
from runners import DataFormatError, LaunchSpec, launch_spec_to_json
from runners.data import BlockSchedule, ByteTokenizer, find_jsonl, pack, read_texts

TINY = TINY_LLAMA
BYTES = ByteTokenizer(vocab_size=256)
SENTENCE = "the quick brown fox jumps over the lazy dog. "


def tiny_spec(method: Method, **overrides: Any) -> LaunchSpec:
    lora = method is not Method.FULL
    config = TuningConfig(
        method=method,
        lora_rank=8 if lora else None,
        lora_targets="all-linear" if lora else None,
        micro_batch_size=2,
        seq_len=32,
    )
    base = LaunchSpec(
        model=TINY,
        config=config,
        random_init=True,
        tokenizer="byte",
        device="cpu",
        learning_rate=1e-2 if lora else 3e-3,
        max_steps=20,
        checkpoint_every_steps=5,
        checkpoint_every_minutes=None,
    )
    return dataclasses.replace(base, **overrides)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def repetitive_data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", [{"text": SENTENCE * 3}] * 40)


# -- data -------------------------------------------------------------------------------------
def test_reads_text_prompt_completion_and_chat_lines(tmp_path: Path) -> None:
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": "plain"},
            "",
            {"prompt": "Q: 2+2?", "completion": " A: 4"},
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            },
        ],
    )
    assert read_texts(data, BYTES) == ["plain", "Q: 2+2? A: 4", "user: hi\nassistant: hello\n"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"d\.jsonl:3 is not valid JSON"),
        ('{"input": "x", "output": "y"}', r"d\.jsonl:3: no usable field.*\['input', 'output'\]"),
        ('{"messages": [{"role": "user"}]}', r"d\.jsonl:3: messages\[0\] must be an object"),
        ('["text"]', r"d\.jsonl:3: expected a JSON object, got list"),
    ],
)
def test_malformed_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}, line])
    with pytest.raises(DataFormatError, match=message):
        read_texts(data, BYTES)


def test_byte_tokenizer_and_packing() -> None:
    assert BYTES.encode_text("AB") == [65, 66]
    assert ByteTokenizer(vocab_size=50).encode_text("A") == [65 % 50]
    blocks = pack([[1, 2, 3], [4, 5]], seq_len=3, eos_token_id=0)
    assert blocks == [[1, 2, 3], [0, 4, 5]]  # the trailing EOS is an incomplete block: dropped
    with pytest.raises(DataFormatError, match="fewer than one sequence of seq_len=32"):
        pack([[1, 2]], seq_len=32, eos_token_id=0)


def test_schedule_covers_each_epoch_once_disjoint_across_ranks() -> None:
    schedule = BlockSchedule(
        num_blocks=17, micro_batch_size=2, grad_accum_steps=2, world_size=2, seed=3
    )
    assert (schedule.micro_batches_per_epoch, schedule.steps_per_epoch) == (4, 2)
    seen = [
        b
        for step in range(2)
        for micro in range(2)
        for rank in range(2)
        for b in schedule.blocks_for(step=step, micro=micro, rank=rank)
    ]
    assert len(seen) == len(set(seen)) == 16
    # Epoch 2 is a different permutation, and the schedule is a pure function of its inputs.
    assert schedule.blocks_for(step=2, micro=0, rank=0) != schedule.blocks_for(
        step=0, micro=0, rank=0
    )
    assert schedule.blocks_for(step=5, micro=1, rank=1) == schedule.blocks_for(
        step=5, micro=1, rank=1
    )
    assert schedule.total_steps(epochs=1.5, max_steps=None) == 3
    assert schedule.total_steps(epochs=10, max_steps=4) == 4
    with pytest.raises(DataFormatError, match="fewer than the 8 one optimizer step needs"):
        BlockSchedule(
            num_blocks=7, micro_batch_size=2, grad_accum_steps=2, world_size=2, seed=0
        ).total_steps(epochs=1, max_steps=None)


def test_data_folder_must_hold_one_jsonl(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("{}")
    assert find_jsonl(tmp_path) == tmp_path / "a.jsonl"
    (tmp_path / "b.jsonl").write_text("{}")
    with pytest.raises(FileNotFoundError, match="holds 2 .jsonl files"):
        find_jsonl(tmp_path)


# -- training ---------------------------------------------------------------------------------
torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models gain nothing from intra-op threads, and spinning threads on a busy 2-core
    machine slow each step down several-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(spec: LaunchSpec, data: Path, out: Path, *, resume: bool = False) -> dict[str, Any]:
    from runners.train import RunPaths, train

    paths = RunPaths(
        data=data,
        output_dir=out,
        checkpoint_dir=out / "checkpoints",
        final_model_dir=out / "final",
    )
    return train(spec, paths, resume=resume)


def _steps(out: Path) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "step"]


def _qlora_works_on_cpu() -> str | None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        return f"bitsandbytes is not installed ({exc})"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("method", list(Method))
def test_trains_loss_goes_down_and_checkpoints(
    method: Method, repetitive_data: Path, tmp_path: Path
) -> None:
    if method is Method.QLORA and (reason := _qlora_works_on_cpu()):
        pytest.skip(reason)
    out = tmp_path / "out"
    summary = _train(tiny_spec(method), repetitive_data, out)
    steps = _steps(out)
    assert [s["step"] for s in steps] == list(range(1, 21))
    first, last = steps[0]["loss"], steps[-1]["loss"]
    assert first == pytest.approx(5.55, abs=0.1)  # ln(256) = 5.545: random init predicts uniform
    assert last < first - 0.5, f"{method.value}: loss {first:.3f} -> {last:.3f}"
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    # Every 5 steps, unless writing the last one took longer than 5 steps (the clock then skips
    # saves: a loaded machine), and always after the last step; the newest 2 are kept.
    lines = (out / "metrics.jsonl").read_text().splitlines()
    saved = [r["step"] for r in map(json.loads, lines) if r["event"] == "checkpoint"]
    assert saved[-1] == 20 and all(step % 5 == 0 for step in saved), saved
    assert checkpoints == [f"checkpoint-{step:08d}" for step in saved[-2:]]  # KEEP_LAST = 2
    state = json.loads((out / "checkpoints/checkpoint-00000020/state.json").read_text())
    assert state["step"] == 20 and state["tokens_seen"] == 20 * 2 * 32
    saved = {p.name for p in (out / "final").iterdir()}
    if method is Method.FULL:
        assert {"config.json", "model.safetensors"} <= saved
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= saved
        assert "model.safetensors" not in saved  # adapters only
    assert summary["steps_completed"] == 20 and summary["last_loss"] == pytest.approx(last)
    assert json.loads((out / "summary.json").read_text())["config"] == summary["config"]


@pytest.mark.slow
@pytest.mark.parametrize("method", [Method.FULL, Method.LORA])
def test_resume_continues_exactly_where_it_stopped(
    method: Method, repetitive_data: Path, tmp_path: Path
) -> None:
    straight = _train(
        tiny_spec(method, max_steps=12, checkpoint_every_steps=3), repetitive_data, tmp_path / "a"
    )
    # Stop at step 6 (as if killed after the step-6 checkpoint), then resume to 12.
    _train(
        tiny_spec(method, max_steps=6, checkpoint_every_steps=3), repetitive_data, tmp_path / "b"
    )
    resumed = _train(
        tiny_spec(method, max_steps=12, checkpoint_every_steps=3),
        repetitive_data,
        tmp_path / "b",
        resume=True,
    )
    assert resumed["resumed_from_step"] == 6 and resumed["steps_completed"] == 12
    steps = _steps(tmp_path / "b")
    assert [s["step"] for s in steps] == list(range(1, 7)) + list(range(7, 13))
    # Same weights, optimizer state and data position: the loss curve continues bit for bit.
    expected = [s["loss"] for s in _steps(tmp_path / "a")]
    assert [s["loss"] for s in steps] == pytest.approx(expected, rel=1e-5)
    assert resumed["last_loss"] == pytest.approx(straight["last_loss"], rel=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_consumes_more_data_per_step(
    repetitive_data: Path, tmp_path: Path
) -> None:
    spec = tiny_spec(Method.LORA, grad_accum_steps=3, max_steps=4, checkpoint_every_steps=None)
    summary = _train(spec, repetitive_data, tmp_path / "o")
    state = json.loads((tmp_path / "o/checkpoints/checkpoint-00000004/state.json").read_text())
    assert state["tokens_seen"] == 4 * 3 * 2 * 32
    assert summary["steps_completed"] == 4


def test_summary_compares_with_the_plan() -> None:
    from runners._summary import build_summary

    spec = tiny_spec(
        Method.LORA,
        expected_tokens_per_s=1000.0,
        expected_peak_allocated_gib=10.0,
        expected_source="extrapolated",
    )
    summary = build_summary(
        spec,
        step_times_s=[9.0, 9.0, 1.0, 1.1, 0.9],
        tokens_per_step=1000,
        peak_allocated_gib=10.5,
        peak_reserved_gib=11.0,
        first_loss=5.0,
        last_loss=4.0,
        steps_done=5,
        start_step=0,
        device_name="H100",
    )
    # Two warm-up steps are dropped: median of (1.0, 1.1, 0.9) = 1.0 s -> 1000 tokens/s.
    assert summary["measured"]["tokens_per_s"] == pytest.approx(1000.0)
    assert summary["comparison"]["tokens_per_s"]["ratio"] == pytest.approx(1.0)
    assert summary["comparison"]["tokens_per_s"]["within"] is True
    memory = summary["comparison"]["peak_allocated_gib"]
    assert memory["ratio"] == pytest.approx(1.05) and memory["within"] is True
    slow = build_summary(
        spec,
        step_times_s=[2.0] * 5,
        tokens_per_step=1000,
        peak_allocated_gib=None,
        peak_reserved_gib=None,
        first_loss=None,
        last_loss=None,
        steps_done=5,
        start_step=0,
        device_name="cpu",
    )
    assert slow["comparison"]["tokens_per_s"]["ratio"] == pytest.approx(0.5)
    assert slow["comparison"]["tokens_per_s"]["within"] is False
    assert slow["comparison"]["peak_allocated_gib"]["within"] is None
    assert "no CUDA" in slow["comparison"]["peak_allocated_gib"]["note"]


def test_sagemaker_environment_supplies_spec_data_and_output(tmp_path: Path) -> None:
    from runners.train import _parse_args, resolve_paths, resolve_spec

    channel = tmp_path / "train"
    channel.mkdir()
    write_jsonl(channel / "part.jsonl", [{"text": "x"}])
    spec = tiny_spec(Method.LORA)
    # The SageMaker toolkit JSON-decodes hyperparameter values, so the spec arrives as an object.
    env = {
        "SM_HPS": json.dumps({"ftplan_spec": json.loads(launch_spec_to_json(spec))}),
        "SM_CHANNEL_TRAIN": str(channel),
        "SM_MODEL_DIR": str(tmp_path / "model"),
    }
    args = _parse_args(["--unknown-hp", "1"])
    assert resolve_spec(args, env) == spec
    paths = resolve_paths(args, env)
    assert paths.data == channel / "part.jsonl"
    assert paths.final_model_dir == tmp_path / "model"
    overridden = resolve_spec(_parse_args(["--max-steps", "3", "--device", "cpu"]), env)
    assert overridden.max_steps == 3
    with pytest.raises(ValueError, match="no launch spec"):
        resolve_spec(_parse_args([]), {})


def test_main_reports_a_malformed_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runners.train import main

    spec_file = tmp_path / "launch.json"
    spec_file.write_text(launch_spec_to_json(tiny_spec(Method.LORA)))
    data = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, "{oops"])
    code = main(
        ["--spec", str(spec_file), "--data", str(data), "--output-dir", str(tmp_path / "o")]
    )
    assert code == 2
    assert "bad.jsonl:2 is not valid JSON" in capsys.readouterr().err


def test_weights_come_from_the_hub_id_a_folder_or_nowhere(tmp_path: Path) -> None:
    from runners.train import weights_checkpoint

    events: list[dict[str, Any]] = []
    real = dataclasses.replace(tiny_spec(Method.LORA), random_init=False)
    assert weights_checkpoint(real, log=events.append) == "tiny/llama"  # the catalog hub id
    (tmp_path / "config.json").write_text("{}")
    config_only = dataclasses.replace(real, checkpoint=str(tmp_path))
    assert weights_checkpoint(config_only, log=events.append) is None
    assert events and events[0]["event"] == "random_init"
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert weights_checkpoint(config_only, log=events.append) == str(tmp_path)
    assert weights_checkpoint(tiny_spec(Method.LORA), log=events.append) is None


# -- held-out evaluation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("total_steps", "every", "expected"),
    [
        (0, None, 0),
        (0, 5, 0),
        (-3, 2, 0),
        (1, None, 1),
        (20, None, 1),
        (1, 5, 1),  # the last step only
        (5, 5, 1),  # step 5 is both the 5th step and the last: one pass
        (6, 5, 2),  # 5 and 6
        (10, 5, 2),  # 5 and 10
        (11, 5, 3),  # 5, 10 and 11
        (7, 1, 7),
    ],
)
def test_evaluations_in_run(total_steps: int, every: int | None, expected: int) -> None:
    from runners import evaluations_in_run
    from runners._types import is_eval_step

    assert evaluations_in_run(total_steps, every) == expected
    scheduled = [
        done
        for done in range(1, max(total_steps, 0) + 1)
        if is_eval_step(done, total_steps=total_steps, eval_every_steps=every)
    ]
    assert len(scheduled) == expected  # the formula and the loop's schedule agree
    if scheduled:
        assert scheduled[-1] == total_steps


def test_eval_every_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="eval_every_steps must be > 0, got 0"):
        tiny_spec(Method.LORA, eval_every_steps=0)
    assert tiny_spec(Method.LORA, eval_every_steps=3).eval_every_steps == 3


@pytest.mark.parametrize(
    ("blocks", "world", "micro"), [(5, 2, 2), (1, 4, 2), (7, 3, 1), (8, 2, 4), (3, 1, 2)]
)
def test_eval_shares_are_disjoint_and_in_step(blocks: int, world: int, micro: int) -> None:
    from runners._eval import eval_micro_batches

    shares = [
        eval_micro_batches(blocks, rank=r, world_size=world, micro_batch_size=micro)
        for r in range(world)
    ]
    assert len({len(share) for share in shares}) == 1  # the same number of forward calls
    counted = [i for share in shares for b in share if b.weight for i in b.indices]
    assert sorted(counted) == list(range(blocks))  # every block once, across all processes
    assert all(len(b.indices) <= micro for share in shares for b in share)
    assert all(b.weight in (0, 1) for share in shares for b in share)


def test_sagemaker_eval_channel_supplies_the_eval_data(tmp_path: Path) -> None:
    from runners.train import _parse_args, resolve_paths

    for name in ("train", "eval"):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "part.jsonl", [{"text": "x"}])
    env = {
        "SM_CHANNEL_TRAIN": str(tmp_path / "train"),
        "SM_MODEL_DIR": str(tmp_path / "model"),
    }
    assert resolve_paths(_parse_args([]), env).eval_data is None
    env["SM_CHANNEL_EVAL"] = str(tmp_path / "eval")
    assert resolve_paths(_parse_args([]), env).eval_data == tmp_path / "eval/part.jsonl"
    flag = write_jsonl(tmp_path / "other.jsonl", [{"text": "y"}])
    assert resolve_paths(_parse_args(["--eval-data", str(flag)]), env).eval_data == flag


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"--eval-data: dataset '.*missing\.jsonl' does not exist"),
        ("not_json", r"heldout\.jsonl:2 is not valid JSON"),
        ("no_field", r"heldout\.jsonl:1: no usable field"),
        ("short", r"heldout\.jsonl' packs into zero blocks: its \d+ tokens are fewer than one"),
    ],
)
def test_bad_eval_data_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    from runners.train import main

    spec_file = tmp_path / "launch.json"
    spec_file.write_text(launch_spec_to_json(tiny_spec(Method.LORA)))
    data = write_jsonl(tmp_path / "train.jsonl", [{"text": SENTENCE * 3}] * 40)
    heldout = tmp_path / ("missing.jsonl" if case == "missing" else "heldout.jsonl")
    if case == "not_json":
        write_jsonl(heldout, [{"text": SENTENCE * 3}, "not json"])
    elif case == "no_field":
        write_jsonl(heldout, [{"txt": SENTENCE}])
    elif case == "short":
        write_jsonl(heldout, [{"text": "too short"}])  # 10 tokens < seq_len 32
    out = tmp_path / "o"
    argv = ["--spec", str(spec_file), "--data", str(data), "--eval-data", str(heldout)]
    code = main([*argv, "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (out / "checkpoints").exists()  # refused before training


def _events(out: Path, name: str) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == name]


@pytest.fixture
def heldout(tmp_path: Path) -> Path:
    # 5 samples of 31 bytes + EOS: exactly 5 blocks of seq_len=32 with the byte tokenizer.
    return write_jsonl(tmp_path / "heldout.jsonl", [{"text": SENTENCE[:31]}] * 5)


def _train_eval(
    spec: LaunchSpec, data: Path, eval_data: Path, out: Path, *, resume: bool = False
) -> dict[str, Any]:
    from runners.train import RunPaths, train

    paths = RunPaths(
        data=data,
        eval_data=eval_data,
        output_dir=out,
        checkpoint_dir=out / "checkpoints",
        final_model_dir=out / "final",
    )
    return train(spec, paths, resume=resume)


@pytest.mark.slow
def test_eval_loss_is_the_token_weighted_cross_entropy() -> None:
    from profiler.recipes import eval_loss, setup_full

    prepared = setup_full(TINY, tiny_spec(Method.FULL).config, device="cpu")
    ids = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    prepared.model.eval()
    loss_sum, tokens = eval_loss(prepared, ids)
    with torch.no_grad():
        logits = prepared.model(input_ids=ids).logits.float()
        by_hand = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
    assert tokens == 3 * 31  # each block predicts seq_len - 1 tokens
    assert loss_sum == pytest.approx(float(by_hand), rel=1e-4)
    assert all(p.grad is None for p in prepared.model.parameters())  # forward only


@pytest.mark.slow
def test_trains_with_eval_at_every_n_steps_and_after_the_last(
    repetitive_data: Path, heldout: Path, tmp_path: Path
) -> None:
    from runners import evaluations_in_run

    out = tmp_path / "out"
    spec = tiny_spec(Method.LORA, max_steps=5, eval_every_steps=2, checkpoint_every_steps=None)
    summary = _train_eval(spec, repetitive_data, heldout, out)
    evals = _events(out, "eval")
    assert [e["step"] for e in evals] == [2, 4, 5]
    assert len(evals) == evaluations_in_run(5, 2)
    assert all(math.isfinite(e["eval_loss"]) and e["eval_s"] > 0 for e in evals)
    assert {e["eval_tokens"] for e in evals} == {5 * 31}
    # The held-out text is the training text: its loss falls from random init's ln(256).
    assert evals[0]["eval_loss"] < 5.6 and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert _events(out, "start")[0]["eval_sequences"] == 5
    assert summary["eval"] == {
        "evaluations": 3,
        "first_loss": pytest.approx(evals[0]["eval_loss"]),
        "last_loss": pytest.approx(evals[-1]["eval_loss"]),
        "tokens_per_eval": 5 * 31,
        "eval_s_total": pytest.approx(sum(e["eval_s"] for e in evals)),
    }
    assert summary["measured"]["timed_steps"] == 5 - 2  # eval passes are not training steps
    assert json.loads((out / "summary.json").read_text())["eval"]["evaluations"] == 3
    no_eval = _train(tiny_spec(Method.LORA, max_steps=2), repetitive_data, tmp_path / "plain")
    assert no_eval["eval"] is None and not _events(tmp_path / "plain", "eval")


@pytest.mark.slow
def test_resumed_run_keeps_the_eval_schedule(
    repetitive_data: Path, heldout: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    def spec(max_steps: int) -> LaunchSpec:
        return tiny_spec(Method.LORA, max_steps=max_steps, eval_every_steps=3)

    _train_eval(spec(4), repetitive_data, heldout, out)  # evaluates at 3 and 4 (its last)
    resumed = _train_eval(spec(8), repetitive_data, heldout, out, resume=True)
    assert [e["step"] for e in _events(out, "eval")] == [3, 4, 6, 8]
    assert resumed["eval"]["evaluations"] == 2
    # Resumed after the last step: nothing left to train, the final eval is still reported.
    again = _train_eval(spec(8), repetitive_data, heldout, out, resume=True)
    assert [e["step"] for e in _events(out, "eval")] == [3, 4, 6, 8, 8]
    assert again["eval"]["last_loss"] == pytest.approx(resumed["eval"]["last_loss"], rel=1e-5)


@pytest.mark.slow
def test_two_processes_split_the_eval_set_and_agree(
    repetitive_data: Path, heldout: Path, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    pytest.importorskip("accelerate")
    base = tiny_spec(Method.LORA, max_steps=3, eval_every_steps=2, checkpoint_every_steps=None)
    spec = dataclasses.replace(
        base, config=dataclasses.replace(base.config, gpu_count=2, sharding=Sharding.DDP)
    )
    spec_file = tmp_path / "launch.json"
    spec_file.write_text(launch_spec_to_json(spec))
    port = free_port()
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    argv += ["--master_port", str(port), "-m", "runners.train", "--spec", str(spec_file)]
    argv += ["--data", str(repetitive_data), "--eval-data", str(heldout)]
    argv += ["--output-dir", str(out)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    evals = _events(out, "eval")  # written by rank 0 only
    assert [e["step"] for e in evals] == [2, 3]
    # 5 blocks over 2 ranks with micro-batch 2: rank 0 runs 2 forwards, rank 1 one plus a
    # weight-0 repeat; the reduced count is every block once.
    assert {e["eval_tokens"] for e in evals} == {5 * 31}
    assert all(math.isfinite(e["eval_loss"]) for e in evals)


@pytest.mark.slow
def test_a_chunked_loss_run_trains_the_same_steps(repetitive_data: Path, tmp_path: Path) -> None:
    """A plan with chunked cross-entropy launches it, and it is the same training: the losses of
    the first steps match the unchunked run's (same seed, data and schedule)."""
    plain = tiny_spec(Method.LORA, max_steps=4, checkpoint_every_steps=100)
    chunked_config = dataclasses.replace(plain.config, chunked_loss=True)
    chunked = dataclasses.replace(plain, config=chunked_config)
    runs = {}
    for name, spec in (("plain", plain), ("chunked", chunked)):
        summary = _train(spec, repetitive_data, tmp_path / name)
        assert summary["steps_completed"] == 4
        runs[name] = [s["loss"] for s in _steps(tmp_path / name)]
    assert "chunked-ce" in summary["config"]
    assert runs["chunked"] == pytest.approx(runs["plain"], rel=2e-2)
    assert runs["chunked"][-1] < runs["chunked"][0]


def test_a_spec_without_a_learning_rate_uses_its_methods_rate() -> None:
    """One table of starting rates (profiler.recipes): full fine-tuning 2e-5, not LoRA's 2e-4."""
    from model_specs import TINY_LLAMA

    from profiler import Method, TuningConfig
    from profiler.recipes import DEFAULT_LEARNING_RATE
    from runners import LaunchSpec, launch_spec_from_json, launch_spec_to_json

    full = LaunchSpec(model=TINY_LLAMA, config=TuningConfig(method=Method.FULL))
    lora = LaunchSpec(
        model=TINY_LLAMA,
        config=TuningConfig(method=Method.LORA, lora_rank=8, lora_targets="all-linear"),
    )
    assert full.peak_learning_rate == DEFAULT_LEARNING_RATE[Method.FULL] == 2e-5
    assert lora.peak_learning_rate == DEFAULT_LEARNING_RATE[Method.LORA] == 2e-4
    assert launch_spec_from_json(launch_spec_to_json(full)).peak_learning_rate == 2e-5
