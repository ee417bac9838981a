#!/usr/bin/env bash
# One short GPU session, most valuable first: held-out long steps (16k-32k tokens) and 8-bit
# AdamW on models absent from the shipped reference sets, held-out short QLoRA steps (~2k
# tokens), the GPU tests, a real local launch against its plan, truncated-layer extrapolation
# against full depth, llama2-70b and Mixtral extrapolated.
#
# Every part has its own time limit and appends to OUT as it completes, so a session cut short
# keeps what it measured. bitsandbytes travels as a wheel in .whl/ (docs/profiling.md). PARTS
# picks groups (default all, in this order): long heldout tests launch launches validation; one
# device call has 600 s, so e.g. PARTS="long heldout" first, then PARTS="tests launch validation",
# then PARTS=launches.
#
#   OUT=benchmarks/results bash benchmarks/gpu_session.sh
#   OUT=benchmarks/results PARTS="long heldout" bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-benchmarks/results}
PY=${PY:-python3}
PARTS=${PARTS:-long heldout tests launch launches validation}
want() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi

step() {  # step NAME SECONDS CMD...: run CMD under a time limit, log to OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name exit $? $(date -u +%H:%M:%S)"
    tail -n 25 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
$PY -c "import torch, transformers, peft, accelerate, bitsandbytes as b
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__,
      'peft', peft.__version__, 'accelerate', accelerate.__version__, 'bitsandbytes', b.__version__)
free, total = torch.cuda.mem_get_info(); print('mem_get_info total MiB', total // 2**20, 'free MiB', free // 2**20)" \
    | tee -a "$OUT/env.txt"

PROFILE=($PY -m planner profile --full-depth --warmup-steps 2 --timed-steps 4 --timeout-s 150
    --out "$OUT/long-steps.jsonl" --format json)

if want long; then
    # Held-out production-sized steps: models in neither shipped reference set. The 2026-11-30
    # H200 rows predate the recipe dropping the logits before backward: re-measure them.
    step long-lora-3b 60 "${PROFILE[@]}" --model llama3.2-3b --method lora --batch 1 \
        --seq-len 16384 --grad-checkpointing
    step long-qlora-3b 60 "${PROFILE[@]}" --model llama3.2-3b --method qlora --batch 1 \
        --seq-len 16384 --grad-checkpointing
    # The same LoRA step with chunked cross-entropy: the estimator's chunked memory is unmeasured.
    step long-lora-3b-chunked 60 "${PROFILE[@]}" --model llama3.2-3b --method lora --batch 1 \
        --seq-len 16384 --grad-checkpointing --chunked-loss
    step long-lora-qwen3b 60 "${PROFILE[@]}" --model qwen2.5-3b --method lora --batch 2 \
        --seq-len 16384 --grad-checkpointing
    step qv-lora-qwen3b 50 "${PROFILE[@]}" --model qwen2.5-3b --method lora \
        --targets q_proj,v_proj --batch 1 --seq-len 8192
    step full-8bit-3b 60 "${PROFILE[@]}" --model llama3.2-3b --method full --precision bf16 \
        --optimizer adamw-8bit --batch 1 --seq-len 8192 --grad-checkpointing
fi
if want heldout; then
    # Short QLoRA steps (~2k tokens, host-bound) and more 8-bit AdamW, on held-out models; the
    # 8-bit llama3.2-1b row pairs with the reference set's torch AdamW row of the same shape.
    step short-qlora-gemma2b 45 "${PROFILE[@]}" --model gemma-2b --method qlora --batch 1 \
        --seq-len 2048
    step short-qlora-phi3 45 "${PROFILE[@]}" --model phi3-mini --method qlora --batch 2 \
        --seq-len 1024
    step full-8bit-1b 40 "${PROFILE[@]}" --model llama3.2-1b --method full --precision bf16 \
        --optimizer adamw-8bit --batch 1 --seq-len 2048
    step lora-8bit-qwen3b 45 "${PROFILE[@]}" --model qwen2.5-3b --method lora \
        --optimizer adamw-8bit --batch 4 --seq-len 2048
fi
if want tests; then
    step gpu-tests 150 $PY -m pytest tests/profiler/test_gpu.py -m gpu -q -rs
fi
if want launch; then
    # A real local launch from a plan (llama2-7b LoRA, 30 steps), measured against the plan.
    step local-launch 110 $PY -m pytest tests/runners/test_local_runner.py -m gpu -q -s -rs
fi
if want launches; then
    # Random-init LoRA and QLoRA launched from their plans, then one FSDP QLoRA launch (CPU
    # offload on this GPU: rank-0 4-bit loading, adapters in their own FSDP units), each 20
    # steps against its plan (docs/launching.md, "The GPU check").
    step launches 400 $PY benchmarks/launch_vs_plan.py --out "$OUT/launch-vs-plan.jsonl"
fi
if want validation; then
    # Truncated-layer extrapolation (2 and 4 layers) against full depth.
    step validation 110 $PY benchmarks/h100_validation.py --models phi3-mini --recipes lora,qlora \
        --shapes 4x1024 --checkpointing on --no-70b --warmup-steps 2 --timed-steps 5 \
        --timeout-s 60 --out "$OUT/validation.jsonl"
    step validation-70b 50 $PY benchmarks/h100_validation.py --only-70b --big-recipes qlora \
        --warmup-steps 2 --timed-steps 5 --timeout-s 40 --out "$OUT/validation.jsonl"
    # Gemma 2 runs eager attention: its s² scores are first principles in the estimator.
    step gemma2-eager 45 "${PROFILE[@]}" --model gemma2-2b --method lora --batch 1 \
        --seq-len 4096 --grad-checkpointing
    step mixtral-qlora 90 $PY -m planner profile --model mixtral-8x7b --method qlora \
        --grad-checkpointing --batch 1 --seq-len 2048 --warmup-steps 2 --timed-steps 4 \
        --timeout-s 80 --out "$OUT/validation.jsonl" --format json
fi
echo "== done $(date -u +%H:%M:%S)"
