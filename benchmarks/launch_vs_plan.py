"""Real local launches against their plans, on one CUDA GPU: random-init LoRA and QLoRA from
``ftplan recommend`` plans, then one sharded QLoRA launch (FSDP with CPU offload on that GPU, so
the run goes through accelerate's FSDP with rank-0 loading: ``profiler/_nf4_loading.py`` and the
adapters' own FSDP units) whose plan is the QLoRA plan re-priced by the estimator for
``fsdp-offload``. Each launch runs ``--max-steps`` optimizer steps with ``--grad-accum 1`` and
``--wait``; its ``summary.json`` comparison (peak allocated GiB and tokens/s, measured against
planned) is appended to ``--out`` as one JSON line, with the loading lines of its log.

Run on the GPU machine, from the repository root::

    python benchmarks/launch_vs_plan.py --out benchmarks/results/launch-vs-plan.jsonl

``--dry-run`` makes the plans and prints the launch commands' dry runs (no GPU needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENTENCE = "The quick brown fox jumps over the lazy dog while the planner counts the tokens. "


def _ftplan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "planner", *args], cwd=ROOT, text=True, capture_output=True
    )


def _plan(work: Path, *, model: str, gpu: str, method: str) -> Path:
    out = work / f"plans-{method}"
    done = _ftplan(
        "recommend", "--model", model, "--budget", "1", "--provider", "local", "--gpu", gpu,
        "--gpu-count", "1", "--method", method, "--host-ram-gib", "120", "--out", str(out),
        "--quiet",
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"recommend {method} failed: {done.stderr.strip()}")
    (plan,) = out.glob("*.json")
    return plan


def _fsdp_plan(qlora_plan: Path, work: Path) -> Path:
    """The QLoRA plan with its chosen config under ``fsdp-offload`` and the estimator's figures
    for that config, so the launch compares with what that config is predicted to need."""
    from catalog import get_gpu, get_model
    from planner.plan_io import read_plan, write_plan
    from profiler import Sharding, estimate
    from profiler.calibration import calibration_for

    plan = read_plan(qlora_plan)
    chosen = plan.chosen
    assert chosen is not None
    # The chunked loss runs unsharded only (profiler.chunked_loss_problem).
    config = dataclasses.replace(chosen.config, sharding=Sharding.FSDP_OFFLOAD, chunked_loss=False)
    gpu = get_gpu(chosen.offer.gpu)
    measured = estimate(get_model(plan.model), config, gpu, calibration=calibration_for(gpu))
    chosen = dataclasses.replace(chosen, config=config, measurement=measured)
    return write_plan(dataclasses.replace(plan, chosen=chosen), work / "plan-fsdp-qlora.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/launch-vs-plan.jsonl"
    )
    parser.add_argument("--model", default="llama3.1-8b")
    parser.add_argument("--gpu", default="h100")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ftplan-launch-vs-plan-"))
    data = work / "train.jsonl"
    data.write_text((json.dumps({"text": SENTENCE * 200}) + "\n") * 400, encoding="utf-8")
    plans = {m: _plan(work, model=args.model, gpu=args.gpu, method=m) for m in ("lora", "qlora")}
    plans["fsdp-qlora"] = _fsdp_plan(plans["qlora"], work)
    for name, plan in plans.items():
        runs = work / f"runs-{name}"
        launch = [
            "launch", str(plan), "--target", "local", "--data", str(data), "--random-init",
            "--max-steps", str(args.steps), "--grad-accum", "1", "--output-dir", str(runs),
        ]  # fmt: skip
        done = _ftplan(*launch, "--dry-run" if args.dry_run else "--wait")
        print(f"== {name}: exit {done.returncode}\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
        if args.dry_run:
            continue
        summaries = list(runs.glob("*/output/summary.json"))
        log = next(runs.glob("*/train.log"), None)
        loading = [
            line
            for line in (log.read_text(errors="replace").splitlines() if log else [])
            if '"weights_loading"' in line
        ]
        record = {
            "case": name,
            "plan": str(plan),
            "exit": done.returncode,
            "summary": json.loads(summaries[0].read_text()) if summaries else None,
            "loading": loading,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
