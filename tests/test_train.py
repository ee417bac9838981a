"""The training entrypoint on CPU: data formats and errors, packing and the resumable schedule,
real training of a tiny Llama (hidden 64, 2 layers, vocab 256, seq 32) under full, LoRA and QLoRA
with the profiler's recipes, checkpoints, resume, SageMaker's environment and the summary."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from model_specs import TINY_LLAMA

from profiler import Method, TuningConfig
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
        ("{not json", r"d\.jsonl:3: not valid JSON"),
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
    assert checkpoints == ["checkpoint-00000015", "checkpoint-00000020"]  # KEEP_LAST = 2
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
    from runners.train import build_summary

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
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err


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
